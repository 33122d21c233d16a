"""Named model variants, timm-style: ``create_model("vminet_ti")``, ``list_models("vminet*")``.

A variant is data — a model class plus the config fields that differ from its defaults —
so adding one is one ``register_model`` call, and ``create_model`` keyword arguments
override any field (``create_model("vminet_s", num_classes=10, img_size=256)``).
"""
from __future__ import annotations

import dataclasses
import fnmatch
import os
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch.nn as nn

__all__ = ["create_model", "list_models", "register_model", "model_entry", "ModelEntry"]


@dataclass(frozen=True)
class ModelEntry:
    """A registered variant: the model class, its config overrides and a one-line description."""

    name: str
    model_cls: type
    config: dict[str, Any] = field(default_factory=dict)
    description: str = ""


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, model_cls: type, config: Optional[dict[str, Any]] = None, description: str = "", overwrite: bool = False) -> ModelEntry:
    """Register a variant ``name`` = ``model_cls(model_cls.config_class(**config))``.

    The config is validated now (a typo fails at registration, not at first use).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name: expected a non-empty string, got {name!r}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"name: {name!r} is already registered (pass overwrite=True to replace it)")
    config = dict(config or {})
    config_class = getattr(model_cls, "config_class", None)
    if config_class is None:
        raise TypeError(f"model_cls: expected a model class with a config_class, got {model_cls!r}")
    config_class(**config)  # validate
    entry = ModelEntry(name, model_cls, config, description)
    _REGISTRY[name] = entry
    return entry


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching the shell-style ``pattern``, sorted."""
    _ensure_builtin()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def model_entry(name: str) -> ModelEntry:
    """The registry entry of ``name`` (clear error listing the known names)."""
    _ensure_builtin()
    if name not in _REGISTRY:
        raise ValueError(f"name: unknown model {name!r}; expected one of {list_models()}")
    return _REGISTRY[name]


def create_model(name: str, pretrained: Optional[Union[str, os.PathLike]] = None, **overrides: Any) -> nn.Module:
    """Build the variant ``name`` with config fields overridden by ``overrides``.

    Args:
        name: a name from ``list_models()``.
        pretrained: a directory written by ``save_pretrained`` to load weights from, or
            ``"official"`` for the weights the paper's authors released (downloaded once
            into the cache and checked: :mod:`vmiseq.pretrained`); then only ``img_size``
            (alpha tables are interpolated) and ``num_classes`` (a new, freshly initialised
            classifier) may be overridden.
        **overrides: config fields, e.g. ``num_classes=10, img_size=32, rank_mask=False``;
            the config checks their types (``img_size="28"`` or ``rank_mask="yes"`` is a
            TypeError, never parsed).
    """
    if not isinstance(name, str):
        raise TypeError(f"name: expected a model name (str), got {type(name).__name__} {name!r}")
    entry = model_entry(name)
    if isinstance(pretrained, str) and pretrained == "official":
        return create_official(name, **overrides)
    if pretrained is not None:
        extra = sorted(set(overrides) - {"img_size", "num_classes"})
        if extra:
            raise ValueError(
                f"overrides: with pretrained weights only img_size and num_classes can change, got {extra}"
            )
        n = overrides.get("num_classes")
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 0):
            raise ValueError(f"num_classes: expected an int >= 0, got {type(n).__name__} {n!r}")
        model = entry.model_cls.from_pretrained(pretrained, img_size=overrides.get("img_size"))
        if n is not None and n != model.config.num_classes:
            model.reset_classifier(n)
        return model
    known = {f.name for f in dataclasses.fields(entry.model_cls.config_class)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"overrides: unknown config fields {unknown} for {name!r}; known: {sorted(known)}")
    return entry.model_cls(entry.model_cls.config_class(**{**entry.config, **overrides}))


_BUILTIN_DONE = False


