"""nn.Modules built on the VMI-SA operator."""
from .attention import CausalSelfAttention, KVCache
from .block import MLP, DropPath, VMISABlock
from .gla import GatedLinearAttention, GLAState
from .mlla import MLLABlock
from .state import StreamingMixer, VMISAState
from .vmisa import VMISALayer, resize_alpha_table

__all__ = [
    "CausalSelfAttention",
    "KVCache",
    "GatedLinearAttention",
    "GLAState",
    "MLLABlock",
    "StreamingMixer",
    "VMISALayer", "VMISABlock", "VMISAState", "DropPath", "MLP", "resize_alpha_table"]
