"""``save_pretrained`` / ``from_pretrained`` shared by every vmiseq model.

A saved model is a directory holding ``config.json`` (the config dataclass, the model class
name, the format version and the list of files), ``model.safetensors`` (the weights) and
any extra files a model adds (a tokenizer, a scaler); a ``COMPLETE`` marker is written last.

Saving never leaves the directory half-written or missing:

- everything is written into a fresh temp folder beside the target (``tempfile.mkdtemp``:
  a unique name per save, so concurrent saves never share one), given the umask's mode;
- the finished folder is swapped with the old one in one step (Linux ``renameat2``
  ``RENAME_EXCHANGE``), so at every instant the target holds the previous or the new model.
  Where that call is missing, the old folder is first renamed to a unique backup
  (``.NAME.old-PID@HOST-XXXX``) and the new one renamed into place; if a crash falls between
  the two renames, ``from_pretrained`` loads the newest complete backup (with a warning);
- leftovers of interrupted saves (``.NAME.tmp-*`` / ``.NAME.old-*`` of a dead process on this
  host, or older than a day) are removed by the next successful save.

``from_pretrained`` refuses anything it cannot load exactly, with a ValueError/TypeError
naming the file, the expected and the actual value.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, ClassVar, Optional, Type, TypeVar, Union

import torch
import torch.nn as nn

from .files import current_umask, leftover_prefix, newest_complete_leftover, remove_leftovers, remove_path, swap_into_place

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
        """Save config, weights and extras to ``directory``; returns the path.

        Atomic (the directory holds the previous or the new model at every instant), safe
        under concurrent saves to the same directory (the last swap wins), and it follows
        the umask. See the module docstring for how.
        """
        from safetensors.torch import save_file

        target = Path(directory)
        if target.name in ("", ".", ".."):
            raise ValueError(f"directory: expected a folder name to save into, got {str(directory)!r}")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=leftover_prefix(target.name, "tmp"), dir=target.parent))
        try:
            os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700; a save follows the umask
            state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}  # type: ignore[attr-defined]
            save_file(_untie(state), str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
            self._save_extra(tmp)
            files = sorted(str(f.relative_to(tmp).as_posix()) for f in tmp.rglob("*") if f.is_file())
            config = {
                "model_class": type(self).__name__,
                "format_version": FORMAT_VERSION,
                "config": dataclasses.asdict(self.config),
                "files": {f: (tmp / f).stat().st_size for f in files},
            }
            if getattr(self, "hf_model_type", None):  # lets transformers' AutoConfig read the folder
                config["model_type"] = self.hf_model_type
            (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
            (tmp / COMPLETE_FILE).write_text("ok\n")
            swap_into_place(tmp, target)
        except BaseException:
            remove_path(tmp)
            raise
        remove_leftovers(target)
        return target

    @classmethod
    def from_pretrained(cls: Type[M], directory: Union[str, os.PathLike], map_location: Optional[str] = "cpu") -> M:
        """Load a model saved by ``save_pretrained``; clear errors for missing or corrupt files.

        If ``directory`` is missing but an interrupted save left a complete copy beside it,
        that copy is loaded (with a warning). A save running at the same time never yields
        a mix of two models: a read that saw the folder swapped is repeated.
        """
        path = Path(directory)
        for attempt in range(10):
            # Retry while a concurrent save swaps the folder mid-read: files are read one by one,
            # so a load is kept only if the folder it read is the same before and after.
            source = path if os.path.lexists(path) else (newest_complete_leftover(path, COMPLETE_FILE) or path)
            before = _identity(source)
            try:
                model = _load(cls, source, map_location)
            except (ValueError, OSError):
                # A leftover copy may be removed by the next save while it is read: look again.
                if attempt == 9 or (source == path and before is not None and _identity(source) == before):
                    raise
                continue
            if _identity(source) == before:
                break
        if source != path:
            warnings.warn(
                f"directory: {str(path)!r} is missing; loaded {str(source)!r}, the complete copy left by an "
                "interrupted save_pretrained (save again to put it back in place)",
                stacklevel=2,
            )
        return model


def _identity(path: Path) -> Optional[tuple[int, int]]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _load(cls, path: Path, map_location: Optional[str]):
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_dir():
        raise ValueError(f"directory: expected a saved model directory, got {str(path)!r} (not a directory)")
    missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE, COMPLETE_FILE) if not (path / f).is_file()]
    if missing:
        raise ValueError(
            f"directory: {str(path)!r} is not a complete saved model (missing {', '.join(missing)}); "
            "it may have been written only in part"
        )
    meta = read_json(path, CONFIG_FILE)
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise ValueError(f"{CONFIG_FILE}: expected an object with a 'config' object (as save_pretrained writes) in {str(path)!r}")
    version = meta.get("format_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
        raise ValueError(
            f"{CONFIG_FILE}: format_version expected an integer from 1 to {FORMAT_VERSION} (what this vmiseq "
            f"reads), got {version!r} in {str(path)!r}; a newer vmiseq may have saved it"
        )
    if meta.get("model_class") != cls.__name__:
        raise ValueError(f"directory: expected a saved {cls.__name__}, got a saved {meta.get('model_class')!r} in {str(path)!r}")
    listed = meta.get("files", {})  # absent in folders saved before the list existed
    if not isinstance(listed, dict):
        raise ValueError(f"{CONFIG_FILE}: 'files' expected an object of file sizes, got {type(listed).__name__} in {str(path)!r}")
    for name, size in listed.items():
        if name == WEIGHTS_FILE:
            continue  # safetensors checks its own header and length (clearer message below)
        f = path / name
        actual = f.stat().st_size if f.is_file() else None
        if actual != size:
            raise ValueError(
                f"{name}: expected a file of {size} bytes in {str(path)!r} (listed in {CONFIG_FILE}), got "
                f"{'no such file' if actual is None else f'{actual} bytes'}: the file is missing, truncated or was "
                "changed after saving"
            )
    cfg_dict = meta["config"]
    try:
        config = cls.config_class.from_dict(cfg_dict) if hasattr(cls.config_class, "from_dict") else cls.config_class(**cfg_dict)
        model = cls(config)  # type: ignore[call-arg]
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{CONFIG_FILE}: invalid {cls.config_class.__name__} in {str(path)!r}: {exc}") from exc
    try:
        state = load_file(str(path / WEIGHTS_FILE), device=map_location or "cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{WEIGHTS_FILE}: corrupt or unreadable weights in {str(path)!r}: {exc}") from exc
    expected = model.state_dict()  # type: ignore[attr-defined]
    for k, v in state.items():
        if k in expected and tuple(expected[k].shape) != tuple(v.shape):
            raise ValueError(
                f"{WEIGHTS_FILE}: tensor {k!r} expected shape {tuple(expected[k].shape)} (from {CONFIG_FILE}), "
                f"got {tuple(v.shape)} in {str(path)!r}: the config and the weights disagree"
            )
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


def read_json(directory: Path, name: str) -> Any:
    """``json.loads`` of ``directory/name`` with a ValueError naming the file for bad bytes or JSON."""
    try:
        return json.loads((directory / name).read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{name}: expected UTF-8 JSON in {str(directory)!r}, got undecodable bytes ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{name}: expected the JSON written by save_pretrained in {str(directory)!r}: {exc}") from exc
    except OSError as exc:
        raise ValueError(f"{name}: unreadable in {str(directory)!r}: {exc}") from exc


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
