"""Causal language model made of VMI-SA blocks, with O(1)-state streaming generation.

``VMISAForCausalLM(VMISAConfig(...))``: token embedding -> ``depth`` residual blocks ->
LayerNorm -> (tied) output projection. ``config.mixer`` picks the token mixer of every block
(:mod:`vmiseq.models.blocks`: "vmisa", or the "attention" / "gla" baselines), so the baselines
share this class, its training harness and its generation code.

This module holds the modelling: the parallel forward, ``prefill`` (a prompt through the
parallel path, in chunks) and ``step`` (one token through every block's state). Sampling,
streaming and ragged batches are in :mod:`vmiseq.models.generation`; the config in
:mod:`vmiseq.models.lm_config`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..saving import PretrainedMixin
from ..layers.dropout import Dropout
from .blocks import MIXER_STATES, MIXERS, make_block
from .generation import LMGenerationMixin, check_chunk_size, sample_next
from .lm_config import VMISAConfig

__all__ = ["VMISAConfig", "VMISAForCausalLM", "LMState", "CausalLMOutput", "MIXERS", "sample_next"]

TOKENIZER_DIR = "tokenizer"


@dataclass
class LMState:
    """Streaming state of a whole model: one state per block (fixed size for vmisa / gla)."""

    layers: list
    mixer: str = "vmisa"

    @property
    def position(self) -> Tensor:
        """(B,) absolute position of the next token of each sequence."""
        return self.layers[0].position

    @property
    def batch_size(self) -> int:
        return int(self.layers[0].position.shape[0])

    def nbytes(self) -> int:
        """Bytes held for the whole batch."""
        return sum(s.nbytes() for s in self.layers)

    def select(self, index: Tensor) -> "LMState":
        return LMState([s.select(index) for s in self.layers], self.mixer)

    def detach(self) -> "LMState":
        return LMState([s.detach() for s in self.layers], self.mixer)

    def reset_rows(self, mask: Tensor) -> "LMState":
        """Rows where ``mask`` (B,) is true go back to the fresh state (zeros, position 0);
        the other rows are kept. Used when a training stream starts over."""
        if mask.dtype != torch.bool or tuple(mask.shape) != (self.batch_size,):
            raise ValueError(f"mask: expected a bool tensor of shape ({self.batch_size},), got {mask.dtype} {tuple(mask.shape)}")
        if not bool(mask.any()):
            return self

        def reset(t: Tensor) -> Tensor:
            return t.masked_fill(mask.view(-1, *([1] * (t.dim() - 1))), 0)

        return LMState([type(s)(*(reset(getattr(s, f.name)) for f in dataclasses.fields(s))) for s in self.layers], self.mixer)

    def to_tensors(self) -> dict[str, Tensor]:
        """Named tensors (``"<layer>.<field>"``), e.g. to store the state in a checkpoint."""
        return {f"{i}.{f.name}": getattr(s, f.name) for i, s in enumerate(self.layers) for f in dataclasses.fields(s)}

    @staticmethod
    def from_tensors(tensors: dict[str, Tensor], like: "LMState") -> "LMState":
        """Inverse of :meth:`to_tensors`; ``like`` (e.g. ``model.init_state(B)``) gives the
        layer state types, shapes and device."""
        layers = []
        for i, s in enumerate(like.layers):
            fields = []
            for f in dataclasses.fields(s):
                ref, t = getattr(s, f.name), tensors.get(f"{i}.{f.name}")
                if t is None or t.shape != ref.shape:
                    got = None if t is None else tuple(t.shape)
                    raise ValueError(f"tensors: expected {i}.{f.name} of shape {tuple(ref.shape)}, got {got}")
                fields.append(t.to(device=ref.device, dtype=ref.dtype))
            layers.append(type(s)(*fields))
        return LMState(layers, like.mixer)

    @staticmethod
    def cat(states: Sequence["LMState"]) -> "LMState":
        """Concatenate along the batch."""
        kind = type(states[0].layers[0])
        return LMState([kind.cat([s.layers[i] for s in states]) for i in range(len(states[0].layers))], states[0].mixer)


@dataclass
class CausalLMOutput:
    """What ``forward`` returns: logits (B, L, V), the mean loss when labels are given, the
    new state when ``output_state=True``."""

    logits: Tensor
    loss: Optional[Tensor] = None
    state: Optional[LMState] = None


class VMISAForCausalLM(LMGenerationMixin, PretrainedMixin, nn.Module):
    """Causal language model with streaming generation (see the module docstring).

    ``model.tokenizer`` (a :class:`vmiseq.data.tokenizer.Tokenizer`, optional) is saved and loaded
    with the weights. ``generate`` / ``generate_stream`` come from
    :class:`~vmiseq.models.generation.LMGenerationMixin`.
    """

    config_class = VMISAConfig
    hf_model_type = "vmiseq_lm"  # the transformers model type (vmiseq.integrations.hf)

    def __init__(self, config: VMISAConfig) -> None:
        super().__init__()
        if not isinstance(config, VMISAConfig):
            raise TypeError(f"config: expected a VMISAConfig, got {type(config).__name__}")
        self.config = config
        c = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.dim)
        self.pos_emb = nn.Embedding(c.max_len, c.dim) if c.pos_embedding else None
        self.drop = Dropout(c.dropout)
        self.blocks = nn.ModuleList([self._make_block() for _ in range(c.depth)])
        self.norm_f = nn.LayerNorm(c.dim)
        self.lm_head = nn.Linear(c.dim, c.vocab_size, bias=False)
        nn.init.normal_(self.tok_emb.weight, std=0.02)
        if self.pos_emb is not None:
            nn.init.normal_(self.pos_emb.weight, std=0.02)
        if c.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        else:
            nn.init.normal_(self.lm_head.weight, std=0.02)
        self.tokenizer = None


    # config fields passed on to every VMISALayer as they are
    _LAYER_FIELDS = ("expand", "alpha", "rank_mask", "decay", "conv_kernel", "norm", "beta_per_channel", "alpha_init", "backend")

    def _make_block(self) -> nn.Module:
        c = self.config
        max_len = c.max_len if c.alpha == "position" else None
        return make_block(c, c.dim, self._LAYER_FIELDS, gla_conv_kernel=c.conv_kernel, max_len=max_len)

    # ------------------------------------------------------------------ helpers
    def num_parameters(self, non_embedding: bool = False) -> int:
        """Parameter count (tied weights once); ``non_embedding`` drops the embeddings."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_emb.weight.numel() + (self.pos_emb.weight.numel() if self.pos_emb is not None else 0)
        return n

    def init_state(self, batch_size: int, device=None) -> LMState:
        """A fresh state at position 0 for ``batch_size`` sequences."""
        return LMState([b.init_state(batch_size, device) for b in self.blocks], self.config.mixer)

    def _check_ids(self, input_ids, name: str = "input_ids") -> Tensor:
        if not isinstance(input_ids, Tensor):
            raise TypeError(f"{name}: expected a LongTensor of token ids, got {type(input_ids).__name__}")
        if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
            raise TypeError(f"{name}: expected an integer tensor of token ids, got dtype {input_ids.dtype}")
        if input_ids.dim() != 2:
            raise ValueError(f"{name}: expected shape (B, L), got {tuple(input_ids.shape)}")
        if input_ids.numel():
            lo, hi = int(input_ids.min()), int(input_ids.max())
            if lo < 0 or hi >= self.config.vocab_size:
                bad = lo if lo < 0 else hi
                raise ValueError(f"{name}: token id {bad} is outside the vocabulary [0, {self.config.vocab_size})")
        return input_ids.long()

    def check_state(self, state: LMState, batch_size: int) -> None:
        """Raise a clear error for a state made by another model or for another batch."""
        if not isinstance(state, LMState):
            raise TypeError(f"state: expected an LMState (from this model's forward/init_state), got {type(state).__name__}")
        if state.mixer != self.config.mixer or len(state.layers) != len(self.blocks):
            raise ValueError(
                f"state: expected the state of a {self.config.depth}-block {self.config.mixer!r} model, got one of a "
                f"{len(state.layers)}-block {state.mixer!r} model: it comes from another model"
            )
        kind = MIXER_STATES[self.config.mixer]
        for i, s in enumerate(state.layers):
            if not isinstance(s, kind):
                raise TypeError(f"state.layers[{i}]: expected a {kind.__name__}, got {type(s).__name__}")
        if state.batch_size != batch_size:
            raise ValueError(f"state: expected a state for batch size {batch_size}, got one for {state.batch_size}")

    def _check_length(self, positions_end: int) -> None:
        c = self.config
        if c.max_len is not None and (c.pos_embedding or (c.mixer == "vmisa" and c.alpha == "position")):
            if positions_end > c.max_len:
                raise ValueError(
                    f"input_ids: the sequence reaches position {positions_end}, beyond max_len={c.max_len} of the "
                    "learned position table (alpha='position' or pos_embedding); use alpha='input' for unbounded length"
                )

    def _embed(self, ids: Tensor, positions: Optional[Tensor]) -> Tensor:
        x = self.tok_emb(ids)
        if self.pos_emb is not None:
            L = ids.shape[1]
            if positions is None:
                pos = torch.arange(L, device=ids.device).unsqueeze(0)
            else:
                pos = positions.unsqueeze(1) + torch.arange(L, device=ids.device)
            x = x + self.pos_emb(pos)
        return self.drop(x)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: Tensor,
        state: Optional[LMState] = None,
        labels: Optional[Tensor] = None,
        targets: Optional[Tensor] = None,
        output_state: bool = False,
    ) -> CausalLMOutput:
        """Run the model over ``input_ids`` (B, L), continuing ``state`` if given.

        Args:
            input_ids: (B, L) token ids, L >= 1.
            state: the state after the previous tokens (``None``: start of the sequences).
            labels: (B, L) ids; the loss predicts ``labels[:, t+1]`` from position t (the
                Hugging Face convention, shifted inside). -100 entries are ignored.
            targets: (B, L) ids already aligned with the logits (nanoGPT convention: the
                loss predicts ``targets[:, t]`` from position t). Give labels or targets.
            output_state: also return the state after the last token.
        """
        ids = self._check_ids(input_ids)
        B, L = ids.shape
        if L == 0:
            raise ValueError("input_ids: expected at least one token, got an empty sequence (shape (B, 0))")
        if labels is not None and targets is not None:
            raise ValueError("labels, targets: give one of them, not both")
        positions = None
        if state is not None:
            self.check_state(state, B)
            positions = state.position
            self._check_length(int(positions.max()) + L)
        else:
            self._check_length(L)
        x = self._embed(ids, positions)
        new_layers = []
        for i, block in enumerate(self.blocks):
            s = None if state is None else state.layers[i]
            if output_state:
                x, ns = block(x, s, output_state=True)
                new_layers.append(ns)
            else:
                x = block(x, s)
        logits = self.lm_head(self.norm_f(x))
        loss = None
        if labels is not None or targets is not None:
            gold = labels if labels is not None else targets
            name = "labels" if labels is not None else "targets"
            if not isinstance(gold, Tensor) or tuple(gold.shape) != (B, L):
                raise ValueError(f"{name}: expected shape {(B, L)}, got {tuple(gold.shape) if isinstance(gold, Tensor) else type(gold).__name__}")
            lg, gold = (logits[:, :-1], gold[:, 1:]) if labels is not None else (logits, gold)
            loss = F.cross_entropy(lg.reshape(-1, lg.shape[-1]).float(), gold.reshape(-1).long(), ignore_index=-100)
        return CausalLMOutput(logits, loss, LMState(new_layers, self.config.mixer) if output_state else None)

    @torch.no_grad()
    def step(self, token_ids: Tensor, state: LMState) -> tuple[Tensor, LMState]:
        """Advance one token per sequence: token_ids (B,) -> (logits (B, V), new state)."""
        if not isinstance(token_ids, Tensor) or token_ids.dim() != 1:
            shape = tuple(token_ids.shape) if isinstance(token_ids, Tensor) else type(token_ids).__name__
            raise ValueError(f"token_ids: expected one id per sequence, shape (B,), got {shape}")
        ids = self._check_ids(token_ids.unsqueeze(1), "token_ids")
        self.check_state(state, ids.shape[0])
        self._check_length(int(state.position.max()) + 1)
        x = self._embed(ids, state.position).squeeze(1)
        new_layers = []
        for block, s in zip(self.blocks, state.layers):
            x, ns = block.step(x, s)
            new_layers.append(ns)
        return self.lm_head(self.norm_f(x)), LMState(new_layers, self.config.mixer)

    @torch.no_grad()
    def prefill(self, input_ids: Tensor, state: Optional[LMState] = None, chunk_size: Optional[int] = None) -> tuple[Tensor, LMState]:
        """Consume a prompt with the parallel path; returns (last logits (B, V), state).

        ``chunk_size`` (None or a positive int) bounds memory on long prompts by feeding them
        in pieces (the result is the same as one piece).
        """
        check_chunk_size("chunk_size", chunk_size)
        ids = self._check_ids(input_ids)
        L = ids.shape[1]
        if L == 0:
            raise ValueError("input_ids: expected a non-empty prompt, got 0 tokens")
        step = L if chunk_size is None else chunk_size
        out = None
        for start in range(0, L, step):
            out = self.forward(ids[:, start : start + step], state, output_state=True)
            state = out.state
        return out.logits[:, -1], state

    # ------------------------------------------------------------------ saving
    def _save_extra(self, directory: Path) -> None:
        if self.tokenizer is not None:
            self.tokenizer.save(directory / TOKENIZER_DIR)

    def _load_extra(self, directory: Path) -> None:
        if (directory / TOKENIZER_DIR).is_dir():
            from ..data.tokenizer import Tokenizer

            self.tokenizer = Tokenizer.load(directory / TOKENIZER_DIR)
            if self.tokenizer.vocab_size > self.config.vocab_size:
                raise ValueError(
                    f"{TOKENIZER_DIR}: the saved tokenizer has {self.tokenizer.vocab_size} ids, more than the model's "
                    f"vocab_size={self.config.vocab_size}"
                )
