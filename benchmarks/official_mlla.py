"""A plain re-implementation of the official MLLA (Mamba-Like Linear Attention) model, the
reference the tests compare ``vmiseq.models.mlla`` against and the baseline of
``bench_vision_models.py``.

Written from the description of the official code (github LeapLabTHU/MLLA, ``models/mlla.py``;
docs/vision.md): Swin-like token layout (B, L, C), the same parameter names, so
``vmiseq.models.mlla.convert_official_state_dict`` maps these weights onto an ``MLLA``. Like
the official code it runs only at the resolution it was built for (square maps): its RoPE
table is a buffer sized at construction.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor


class ConvLayer(nn.Module):
    """Conv2d -> optional BatchNorm -> optional activation (official ``ConvLayer``)."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 1, padding: int = 0,
                 groups: int = 1, bias: bool = True, norm: bool = True, act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride, padding, groups=groups, bias=bias)
        self.norm = nn.BatchNorm2d(cout) if norm else None
        self.act = nn.ReLU() if act else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.act is not None:
            x = self.act(x)
        return x


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class RoPE(nn.Module):
    """2-D rotary embedding for an (H, W, C) map: the first C/2 channels (as C/4 complex
    pairs) rotate with the row index, the last C/2 with the column index."""

    def __init__(self, shape: tuple[int, int, int], base: float = 10000.0) -> None:
        super().__init__()
        self.register_buffer("rotations", self.table(shape, base))

    @staticmethod
    def table(shape: tuple[int, int, int], base: float = 10000.0, dtype: torch.dtype = torch.float32) -> Tensor:
        """(H, W, C/2, 2) cos / sin, computed in ``dtype`` (the official code: float32)."""
        channel_dims, feature_dim = shape[:-1], shape[-1]
        k_max = feature_dim // (2 * len(channel_dims))
        theta = 1.0 / (base ** (torch.arange(k_max, dtype=dtype) / k_max))
        grids = torch.meshgrid([torch.arange(d, dtype=dtype) for d in channel_dims], indexing="ij")
        angles = torch.cat([g.unsqueeze(-1) * theta for g in grids], dim=-1)  # (H, W, C/2)
        return torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        xc = torch.view_as_complex(x.to(torch.promote_types(x.dtype, torch.float32)).reshape(*x.shape[:-1], -1, 2))
        return torch.view_as_real(torch.view_as_complex(self.rotations) * xc).flatten(-2)


class LinearAttention(nn.Module):
    def __init__(self, dim: int, input_resolution: tuple[int, int], num_heads: int) -> None:
        super().__init__()
        self.dim, self.num_heads = dim, num_heads
        self.qk = nn.Linear(dim, dim * 2)
        self.elu = nn.ELU()
        self.lepe = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.rope = RoPE((input_resolution[0], input_resolution[1], dim))

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        h = w = int(n**0.5)
        heads, hd = self.num_heads, c // self.num_heads
        qk = self.qk(x).reshape(b, n, 2, c).permute(2, 0, 1, 3)
        q, k, v = qk[0], qk[1], x
        q, k = self.elu(q) + 1.0, self.elu(k) + 1.0
        q_rope = self.rope(q.reshape(b, h, w, c)).reshape(b, n, heads, hd).permute(0, 2, 1, 3)
        k_rope = self.rope(k.reshape(b, h, w, c)).reshape(b, n, heads, hd).permute(0, 2, 1, 3)
        q = q.reshape(b, n, heads, hd).permute(0, 2, 1, 3)
        k = k.reshape(b, n, heads, hd).permute(0, 2, 1, 3)
        v = v.reshape(b, n, heads, hd).permute(0, 2, 1, 3)
        z = 1 / (q @ k.mean(dim=-2, keepdim=True).transpose(-2, -1) + 1e-6)
        kv = (k_rope.transpose(-2, -1) * (n**-0.5)) @ (v * (n**-0.5))
        x = (q_rope @ kv) * z
        x = x.transpose(1, 2).reshape(b, n, c)
        v = v.transpose(1, 2).reshape(b, h, w, c).permute(0, 3, 1, 2)
        return x + self.lepe(v).permute(0, 2, 3, 1).reshape(b, n, c)


