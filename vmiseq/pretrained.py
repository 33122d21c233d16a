"""Released weights by name: ``create_model("vminet_xs", pretrained="official")``.

The official VMINet repository (github yws-wxs/VMINet) publishes ImageNet-1k checkpoints
of its v1 models (BatchNorm after ``g``, no rank mask) on its releases page. They are timm
training checkpoints (``*.pth.tar``: a pickled dict with ``state_dict``, ``optimizer``,
``args`` ...). vmiseq downloads one once into its cache (:func:`vmiseq.download.cache_dir`),
reads it with ``torch.load(weights_only=True)`` — plain tensors and containers plus an
allow-list of the harmless classes such checkpoints hold (``argparse.Namespace``), never
arbitrary pickled code — converts the official names to ours and loads them.

The release table and the loading live in :mod:`vmiseq.models.official` (re-exported here);
this module adds the conversion of a checkpoint file into a ``save_pretrained`` folder.

Offline: put the file named in the error message into the cache folder (or pass
``checkpoint=PATH`` to :func:`load_official`), or convert it once with
``vmiseq convert CKPT OUT`` and use ``create_model(name, pretrained=OUT)``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import torch

from .models.official import OFFICIAL_WEIGHTS, OfficialWeights, official_weights, read_checkpoint  # noqa: F401

__all__ = [
    "OfficialWeights", "OFFICIAL_WEIGHTS", "official_weights", "read_checkpoint", "load_official",
    "convert_checkpoint", "infer_model_name",
]


def load_official(name: str, checkpoint: Optional[Union[str, os.PathLike]] = None, **overrides):
    """Build ``name`` with the official weights (downloaded once, checked, converted):
    ``create_model(name, pretrained="official", **overrides)`` with an optional local copy
    ``checkpoint`` of the released file. Only ``img_size`` and ``num_classes`` may change."""
    from .models.registry import create_official

    return create_official(name, checkpoint=checkpoint, **overrides)


def infer_model_name(state_dict: dict[str, torch.Tensor]) -> str:
    """The registered VMINet variant whose widths match an official state dict."""
    from .models.registry import list_models, model_entry

    sd = {k.removeprefix("module.").removeprefix("model."): v for k, v in state_dict.items()}
    try:
        width = int(sd["stages.0.0.conv.weight"].shape[0])
        expand = int(sd["stages.0.1.f1.conv.weight"].shape[0]) // width
    except KeyError as exc:
        raise ValueError(f"checkpoint: expected official VMINet keys, {exc} not found") from exc
    for name in list_models("vminet_*"):
        cfg = model_entry(name).config
        if cfg.get("base_dim") == width and cfg.get("expand") == expand and cfg.get("img_size") == 224:
            return name
    raise ValueError(f"checkpoint: no registered VMINet has width {width} and expand {expand}; pass --model")


def convert_checkpoint(checkpoint: Union[str, os.PathLike], out: Union[str, os.PathLike], model: Optional[str] = None) -> Path:
    """Convert an official checkpoint file into a ``save_pretrained`` folder ``out``."""
    from .models.registry import create_model
    from .models.vminet import convert_official_state_dict

    state = read_checkpoint(checkpoint)
    name = model or infer_model_name(state)
    official_keys = {k.removeprefix("module.").removeprefix("model.") for k in state}
    v1 = any(k.endswith(".g.bn.weight") for k in official_keys)
    net = create_model(name, rank_mask=not v1)
    net.load_state_dict(convert_official_state_dict(state, net))
    return net.save_pretrained(out)
