"""The weights the VMINet authors released, by model name (the model floor's half).

The official VMINet repository (github yws-wxs/VMINet) publishes ImageNet-1k checkpoints
of its v1 models (BatchNorm after ``g``, no rank mask) on its releases page. They are timm
training checkpoints (``*.pth.tar``: a pickled dict with ``state_dict``, ``optimizer``,
``args`` ...). :func:`load_official_weights` downloads one once into the cache
(:func:`vmiseq.download.cache_dir`), reads it with ``torch.load(weights_only=True)`` — plain
tensors and containers plus an allow-list of the harmless classes such checkpoints hold
(``argparse.Namespace``), never arbitrary pickled code — converts the official names to ours
and loads them into a model. ``create_model(name, pretrained="official")``
(:mod:`vmiseq.models.registry`) builds the model and calls it; :mod:`vmiseq.pretrained` adds
the file conversion behind ``vmiseq convert``.
"""
from __future__ import annotations

import argparse
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn as nn

from ..download import fetch

__all__ = ["OfficialWeights", "OFFICIAL_WEIGHTS", "official_weights", "read_checkpoint", "load_official_weights"]

RELEASES = "https://github.com/yws-wxs/VMINet/releases/download/output"


@dataclass(frozen=True)
class OfficialWeights:
    """One released checkpoint: where it is, what it is, how to build the model it fits."""

    model: str  # our registry name
    url: str
    filename: str
    top1: float  # ImageNet-1k top-1 reported next to the release
    config: dict  # config overrides that make our model match the checkpoint
    sha256: Optional[str] = None  # pinned digest; None: recorded at first download


_V1 = {"rank_mask": False}  # the released checkpoints are the v1 block (g + BatchNorm, no mask)

OFFICIAL_WEIGHTS: dict[str, OfficialWeights] = {
    w.model: w
    for w in (
        OfficialWeights("vminet_xs", f"{RELEASES}/XS-ckpt.pth.tar", "vminet_xs-official.pth.tar", 76.5, _V1),
        OfficialWeights("vminet_s", f"{RELEASES}/S-ckpt.pth.tar", "vminet_s-official.pth.tar", 79.0, _V1),
        OfficialWeights("vminet_b", f"{RELEASES}/B-ckpt.pth.tar", "vminet_b-official.pth.tar", 80.9, _V1),
    )
}

# Classes a timm training checkpoint may hold besides tensors and containers: the run's
# arguments. Their unpickling only sets attributes; nothing in them runs code.
_SAFE_CHECKPOINT_GLOBALS = [argparse.Namespace]


def official_weights(name: str) -> OfficialWeights:
    """The release entry of model ``name`` (clear error listing the released ones)."""
    if name not in OFFICIAL_WEIGHTS:
        raise ValueError(f"pretrained: no official weights are released for {name!r}; released: {sorted(OFFICIAL_WEIGHTS)}")
    return OFFICIAL_WEIGHTS[name]


def read_checkpoint(path: Union[str, os.PathLike]) -> dict[str, torch.Tensor]:
    """The state dict inside an official checkpoint file, read without unpickling code.

    Raises:
        ValueError: the file is missing, is not a torch checkpoint, or needs classes outside
            the allow-list (the message names them).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint: expected a checkpoint file, got {str(path)!r} (not a file)")
    try:
        with torch.serialization.safe_globals(_SAFE_CHECKPOINT_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"checkpoint: {str(path)!r} needs more than plain tensors to load ({exc}); vmiseq refuses to unpickle "
            "arbitrary objects. Re-save its state_dict alone with torch.save in a trusted environment."
        ) from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise ValueError(f"checkpoint: {str(path)!r} is not a readable torch checkpoint: {exc}") from exc
    if isinstance(obj, dict):
        for key in ("state_dict_ema", "state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"checkpoint: expected a state dict of tensors in {str(path)!r}, got {type(obj).__name__}")
    return obj


def load_official_weights(model: nn.Module, name: str, checkpoint: Optional[Union[str, os.PathLike]] = None) -> nn.Module:
    """Load the released weights of ``name`` into ``model`` (built with the release's config).

    ``checkpoint``: a local copy of the released file (skips the download)."""
    from .vminet import convert_official_state_dict

    entry = official_weights(name)
    path = Path(checkpoint) if checkpoint is not None else fetch(entry.url, entry.filename, entry.sha256, subdir="weights")
    model.load_state_dict(convert_official_state_dict(read_checkpoint(path), model))
    return model
