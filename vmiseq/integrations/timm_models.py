"""vmiseq's vision models in timm's registry (``pip install "vmiseq[timm]"``).

After ``import vmiseq``::

    import timm
    model = timm.create_model("vminet_ti", num_classes=10)          # every registered variant
    backbone = timm.create_model("vminet_s", features_only=True)     # stage maps for dense heads
    cfg = timm.data.resolve_data_config({}, model=model)              # mean, std, crop, size
    model = timm.create_model("vminet_xs", pretrained=True)           # the official release

Each variant gets a ``pretrained_cfg`` (ImageNet mean/std, 224 px, crop 0.875 bicubic as the
official recipe evaluates, the release URL where one exists). ``pretrained=True`` loads
through :mod:`vmiseq.pretrained` (download once, checksum, no unpickling of code) rather
than timm's own loader. The models are vmiseq's own :class:`~vmiseq.models.VMINet`, so
``save_pretrained`` and the rest of its API stay available.
"""
from __future__ import annotations

import sys
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor

from ..models.registry import create_model, list_models, model_entry
from ..models.vminet import VMINet
from ..pretrained import OFFICIAL_WEIGHTS

__all__ = ["TimmVMINet", "register", "default_cfgs"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# MNIST-style single-channel variants: Fashion-MNIST statistics (the built-in experiment's data)
FMNIST_MEAN, FMNIST_STD = (0.2860,), (0.3530,)

default_cfgs: dict = {}  # filled by register(); timm reads it from this module


class TimmVMINet(VMINet):
    """VMINet with the methods timm's wrappers call (``forward_intermediates``, ``feature_info``)."""

    @property
    def feature_info(self) -> list[dict[str, Any]]:
        """One entry per stage: channels, total stride, module name (timm's format)."""
        return [
            {"num_chs": w, "reduction": s, "module": f"stages.{i}"}
            for i, (w, s) in enumerate(zip(self.config.widths, self.config.strides))
        ]

    def forward_intermediates(
        self,
        x: Tensor,
        indices: Optional[Union[int, Sequence[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        """Stage maps picked by ``indices`` (an int n: the last n stages), then the final map."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt: expected 'NCHW', got {output_fmt!r}")
        n = len(self.stages)
        if indices is None:
            take = list(range(n))
        elif isinstance(indices, int):
            take = list(range(n - indices, n))
        else:
            take = [i % n for i in indices]
        feats = self.forward_features(x)
        picked = [feats[i] for i in take]
        if intermediates_only:
            return picked
        return self.norm(feats[-1]), picked

    def get_classifier(self) -> torch.nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        if global_pool not in (None, "avg"):
            raise ValueError(f"global_pool: VMINet pools by average, got {global_pool!r}")
        super().reset_classifier(num_classes)


def _pretrained_cfg(name: str) -> dict[str, Any]:
    config = model_entry(name).config
    chans = config.get("in_chans", 3)
    size = config.get("img_size", 224)
    size = (size, size) if isinstance(size, int) else tuple(size)
    official = OFFICIAL_WEIGHTS.get(name)
    return {
        "url": official.url if official else "",
        "num_classes": config.get("num_classes", 1000),
        "input_size": (chans, *size),
        "pool_size": None,
        "crop_pct": 0.875 if chans == 3 else 1.0,
        "interpolation": "bicubic",
        "mean": IMAGENET_MEAN if chans == 3 else FMNIST_MEAN,
        "std": IMAGENET_STD if chans == 3 else FMNIST_STD,
        "first_conv": "stem.conv",
        "classifier": "head",
        "license": "apache-2.0" if official else "mit",
        "paper_ids": "VMINet",
    }


def _builder(name: str):
    def build(pretrained: bool = False, **kwargs) -> TimmVMINet:
        kwargs.pop("pretrained_cfg", None)
        kwargs.pop("pretrained_cfg_overlay", None)
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        if pretrained:
            if name not in OFFICIAL_WEIGHTS:
                raise ValueError(f"pretrained: no official weights are released for {name!r}; released: {sorted(OFFICIAL_WEIGHTS)}")
            from ..pretrained import load_official

            base = load_official(name, **kwargs)
        else:
            base = create_model(name, **kwargs)
        base.__class__ = TimmVMINet  # same modules and weights, timm's extra methods
        return base

    return build


def _entrypoint(name: str):
    def entry(pretrained: bool = False, **kwargs):
        n_stages = len(model_entry(name).config.get("depths", (2, 2, 18, 2)))
        out_indices = kwargs.pop("out_indices", tuple(range(n_stages)))
        return _build_with_timm(name, pretrained, out_indices, kwargs)

    entry.__name__ = name
    entry.__qualname__ = name
    entry.__module__ = __name__
    entry.__doc__ = f"{name}: {model_entry(name).description}"
    return entry


def _build_with_timm(name: str, pretrained: bool, out_indices, kwargs: dict):
    from timm.models import build_model_with_cfg

    def builder(**model_kwargs):
        return _builder(name)(pretrained=pretrained, **model_kwargs)

    return build_model_with_cfg(
        builder,
        name,
        pretrained=False,  # vmiseq.pretrained loaded the weights inside the builder
        feature_cfg={"feature_cls": "getter", "out_indices": out_indices},
        **kwargs,
    )


def register() -> None:
    """Put every vmiseq VMINet variant into timm's registry (idempotent)."""
    from timm.models import generate_default_cfgs, register_model
    from timm.models._registry import _model_entrypoints

    names = [n for n in list_models("vminet*") if n not in _model_entrypoints]
    if not names:
        return
    default_cfgs.update(generate_default_cfgs({n: _pretrained_cfg(n) for n in names}))
    module = sys.modules[__name__]
    for n in names:
        fn = _entrypoint(n)
        setattr(module, n, fn)
        register_model(fn)


register()  # also when this module is imported before the hook could run
