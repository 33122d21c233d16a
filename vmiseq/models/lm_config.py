"""``VMISAConfig``: the configuration of :class:`~vmiseq.models.lm.VMISAForCausalLM`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..layers.vmisa import ALPHA_MODES, DECAY_MODES
from .blocks import MIXERS
from .config import ModelConfig


@dataclass
class VMISAConfig(ModelConfig):
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
        self._check_positive_ints("vocab_size", "dim", "depth", "expand", "conv_kernel", "n_heads")
        self._check_choice("mixer", MIXERS)
        self._check_choice("alpha", ALPHA_MODES)
        self._check_choice("decay", DECAY_MODES)
        self._check_bools("rank_mask", "tie_embeddings", "beta_per_channel")
        self._check_numbers("mlp_ratio", "dropout", "alpha_init")
        if self.max_len is not None and (not isinstance(self.max_len, int) or isinstance(self.max_len, bool)):
            raise TypeError(f"max_len: expected an int or None, got {type(self.max_len).__name__} {self.max_len!r}")
        if self.pos_embedding is not None and not isinstance(self.pos_embedding, bool):
            raise TypeError(f"pos_embedding: expected None or a bool, got {self.pos_embedding!r}")
        if self.mlp_ratio < 0:
            raise ValueError(f"mlp_ratio: expected >= 0, got {self.mlp_ratio}")
        self._check_rates("dropout")
        if self.pos_embedding is None:
            self.pos_embedding = self.mixer == "attention"
        needs_len = self.pos_embedding or (self.mixer == "vmisa" and self.alpha == "position")
        if needs_len and (self.max_len is None or self.max_len <= 0):
            raise ValueError(
                f"max_len: learned positions (pos_embedding={self.pos_embedding}, alpha={self.alpha!r}) need a "
                f"positive table size, got {self.max_len!r}"
            )
