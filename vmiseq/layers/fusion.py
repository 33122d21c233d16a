"""Deployment fusion of image layers: BatchNorm folding and the fused residual fast path.

A trained image model runs its BatchNorms with fixed running statistics, so each is an
affine map per channel that folds into the conv or Linear next to it (``fold_batchnorm``,
used by ``VMISALayer.fuse`` and by ``VMINet.fuse``). A fused ``VMISALayer`` then runs
``x + layer(x)`` through oneDNN's Linear with a fused epilogue (``residual_forward``):
the private ``torch.ops.mkldnn._linear_pointwise`` ops that torch.compile emits on CPU,
probed once at import and used only where the probe gave the expected numbers.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from ..ops.chunk import global_chunk


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


def fold_batchnorm(bn: nn.modules.batchnorm._BatchNorm) -> tuple[Tensor, Tensor]:
    """An eval-mode BatchNorm as ``x * scale + shift`` per channel: returns (scale, shift)."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


@torch.no_grad()
def fold_batchnorm_into(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Fold ``bn`` into the conv or Linear ``layer`` (with a bias) that feeds it, in place:
    afterwards ``layer(x) == bn(layer_before(x))`` in eval mode, up to rounding."""
    scale, shift = fold_batchnorm(bn)
    layer.weight.mul_(scale.reshape(-1, *([1] * (layer.weight.dim() - 1))))  # per output channel
    layer.bias.copy_(layer.bias * scale + shift)


@torch.no_grad()
def fuse_layer(layer: nn.Module) -> nn.Module:
    """Fold the BatchNorms of an image layer into the convs around them (``VMISALayer.fuse``)."""
    if layer.conv_dims != 2:
        raise ValueError(f"fuse: only image layers (conv_dims=2) fuse their BatchNorms, got conv_dims={layer.conv_dims}")
    layer.eval()
    if isinstance(layer.norm, nn.BatchNorm2d):
        fold_batchnorm_into(layer.conv, layer.norm)
        layer.norm = nn.Identity()
    if layer.out_norm is not None:
        fold_batchnorm_into(layer.g, layer.out_norm)
        layer.out_norm = None
    layer.fused = True
    return layer


def residual_forward(layer: nn.Module, x: Tensor) -> Tensor:
    """``x + layer(x)`` for a fused image layer at inference (``VMISALayer.residual_forward``).

    The same math as the layer's global path plus the block's residual, arranged for the
    fewest passes over the (B*H*W, D) activations: f1 with ReLU6 and f2 as two oneDNN GEMMs
    with the bias (and ReLU6) in their epilogue, ``z = q * v`` in place, the global sum and
    ``beta0 * s + beta1 * z`` written over z (``global_chunk``), ReLU6 in place, and g with
    the residual add in its epilogue. Falls back to ``x + layer(x)`` where oneDNN's fused
    Linear is unavailable, off the CPU, for other dtypes, and whenever autograd is on
    (input gradients of a deployed model still work).
    """
    op = _MKLDNN_LINEAR
    usable = (
        layer.fused and op is not None and x.device.type == "cpu" and x.dtype == torch.float32
        and x.dim() == 4 and not layer.training and not torch.is_grad_enabled()
    )
    if not usable or x.numel() == 0:
        return x + layer(x)
    layer.check_input(x)
    B, C, H, W = x.shape
    x = x.contiguous(memory_format=torch.channels_last)
    u = layer.conv(x)  # the BatchNorm is folded in
    u = u.permute(0, 2, 3, 1).reshape(B * H * W, C)  # a free view in channels_last
    w1, w2 = layer.f12.weight.chunk(2, dim=0)
    b1, b2 = layer.f12.bias.chunk(2, dim=0)
    z = op(u, w1, b1, "hardtanh", [0.0, 6.0], "")  # q = relu6(f1(u))
    z.mul_(op(u, w2, b2, "none", [], ""))  # z = q * f2(u)
    z = z.view(B, H * W, layer.inner)
    alpha = layer.token_alpha(u.view(B, H * W, C), grid=(H, W)).reshape(-1, H * W, 1)
    y = global_chunk(z, alpha, layer.beta0, layer.beta1, layer.rank_mask, overwrite_z=True).clamp_(0.0, 6.0)
    res = x.permute(0, 2, 3, 1).reshape(B * H * W, C)
    out = op.binary(y.view(B * H * W, layer.inner), res, layer.g.weight, layer.g.bias, "add")
    return out.view(B, H, W, C).permute(0, 3, 1, 2)  # (B, C, H, W), channels_last
