"""The data scaler saved beside a forecaster's weights (``scaler.json``).

A :class:`~vmiseq.data.timeseries.StandardScaler` attached as ``model.scaler`` travels with
the model: ``save_pretrained`` writes it, ``from_pretrained`` reads and checks it. Every
forecasting model (``VMISAForecaster``, ``DLinear``) gets this by inheriting
:class:`ScalerFileMixin`.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch.nn as nn

SCALER_FILE = "scaler.json"


def save_scaler(model: nn.Module, directory: Path) -> None:
    """Write ``model.scaler`` (a StandardScaler, if any) beside the weights."""
    if getattr(model, "scaler", None) is not None:
        (directory / SCALER_FILE).write_text(json.dumps(model.scaler.to_dict()))


def load_scaler(model: nn.Module, directory: Path) -> None:
    """Restore ``model.scaler`` from ``scaler.json`` when the folder has one."""
    path = directory / SCALER_FILE
    if path.is_file():
        from ..data.timeseries import StandardScaler
        from ..saving import read_json

        d = read_json(directory, SCALER_FILE)
        n = model.config.n_vars
        ok = isinstance(d, dict) and all(
            isinstance(d.get(k), list) and len(d[k]) == n and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in d[k])
            for k in ("mean", "std")
        )
        if not ok or not all(x > 0 for x in d["std"]):
            raise ValueError(
                f"{SCALER_FILE}: expected {{'mean': [{n} numbers], 'std': [{n} positive numbers]}} (n_vars={n}) "
                f"in {str(directory)!r}, got {json.dumps(d)[:200]}"
            )
        model.scaler = StandardScaler.from_dict(d)


class ScalerFileMixin:
    """``_save_extra`` / ``_load_extra`` hooks of ``PretrainedMixin`` for ``model.scaler``."""

    def _save_extra(self, directory: Path) -> None:
        save_scaler(self, directory)

    def _load_extra(self, directory: Path) -> None:
        load_scaler(self, directory)
