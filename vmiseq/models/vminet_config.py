"""``VMINetConfig``: everything that defines a :class:`~vmiseq.models.vminet.VMINet`, and the
stage grids it implies (the alpha tables are sized for them)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

from .config import ModelConfig, int_pair, int_tuple, is_int


def _conv_out(size: int, stride: int) -> int:
    """Output length of a 3x3 conv with padding 1."""
    return (size - 1) // stride + 1


@dataclass
class VMINetConfig(ModelConfig):
    """Everything that defines a VMINet; saved as JSON by ``save_pretrained``.

    Args:
        base_dim: C, the width of the first stage (stage i has C * 2**i channels).
        depths: blocks per stage (the number of stages is ``len(depths)``).
        expand: k, the inner width D = k * C of each block (official ``mlp_ratio``).
        stem_dim: channels of the stem conv (32 in every official variant).
        stem_stride: stride of the stem conv (2 officially).
        stage_strides: stride of each stage's down-sampling conv (2 officially).
        img_size: (H, W) or an int the alpha tables are sized for.
        in_chans: input channels. num_classes: classifier outputs (0: no classifier).
        rank_mask: v2 (True, the paper's final model) or v1 (False).
        out_norm: BatchNorm after g; None follows the version (v1: yes, v2: no).
        drop_path_rate: stochastic depth, increased linearly to this rate over the blocks.
        head_dropout: dropout before the classifier.
        conv_kernel: depthwise conv size of the blocks (7 officially).
        backend: operator backend for the VMI-SA sums ("auto", "naive", "torch").
    """

    base_dim: int = 24
    depths: Sequence[int] = (2, 2, 18, 2)
    expand: int = 2
    stem_dim: int = 32
    stem_stride: int = 2
    stage_strides: Sequence[int] = (2, 2, 2, 2)
    img_size: Union[int, Sequence[int]] = 224
    in_chans: int = 3
    num_classes: int = 1000
    rank_mask: bool = True
    out_norm: Optional[bool] = None
    drop_path_rate: float = 0.0
    head_dropout: float = 0.0
    conv_kernel: int = 7
    backend: str = "auto"

    def __post_init__(self) -> None:
        self.depths = int_tuple(self.depths, "depths", "a sequence of ints (blocks per stage)")
        self.stage_strides = int_tuple(self.stage_strides, "stage_strides", "a sequence of ints (one stride per stage)")
        self.img_size = int_pair(self.img_size, "img_size")
        self._check_positive_ints("base_dim", "expand", "stem_dim", "stem_stride", "in_chans", "conv_kernel")
        if not is_int(self.num_classes) or self.num_classes < 0:
            raise ValueError(f"num_classes: expected an int >= 0, got {self.num_classes!r}")
        if not self.depths or any(d <= 0 for d in self.depths):
            raise ValueError(f"depths: expected one positive block count per stage, got {self.depths}")
        if len(self.stage_strides) != len(self.depths) or any(s <= 0 for s in self.stage_strides):
            raise ValueError(
                f"stage_strides: expected {len(self.depths)} positive strides (one per stage in depths), "
                f"got {self.stage_strides}"
            )
        self._check_rates("drop_path_rate", "head_dropout")
        if self.out_norm is not None and not isinstance(self.out_norm, bool):
            raise TypeError(f"out_norm: expected None or a bool, got {self.out_norm!r}")
        self._check_bools("rank_mask")

    @property
    def use_out_norm(self) -> bool:
        return (not self.rank_mask) if self.out_norm is None else self.out_norm

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(self.base_dim * 2**i for i in range(len(self.depths)))

    @property
    def strides(self) -> tuple[int, ...]:
        """Total stride of each stage's output w.r.t. the input (4, 8, 16, 32 officially)."""
        out, s = [], self.stem_stride
        for st in self.stage_strides:
            s *= st
            out.append(s)
        return tuple(out)


def stage_grids(config: VMINetConfig, img_size: Optional[Sequence[int]] = None) -> list[tuple[int, int]]:
    """(H, W) of every stage's feature map for an input of ``img_size`` (default: the config's)."""
    h, w = int_pair(img_size if img_size is not None else config.img_size, "img_size")
    h, w = _conv_out(h, config.stem_stride), _conv_out(w, config.stem_stride)
    grids = []
    for s in config.stage_strides:
        h, w = _conv_out(h, s), _conv_out(w, s)
        grids.append((h, w))
    return grids
