"""VMINet: the image backbone of the VMINet paper, built from the library's one ``VMISABlock``.

Architecture (docs/design.md §2, the official code)::

    stem:   3x3 conv stride 2 (in_chans -> 32) + BatchNorm + ReLU6
    stage i (i = 0..3): 3x3 conv stride 2 (with bias) + BatchNorm, then depths[i] blocks
            of width C * 2**i, each ``x + DropPath(VMISALayer(x))`` with the non-causal
            VMI-SA (alpha per position, rank mask in v2)
    head:   BatchNorm2d -> global average pool -> Linear(8C -> classes)

The official v1 block has a BatchNorm after ``g`` and no rank mask; v2 (the released
"VMINet2.0" checkpoints) adds the rank mask and drops that BatchNorm. ``out_norm=None``
follows the version chosen by ``rank_mask``.

Extensions over the official code: any input size (``img_size`` sizes the per-stage alpha
tables; other sizes interpolate them, when running or when loading weights), channels-last
execution (the (B, L, C) token layout of the layer is then a free view), ``fuse()`` for
deployment, ``forward_features`` for dense heads and ``load_official_state_dict``.
"""
from __future__ import annotations

import dataclasses
import math
import os
from collections import OrderedDict
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn as nn
from torch import Tensor

from ..saving import PretrainedMixin
from ..layers.block import VMISABlock
from ..layers.fusion import fold_batchnorm, fold_batchnorm_into
from ..layers.vmisa import VMISALayer, resize_alpha_table
from .config import int_pair
from .vminet_config import VMINetConfig, stage_grids

__all__ = ["VMINet", "VMINetConfig", "stage_grids", "convert_official_state_dict"]


