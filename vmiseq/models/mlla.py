"""MLLA: the Mamba-like linear attention backbone of "Demystify Mamba in Vision" (MILA),
rebuilt from the library's parts, beside VMINet in the same registry and experiments.

Architecture (the official code, github LeapLabTHU/MLLA; docs/vision.md)::

    stem:  3x3 s2 conv (-> E/2) + BN + ReLU; x + (3x3 ConvBN + ReLU, 3x3 ConvBN);
           3x3 s2 conv (-> 4E) + BN + ReLU; 1x1 conv (-> E) + BN        (convs without bias)
    stage i: depths[i] MLLABlocks of width E * 2**i, then (all but the last) a merge:
           1x1 conv (-> 8E_i) + ReLU, depthwise 3x3 s2 + ReLU, 1x1 conv (-> 2E_i) + BN
    head:  LayerNorm -> average pool -> Linear

Beyond the official code: any input size (RoPE is computed for the actual map, the official
table is fixed at 224 px), ``forward_features`` for dense heads, ``save_pretrained`` /
``from_pretrained`` and ``convert_official_state_dict`` for the released checkpoints.
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn as nn
from torch import Tensor

from ..saving import PretrainedMixin
from ..layers.mlla import MLLABlock
from .config import ModelConfig, int_pair, int_tuple, is_int
from .vminet import VMINet

__all__ = ["MLLA", "MLLAConfig", "convert_official_state_dict"]


@dataclass
class MLLAConfig(ModelConfig):
    """Everything that defines an MLLA model; saved as JSON by ``save_pretrained``.

    Args:
        embed_dim: E, the width of the first stage (stage i has E * 2**i channels).
        depths: blocks per stage. num_heads: attention heads per stage.
        mlp_ratio: MLP hidden width / channels (4 officially).
        stem_strides: strides of the stem's two 3x3 convs ((2, 2) officially: stride 4).
        img_size: nominal input size (only for reporting: any size runs).
        in_chans: input channels. num_classes: classifier outputs (0: no classifier).
        drop_path_rate: stochastic depth, rising linearly to this rate over the blocks.
        head_dropout: dropout before the classifier.
    """

    embed_dim: int = 64
    depths: Sequence[int] = (2, 4, 8, 4)
    num_heads: Sequence[int] = (2, 4, 8, 16)
    mlp_ratio: float = 4.0
    stem_strides: Sequence[int] = (2, 2)
    img_size: Union[int, Sequence[int]] = 224
    in_chans: int = 3
    num_classes: int = 1000
    drop_path_rate: float = 0.0
    head_dropout: float = 0.0

    def __post_init__(self) -> None:
        self.depths = int_tuple(self.depths, "depths", "a sequence of ints (blocks per stage)")
        self.num_heads = int_tuple(self.num_heads, "num_heads", "a sequence of ints (heads per stage)")
        self.stem_strides = int_tuple(self.stem_strides, "stem_strides", "a sequence of two ints")
        self.img_size = int_pair(self.img_size, "img_size")
        self._check_positive_ints("embed_dim", "in_chans")
        if self.embed_dim % 4:
            raise ValueError(f"embed_dim: expected a multiple of 4 (2-D RoPE rotates channel pairs per axis), got {self.embed_dim}")
        if not is_int(self.num_classes) or self.num_classes < 0:
            raise ValueError(f"num_classes: expected an int >= 0, got {self.num_classes!r}")
        if not self.depths or any(d <= 0 for d in self.depths):
            raise ValueError(f"depths: expected one positive block count per stage, got {self.depths}")
        widths = [self.embed_dim * 2**i for i in range(len(self.depths))]
        if len(self.num_heads) != len(self.depths) or any(h <= 0 or w % h for h, w in zip(self.num_heads, widths)):
            raise ValueError(f"num_heads: expected one divisor of each stage width {widths}, got {self.num_heads}")
        if len(self.stem_strides) != 2 or any(s not in (1, 2) for s in self.stem_strides):
            raise ValueError(f"stem_strides: expected two strides in (1, 2), got {self.stem_strides}")
        if not self.mlp_ratio > 0:
            raise ValueError(f"mlp_ratio: expected a positive number, got {self.mlp_ratio}")
        self._check_rates("drop_path_rate", "head_dropout")

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(self.embed_dim * 2**i for i in range(len(self.depths)))


class ConvLayer(nn.Sequential):
    """Conv2d, optional BatchNorm, optional ReLU (the official ``ConvLayer``; same names)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
                 bias: bool = True, norm: bool = True, act: bool = True) -> None:
        layers: "OrderedDict[str, nn.Module]" = OrderedDict(
            conv=nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=bias))
        if norm:
            layers["norm"] = nn.BatchNorm2d(cout)
        if act:
            layers["act"] = nn.ReLU(inplace=True)
        super().__init__(layers)


class Stem(nn.Module):
    """Convolutional stem, stride 4 officially (``stem_strides``); NCHW in, NCHW out."""

    def __init__(self, in_chans: int, embed_dim: int, strides: Sequence[int] = (2, 2)) -> None:
        super().__init__()
        e2 = embed_dim // 2
        self.conv1 = ConvLayer(in_chans, e2, 3, strides[0], bias=False)
        self.conv2 = nn.Sequential(ConvLayer(e2, e2, 3, bias=False), ConvLayer(e2, e2, 3, bias=False, act=False))
        self.conv3 = nn.Sequential(ConvLayer(e2, 4 * embed_dim, 3, strides[1], bias=False),
                                   ConvLayer(4 * embed_dim, embed_dim, 1, bias=False, act=False))

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        return self.conv3(self.conv2(x) + x)