def _ensure_builtin() -> None:
    """Register the built-in variants on first use (keeps ``import vmiseq`` light)."""
    global _BUILTIN_DONE
    if _BUILTIN_DONE:
        return
    _BUILTIN_DONE = True
    from .vminet import VMINet

    # The paper's four variants (docs/design.md §2): depths [2, 2, 18, 2], stem 32, 224 px.
    paper = dict(depths=(2, 2, 18, 2), stem_dim=32, img_size=224)
    for name, C, k, desc in (
        ("vminet_ti", 24, 2, "VMINet-Ti: 2.0M params, 0.35 GMACs, ImageNet 70.7% (paper)"),
        ("vminet_xs", 48, 2, "VMINet-XS: 7.4M params, 1.26 GMACs, ImageNet 78.6% (paper)"),
        ("vminet_s", 48, 4, "VMINet-S: 13.3M params, 2.30 GMACs, ImageNet 80.2% (paper)"),
        ("vminet_b", 96, 2, "VMINet-B: 28.4M params, 4.78 GMACs, ImageNet 82.1% (paper)"),
    ):
        register_model(name, VMINet, dict(paper, base_dim=C, expand=k), desc)
    # Native 28 px, 1 channel (Fashion-MNIST / MNIST): stride-1 stem, three stages at
    # 14, 7 and 4 px. v1 (no rank mask): at 4x4 = 16 tokens and D = 256 channels the
    # mask would cut the global context off from all but 16 channels.
    register_model(
        "vminet_mnist",
        VMINet,
        dict(
            base_dim=32, depths=(2, 2, 2), expand=2, stem_dim=24, stem_stride=1, stage_strides=(2, 2, 2),
            img_size=28, in_chans=1, num_classes=10, rank_mask=False,
        ),
        "small 3-stage VMINet for 28x28 grayscale images (the experiments' built-in default)",
    )
    _register_mlla()


def _register_mlla() -> None:
    from .mlla import MLLA

    # The official MLLA variants (github LeapLabTHU/MLLA, cfgs/mlla_{t,s,b}.yaml).
    for name, E, depths, heads, dpr, desc in (
        ("mlla_t", 64, (2, 4, 8, 4), (2, 4, 8, 16), 0.2, "MLLA-T: 24.4M params, 4.2 GFLOPs, ImageNet 83.5% (paper)"),
        ("mlla_s", 64, (3, 6, 21, 6), (2, 4, 8, 16), 0.3, "MLLA-S: 43.0M params, 7.3 GFLOPs, ImageNet 84.4% (paper)"),
        ("mlla_b", 96, (3, 6, 21, 6), (3, 6, 12, 24), 0.5, "MLLA-B: 96.0M params, 16.2 GFLOPs, ImageNet 85.3% (paper)"),
    ):
        register_model(name, MLLA, dict(embed_dim=E, depths=depths, num_heads=heads, drop_path_rate=dpr), desc)
    # Beside vminet_mnist: 28 px, 1 channel, stem stride 2, three stages at 14, 7 and 4 px,
    # widths 24/48/96 (about the same parameter count, 0.4 M).
    register_model(
        "mlla_mnist",
        MLLA,
        dict(embed_dim=24, depths=(2, 2, 2), num_heads=(1, 2, 4), stem_strides=(1, 2), img_size=28, in_chans=1,
             num_classes=10),
        "small 3-stage MLLA for 28x28 grayscale images (side by side with vminet_mnist)",
    )


def create_official(name: str, checkpoint: Optional[Union[str, os.PathLike]] = None, **overrides: Any) -> nn.Module:
    """``name`` with the weights its authors released (:mod:`vmiseq.models.official`).

    Args:
        name: a model with released weights. checkpoint: a local copy of the released file
            (skips the download). **overrides: ``img_size`` (alpha tables are interpolated)
            and ``num_classes`` (a new classifier); the rest is fixed by the checkpoint.
    """
    from .official import load_official_weights, official_weights

    entry = official_weights(name)
    extra = sorted(set(overrides) - {"img_size", "num_classes"})
    if extra:
        raise ValueError(f"overrides: with pretrained weights only img_size and num_classes can change, got {extra}")
    model = load_official_weights(create_model(name, **entry.config), name, checkpoint)
    if overrides.get("img_size") is not None:
        model.set_img_size(overrides["img_size"])
    n = overrides.get("num_classes")
    if n is not None and n != model.config.num_classes:
        model.reset_classifier(n)
    return model
