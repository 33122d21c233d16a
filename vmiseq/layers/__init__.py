"""nn.Modules built on the VMI-SA operator."""
from .block import MLP, DropPath, VMISABlock
from .state import VMISAState
from .vmisa import VMISALayer, resize_alpha_table

__all__ = ["VMISALayer", "VMISABlock", "VMISAState", "DropPath", "MLP", "resize_alpha_table"]
