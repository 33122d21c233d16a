"""The causal block stack shared by the language model and the forecaster.

``MIXERS`` names the token mixers a causal model can stack, with the state type each one
carries; :func:`make_block` builds one residual block for any of them:

- ``"vmisa"``: ``VMISABlock`` (causal ``VMISALayer`` + optional MLP); no pre-norm, the layer
  normalises after its local convolution. State: ``VMISAState`` (fixed size).
- ``"attention"``: :class:`PreNormBlock` around causal SDPA attention (the Transformer
  baseline). State: a growing ``KVCache``.
- ``"gla"``: :class:`PreNormBlock` around gated linear attention. State: ``GLAState``.

Every block has the same state API (``init_state``, ``forward(x, state, output_state)``,
``step``), so a model runs its stack without knowing the mixer.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch.nn as nn
from torch import Tensor

from ..layers.attention import CausalSelfAttention, KVCache
from ..layers.block import MLP, DropPath, VMISABlock
from ..layers.gla import GatedLinearAttention, GLAState
from ..layers.state import VMISAState

# mixer name -> the type of its per-layer streaming state (checked by the models)
MIXER_STATES: dict[str, type] = {"vmisa": VMISAState, "attention": KVCache, "gla": GLAState}
MIXERS = tuple(MIXER_STATES)

# state-dict names of PreNormBlock's norms before the LM and the forecaster shared it
_OLD_NORM_NAMES = {"norm1.": "norm.", "norm2.": "mlp_norm."}


class PreNormBlock(nn.Module):
    """``x + DropPath(mixer(LayerNorm(x)))`` then ``x + DropPath(MLP(LayerNorm(x)))`` (optional):
    the block of the baseline mixers. The mixer's state API passes through.

    Submodule names follow ``VMISABlock`` (``mixer``, ``mlp_norm``, ``mlp``); weights saved
    with the LM's former names (``norm1`` / ``norm2``) load unchanged.
    """

    def __init__(self, dim: int, mixer: nn.Module, mlp_ratio: float, dropout: float, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mixer = mixer
        self.drop_path = DropPath(drop_path)
        self.mlp: Optional[MLP] = None
        if mlp_ratio > 0:
            self.mlp_norm = nn.LayerNorm(dim)
            self.mlp = MLP(dim, int(round(mlp_ratio * dim)), dropout)
        self.register_load_state_dict_pre_hook(_rename_old_norms)

    def init_state(self, batch_size: int, device=None, dtype=None):
        return self.mixer.init_state(batch_size, device, dtype)

    def _mlp(self, x: Tensor) -> Tensor:
        return x if self.mlp is None else x + self.drop_path(self.mlp(self.mlp_norm(x)))

    def forward(self, x: Tensor, state=None, output_state: bool = False):
        if output_state:
            y, new_state = self.mixer(self.norm(x), state, output_state=True)
            return self._mlp(x + self.drop_path(y)), new_state
        return self._mlp(x + self.drop_path(self.mixer(self.norm(x), state)))

    def step(self, x_t: Tensor, state) -> tuple[Tensor, Any]:
        """One token: x_t (B, C) -> (y_t (B, C), new state), as ``forward`` on a 1-token sequence
        (the generation path of the baselines, so it equals their parallel forward)."""
        y, new_state = self.forward(x_t.unsqueeze(1), state, output_state=True)
        return y.squeeze(1), new_state


def _rename_old_norms(module: nn.Module, state_dict, prefix: str, *args) -> None:
    """load_state_dict pre-hook: the former norm names -> the current ones."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        for old, new in _OLD_NORM_NAMES.items():
            if key.startswith(prefix + old):
                state_dict[prefix + new + key[len(prefix + old) :]] = state_dict.pop(key)


def make_block(
    config: Any,
    dim: int,
    layer_fields: Sequence[str] = (),
    drop_path: float = 0.0,
    gla_conv_kernel: Optional[int] = None,
    **layer_options: Any,
) -> nn.Module:
    """One causal residual block of width ``dim`` for a model config.

    ``config`` names the mixer and its sizes: ``config.mixer`` (one of ``MIXERS``),
    ``n_heads`` (heads of the baselines), ``mlp_ratio`` and ``dropout``.
    ``layer_fields``: config fields passed on to ``VMISALayer`` under their own names;
    ``layer_options``: more ``VMISALayer`` keywords (``causal=True`` is set here).
    ``drop_path``: stochastic-depth rate. ``gla_conv_kernel``: the GLA mixer's short
    convolution (None: the layer's default).
    """
    if config.mixer == "vmisa":
        options = {name: getattr(config, name) for name in layer_fields} | layer_options
        return VMISABlock(dim, mlp_ratio=config.mlp_ratio, drop_path=drop_path, dropout=config.dropout, causal=True, **options)
    if config.mixer == "attention":
        layer: nn.Module = CausalSelfAttention(dim, config.n_heads, dropout=config.dropout)
    elif config.mixer == "gla":
        conv = {} if gla_conv_kernel is None else {"conv_kernel": gla_conv_kernel}
        layer = GatedLinearAttention(dim, config.n_heads, dropout=config.dropout, **conv)
    else:
        raise ValueError(f"mixer: expected one of {MIXERS}, got {config.mixer!r}")
    return PreNormBlock(dim, layer, config.mlp_ratio, config.dropout, drop_path)
