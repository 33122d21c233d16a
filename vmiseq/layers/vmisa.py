"""``VMISALayer``: the VMI-SA token mixer for sequences (causal) and images (non-causal).

Data flow (the official VMINet block, docs/design.md §2, minus the residual):
    x -> depthwise conv (local mixing) -> norm -> u
    q = ReLU6(f1(u)), v = f2(u)                       (C -> D = expand * C)
    y = VMI-SA(q, v)  (causal scan, or the global matrix form)
    out = dropout(g(ReLU6(y)))                         (D -> C)

The layer has three parts, each a section below: the sequence path (causal: the scan of
``ops.vmisa_scan`` over a chunk, the one-token step of ``ops.recurrent`` for decoding, the
streaming state), the global path (non-causal: images, or whole sequences through
``ops.vmisa_global``) and the deployment fusion of image layers (``layers/fusion.py``).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from ..ops import BACKENDS, acc_dtype, vmisa_global, vmisa_scan
from ..ops.recurrent import vmisa_step
from . import fusion
from .checks import check_dtype, check_finite_output, check_finite_state, check_positions
from .conv import causal_depthwise_conv
from .dropout import Dropout
from .state import StreamingMixer, VMISAState, next_position

ALPHA_MODES = ("input", "position", "constant")
DECAY_MODES = (None, "input", "scalar")
NORMS = ("layernorm", "rmsnorm", "batchnorm", "none")

# The constructor's settings as data. An argument left at its marker takes the default of
# the layer's form: setting -> (marker, causal default, non-causal default).
FORM_DEFAULTS = {
    "decay": ("auto", "input", None),  # bounded by default where there is a recurrence to bound
    "norm": (None, "layernorm", "batchnorm"),  # batchnorm: the official image layer
    "conv_dims": (None, 1, 2),
    "conv_kernel": (None, 4, 7),
}
# settings that are counts (conv_kernel=1 disables the local mixing).
POSITIVE_INTS = ("dim", "expand", "conv_kernel")
# setting -> the values it may take.
CHOICES = {"alpha": ALPHA_MODES, "decay": DECAY_MODES, "norm": NORMS, "conv_dims": (1, 2), "backend": BACKENDS}
# (argument, setting, value, allowed, why): where ``setting == value``, ``argument`` must be
# one of ``allowed``.
COMBINATIONS = (
    ("norm", "causal", True, ("layernorm", "rmsnorm", "none"),
     "batch statistics mix every position of the sequence, so training would leak future tokens into the past"),
    ("conv_dims", "causal", True, (1,), "a causal layer works on sequences"),
    ("decay", "causal", False, (None,), "only the causal form has a recurrence to decay"),
    ("out_norm", "conv_dims", 1, (False,), "the BatchNorm after g is for images, conv_dims=2"),
)


def resolve_settings(**settings) -> dict:
    """Fill the form's defaults and check every setting (``POSITIVE_INTS``, ``CHOICES``) and
    combination (``COMBINATIONS``); a ValueError names the argument, the expected values
    and the value given."""
    for name, (marker, causal_default, global_default) in FORM_DEFAULTS.items():
        if settings[name] == marker:
            settings[name] = causal_default if settings["causal"] else global_default
    for name in POSITIVE_INTS:
        if not isinstance(settings[name], int) or settings[name] <= 0:
            raise ValueError(f"{name}: expected a positive int, got {settings[name]!r}")
    for name, allowed in CHOICES.items():
        if settings[name] not in allowed:
            raise ValueError(f"{name}: expected one of {tuple(allowed)}, got {settings[name]!r}")
    for name, key, value, allowed, why in COMBINATIONS:
        if settings[key] == value and settings[name] not in allowed:
            raise ValueError(
                f"{name}: expected one of {allowed} with {key}={value!r} ({why}), got {name}={settings[name]!r}"
            )
    return settings


class VMISALayer(StreamingMixer):
    """VMI-SA token mixer.

    Args:
        dim: channels C of the input (and output).
        expand: D = expand * C channels inside the operator.
        causal: True for sequences (recurrent scan, streaming state); False for the
            non-causal matrix form (images, or whole sequences with ``conv_dims=1``).
        alpha: "input" (alpha_t = softplus of a projection of the token, any length),
            "position" (a learned (max_len,) table, the official VMINet choice) or
            "constant" (one learned scalar).
        max_len: table size for ``alpha="position"`` (required then). For images it
            defaults to the product of ``grid_size``.
        grid_size: (H, W) the position table was sized for (images); another grid
            interpolates the table bilinearly.
        rank_mask: apply the rank mask M (paper v2) or not (v1).
        decay: the forget gate a_t of the causal recurrence. "auto" (default): "input" for
            a causal layer, None for a non-causal one. "input": a per-token gate
            sigmoid(w.u + b), initialised near 0.97 (a memory of a few dozen tokens that
            training can lengthen). "scalar": a learned per-channel constant, half-lives
            spread from 4 to 4,096 tokens at init. None: the paper's plain prefix sum
            (a_t = 1), exact for fixed-length inputs, but its state grows like t: on streams
            of ~10^5 tokens ReLU6 saturates; use a decay there (docs/lm.md, "Long streams").
        conv_kernel: depthwise conv size (default 4 causal, 7 non-causal); 1 disables mixing.
        conv_dims: 1 (sequences) or 2 (images); default 1 if causal else 2.
        norm: "layernorm", "rmsnorm", "batchnorm" (non-causal only) or "none";
            default "layernorm" causal, "batchnorm" non-causal (official).
        dropout: dropout on the output.
        beta_per_channel: learn beta as a (D,) vector instead of a scalar.
        alpha_init: initial value of alpha for the "input" and "constant" modes.
        backend: operator backend ("auto", "naive", "torch", "triton").
        out_norm: BatchNorm2d after ``g`` (official VMINet v1; images only, ``conv_dims=2``).
    """

    state_class = VMISAState

    def __init__(
        self,
        dim: int,
        expand: int = 2,
        causal: bool = True,
        alpha: str = "input",
        max_len: Optional[int] = None,
        grid_size: Optional[tuple[int, int]] = None,
        rank_mask: bool = True,
        decay: Optional[str] = "auto",
        conv_kernel: Optional[int] = None,
        conv_dims: Optional[int] = None,
        norm: Optional[str] = None,
        dropout: float = 0.0,
        beta_per_channel: bool = False,
        alpha_init: float = 0.1,
        backend: str = "auto",
        out_norm: bool = False,
    ) -> None:
        super().__init__()
        cfg = resolve_settings(dim=dim, expand=expand, causal=causal, alpha=alpha, decay=decay, norm=norm,
                               conv_dims=conv_dims, conv_kernel=conv_kernel, backend=backend, out_norm=out_norm)
        decay, norm, conv_dims, kernel = cfg["decay"], cfg["norm"], cfg["conv_dims"], cfg["conv_kernel"]
        if grid_size is not None:
            grid_size = (int(grid_size[0]), int(grid_size[1]))
            if max_len is None:
                max_len = grid_size[0] * grid_size[1]
        if alpha == "position" and (max_len is None or max_len <= 0):
            raise ValueError(f"max_len: alpha='position' needs a positive table size, got {max_len!r}")

        self.dim, self.expand, self.inner = dim, expand, expand * dim
        self.causal, self.alpha_mode, self.decay_mode = causal, alpha, decay
        self.max_len, self.grid_size = max_len, grid_size
        self.rank_mask, self.norm_name, self.conv_dims = rank_mask, norm, conv_dims
        self.kernel, self.backend = kernel, backend
        D = self.inner

        if conv_dims == 1:
            self.conv = nn.Conv1d(dim, dim, kernel, groups=dim, bias=True)
        else:
            self.conv = nn.Conv2d(dim, dim, kernel, padding=kernel // 2, groups=dim, bias=True)
        batchnorm = nn.BatchNorm1d if conv_dims == 1 else nn.BatchNorm2d
        norms = {"layernorm": nn.LayerNorm, "rmsnorm": nn.RMSNorm, "batchnorm": batchnorm, "none": lambda _: nn.Identity()}
        self.norm = norms[norm](dim)
        self.f12 = nn.Linear(dim, 2 * D)  # f1 and f2 fused in one matmul
        self.g = nn.Linear(D, dim)
        self.drop = Dropout(dropout)
        self.out_norm = nn.BatchNorm2d(dim) if out_norm else None
        self.fused = False  # fuse() folded the BatchNorms (deployment only)

        if alpha == "position":
            self.alpha_table = nn.Parameter(torch.empty(max_len))
            nn.init.trunc_normal_(self.alpha_table, std=0.02)  # official init
        elif alpha == "input":
            self.alpha_proj = nn.Linear(dim, 1)
            nn.init.normal_(self.alpha_proj.weight, std=0.02)
            nn.init.constant_(self.alpha_proj.bias, alpha_init + math.log(-math.expm1(-alpha_init)))  # softplus^-1
        else:
            self.alpha_value = nn.Parameter(torch.tensor(float(alpha_init)))
        if decay == "input":
            self.decay_proj = nn.Linear(dim, 1)
            nn.init.normal_(self.decay_proj.weight, std=0.02)
            nn.init.constant_(self.decay_proj.bias, math.log(0.97 / 0.03))  # a ~ 0.97
        elif decay == "scalar":
            # Spread the half-lives geometrically from ~4 to ~4096 tokens across channels.
            half_life = torch.logspace(math.log10(4), math.log10(4096), D)
            a = torch.exp(-math.log(2) / half_life)
            self.decay_logit = nn.Parameter(torch.log(a / (1 - a)))
        beta_shape = D if beta_per_channel else ()
        for name in ("beta",) if causal else ("beta0", "beta1"):
            setattr(self, name, nn.Parameter(torch.ones(beta_shape)))

    # ------------------------------------------------------------------ shared by both paths
    def check_input(self, x: Tensor) -> None:
        """``x`` must be (B, L, C) tokens, or (B, C, H, W) images for a 2-D layer, in the
        dtype of the layer's parameters."""
        if not isinstance(x, Tensor):
            raise TypeError(f"x: expected a tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"x: expected a floating-point tensor, got dtype {x.dtype}")
        if self.conv_dims == 1:
            if x.dim() != 3 or x.shape[-1] != self.dim:
                raise ValueError(f"x: expected shape (B, L, C) with C={self.dim}, got {tuple(x.shape)}")
        elif x.dim() != 4 or x.shape[1] != self.dim:
            raise ValueError(f"x: expected an image batch (B, C, H, W) with C={self.dim}, got {tuple(x.shape)}")
        check_dtype("x", x, self.f12.weight.dtype)

    def token_alpha(
        self, u: Tensor, positions: Optional[Tensor] = None, grid: Optional[tuple[int, int]] = None,
        max_position: Optional[int] = None,
    ) -> Tensor:
        """alpha_t for the tokens u (B, L, C): (B, L), or (L,) shared by the batch.

        ``positions`` (B,): absolute position of each row's first token (a stream), else 0;
        ``max_position``: their maximum, when the caller has read it (saves a host sync);
        ``grid``: the image's (H, W), which resizes a position table sized for another grid.
        """
        B, L, _ = u.shape
        if self.alpha_mode == "input":
            return F.softplus(self.alpha_proj(u)).squeeze(-1)  # (B, L)
        if self.alpha_mode == "constant":
            return self.alpha_value.expand(L)
        table = self.alpha_table
        if grid is not None and self.grid_size is not None and grid != self.grid_size:
            table = resize_alpha_table(table, self.grid_size, grid)
        if positions is None:  # whole sequence from position 0
            if L > table.shape[0]:
                raise ValueError(
                    f"x: sequence length {L} is beyond max_len={table.shape[0]} of the position alpha table"
                )
            return table[:L]
        first = max_position if max_position is not None else int(positions.max())
        if first + L > table.shape[0]:
            raise ValueError(
                f"state: positions up to {first + L} are beyond max_len={table.shape[0]} of the position "
                f"alpha table (the state is at position {first} and x adds {L} tokens)"
            )
        idx = positions.unsqueeze(1) if L == 1 else positions.unsqueeze(1) + torch.arange(L, device=u.device)
        return table[idx]  # (B, L)

    def token_decay(self, u: Tensor) -> Optional[Tensor]:
        """The forget gate a_t for the tokens u (B, L, C): (B, L), (B, L, D) or None."""
        if self.decay_mode is None:
            return None
        if self.decay_mode == "input":
            return torch.sigmoid(self.decay_proj(u).to(acc_dtype(u.dtype))).squeeze(-1)
        B, L, _ = u.shape
        return torch.sigmoid(self.decay_logit.to(acc_dtype(u.dtype))).expand(B, L, -1)

    def forward(self, x: Tensor, state: Optional[VMISAState] = None, output_state: bool = False):
        """Mix tokens.

        Args:
            x: (B, L, C) sequences, or (B, C, H, W) images for a non-causal 2-D layer.
            state: continue from this state (causal only); ``None`` starts at position 0.
            output_state: also return the state after the last token.

        Returns:
            y shaped like x, or (y, new_state) when ``output_state=True``.
        """
        self.check_input(x)
        if self.causal:
            return self._forward_sequence(x, state, output_state)
        if state is not None or output_state:
            raise ValueError("state: a non-causal layer sees the whole input at once and has no state")
        return self._forward_global(x)

    # ------------------------------------------------------------------ sequence path (causal)
    def state_fields(self, batch_size: int, dtype: torch.dtype) -> dict:
        return {
            "conv": ((batch_size, self.dim, self.kernel - 1), dtype),  # the conv's last K-1 inputs
            "h": ((batch_size, self.inner), acc_dtype(dtype)),  # the VMI-SA accumulator
        }

    def init_state(self, batch_size: int, device=None, dtype=None) -> VMISAState:
        """A fresh state at position 0 for ``batch_size`` sequences (causal layers only)."""
        if not self.causal:
            raise ValueError("init_state: a non-causal layer has no streaming state (causal=False)")
        return super().init_state(batch_size, device, dtype)

    def _forward_sequence(self, x: Tensor, state: Optional[VMISAState], output_state: bool):
        if state is not None:
            self.check_state(state, x)
        B, L, _ = x.shape
        if L == 0:  # an empty chunk: empty output, the state passes through unchanged
            out = x.new_zeros(B, 0, self.dim)
            if not output_state:
                return out
            return out, state if state is not None else self.init_state(B, device=x.device, dtype=x.dtype)
        if state is not None:
            check_positions(state.position)
        u, conv_buffer = causal_depthwise_conv(x, None if state is None else state.conv, self.conv.weight, self.conv.bias)
        u = self.norm(u)
        q, v = self.f12(u).chunk(2, dim=-1)
        positions = None if state is None else state.position
        y, h = vmisa_scan(
            F.relu6(q), v, self.token_alpha(u, positions), self.beta, initial_state=None if state is None else state.h,
            offset=0 if state is None else state.position, rank_mask=self.rank_mask, decay=self.token_decay(u),
            output_final_state=True, backend=self.backend,
            check_values=False,  # decay is a sigmoid; the state is checked below, naming x
        )
        check_finite_state(self, h, x, None if state is None else state.h)
        out = self.drop(self.g(F.relu6(y)))
        if not output_state:
            return out
        return out, VMISAState(conv_buffer, h, next_position(state, x))

    def step(self, x_t: Tensor, state: VMISAState) -> tuple[Tensor, VMISAState]:
        """Advance one token: x_t (B, C) -> (y_t (B, C), new state). Cost independent of position.

        The same math as ``forward`` on a length-1 chunk (tested equal), without the
        sequence machinery: the recurrence is ``ops.recurrent.vmisa_step`` (decode speed).
        """
        self.check_token(x_t)
        if not self.causal:
            raise ValueError("state: a non-causal layer sees the whole input at once and has no state")
        if x_t.shape[-1] != self.dim or not x_t.is_floating_point():
            raise ValueError(f"x_t: expected a floating (B, C) tensor with C={self.dim}, got {tuple(x_t.shape)} {x_t.dtype}")
        check_dtype("x_t", x_t, self.f12.weight.dtype)
        self.check_state(state, x_t)
        # Positions are read only by the rank mask and the alpha table (a negative one would
        # wrap round it): one host sync for both ends there, none otherwise (decode speed).
        lo, hi = check_positions(state.position) if self.rank_mask or self.alpha_mode == "position" else (0, 0)
        u, conv_buffer = causal_depthwise_conv(x_t.unsqueeze(1), state.conv, self.conv.weight, self.conv.bias)
        u = self.norm(u)  # (B, 1, C)
        q, v = self.f12(u[:, 0]).chunk(2, dim=-1)
        decay = self.token_decay(u)
        y, h = vmisa_step(
            F.relu6(q), v, self.token_alpha(u, state.position, max_position=hi), self.beta, state.h, state.position,
            rank_mask=self.rank_mask and lo < self.inner - 1,  # M_t = 1 everywhere once t >= D - 1
            decay=None if decay is None else decay.flatten(1),
        )
        check_finite_state(self, h, x_t, state.h, "x_t")
        out = self.drop(self.g(F.relu6(y)))
        return out, VMISAState(conv_buffer, h, state.position + 1)

    # ------------------------------------------------------------------ global path (non-causal)
    def _mix_global(self, x: Tensor) -> Tensor:
        """'Same'-padded depthwise conv + norm of images (B, C, H, W) or sequences (B, L, C);
        returns u (B, L, C), tokens in raster order for images."""
        if self.conv_dims == 2:
            u, layout = self.conv(x), "b c h w -> b (h w) c"
        else:
            xc = rearrange(x, "b l c -> b c l")
            u = F.conv1d(xc, self.conv.weight, self.conv.bias, padding="same", groups=self.dim)
            layout = "b c l -> b l c"
        if self.norm_name == "batchnorm":  # BatchNorm normalises channels-first
            return rearrange(self.norm(u), layout)
        return self.norm(rearrange(u, layout))

    def _forward_global(self, x: Tensor) -> Tensor:
        if x.numel() == 0:  # no tokens (or an empty batch): nothing to mix, and conv would fail
            return x.new_zeros(x.shape)
        grid = (x.shape[2], x.shape[3]) if x.dim() == 4 else None
        u = self._mix_global(x)
        # Inference (no autograd): activations in place, two fewer (B, L, D) allocations.
        inference = not torch.is_grad_enabled()
        q, v = self.f12(u).chunk(2, dim=-1)
        q = F.relu6(q, inplace=inference)
        alpha = self.token_alpha(u, grid=grid)
        y = vmisa_global(q, v, alpha, self.beta0, self.beta1, rank_mask=self.rank_mask, backend=self.backend)
        out = self.g(F.relu6(y, inplace=inference))
        check_finite_output(self, out, x)
        if grid is None:
            return self.drop(out)
        # (B, L, C) -> (B, C, H, W) is a free view in channels_last memory format.
        out = rearrange(out, "b (h w) c -> b c h w", h=grid[0], w=grid[1])
        if self.out_norm is not None:
            out = self.out_norm(out)
        return self.drop(out)

    # ------------------------------------------------------------------ deployment (layers/fusion.py)
    def fuse(self) -> "VMISALayer":
        """Fold the BatchNorms of an image layer into the convs around them, for deployment.

        ``conv -> norm`` becomes one depthwise conv and ``g -> out_norm`` one Linear, using
        the running statistics: outputs in eval mode are unchanged (up to rounding), one
        full pass over the activations per norm is saved. The layer is left in eval mode and
        must not be trained afterwards (the batch statistics are gone). Returns ``self``.
        """
        return fusion.fuse_layer(self)

    def residual_forward(self, x: Tensor) -> Tensor:
        """``x + self(x)`` for a fused image layer at inference: the deployment fast path
        (oneDNN GEMMs with fused epilogues, see ``layers/fusion.py``); elsewhere the plain path."""
        return fusion.residual_forward(self, x)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, inner={self.inner}, causal={self.causal}, alpha={self.alpha_mode!r}, "
            f"decay={self.decay_mode!r}, rank_mask={self.rank_mask}, kernel={self.kernel}"
        )


def resize_alpha_table(table: Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> Tensor:
    """Bilinearly interpolate a raster-order (H*W,) alpha table to another grid."""
    if table.shape[0] != old_grid[0] * old_grid[1]:
        raise ValueError(
            f"table: expected {old_grid[0] * old_grid[1]} entries for grid {old_grid}, got {table.shape[0]}"
        )
    img = table.reshape(1, 1, *old_grid)
    out = F.interpolate(img, size=new_grid, mode="bilinear", align_corners=False)
    return out.reshape(-1)