class ConvBN(nn.Sequential):
    """Conv2d (with bias, as the official ConvBN) + BatchNorm2d (+ optional ReLU6)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, act: bool = False) -> None:
        layers: "OrderedDict[str, nn.Module]" = OrderedDict(
            conv=nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=True), bn=nn.BatchNorm2d(cout)
        )
        if act:
            layers["act"] = nn.ReLU6(inplace=True)  # after a norm (or a folded one): safe in place
        super().__init__(layers)

    @torch.no_grad()
    def fuse(self) -> None:
        if isinstance(self.bn, nn.BatchNorm2d):
            fold_batchnorm_into(self.conv, self.bn)
            self.bn = nn.Identity()


class VMINetStage(nn.Module):
    """Down-sampling ConvBN followed by ``depth`` VMI-SA blocks."""

    def __init__(self, cin: int, cout: int, stride: int, blocks: Sequence[nn.Module]) -> None:
        super().__init__()
        self.downsample = ConvBN(cin, cout, 3, stride)
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.downsample(x))


class VMINet(PretrainedMixin, nn.Module):
    """The VMINet image classifier / backbone.

    Build it from a config (``VMINet(VMINetConfig(...))``), keyword overrides
    (``VMINet(base_dim=48)``) or by name (``vmiseq.create_model("vminet_ti")``).
    """

    config_class = VMINetConfig

    def __init__(self, config: Optional[VMINetConfig] = None, **overrides: Any) -> None:
        super().__init__()
        self.config = config = VMINetConfig.resolve(config, overrides)
        self.fused = False
        c = config
        self.stem = ConvBN(c.in_chans, c.stem_dim, 3, c.stem_stride, act=True)
        n_blocks = sum(c.depths)  # stochastic depth rising linearly (python floats: works on the meta device)
        dpr = [c.drop_path_rate * i / max(1, n_blocks - 1) for i in range(n_blocks)]
        grids = stage_grids(c)
        self.stages = nn.ModuleList()
        cin, k = c.stem_dim, 0
        for i, (depth, width, stride) in enumerate(zip(c.depths, c.widths, c.stage_strides)):
            blocks = [
                VMISABlock(
                    width,
                    drop_path=dpr[k + j],
                    expand=c.expand,
                    causal=False,
                    alpha="position",
                    grid_size=grids[i],
                    rank_mask=c.rank_mask,
                    norm="batchnorm",
                    conv_kernel=c.conv_kernel,
                    out_norm=c.use_out_norm,
                    backend=c.backend,
                )
                for j in range(depth)
            ]
            self.stages.append(VMINetStage(cin, width, stride, blocks))
            cin, k = width, k + depth
        self.num_features = cin
        self.norm = nn.BatchNorm2d(cin)
        self.head_drop = nn.Dropout(c.head_dropout)
        self.head = nn.Linear(cin, c.num_classes) if c.num_classes > 0 else nn.Identity()
        if isinstance(self.head, nn.Linear):  # official init: trunc-normal 0.02 on Linear layers
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)
        self.register_load_state_dict_pre_hook(_resize_alpha_on_load)

    # ------------------------------------------------------------------ structure
    def mixers(self) -> list[VMISALayer]:
        """Every VMI-SA layer, stage by stage."""
        return [m for m in self.modules() if isinstance(m, VMISALayer)]

    @property
    def grids(self) -> list[tuple[int, int]]:
        """(H, W) of each stage at the configured ``img_size``."""
        return stage_grids(self.config)

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW groups as the official recipe: no decay on 1-D parameters (norms, biases,
        beta, alpha tables), ``weight_decay`` on the rest (conv and linear weights)."""
        decay, no_decay = [], []
        for _, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim <= 1 else decay).append(p)
        return [
            {"params": decay, "weight_decay": float(weight_decay)},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier (e.g. to fine-tune on another label set)."""
        self.config = dataclasses.replace(self.config, num_classes=num_classes)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if isinstance(self.head, nn.Linear):
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    @torch.no_grad()
    def set_img_size(self, img_size: Union[int, Sequence[int]]) -> "VMINet":
        """Resize every alpha table to the grids of ``img_size`` (bilinear over the grid).

        Replaces the table parameters: build the optimizer after calling this.
        """
        new = int_pair(img_size, "img_size")
        new_grids = stage_grids(self.config, new)
        for stage, grid in zip(self.stages, new_grids):
            for block in stage.blocks:
                layer = block.mixer
                table = resize_alpha_table(layer.alpha_table.detach(), layer.grid_size, grid)
                layer.alpha_table = nn.Parameter(table.contiguous())
                layer.grid_size, layer.max_len = grid, grid[0] * grid[1]
        self.config = dataclasses.replace(self.config, img_size=new)
        return self

    # ------------------------------------------------------------------ forward
    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"x: expected an image tensor, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != self.config.in_chans:
            raise ValueError(
                f"x: expected an image batch (B, {self.config.in_chans}, H, W), got shape {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise TypeError(f"x: expected a floating-point tensor, got dtype {x.dtype}")

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """The four (len(depths)) stage maps, strides ``config.strides`` (4, 8, 16, 32
        officially), each (B, C * 2**i, H_i, W_i) — for detection and segmentation heads."""
        self._check_input(x)
        # Channels-last: the layer's (B, H*W, C) token view of a map is then free.
        x = self.stem(x.contiguous(memory_format=torch.channels_last))
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Last stage map -> logits (or the pooled features with ``pre_logits``)."""
        x = self.norm(x).mean(dim=(2, 3))
        if pre_logits:
            return x
        return self.head(self.head_drop(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x)[-1])

    # ------------------------------------------------------------------ deployment
    @torch.no_grad()
    def fuse(self) -> "VMINet":
        """Fold every BatchNorm into the neighbouring conv / linear layer (eval mode only).

        Outputs in eval mode are unchanged up to float rounding; inference is faster. The
        model is put in eval mode and cannot be trained or saved afterwards.
        """
        if self.fused:
            return self
        self.eval()
        self.stem.fuse()
        for stage in self.stages:
            stage.downsample.fuse()
        for layer in self.mixers():
            layer.fuse()
        if isinstance(self.head, nn.Linear) and isinstance(self.norm, nn.BatchNorm2d):
            # head(mean(bn(x))) = head(scale * mean(x) + shift): fold into the Linear.
            scale, shift = fold_batchnorm(self.norm)
            self.head.bias.add_(self.head.weight @ shift)
            self.head.weight.mul_(scale.reshape(1, -1))
            self.norm = nn.Identity()
        self.fused = True
        return self

    def train(self, mode: bool = True) -> "VMINet":
        if mode and getattr(self, "fused", False):
            raise RuntimeError("train: a fused VMINet has no BatchNorm statistics left to train; build a new model")
        return super().train(mode)

    def save_pretrained(self, directory: Union[str, os.PathLike]):
        if self.fused:
            raise RuntimeError("save_pretrained: save the model before fuse() (a fused model has no BatchNorms)")
        return super().save_pretrained(directory)

    @classmethod
    def from_pretrained(
        cls,
        directory: Union[str, os.PathLike],
        map_location: Optional[str] = "cpu",
        img_size: Optional[Union[int, Sequence[int]]] = None,
    ) -> "VMINet":
        """Load a saved model; ``img_size`` re-sizes its alpha tables to another resolution."""
        model = super().from_pretrained(directory, map_location)
        if img_size is not None and int_pair(img_size, "img_size") != model.config.img_size:
            model.set_img_size(img_size)
        return model


# ---------------------------------------------------------------------- weight loading
def _guess_grid(n: int, like: tuple[int, int]) -> tuple[int, int]:
    """The (h, w) with h * w = n and the aspect ratio closest to ``like``."""
    best = None
    for h in range(1, int(math.isqrt(n)) + 1):
        if n % h:
            continue
        for hh, ww in ((h, n // h), (n // h, h)):
            err = abs(math.log((hh / ww) / (like[0] / like[1])))
            if best is None or err < best[0]:
                best = (err, (hh, ww))
    return best[1]


def _resize_alpha_on_load(module: VMINet, state_dict, prefix, *args) -> None:
    """load_state_dict pre-hook: weights saved at another resolution get their alpha tables
    interpolated to this model's grids (the official code can only load at 224)."""
    for layer_name, layer in module.named_modules():
        if not isinstance(layer, VMISALayer) or layer.alpha_mode != "position":
            continue
        key = f"{prefix}{layer_name}.alpha_table"
        table = state_dict.get(key)
        if table is None or table.shape == layer.alpha_table.shape or layer.grid_size is None:
            continue
        if table.dim() != 1:
            continue  # let load_state_dict report the mismatch
        old = _guess_grid(table.shape[0], layer.grid_size)
        state_dict[key] = resize_alpha_table(table.to(torch.float32), old, layer.grid_size).to(table.dtype)


def convert_official_state_dict(state_dict: dict[str, Tensor], model: VMINet) -> dict[str, Tensor]:
    """Map a state dict of the official VMINet code (github yws-wxs/VMINet, v1 or v2) to ours.

    ``f1`` and ``f2`` (1x1 convs) become the fused ``f12`` Linear, ``sum`` (Linear over
    positions) the alpha table, ``stack`` the two betas. A ``model.`` / ``module.`` prefix
    and a checkpoint's ``state_dict`` / ``model`` wrapper are accepted.
    """
    for key in ("state_dict", "model"):
        if key in state_dict and isinstance(state_dict[key], dict):
            state_dict = state_dict[key]
    sd = {k.removeprefix("module.").removeprefix("model."): v for k, v in state_dict.items()}
    out: dict[str, Tensor] = {}

    def take(src: str) -> Tensor:
        if src not in sd:
            raise ValueError(f"state_dict: expected official key {src!r}, not found (is this an official VMINet?)")
        return sd.pop(src)

    bn_keys = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    for p in ("weight", "bias"):
        out[f"stem.conv.{p}"] = take(f"stem.0.conv.{p}")
    for p in bn_keys:
        out[f"stem.bn.{p}"] = take(f"stem.0.bn.{p}")
    for i, stage in enumerate(model.stages):
        for p in ("weight", "bias"):
            out[f"stages.{i}.downsample.conv.{p}"] = take(f"stages.{i}.0.conv.{p}")
        for p in bn_keys:
            out[f"stages.{i}.downsample.bn.{p}"] = take(f"stages.{i}.0.bn.{p}")
        for j, block in enumerate(stage.blocks):
            src, dst = f"stages.{i}.{j + 1}", f"stages.{i}.blocks.{j}.mixer"
            dw = "dwconv" if f"{src}.dwconv.conv.weight" in sd else "conv"
            for p in ("weight", "bias"):
                out[f"{dst}.conv.{p}"] = take(f"{src}.{dw}.conv.{p}")
            for p in bn_keys:
                out[f"{dst}.norm.{p}"] = take(f"{src}.{dw}.bn.{p}")
            w1, w2 = take(f"{src}.f1.conv.weight"), take(f"{src}.f2.conv.weight")
            out[f"{dst}.f12.weight"] = torch.cat([w1, w2]).flatten(1)
            out[f"{dst}.f12.bias"] = torch.cat([take(f"{src}.f1.conv.bias"), take(f"{src}.f2.conv.bias")])
            out[f"{dst}.g.weight"] = take(f"{src}.g.conv.weight").flatten(1)
            out[f"{dst}.g.bias"] = take(f"{src}.g.conv.bias")
            if f"{src}.g.bn.weight" in sd:
                for p in bn_keys:
                    out[f"{dst}.out_norm.{p}"] = take(f"{src}.g.bn.{p}")
            out[f"{dst}.alpha_table"] = take(f"{src}.sum.weight").reshape(-1)
            stack = take(f"{src}.stack")
            out[f"{dst}.beta0"], out[f"{dst}.beta1"] = stack[0].clone(), stack[1].clone()
    for p in bn_keys:
        out[f"norm.{p}"] = take(f"norm.{p}")
    for p in ("weight", "bias"):
        if f"head.{p}" in sd:
            out[f"head.{p}"] = take(f"head.{p}")
    if sd:
        raise ValueError(f"state_dict: unexpected official keys left over: {sorted(sd)[:5]}")
    return out