class MLLABlock(nn.Module):
    def __init__(self, dim: int, input_resolution: tuple[int, int], num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.input_resolution = input_resolution
        self.cpe1 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim)
        self.in_proj = nn.Linear(dim, dim)
        self.act_proj = nn.Linear(dim, dim)
        self.dwc = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.act = nn.SiLU()
        self.attn = LinearAttention(dim, input_resolution, num_heads)
        self.out_proj = nn.Linear(dim, dim)
        self.cpe2 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        H, W = self.input_resolution
        B, L, C = x.shape
        x = x + self.cpe1(x.reshape(B, H, W, C).permute(0, 3, 1, 2)).flatten(2).permute(0, 2, 1)
        shortcut = x
        x = self.norm1(x)
        act_res = self.act(self.act_proj(x))
        x = self.in_proj(x).view(B, H, W, C)
        x = self.act(self.dwc(x.permute(0, 3, 1, 2))).permute(0, 2, 3, 1).reshape(B, L, C)
        x = self.out_proj(self.attn(x) * act_res)
        x = shortcut + x
        x = x + self.cpe2(x.reshape(B, H, W, C).permute(0, 3, 1, 2)).flatten(2).permute(0, 2, 1)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """1x1 conv (C -> 8C) + ReLU, depthwise 3x3 s2 + ReLU, 1x1 conv (8C -> 2C) + BatchNorm."""

    def __init__(self, input_resolution: tuple[int, int], dim: int, ratio: float = 4.0) -> None:
        super().__init__()
        self.input_resolution = input_resolution
        hidden = int(2 * dim * ratio)
        self.conv = nn.Sequential(
            ConvLayer(dim, hidden, 1, norm=False),
            ConvLayer(hidden, hidden, 3, 2, 1, groups=hidden, norm=False),
            ConvLayer(hidden, 2 * dim, 1, act=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        H, W = self.input_resolution
        B, L, C = x.shape
        return self.conv(x.reshape(B, H, W, C).permute(0, 3, 1, 2)).flatten(2).permute(0, 2, 1)


class BasicLayer(nn.Module):
    def __init__(self, dim: int, input_resolution: tuple[int, int], depth: int, num_heads: int,
                 downsample: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([MLLABlock(dim, input_resolution, num_heads) for _ in range(depth)])
        self.downsample = PatchMerging(input_resolution, dim) if downsample else None

    def forward(self, x: Tensor) -> Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x) if self.downsample is not None else x


class Stem(nn.Module):
    """conv1 3x3 s2 (-> E/2) +BN+ReLU; conv2 = two 3x3 ConvBN (the second without ReLU),
    residual; conv3 = 3x3 s2 (-> 4E) +BN+ReLU then 1x1 (-> E) +BN. All convs without bias."""

    def __init__(self, in_chans: int = 3, embed_dim: int = 96) -> None:
        super().__init__()
        e2 = embed_dim // 2
        self.conv1 = ConvLayer(in_chans, e2, 3, 2, 1, bias=False)
        self.conv2 = nn.Sequential(ConvLayer(e2, e2, 3, 1, 1, bias=False), ConvLayer(e2, e2, 3, 1, 1, bias=False, act=False))
        self.conv3 = nn.Sequential(ConvLayer(e2, embed_dim * 4, 3, 2, 1, bias=False),
                                   ConvLayer(embed_dim * 4, embed_dim, 1, bias=False, act=False))

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        x = self.conv2(x) + x
        return self.conv3(x).flatten(2).transpose(1, 2)


class OfficialMLLA(nn.Module):
    def __init__(self, img_size: int = 224, in_chans: int = 3, num_classes: int = 1000, embed_dim: int = 64,
                 depths=(2, 4, 8, 4), num_heads=(2, 4, 8, 16)) -> None:
        super().__init__()
        self.patch_embed = Stem(in_chans, embed_dim)
        res = img_size // 4
        self.layers = nn.ModuleList(
            BasicLayer(embed_dim * 2**i, (res // 2**i, res // 2**i), d, h, downsample=i < len(depths) - 1)
            for i, (d, h) in enumerate(zip(depths, num_heads))
        )
        self.num_features = embed_dim * 2 ** (len(depths) - 1)
        self.norm = nn.LayerNorm(self.num_features)
        self.head = nn.Linear(self.num_features, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x).mean(dim=1))
