"""``save_pretrained`` / ``from_pretrained`` shared by every vmiseq model.

A saved model is a directory holding ``config.json`` (the config dataclass plus the model
class name and format version), ``model.safetensors`` (the weights) and any extra files a
model adds (a tokenizer, a scaler). Saving writes into a temporary sibling directory and
renames it into place at the end, so a crash mid-save never leaves a directory that loads
half a model; a ``COMPLETE`` marker written last lets ``from_pretrained`` refuse a
directory that was copied or written only in part.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, ClassVar, Optional, Type, TypeVar, Union

import torch
import torch.nn as nn

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
COMPLETE_FILE = "COMPLETE"
FORMAT_VERSION = 1

M = TypeVar("M", bound="PretrainedMixin")


class PretrainedMixin:
    """Mixin for ``nn.Module`` models with a dataclass ``config`` attribute.

    Subclasses set ``config_class`` and may override ``_save_extra(dir)`` /
    ``_load_extra(dir)`` to store more files (tokenizer, scalers) beside the weights.
    """

    config_class: ClassVar[type]
    config: Any

    def _save_extra(self, directory: Path) -> None:
        """Write extra files into ``directory`` (the temporary save directory)."""

    def _load_extra(self, directory: Path) -> None:
        """Read the extra files written by ``_save_extra``."""

    def save_pretrained(self, directory: Union[str, os.PathLike]) -> Path:
        """Save config, weights and extras to ``directory`` atomically; returns the path."""
        from safetensors.torch import save_file

        target = Path(directory)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            config = {
                "model_class": type(self).__name__,
                "format_version": FORMAT_VERSION,
                "config": dataclasses.asdict(self.config),
            }
            if getattr(self, "hf_model_type", None):  # lets transformers' AutoConfig read the folder
                config["model_type"] = self.hf_model_type
            (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
            state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}  # type: ignore[attr-defined]
            save_file(_untie(state), str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
            self._save_extra(tmp)
            (tmp / COMPLETE_FILE).write_text("ok\n")
            if target.exists():
                old = target.with_name(f".{target.name}.old-{os.getpid()}")
                os.replace(target, old)
                os.replace(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target

    @classmethod
    def from_pretrained(cls: Type[M], directory: Union[str, os.PathLike], map_location: Optional[str] = "cpu") -> M:
        """Load a model saved by ``save_pretrained``; clear errors for missing or corrupt files."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(directory)
        if not path.is_dir():
            raise ValueError(f"directory: expected a saved model directory, got {str(path)!r} (not a directory)")
        missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE, COMPLETE_FILE) if not (path / f).is_file()]
        if missing:
            raise ValueError(
                f"directory: {str(path)!r} is not a complete saved model (missing {', '.join(missing)}); "
                "it may have been written only in part"
            )
        try:
            meta = json.loads((path / CONFIG_FILE).read_text())
            cfg_dict = meta["config"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{CONFIG_FILE}: expected the JSON written by save_pretrained in {str(path)!r}: {exc}") from exc
        if meta.get("model_class") != cls.__name__:
            raise ValueError(
                f"directory: expected a saved {cls.__name__}, got a saved {meta.get('model_class')!r} in {str(path)!r}"
            )
        config = cls.config_class.from_dict(cfg_dict) if hasattr(cls.config_class, "from_dict") else cls.config_class(**cfg_dict)
        model = cls(config)  # type: ignore[call-arg]
        try:
            state = load_file(str(path / WEIGHTS_FILE), device=map_location or "cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise ValueError(f"{WEIGHTS_FILE}: corrupt or unreadable weights in {str(path)!r}: {exc}") from exc
        result = model.load_state_dict(state, strict=False)  # type: ignore[attr-defined]
        tied = _tied_names(model)
        missing_keys = [k for k in result.missing_keys if k not in tied]
        if missing_keys or result.unexpected_keys:
            raise ValueError(
                f"{WEIGHTS_FILE}: weights do not match the config in {str(path)!r}: "
                f"missing {missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
            )
        model._load_extra(path)
        return model


def _untie(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses shared storage: keep the first name of each tied tensor."""
    seen: dict[tuple, str] = {}
    out = {}
    for k, v in state.items():
        key = (v.data_ptr(), v.shape, v.stride()) if v.numel() else (id(v),)
        if key in seen:
            continue
        seen[key] = k
        out[k] = v
    return out


def _tied_names(model: nn.Module) -> set[str]:
    """State-dict names that alias an earlier tensor (restored by the tie itself)."""
    seen: dict[tuple, str] = {}
    tied = set()
    for k, v in model.state_dict().items():
        key = (v.data_ptr(), v.shape, v.stride()) if v.numel() else (id(v),)
        if key in seen:
            tied.add(k)
        else:
            seen[key] = k
    return tied
