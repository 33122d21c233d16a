"""Models built from VMI-SA blocks: VMINet (vision), the causal LM, the forecaster; and MLLA,
the Mamba-like linear attention backbone VMINet is compared with.

Layout: each model has its modelling file and its config file (``lm.py`` + ``lm_config.py``,
``forecaster.py`` + ``forecaster_config.py``, ``vminet.py`` + ``vminet_config.py``; MLLA and
DLinear keep their small configs inline), all configs on ``config.ModelConfig``. Shared by the
causal models: ``blocks.py`` (``MIXERS``, the pre-norm block, ``make_block``); the LM's
sampling, streaming and ragged batches are in ``generation.py``, the forecaster's online path
in ``forecaster_online.py`` and its statistics in ``forecast_norm.py``; ``registry.py`` names
the vision variants.

Names are resolved lazily so ``import vmiseq`` stays light and each model module only
loads what it needs.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    # vision (registry of named variants, timm-style)
    "create_model": "registry",
    "list_models": "registry",
    "register_model": "registry",
    "VMINet": "vminet",
    "VMINetConfig": "vminet",
    "MLLA": "mlla",
    "MLLAConfig": "mlla",
    # language modelling
    "VMISAConfig": "lm",
    "VMISAForCausalLM": "lm",
    # time series
    "VMISAForecaster": "forecaster",
    "ForecasterConfig": "forecaster",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