class PatchMerging(nn.Module):
    """Inverted-bottleneck down-sampling, (B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 2C)."""

    def __init__(self, dim: int, ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(2 * dim * ratio)
        self.conv = nn.Sequential(ConvLayer(dim, hidden, 1, norm=False),
                                  ConvLayer(hidden, hidden, 3, 2, groups=hidden, norm=False),
                                  ConvLayer(hidden, 2 * dim, 1, act=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class BasicLayer(nn.Module):
    """One stage: blocks, then the optional merge (kept here, as the official ``layers.i``)."""

    def __init__(self, blocks: Sequence[nn.Module], downsample: Optional[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """-> (the stage's output map, the input of the next stage)."""
        for blk in self.blocks:
            x = blk(x)
        return x, (self.downsample(x) if self.downsample is not None else x)


class MLLA(PretrainedMixin, nn.Module):
    """The MLLA image classifier / backbone (``vmiseq.create_model("mlla_t")``)."""

    config_class = MLLAConfig
    param_groups = VMINet.param_groups  # the same recipe: no weight decay on 1-D parameters

    def __init__(self, config: Optional[MLLAConfig] = None, **overrides: Any) -> None:
        super().__init__()
        self.config = c = MLLAConfig.resolve(config, overrides)
        self.patch_embed = Stem(c.in_chans, c.embed_dim, c.stem_strides)
        n = sum(c.depths)
        dpr = [c.drop_path_rate * i / max(1, n - 1) for i in range(n)]  # as torch.linspace(0, rate, n)
        self.layers = nn.ModuleList()
        k = 0
        for i, (depth, heads, width) in enumerate(zip(c.depths, c.num_heads, c.widths)):
            blocks = [MLLABlock(width, heads, c.mlp_ratio, dpr[k + j]) for j in range(depth)]
            last = i == len(c.depths) - 1
            self.layers.append(BasicLayer(blocks, None if last else PatchMerging(width)))
            k += depth
        self.num_features = c.widths[-1]
        self.norm = nn.LayerNorm(self.num_features)
        self.head_drop = nn.Dropout(c.head_dropout)
        self.head = nn.Linear(self.num_features, c.num_classes) if c.num_classes > 0 else nn.Identity()
        self.apply(_init_weights)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier (e.g. to fine-tune on another label set)."""
        self.config = dataclasses.replace(self.config, num_classes=num_classes)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.head.apply(_init_weights)

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"x: expected an image tensor, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != self.config.in_chans:
            raise ValueError(f"x: expected an image batch (B, {self.config.in_chans}, H, W), got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"x: expected a floating-point tensor, got dtype {x.dtype}")

    def _stages(self, x: Tensor):
        self._check_input(x)
        x = self.patch_embed(x.contiguous(memory_format=torch.channels_last)).permute(0, 2, 3, 1)  # (B, H, W, C)
        for layer in self.layers:
            out, x = layer(x)
            yield out

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """The stage maps (B, E * 2**i, H_i, W_i), strides 4, 8, 16, 32 officially, for dense heads."""
        return [f.permute(0, 3, 1, 2) for f in self._stages(x)]

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Last stage map (B, H, W, C) -> logits (or the pooled features with ``pre_logits``)."""
        x = self.norm(x).mean(dim=(1, 2))
        return x if pre_logits else self.head(self.head_drop(x))

    def forward(self, x: Tensor) -> Tensor:
        *_, last = self._stages(x)
        return self.forward_head(last)

    @classmethod
    def from_pretrained(cls, directory, map_location: Optional[str] = "cpu", img_size=None) -> "MLLA":
        """Load a saved model; ``img_size`` only updates the nominal size (any size runs)."""
        model = super().from_pretrained(directory, map_location)
        if img_size is not None:
            model.config = dataclasses.replace(model.config, img_size=int_pair(img_size, "img_size"))
        return model


def _init_weights(m: nn.Module) -> None:
    """The official init: trunc-normal 0.02 Linear weights, zero biases, unit LayerNorms."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def convert_official_state_dict(state_dict: dict[str, Tensor], model: MLLA) -> dict[str, Tensor]:
    """Map a state dict of the official MLLA code (github LeapLabTHU/MLLA) to ``model``'s.

    The parameter names are the official ones; the fixed-size RoPE tables
    (``*.attn.rope.rotations`` buffers) are dropped, since RoPE is computed here for the
    actual input size. A ``model.`` / ``module.`` prefix and a checkpoint's ``model`` /
    ``state_dict`` wrapper are accepted; missing or unexpected keys are an error.
    """
    for key in ("model", "state_dict"):
        if key in state_dict and isinstance(state_dict[key], dict):
            state_dict = state_dict[key]
    sd = {k.removeprefix("module.").removeprefix("model."): v for k, v in state_dict.items()
          if not k.endswith(".rope.rotations")}
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(sd)), sorted(set(sd) - expected)
    if missing or unexpected:
        raise ValueError(
            f"state_dict: not an official MLLA of this configuration: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return sd
