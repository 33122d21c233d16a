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

from .integrations import install as _install_integrations

__version__ = "0.1.0"
_install_integrations()  # registers with transformers / timm when (and if) they are imported

_MODEL_NAMES = ("create_model", "list_models", "VMISAConfig", "VMISAForCausalLM", "VMISAForecaster", "VMINet")


def __getattr__(name: str):
    # Models load lazily: ``import vmiseq`` never pulls in tokenizers, safetensors, ...
    if name in _MODEL_NAMES:
        from . import models

        return getattr(models, name)
    raise AttributeError(f"module 'vmiseq' has no attribute {name!r}")


__all__ = [*_MODEL_NAMES, "ops", "VMISALayer", "VMISABlock", "VMISAState", "vmisa_scan", "vmisa_global", "__version__"]
