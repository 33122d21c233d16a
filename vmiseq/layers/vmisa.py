"""``VMISALayer``: the VMI-SA token mixer for sequences (causal) and images (non-causal).

Data flow (the official VMINet block, DESIGN.md §2, minus the residual):
    x -> depthwise conv (local mixing) -> norm -> u
    q = ReLU6(f1(u)), v = f2(u)                       (C -> D = expand * C)
    y = VMI-SA(q, v)  (causal scan, or the global matrix form)
    out = dropout(g(ReLU6(y)))                         (D -> C)
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from ..ops import acc_dtype, vmisa_global, vmisa_scan
from ..ops.chunk import global_chunk
from ..ops.scan import BACKENDS
from .checks import check_dtype, check_finite_output, check_finite_state, check_position_dtype, check_positions
from .dropout import Dropout
from .state import VMISAState

ALPHA_MODES = ("input", "position", "constant")
DECAY_MODES = (None, "input", "scalar")
NORMS = ("layernorm", "rmsnorm", "batchnorm", "none")


def _mkldnn_linear_ops():
    """oneDNN's Linear with a fused epilogue (the ops torch.compile emits on CPU), or None.

    ``_linear_pointwise(x, W, b, "hardtanh", [0, 6], "")`` is ``relu6(x @ W.T + b)`` and
    ``_linear_pointwise.binary(x, r, W, b, "add")`` is ``r + x @ W.T + b``, each one pass
    over the output instead of bias copy + GEMM + element-wise pass.
    """
    try:
        op = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None
        x, w = torch.ones(2, 3), torch.ones(4, 3)
        if op is None or not torch.equal(op(x, w, None, "hardtanh", [0.0, 6.0], ""), torch.full((2, 4), 3.0)):
            return None
        if not torch.equal(op.binary(x, torch.ones(2, 4), w, None, "add"), torch.full((2, 4), 4.0)):
            return None
    except (RuntimeError, AttributeError, NotImplementedError):
        return None
    return op


_MKLDNN_LINEAR = _mkldnn_linear_ops()


def _choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name}: expected one of {tuple(allowed)}, got {value!r}")


def _inv_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class VMISALayer(nn.Module):
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
            (a_t = 1): exact for the paper's models and fixed-length inputs, but its state
            grows like t, so on streams of ~10^5 tokens and more ReLU6 saturates and the
            output stops responding to the input; use a decay for unbounded streams
            (docs/lm.md, "Long streams").
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
        if not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"dim: expected a positive int, got {dim!r}")
        if not isinstance(expand, int) or expand <= 0:
            raise ValueError(f"expand: expected a positive int, got {expand!r}")
        _choice("alpha", alpha, ALPHA_MODES)
        _choice("decay", decay, DECAY_MODES + ("auto",))
        if decay == "auto":  # bounded by default where there is a recurrence to bound
            decay = "input" if causal else None
        _choice("backend", backend, BACKENDS)
        norm = norm if norm is not None else ("layernorm" if causal else "batchnorm")
        _choice("norm", norm, NORMS)
        conv_dims = conv_dims if conv_dims is not None else (1 if causal else 2)
        _choice("conv_dims", conv_dims, (1, 2))
        if causal and norm == "batchnorm":
            raise ValueError(
                "norm: 'batchnorm' cannot be used with causal=True: batch statistics mix every "
                "position of the sequence, so training would leak future tokens into the past; "
                "use 'layernorm' or 'rmsnorm'"
            )
        if causal and conv_dims != 1:
            raise ValueError(f"conv_dims: a causal layer works on sequences (1), got {conv_dims}")
        if decay is not None and not causal:
            raise ValueError(f"decay: only the causal form has a recurrence to decay, got decay={decay!r} with causal=False")
        if grid_size is not None:
            grid_size = (int(grid_size[0]), int(grid_size[1]))
            if max_len is None:
                max_len = grid_size[0] * grid_size[1]
        if alpha == "position" and (max_len is None or max_len <= 0):
            raise ValueError(f"max_len: alpha='position' needs a positive table size, got {max_len!r}")
        kernel = conv_kernel if conv_kernel is not None else (4 if causal else 7)
        if kernel < 1:
            raise ValueError(f"conv_kernel: expected >= 1, got {kernel}")

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
        if norm == "layernorm":
            self.norm = nn.LayerNorm(dim)
        elif norm == "rmsnorm":
            self.norm = nn.RMSNorm(dim)
        elif norm == "batchnorm":
            self.norm = nn.BatchNorm1d(dim) if conv_dims == 1 else nn.BatchNorm2d(dim)
        else:
            self.norm = nn.Identity()
        self.f12 = nn.Linear(dim, 2 * D)  # f1 and f2 fused in one matmul
        self.g = nn.Linear(D, dim)
        self.drop = Dropout(dropout)
        if out_norm and conv_dims != 2:
            raise ValueError(f"out_norm: the BatchNorm after g is for images (conv_dims=2), got conv_dims={conv_dims}")
        self.out_norm = nn.BatchNorm2d(dim) if out_norm else None
        self.fused = False  # fuse() folded the BatchNorms (deployment only)

        if alpha == "position":
            self.alpha_table = nn.Parameter(torch.empty(max_len))
            nn.init.trunc_normal_(self.alpha_table, std=0.02)  # official init
        elif alpha == "input":
            self.alpha_proj = nn.Linear(dim, 1)
            nn.init.normal_(self.alpha_proj.weight, std=0.02)
            nn.init.constant_(self.alpha_proj.bias, _inv_softplus(alpha_init))
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
        if causal:
            self.beta = nn.Parameter(torch.ones(D if beta_per_channel else ()))
        else:
            self.beta0 = nn.Parameter(torch.ones(D if beta_per_channel else ()))
            self.beta1 = nn.Parameter(torch.ones(D if beta_per_channel else ()))

    # ------------------------------------------------------------------ helpers
    def _local_mix(self, x: Tensor, conv_buffer: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
        """Depthwise conv + norm. Returns u as (B, L, C) and the new causal conv buffer."""
        new_buffer = None
        if self.conv_dims == 2:
            u = self.conv(x)
            if self.norm_name == "batchnorm":
                return rearrange(self.norm(u), "b c h w -> b (h w) c"), None
            return self.norm(rearrange(u, "b c h w -> b (h w) c")), None
        if self.causal:
            # Causal depthwise conv as K shifted multiply-adds in (B, L, C) layout: the same
            # sum as F.conv1d, but several times faster on CPU (fwd + bwd) for small K.
            K, L = self.kernel, x.shape[1]
            if conv_buffer is None:
                xp = F.pad(x, (0, 0, K - 1, 0))
            else:
                xp = torch.cat([conv_buffer.to(x.dtype).transpose(1, 2), x], dim=1)  # (B, K-1+L, C)
            # a copy, not a view: the state must not keep the whole (B, L, C) input alive
            new_buffer = xp[:, xp.shape[1] - (K - 1):].transpose(1, 2).contiguous()
            w = self.conv.weight[:, 0]  # (C, K)
            u = torch.addcmul(self.conv.bias, xp[:, :L], w[:, 0])
            for k in range(1, K):
                u = u.addcmul(xp[:, k : k + L], w[:, k])
            return self.norm(u), new_buffer
        xc = rearrange(x, "b l c -> b c l")
        u = F.conv1d(xc, self.conv.weight, self.conv.bias, padding="same", groups=self.dim)
        if self.norm_name == "batchnorm":
            return rearrange(self.norm(u), "b c l -> b l c"), new_buffer
        return self.norm(rearrange(u, "b c l -> b l c")), new_buffer

    def _alpha(self, u: Tensor, positions: Optional[Tensor], grid: Optional[tuple[int, int]]) -> Tensor:
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
        last = int(positions.max()) + L
        if last > table.shape[0]:
            raise ValueError(
                f"state: positions up to {last} are beyond max_len={table.shape[0]} of the position "
                f"alpha table (the state is at position {int(positions.max())} and x adds {L} tokens)"
            )
        idx = positions.unsqueeze(1) + torch.arange(L, device=u.device)
        return table[idx]  # (B, L)

    def _decay(self, u: Tensor) -> Optional[Tensor]:
        if self.decay_mode is None:
            return None
        if self.decay_mode == "input":
            return torch.sigmoid(self.decay_proj(u).to(acc_dtype(u.dtype))).squeeze(-1)
        B, L, _ = u.shape
        return torch.sigmoid(self.decay_logit.to(acc_dtype(u.dtype))).expand(B, L, -1)

    def _check_input(self, x: Tensor) -> None:
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

    def check_state(self, state: VMISAState, x: Tensor) -> None:
        """Raise a clear error when ``state`` does not belong to this layer and batch."""
        if not isinstance(state, VMISAState):
            raise TypeError(f"state: expected a VMISAState, got {type(state).__name__}")
        B = x.shape[0]
        expected = {
            "conv": (B, self.dim, self.kernel - 1),
            "h": (B, self.inner),
            "position": (B,),
        }
        for name, shape in expected.items():
            t = getattr(state, name)
            if tuple(t.shape) != shape:
                raise ValueError(
                    f"state.{name}: expected shape {shape} (batch {B}, width {self.dim}, inner {self.inner}), "
                    f"got {tuple(t.shape)}: was this state made for another batch size or layer?"
                )
            if t.device != x.device:
                raise ValueError(f"state.{name}: expected a tensor on {x.device} (the device of x), got {t.device}")
        check_position_dtype(state.position)

    # ------------------------------------------------------------------ API
    def init_state(self, batch_size: int, device=None, dtype=None) -> VMISAState:
        """A fresh state at position 0 for ``batch_size`` sequences (causal layers only)."""
        if not self.causal:
            raise ValueError("init_state: a non-causal layer has no streaming state (causal=False)")
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        ref = self.f12.weight
        device = device if device is not None else ref.device
        dtype = dtype if dtype is not None else ref.dtype
        return VMISAState(
            conv=torch.zeros(batch_size, self.dim, self.kernel - 1, device=device, dtype=dtype),
            h=torch.zeros(batch_size, self.inner, device=device, dtype=acc_dtype(dtype)),
            position=torch.zeros(batch_size, dtype=torch.long, device=device),
        )

    def forward(self, x: Tensor, state: Optional[VMISAState] = None, output_state: bool = False):
        """Mix tokens.

        Args:
            x: (B, L, C) sequences, or (B, C, H, W) images for a non-causal 2-D layer.
            state: continue from this state (causal only); ``None`` starts at position 0.
            output_state: also return the state after the last token.

        Returns:
            y shaped like x, or (y, new_state) when ``output_state=True``.
        """
        self._check_input(x)
        if not self.causal:
            if state is not None or output_state:
                raise ValueError("state: a non-causal layer sees the whole input at once and has no state")
            if x.numel() == 0:  # no tokens (or an empty batch): nothing to mix, and conv would fail
                return x.new_zeros(x.shape)
            return self._forward_global(x)
        if state is not None:
            self.check_state(state, x)
        B, L, _ = x.shape
        if L == 0:  # an empty chunk: empty output, the state passes through unchanged
            if not output_state:
                return x.new_zeros(B, 0, self.dim)
            if state is None:
                state = self.init_state(B, device=x.device, dtype=x.dtype)
            return x.new_zeros(B, 0, self.dim), state
        if state is not None:
            check_positions(state.position)
        u, conv_buffer = self._local_mix(x, None if state is None else state.conv)
        q, v = self.f12(u).chunk(2, dim=-1)
        q = F.relu6(q)
        positions = None if state is None else state.position
        y, h = vmisa_scan(
            q,
            v,
            self._alpha(u, positions, None),
            self.beta,
            initial_state=None if state is None else state.h,
            offset=0 if state is None else state.position,
            rank_mask=self.rank_mask,
            decay=self._decay(u),
            output_final_state=True,
            backend=self.backend,
            check_values=False,  # decay is a sigmoid; the state is checked below, naming x
        )
        check_finite_state(self, h, x, None if state is None else state.h)
        out = self.drop(self.g(F.relu6(y)))
        if not output_state:
            return out
        pos = state.position + L if state is not None else torch.full((B,), L, dtype=torch.long, device=x.device)
        return out, VMISAState(conv_buffer, h, pos)

    def _forward_global(self, x: Tensor) -> Tensor:
        grid = (x.shape[2], x.shape[3]) if x.dim() == 4 else None
        u, _ = self._local_mix(x, None)
        # Inference (no autograd): activations in place, two fewer (B, L, D) allocations.
        inference = not torch.is_grad_enabled()
        q, v = self.f12(u).chunk(2, dim=-1)
        q = F.relu6(q, inplace=inference)
        y = vmisa_global(
            q, v, self._alpha(u, None, grid), self.beta0, self.beta1, rank_mask=self.rank_mask, backend=self.backend
        )
        out = self.g(F.relu6(y, inplace=inference))
        check_finite_output(self, out, x)
        if grid is None:
            return self.drop(out)
        # (B, L, C) -> (B, C, H, W) is a free view in channels_last memory format.
        out = rearrange(out, "b (h w) c -> b c h w", h=grid[0], w=grid[1])
        if self.out_norm is not None:
            out = self.out_norm(out)
        return self.drop(out)

    def residual_forward(self, x: Tensor) -> Tensor:
        """``x + self(x)`` for a fused image layer at inference: the deployment fast path.

        The same math as :meth:`_forward_global` plus the block's residual, arranged for
        the fewest passes over the (B*H*W, D) activations: f1 with ReLU6 and f2 as two
        oneDNN GEMMs with the bias (and ReLU6) in their epilogue, ``z = q * v`` in place,
        the global sum and ``beta0 * s + beta1 * z`` written over z (``global_chunk``),
        ReLU6 in place, and g with the residual add in its epilogue. Falls back to the plain
        path where oneDNN's fused Linear is unavailable, off the CPU, for other dtypes, and
        whenever autograd is on (input gradients of a deployed model still work).
        """
        usable = (
            self.fused and _MKLDNN_LINEAR is not None and x.device.type == "cpu" and x.dtype == torch.float32
            and x.dim() == 4 and not self.training and not torch.is_grad_enabled()
        )
        if not usable or x.numel() == 0:
            return x + self(x)
        self._check_input(x)
        B, C, H, W = x.shape
        x = x.contiguous(memory_format=torch.channels_last)
        u = self.conv(x)  # the BatchNorm is folded in
        u = u.permute(0, 2, 3, 1).reshape(B * H * W, C)  # a free view in channels_last
        w1, w2 = self.f12.weight.chunk(2, dim=0)
        b1, b2 = self.f12.bias.chunk(2, dim=0)
        z = _MKLDNN_LINEAR(u, w1, b1, "hardtanh", [0.0, 6.0], "")  # q = relu6(f1(u))
        z.mul_(_MKLDNN_LINEAR(u, w2, b2, "none", [], ""))  # z = q * f2(u)
        z = z.view(B, H * W, self.inner)
        alpha = self._alpha(u.view(B, H * W, C), None, (H, W)).reshape(-1, H * W, 1)
        y = global_chunk(z, alpha, self.beta0, self.beta1, self.rank_mask, overwrite_z=True).clamp_(0.0, 6.0)
        res = x.permute(0, 2, 3, 1).reshape(B * H * W, C)
        out = _MKLDNN_LINEAR.binary(y.view(B * H * W, self.inner), res, self.g.weight, self.g.bias, "add")
        return out.view(B, H, W, C).permute(0, 3, 1, 2)  # (B, C, H, W), channels_last

    @torch.no_grad()
    def fuse(self) -> "VMISALayer":
        """Fold the BatchNorms of an image layer into the convs around them, for deployment.

        ``conv -> norm`` becomes one depthwise conv and ``g -> out_norm`` one Linear, using
        the running statistics: outputs in eval mode are unchanged (up to rounding), one
        full pass over the activations per norm is saved. The layer is left in eval mode and
        must not be trained afterwards (the batch statistics are gone). Returns ``self``.
        """
        if self.conv_dims != 2:
            raise ValueError(f"fuse: only image layers (conv_dims=2) fuse their BatchNorms, got conv_dims={self.conv_dims}")
        self.eval()
        if isinstance(self.norm, nn.BatchNorm2d):
            scale, shift = _bn_affine(self.norm)
            self.conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
            self.conv.bias.copy_(self.conv.bias * scale + shift)
            self.norm = nn.Identity()
        if self.out_norm is not None:
            scale, shift = _bn_affine(self.out_norm)
            self.g.weight.mul_(scale.reshape(-1, 1))
            self.g.bias.copy_(self.g.bias * scale + shift)
            self.out_norm = None
        self.fused = True
        return self

    def step(self, x_t: Tensor, state: VMISAState) -> tuple[Tensor, VMISAState]:
        """Advance one token: x_t (B, C) -> (y_t (B, C), new state). Cost independent of position."""
        if not isinstance(x_t, Tensor) or x_t.dim() != 2:
            shape = tuple(x_t.shape) if isinstance(x_t, Tensor) else type(x_t).__name__
            raise ValueError(f"x_t: expected one token per sequence, shape (B, C) with C={self.dim}, got {shape}")
        if not self.causal:
            raise ValueError("state: a non-causal layer sees the whole input at once and has no state")
        if x_t.shape[-1] != self.dim or not x_t.is_floating_point():
            raise ValueError(f"x_t: expected a floating (B, C) tensor with C={self.dim}, got {tuple(x_t.shape)} {x_t.dtype}")
        check_dtype("x_t", x_t, self.f12.weight.dtype)
        self.check_state(state, x_t)
        # Positions are read only by the rank mask and the alpha table (a negative one would
        # wrap round it): one host sync for both ends there, none otherwise (decode speed).
        lo, hi = check_positions(state.position) if self.rank_mask or self.alpha_mode == "position" else (0, 0)
        # The recurrence of Eq. 9 for one token, written out: the same math as forward() on a
        # length-1 sequence (tested equal), without the sequence machinery (decode speed).
        window = torch.cat([state.conv.to(x_t.dtype), x_t.unsqueeze(-1)], dim=2)  # (B, C, K)
        w = self.conv.weight[:, 0]  # (C, K); same multiply-add order as _local_mix
        u = torch.addcmul(self.conv.bias, window[:, :, 0], w[:, 0])
        for k in range(1, self.kernel):
            u = u.addcmul(window[:, :, k], w[:, k])
        u = self.norm(u)
        q, v = self.f12(u).chunk(2, dim=-1)
        q = F.relu6(q)
        acc = acc_dtype(q.dtype)
        pos = state.position
        if self.alpha_mode == "input":
            alpha = F.softplus(self.alpha_proj(u)).to(acc)  # (B, 1)
        elif self.alpha_mode == "constant":
            alpha = self.alpha_value.to(acc)
        else:
            if hi + 1 > self.alpha_table.shape[0]:
                raise ValueError(
                    f"state: position {hi} is beyond max_len={self.alpha_table.shape[0]} of the position alpha table"
                )
            alpha = self.alpha_table[pos].unsqueeze(1).to(acc)
        z = q.to(acc) * v.to(acc)
        h = state.h
        if self.decay_mode == "input":
            h = torch.sigmoid(self.decay_proj(u).to(acc)) * h
        elif self.decay_mode == "scalar":
            h = torch.sigmoid(self.decay_logit.to(acc)) * h
        h = h.addcmul(z, alpha)  # the operator's order of operations (bitwise-close results)
        check_finite_state(self, h, x_t, state.h, "x_t")
        y = h
        if self.rank_mask and lo < self.inner - 1:  # M_t = 1 everywhere once t >= D - 1
            y = y * (torch.arange(self.inner, device=pos.device) <= pos.unsqueeze(1)).to(acc)
        y = torch.addcmul(y, z, self.beta.to(acc)).to(q.dtype)
        out = self.drop(self.g(F.relu6(y)))
        new_buffer = window[:, :, 1:] if self.kernel > 1 else window[:, :, :0]
        return out, VMISAState(new_buffer, h, pos + 1)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, inner={self.inner}, causal={self.causal}, alpha={self.alpha_mode!r}, "
            f"decay={self.decay_mode!r}, rank_mask={self.rank_mask}, kernel={self.kernel}"
        )


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Eval-mode BatchNorm as ``x * scale + shift`` per channel."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


def resize_alpha_table(table: Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> Tensor:
    """Bilinearly interpolate a raster-order (H*W,) alpha table to another grid."""
    if table.shape[0] != old_grid[0] * old_grid[1]:
        raise ValueError(
            f"table: expected {old_grid[0] * old_grid[1]} entries for grid {old_grid}, got {table.shape[0]}"
        )
    img = table.reshape(1, 1, *old_grid)
    out = F.interpolate(img, size=new_grid, mode="bilinear", align_corners=False)
    return out.reshape(-1)
