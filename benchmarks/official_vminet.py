"""A plain NCHW re-implementation of the official VMINet (docs/design.md §2), the baseline of
``bench_vminet.py`` and the reference the tests compare ``vmiseq``'s VMINet against.

Written from the description of the official code (github yws-wxs/VMINet): the parameter
names follow it, so ``vmiseq.models.vminet.convert_official_state_dict`` maps these weights
onto a ``VMINet``. ``version=1``: BatchNorm after g, no rank mask; ``version=2``: rank mask
(a lower-triangular (token, channel) mask on each token's contribution), no BatchNorm after g.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor


def conv_bn(cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1, bn: bool = True) -> nn.Sequential:
    layers = nn.Sequential()
    layers.add_module("conv", nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups))
    if bn:
        layers.add_module("bn", nn.BatchNorm2d(cout))
    return layers


class OfficialBlock(nn.Module):
    """dwconv7+BN -> f1, f2 (1x1) -> ReLU6(f1)*f2 -> global VMI-SA -> ReLU6 -> g (1x1) -> + x."""

    def __init__(self, dim: int, expand: int, size: int, version: int = 2) -> None:
        super().__init__()
        self.version = version
        self.conv = conv_bn(dim, dim, 7, groups=dim)
        self.f1 = conv_bn(dim, expand * dim, bn=False)
        self.f2 = conv_bn(dim, expand * dim, bn=False)
        self.sum = nn.Linear(size * size, 1, bias=False)  # alpha: one weight per position
        self.g = conv_bn(expand * dim, dim, bn=version == 1)
        self.stack = nn.Parameter(torch.ones(2))  # beta0, beta1
        self.act = nn.ReLU6()
        nn.init.trunc_normal_(self.sum.weight, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        u = self.conv(x)
        z = self.act(self.f1(u)) * self.f2(u)
        B, C, H, W = z.shape
        flat = z.reshape(B, C, H * W)
        if self.version == 2:  # rank mask M[t, c] = [c <= t] on the (token, channel) plane
            flat = torch.tril(flat.transpose(1, 2)).transpose(1, 2)
        s = self.sum(flat).unsqueeze(-1)  # (B, C, 1, 1)
        y = self.stack[0] * s.expand(B, C, H, W) + self.stack[1] * z
        return x + self.g(self.act(y))


class OfficialVMINet(nn.Module):
    """Stem (3x3 s2 conv+BN+ReLU6), 4 stages (3x3 s2 ConvBN + blocks), BN + pool + Linear head."""

    def __init__(self, base_dim: int = 24, depths=(2, 2, 18, 2), expand: int = 2, img_size: int = 224,
                 in_chans: int = 3, num_classes: int = 1000, version: int = 2) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(in_chans, 32, 3, 2), nn.ReLU6())
        self.stages = nn.ModuleList()
        cin, size = 32, (img_size - 1) // 2 + 1
        for i, depth in enumerate(depths):
            width, size = base_dim * 2**i, (size - 1) // 2 + 1
            blocks = [OfficialBlock(width, expand, size, version) for _ in range(depth)]
            self.stages.append(nn.Sequential(conv_bn(cin, width, 3, 2), *blocks))
            cin = width
        self.norm = nn.BatchNorm2d(cin)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(self.norm(x).mean(dim=(2, 3)))
