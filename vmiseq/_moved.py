"""Old module paths that keep working after a move: each shim makes its old name an alias
of the new module (the same module object, so patches and ``isinstance`` checks agree) and
warns once, on first import, with a ``DeprecationWarning`` naming the new path."""
from __future__ import annotations

import importlib
import sys
import warnings


def alias(old: str, new: str, note: str = "same names") -> None:
    """Make module ``old`` (being imported now) an alias of ``new``, with a deprecation warning."""
    warnings.warn(f"{old} is deprecated; import {new} instead ({note})", DeprecationWarning, stacklevel=3)
    sys.modules[old] = importlib.import_module(new)
