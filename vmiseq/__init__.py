"""vmiseq: causal sequence modelling with VMI-SA (VMINet's separable self-attention).

One layer API for language modelling, time series and vision::

    import torch, vmiseq
    layer = vmiseq.VMISALayer(dim=64, causal=True)
    y, state = layer(torch.randn(2, 100, 64), output_state=True)   # parallel (chunked) form
    y_t, state = layer.step(torch.randn(2, 64), state)              # O(1)-state streaming
"""
from . import ops
from .layers import VMISABlock, VMISALayer, VMISAState
from .ops import vmisa_global, vmisa_scan

__version__ = "0.1.0"

__all__ = ["ops", "VMISALayer", "VMISABlock", "VMISAState", "vmisa_scan", "vmisa_global", "__version__"]
