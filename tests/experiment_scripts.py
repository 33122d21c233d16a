"""The experiment scripts and their harness as modules, for tests.

``python experiments/lm.py`` finds ``experiments/harness/`` on ``sys.path[0]``; a test loads
the same files by path instead (``harness`` registered under that name first, so a script's
``from harness import ...`` finds it).
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def harness() -> ModuleType:
    """``experiments/harness`` (loaded once)."""
    if "harness" not in sys.modules:
        folder = EXPERIMENTS / "harness"
        spec = importlib.util.spec_from_file_location("harness", folder / "__init__.py", submodule_search_locations=[str(folder)])
        module = importlib.util.module_from_spec(spec)
        sys.modules["harness"] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules["harness"]
            raise
    return sys.modules["harness"]


def load_script(name: str) -> ModuleType:
    """A fresh module of ``experiments/<name>.py`` (its ``main``, parsers and classes)."""
    harness()
    spec = importlib.util.spec_from_file_location(f"{name}_experiment", EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
