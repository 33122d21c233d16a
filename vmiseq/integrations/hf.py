"""The VMI-SA language model as a Hugging Face transformers model (``pip install "vmiseq[hf]"``).

After ``import vmiseq``::

    from transformers import AutoModelForCausalLM, pipeline
    model = AutoModelForCausalLM.from_pretrained("runs/lm/model")   # a vmiseq save folder
    out = model.generate(ids, max_new_tokens=50)                     # transformers' GenerationMixin
    pipe = pipeline("text-generation", model=model, tokenizer=hf_tokenizer(model))

``VMISAHFForCausalLM`` wraps a :class:`vmiseq.models.VMISAForCausalLM` (``model.lm``): the
same weights, the same forward. transformers' generation loop gets the recurrent state as
its cache (:class:`VMISAStateCache`): a fixed number of bytes per sequence whatever the
length, where a Transformer's KV cache grows with every token.

There is one on-disk format: both ``save_pretrained`` methods write vmiseq's folder
(``config.json`` with ``"model_type": "vmiseq_lm"``, ``model.safetensors``, ``COMPLETE``,
``tokenizer/``), so a folder saved either way loads either way.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from ..models.lm import LMState, VMISAConfig, VMISAForCausalLM

__all__ = ["MODEL_TYPE", "VMISAHFConfig", "VMISAHFForCausalLM", "VMISAStateCache", "hf_tokenizer", "register"]

MODEL_TYPE = VMISAForCausalLM.hf_model_type
_FIELDS = tuple(f.name for f in dataclasses.fields(VMISAConfig))


class VMISAHFConfig(PretrainedConfig):
    """transformers config of the VMI-SA LM: every :class:`VMISAConfig` field as an attribute.

    Also reads vmiseq's own ``config.json`` layout (the fields nested under ``"config"``).
    """

    model_type = MODEL_TYPE
    attribute_map = {"hidden_size": "dim", "num_hidden_layers": "depth", "num_attention_heads": "n_heads"}

    def __init__(self, **kwargs) -> None:
        values = dict(kwargs.pop("config", None) or {})  # vmiseq's save layout
        kwargs.pop("model_class", None)
        kwargs.pop("format_version", None)
        for name in _FIELDS:
            if name in kwargs:
                values[name] = kwargs.pop(name)
        vmisa = VMISAConfig.from_dict(values)  # validates every field
        for name, value in dataclasses.asdict(vmisa).items():
            setattr(self, name, value)
        kwargs.setdefault("tie_word_embeddings", vmisa.tie_embeddings)
        super().__init__(**kwargs)

    def to_vmisa_config(self) -> VMISAConfig:
        return VMISAConfig(**{name: getattr(self, name) for name in _FIELDS})


class VMISAStateCache:
    """transformers' generation cache for a VMI-SA LM: the per-layer recurrent states.

    Its size is fixed per sequence (``nbytes()``), however many tokens it has seen.
    """

    is_compileable = False

    def __init__(self, state: LMState) -> None:
        self.state = state

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return int(self.state.position.max())

    def nbytes(self) -> int:
        """Bytes held for the whole batch."""
        return self.state.nbytes()

    def reorder_cache(self, beam_idx: Tensor) -> None:
        self.state = self.state.select(beam_idx)

    def batch_select_indices(self, indices: Tensor) -> None:
        self.state = self.state.select(indices)

    def batch_repeat_interleave(self, repeats: int) -> None:
        index = torch.arange(self.state.batch_size, device=self.state.position.device).repeat_interleave(repeats)
        self.state = self.state.select(index)


@dataclass
class VMISAHFOutput(ModelOutput):
    """``loss`` (with labels), ``logits`` (B, L, V) and the new ``cache`` (with use_cache)."""

    loss: Optional[Tensor] = None
    logits: Optional[Tensor] = None
    cache: Optional[VMISAStateCache] = None


class VMISAHFForCausalLM(PreTrainedModel, GenerationMixin):
    """A :class:`VMISAForCausalLM` (``self.lm``) behind transformers' model API."""

    config_class = VMISAHFConfig
    base_model_prefix = "lm"
    main_input_name = "input_ids"
    _is_stateful = True

    def __init__(self, config: VMISAHFConfig, lm: Optional[VMISAForCausalLM] = None) -> None:
        super().__init__(config)
        self.lm = lm if lm is not None else VMISAForCausalLM(config.to_vmisa_config())
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the model makes its own fixed-size cache on the first forward

    def _init_weights(self, module) -> None:
        """vmiseq initialises its own modules; transformers' initialiser must not redo it."""

    def get_input_embeddings(self):
        return self.lm.tok_emb

    def set_input_embeddings(self, value) -> None:
        self.lm.tok_emb = value

    @property
    def tokenizer(self):
        """The vmiseq tokenizer saved with the model (``hf_tokenizer(model)`` for transformers')."""
        return self.lm.tokenizer

    def forward(
        self,
        input_ids: Optional[Tensor] = None,
        cache: Optional[VMISAStateCache] = None,
        attention_mask: Optional[Tensor] = None,
        labels: Optional[Tensor] = None,
        use_cache: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        **kwargs,
    ) -> Union[VMISAHFOutput, tuple]:
        """Logits (and the loss with ``labels``, shifted inside, -100 ignored) of ``input_ids``,
        continuing ``cache``; ``use_cache`` returns the state after the last token."""
        if input_ids is None:
            raise ValueError("input_ids: expected token ids (inputs_embeds are not supported), got None")
        if kwargs.get("inputs_embeds") is not None:
            raise ValueError("inputs_embeds: not supported by the VMI-SA LM; pass input_ids")
        if attention_mask is not None and not bool(attention_mask.bool().all()):
            raise ValueError(
                "attention_mask: padded batches are not supported (padding tokens would enter the recurrent "
                "state); generate prompts of different lengths one by one, or with vmiseq's own "
                "VMISAForCausalLM.generate, which takes ragged prompts"
            )
        if cache is not None and not isinstance(cache, VMISAStateCache):
            if hasattr(cache, "get_seq_length") and cache.get_seq_length() == 0:
                cache = None  # an empty cache some transformers helpers create
            else:
                raise TypeError(f"cache: expected a VMISAStateCache, got {type(cache).__name__}")
        use_cache = bool(use_cache) if use_cache is not None else not self.training
        out = self.lm(input_ids, None if cache is None else cache.state, labels=labels, output_state=use_cache)
        new_cache = VMISAStateCache(out.state) if use_cache else None
        if return_dict is False:
            return tuple(v for v in (out.loss, out.logits, new_cache) if v is not None)
        return VMISAHFOutput(loss=out.loss, logits=out.logits, cache=new_cache)

    def save_pretrained(self, save_directory: Union[str, os.PathLike], is_main_process: bool = True, **kwargs):
        """Write vmiseq's folder layout (loadable by both ``from_pretrained`` methods)."""
        if not is_main_process:
            return None
        state_dict = kwargs.get("state_dict")
        if state_dict is not None:  # transformers' Trainer passes the weights it wants saved
            self.load_state_dict(state_dict)
        return self.lm.save_pretrained(save_directory)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Union[str, os.PathLike], *args, **kwargs):
        """Load a folder written by either ``save_pretrained`` (weights read with safetensors)."""
        device = kwargs.get("device_map")
        lm = VMISAForCausalLM.from_pretrained(pretrained_model_name_or_path, map_location=device if isinstance(device, str) else "cpu")
        dtype = kwargs.get("torch_dtype", kwargs.get("dtype"))
        if isinstance(dtype, torch.dtype):
            lm = lm.to(dtype)
        model = cls(VMISAHFConfig(**dataclasses.asdict(lm.config)), lm=lm)
        model.eval()
        return model


def hf_tokenizer(model_or_tokenizer):
    """transformers' fast tokenizer over the same ``tokenizers`` object as vmiseq's tokenizer."""
    from transformers import PreTrainedTokenizerFast

    from ..data.tokenizer import EOS, UNK, Tokenizer

    tok = model_or_tokenizer
    if not isinstance(tok, Tokenizer):
        tok = getattr(model_or_tokenizer, "tokenizer", None)
    if not isinstance(tok, Tokenizer):
        raise ValueError("model_or_tokenizer: expected a vmiseq Tokenizer or a model saved with one, got none")
    extra = {"unk_token": UNK} if tok.kind == "char" else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok.backend, eos_token=EOS, pad_token=EOS, clean_up_tokenization_spaces=False, **extra
    )


def register() -> None:
    """Register ``vmiseq_lm`` with AutoConfig / AutoModelForCausalLM (idempotent)."""
    AutoConfig.register(MODEL_TYPE, VMISAHFConfig, exist_ok=True)
    AutoModelForCausalLM.register(VMISAHFConfig, VMISAHFForCausalLM, exist_ok=True)


register()  # also when this module is imported before the hook could run
