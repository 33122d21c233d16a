"""Joining the libraries users already work with: Hugging Face transformers and timm.

``import vmiseq`` registers vmiseq's models with transformers (``AutoConfig`` /
``AutoModelForCausalLM``, model type ``"vmiseq_lm"``) and with timm (``timm.create_model
("vminet_ti")``) — but without importing either library: a post-import hook registers them
the moment the user imports transformers or timm (at once if they already are imported).
So ``import vmiseq`` stays light and neither library is a required dependency
(``pip install "vmiseq[hf]"`` / ``"vmiseq[timm]"``).
"""
from __future__ import annotations

import importlib
import importlib.abc
import sys
from typing import Callable

__all__ = ["install"]

_HOOKS: dict[str, Callable[[], None]] = {}


def _register(module: str) -> None:
    """Import ``vmiseq.integrations.<module>`` and register. When that module is itself being
    imported (its own ``import transformers`` fired the hook), it registers at its end."""
    full = f"{__name__}.{module}"
    if full in sys.modules and not hasattr(sys.modules[full], "register"):
        return
    importlib.import_module(full).register()


def _register_transformers() -> None:
    _register("hf")


def _register_timm() -> None:
    _register("timm_models")


class _PostImportFinder(importlib.abc.MetaPathFinder):
    """Wraps the loader of a hooked top-level module so its hook runs right after it loads."""

    def find_spec(self, name, path=None, target=None):
        if name not in _HOOKS:
            return None
        for finder in sys.meta_path:
            if finder is self:
                continue
            spec = finder.find_spec(name, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        hook = _HOOKS[name]
        exec_module = loader.exec_module

        class _Loader(importlib.abc.Loader):
            def create_module(self, spec):
                return loader.create_module(spec)

            def exec_module(self, module):
                exec_module(module)
                _run(name, hook)

        spec.loader = _Loader()
        return spec


def _run(name: str, hook: Callable[[], None]) -> None:
    if _HOOKS.pop(name, None) is None:
        return  # already registered
    try:
        hook()
    except Exception as exc:  # noqa: BLE001 - an incompatible version must not break the user's import
        import warnings

        warnings.warn(f"vmiseq: could not register its models with {name}: {exc}", RuntimeWarning, stacklevel=3)


_installed = False


def install() -> None:
    """Register with transformers and timm now if imported, else when they are imported."""
    global _installed
    if _installed:
        return
    _installed = True
    _HOOKS.update({"transformers": _register_transformers, "timm": _register_timm})
    for name in list(_HOOKS):
        if name in sys.modules:
            _run(name, _HOOKS[name])
    if _HOOKS:
        sys.meta_path.insert(0, _PostImportFinder())
