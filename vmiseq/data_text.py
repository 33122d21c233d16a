"""Deprecated: moved to :mod:`vmiseq.data.text` (this name is an alias of it and warns on import)."""
from ._moved import alias

alias(__name__, "vmiseq.data.text")
