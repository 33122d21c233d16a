"""Causal language model made of VMI-SA blocks, with O(1)-state streaming generation.

``VMISAForCausalLM(VMISAConfig(...))``: token embedding -> ``depth`` residual blocks ->
LayerNorm -> (tied) output projection. ``config.mixer`` picks the token mixer of every block,
so the baselines share this class, its training harness and its generation code:

- ``"vmisa"``: ``VMISABlock`` (causal ``VMISALayer`` + optional MLP). State per layer: a
  ``VMISAState`` of fixed size (conv buffer + D-vector + position).
- ``"attention"``: pre-norm Transformer block with causal SDPA attention (nanoGPT-like,
  learned absolute positions). State: a growing ``KVCache``.
- ``"gla"``: pre-norm block with multi-head gated linear attention. State: ``GLAState``.

Generation prefills each prompt with the parallel (chunked) path, then advances one token
at a time carrying only the per-layer states; prompts of different lengths are prefilled
separately (grouped by length) so every row equals generating that prompt alone.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..saving import PretrainedMixin
from ..layers.attention import CausalSelfAttention, KVCache
from ..layers.block import MLP, VMISABlock
from ..layers.dropout import Dropout, inference_context
from ..layers.gla import GatedLinearAttention, GLAState
from ..layers.state import VMISAState
from ..layers.vmisa import ALPHA_MODES, DECAY_MODES
from .sampling import check_chunk_size, check_generation_args, make_generator, sample_next

MIXERS = ("vmisa", "attention", "gla")
TOKENIZER_DIR = "tokenizer"
_STATE_TYPES = {"vmisa": VMISAState, "attention": KVCache, "gla": GLAState}


@dataclass
class VMISAConfig:
    """Configuration of :class:`VMISAForCausalLM` (saved as JSON with the weights).

    Attributes:
        vocab_size: number of token ids.
        dim: model width C. depth: number of blocks.
        mixer: "vmisa" (the library's layer), "attention" (softmax Transformer baseline) or
            "gla" (gated linear attention baseline).
        expand: VMI-SA inner width D = expand * dim.
        conv_kernel: causal depthwise conv size inside the VMI-SA / GLA mixer (1 disables it).
        alpha: VMI-SA alpha mode: "input" (data-dependent, any length), "position" (a
            learned table of ``max_len`` entries, the paper's choice) or "constant".
        decay: VMI-SA forget gate: "input" (default: a per-token gate, bounded state on
            streams of any length), "scalar" (per-channel constants, half-lives 4 to 4,096
            tokens at init: its slow channels saturate on long streams, docs/lm.md "Long
            streams") or None (the paper's plain prefix sum, for fixed-length inputs).
        rank_mask: apply the paper's rank mask M.
        norm: norm inside the VMI-SA layer ("layernorm", "rmsnorm", "none").
        mlp_ratio: hidden width of each block's MLP as a multiple of dim (0: none).
        dropout: dropout in the blocks and on the embeddings.
        tie_embeddings: share the input embedding and the output projection.
        n_heads: heads of the attention / GLA mixers.
        max_len: longest sequence for ``alpha="position"`` and for learned positions.
        pos_embedding: learned absolute position embedding (default: only for attention).
        alpha_init, beta_per_channel: VMI-SA parameter options.
        backend: VMI-SA operator backend ("auto", "naive", "torch", "triton").
    """

    vocab_size: int = 256
    dim: int = 128
    depth: int = 4
    mixer: str = "vmisa"
    expand: int = 1
    conv_kernel: int = 4
    alpha: str = "input"
    decay: Optional[str] = "input"
    rank_mask: bool = False
    norm: str = "layernorm"
    mlp_ratio: float = 2.0
    dropout: float = 0.0
    tie_embeddings: bool = True
    n_heads: int = 4
    max_len: Optional[int] = None
    pos_embedding: Optional[bool] = None
    alpha_init: float = 0.1
    beta_per_channel: bool = False
    backend: str = "auto"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "dim", "depth", "expand", "conv_kernel", "n_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if self.mixer not in MIXERS:
            raise ValueError(f"mixer: expected one of {MIXERS}, got {self.mixer!r}")
        if self.alpha not in ALPHA_MODES:
            raise ValueError(f"alpha: expected one of {ALPHA_MODES}, got {self.alpha!r}")
        if self.decay not in DECAY_MODES:
            raise ValueError(f"decay: expected one of {DECAY_MODES}, got {self.decay!r}")
        for name in ("rank_mask", "tie_embeddings", "beta_per_channel"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise TypeError(f"{name}: expected a bool, got {type(value).__name__} {value!r}")
        for name in ("mlp_ratio", "dropout", "alpha_init"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or isinstance(value, bool):
                raise TypeError(f"{name}: expected a finite number, got {type(value).__name__} {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name}: expected a finite number, got {value!r}")
        if self.max_len is not None and (not isinstance(self.max_len, int) or isinstance(self.max_len, bool)):
            raise TypeError(f"max_len: expected an int or None, got {type(self.max_len).__name__} {self.max_len!r}")
        if self.pos_embedding is not None and not isinstance(self.pos_embedding, bool):
            raise TypeError(f"pos_embedding: expected None or a bool, got {self.pos_embedding!r}")
        if self.mlp_ratio < 0:
            raise ValueError(f"mlp_ratio: expected >= 0, got {self.mlp_ratio}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {self.dropout}")
        if self.pos_embedding is None:
            self.pos_embedding = self.mixer == "attention"
        needs_len = self.pos_embedding or (self.mixer == "vmisa" and self.alpha == "position")
        if needs_len and (self.max_len is None or self.max_len <= 0):
            raise ValueError(
                f"max_len: learned positions (pos_embedding={self.pos_embedding}, alpha={self.alpha!r}) need a "
                f"positive table size, got {self.max_len!r}"
            )

    @classmethod
    def from_dict(cls, d: dict) -> "VMISAConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"config: unknown fields {unknown} (expected a subset of {sorted(names)})")
        return cls(**d)


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


class _PreNormBlock(nn.Module):
    """``x + mixer(LN(x))`` then ``x + MLP(LN(x))`` (the Transformer / GLA baselines)."""

    def __init__(self, dim: int, mixer: nn.Module, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.norm1, self.mixer = nn.LayerNorm(dim), mixer
        self.mlp = None
        if mlp_ratio > 0:
            self.norm2 = nn.LayerNorm(dim)
            self.mlp = MLP(dim, int(round(mlp_ratio * dim)), dropout)

    def init_state(self, batch_size: int, device=None, dtype=None):
        return self.mixer.init_state(batch_size, device, dtype)

    def forward(self, x: Tensor, state=None, output_state: bool = False):
        new_state = None
        if output_state:
            y, new_state = self.mixer(self.norm1(x), state, output_state=True)
        else:
            y = self.mixer(self.norm1(x), state)
        x = x + y
        if self.mlp is not None:
            x = x + self.mlp(self.norm2(x))
        return (x, new_state) if output_state else x


class VMISAForCausalLM(PretrainedMixin, nn.Module):
    """Causal language model with streaming generation (see the module docstring).

    ``model.tokenizer`` (a :class:`vmiseq.tokenizer.Tokenizer`, optional) is saved and loaded
    with the weights.
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

    def _make_block(self) -> nn.Module:
        c = self.config
        if c.mixer == "vmisa":
            return VMISABlock(
                c.dim,
                mlp_ratio=c.mlp_ratio,
                dropout=c.dropout,
                expand=c.expand,
                causal=True,
                alpha=c.alpha,
                max_len=c.max_len if c.alpha == "position" else None,
                rank_mask=c.rank_mask,
                decay=c.decay,
                conv_kernel=c.conv_kernel,
                norm=c.norm,
                beta_per_channel=c.beta_per_channel,
                alpha_init=c.alpha_init,
                backend=c.backend,
            )
        if c.mixer == "attention":
            mixer = CausalSelfAttention(c.dim, c.n_heads, dropout=c.dropout)
        else:
            mixer = GatedLinearAttention(c.dim, c.n_heads, conv_kernel=c.conv_kernel, dropout=c.dropout)
        return _PreNormBlock(c.dim, mixer, c.mlp_ratio, c.dropout)

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
        kind = _STATE_TYPES[self.config.mixer]
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
            x, ns = block.step(x, s) if hasattr(block, "step") else _block_step(block, x, s)
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

    # ------------------------------------------------------------------ generation
    def generate(
        self,
        input_ids,
        max_new_tokens: int = 100,
        temperature: float = 1.0,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        eos_token_id: Optional[int] = None,
        seed: Optional[int] = None,
        streamer: Optional[Callable[[Tensor], None]] = None,
        prefill_chunk_size: Optional[int] = 4096,
    ):
        """Sample ``max_new_tokens`` tokens after each prompt.

        Args:
            input_ids: a (B, L) LongTensor (prompts of equal length), or a list of 1-D
                tensors / lists of ids (prompts of different lengths).
            max_new_tokens: tokens to add (0 returns the prompts unchanged).
            temperature: softmax temperature; 0 means greedy (argmax).
            top_k: sample only among the k most likely tokens.
            top_p: sample only from the smallest set whose probability reaches top_p.
            eos_token_id: a row stops after producing it (later positions repeat it).
            seed: seeds this call's private generator; None draws its seed from the global
                RNG once (``torch.manual_seed`` makes the run repeatable).
            streamer: called with the (B,) tensor of new tokens after every step.
            prefill_chunk_size: prompts longer than this are prefilled in pieces (None: one).

        The model's train/eval flag is neither read nor written: generation always runs
        without dropout (inside ``inference_context``), so it may interleave with training
        or with other generations, in any thread, and each stream gets the tokens it would
        get alone.

        Returns:
            (B, L + max_new_tokens) LongTensor for tensor input; a list of 1-D tensors (each
            prompt followed by its new tokens, cut after eos) for list input.
        """
        if streamer is not None and not callable(streamer):
            raise TypeError(f"streamer: expected a callable or None, got {type(streamer).__name__}")
        prompts, as_tensor = self._normalise_prompts(input_ids)
        pieces = [[] for _ in prompts]
        for tokens in self.generate_stream(
            prompts, max_new_tokens, temperature, top_k, top_p, eos_token_id, seed, prefill_chunk_size
        ):
            if streamer is not None:
                streamer(tokens)
            for row, t in enumerate(tokens.tolist()):
                pieces[row].append(t)
        outs = [torch.cat([p, torch.tensor(new, dtype=torch.long, device=p.device)]) for p, new in zip(prompts, pieces)]
        if as_tensor:
            width = len(prompts[0]) + max_new_tokens
            fill = eos_token_id if eos_token_id is not None else 0
            return torch.stack([F.pad(o, (0, width - len(o)), value=fill) for o in outs])
        if eos_token_id is not None:
            outs = [_cut_after(o, eos_token_id, len(p)) for o, p in zip(outs, prompts)]
        return outs

    def _normalise_prompts(self, input_ids) -> tuple[list[Tensor], bool]:
        device = self.tok_emb.weight.device
        if isinstance(input_ids, Tensor):
            if input_ids.dim() == 1:
                input_ids = input_ids.unsqueeze(0)
            ids = self._check_ids(input_ids)
            if ids.shape[1] == 0:
                raise ValueError("input_ids: expected a non-empty prompt, got 0 tokens")
            return [row.to(device) for row in ids], True
        if not isinstance(input_ids, (list, tuple)) or not input_ids:
            raise ValueError(f"input_ids: expected a (B, L) tensor or a non-empty list of prompts, got {input_ids!r}")
        prompts = []
        for i, p in enumerate(input_ids):
            t = p if isinstance(p, Tensor) else _ids_tensor(p, f"input_ids[{i}]")
            if t.dim() != 1 or t.numel() == 0:
                raise ValueError(f"input_ids[{i}]: expected a non-empty 1-D list of token ids, got shape {tuple(t.shape)}")
            prompts.append(self._check_ids(t.unsqueeze(0), f"input_ids[{i}]")[0].to(device))
        return prompts, False

    @torch.no_grad()
    def generate_stream(
        self,
        input_ids,
        max_new_tokens: int = 100,
        temperature: float = 1.0,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        eos_token_id: Optional[int] = None,
        seed: Optional[int] = None,
        prefill_chunk_size: Optional[int] = 4096,
    ) -> Iterator[Tensor]:
        """Yield a (B,) LongTensor of new tokens per step (finished rows repeat ``eos_token_id``).

        Same arguments as :meth:`generate`. The state stays O(1) per sequence for the VMI-SA
        and GLA mixers whatever the number of tokens.
        """
        check_generation_args(
            self.config.vocab_size, max_new_tokens, temperature, top_k, top_p, eos_token_id, seed, prefill_chunk_size
        )
        prompts, _ = self._normalise_prompts(input_ids)
        if max_new_tokens == 0:
            return
        longest = max(len(p) for p in prompts)
        self._check_length(longest + max_new_tokens - 1)
        # This call's own generator, made at the stream's first next(): with seed=None its one
        # draw from the global RNG happens then, whatever runs between later tokens.
        gen = make_generator(seed, prompts[0].device) if temperature != 0 else None
        # inference_context: no dropout for these calls only; self.training stays as it is
        # (each context is set and reset between yields, never across one)
        with inference_context():
            logits, state = self._prefill_ragged(prompts, prefill_chunk_size)
        done = torch.zeros(len(prompts), dtype=torch.bool, device=logits.device)
        for i in range(max_new_tokens):
            tok = sample_next(logits, temperature, top_k, top_p, gen)
            if eos_token_id is not None:
                tok = torch.where(done, torch.full_like(tok, int(eos_token_id)), tok)
                done = done | (tok == int(eos_token_id))
            yield tok
            if i + 1 == max_new_tokens or (eos_token_id is not None and bool(done.all())):
                break
            with inference_context():
                logits, state = self.step(tok, state)

    def _prefill_ragged(self, prompts: list[Tensor], chunk_size: Optional[int]) -> tuple[Tensor, LMState]:
        """Prefill prompts of any lengths; rows grouped by length run as one batch each, so
        every row is computed exactly as if it were alone (no padding enters any state)."""
        groups: dict[int, list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(len(p), []).append(i)
        if len(groups) == 1:
            return self.prefill(torch.stack(prompts), chunk_size=chunk_size)
        order, logits, states = [], [], []
        for length, rows in groups.items():
            lg, st = self.prefill(torch.stack([prompts[r] for r in rows]), chunk_size=chunk_size)
            order.extend(rows)
            logits.append(lg)
            states.append(st)
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        inverse = inverse.to(logits[0].device)
        return torch.cat(logits)[inverse], LMState.cat(states).select(inverse)

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


def _block_step(block: nn.Module, x_t: Tensor, state):
    y, ns = block(x_t.unsqueeze(1), state, output_state=True)
    return y.squeeze(1), ns


def _ids_tensor(ids, name: str) -> Tensor:
    """A list of ids -> a tensor with the dtype torch infers (floats stay floats, so that
    ``_check_ids`` rejects them instead of truncating 1.5 to 1)."""
    try:
        t = torch.tensor(list(ids))
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"{name}: expected a list of int token ids, got {ids!r}") from exc
    return t.long() if t.numel() == 0 else t


def _cut_after(seq: Tensor, eos: int, start: int) -> Tensor:
    hits = (seq[start:] == eos).nonzero()
    return seq if hits.numel() == 0 else seq[: start + int(hits[0]) + 1]

