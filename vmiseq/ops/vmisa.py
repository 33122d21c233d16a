"""Deprecated: moved to :mod:`vmiseq.ops.scan` (this name is an alias of it and warns on import)."""
import importlib
import sys
import warnings

warnings.warn(f"{__name__} is deprecated; import vmiseq.ops.scan instead (same names; or import them from "
              "vmiseq.ops)", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = importlib.import_module("vmiseq.ops.scan")
