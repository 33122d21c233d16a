"""Modules that moved keep working under their old names: the same module object, a
DeprecationWarning naming the new path on import."""
from __future__ import annotations

import importlib
import sys

import pytest

MOVED = {
    "vmiseq.data_text": "vmiseq.data.text",
    "vmiseq.data_timeseries": "vmiseq.data.timeseries",
    "vmiseq.data_images": "vmiseq.data.images",
    "vmiseq.tokenizer": "vmiseq.data.tokenizer",
    "vmiseq.hub": "vmiseq.saving",
    "vmiseq.benchmark_data": "vmiseq.data.benchmarks",
    "vmiseq.training": "vmiseq.checkpoints",
}


@pytest.mark.parametrize("old, new", MOVED.items())
def test_old_module_path_warns_and_is_the_new_module(old, new, monkeypatch):
    monkeypatch.delitem(sys.modules, old, raising=False)  # a fresh import, whatever ran before
    with pytest.warns(DeprecationWarning, match=rf"{old} is deprecated; import {new} instead"):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)


def test_names_users_import_from_old_paths():
    with pytest.warns(DeprecationWarning):
        sys.modules.pop("vmiseq.hub", None)
        from vmiseq.hub import PretrainedMixin
    from vmiseq.saving import PretrainedMixin as New

    assert PretrainedMixin is New
    sys.modules.pop("vmiseq.data_timeseries", None)
    with pytest.warns(DeprecationWarning):
        from vmiseq.data_timeseries import RandomHistoryBatches, StandardScaler, WindowDataset
    from vmiseq.data import timeseries, windows

    assert (StandardScaler, RandomHistoryBatches, WindowDataset) == (timeseries.StandardScaler, windows.RandomHistoryBatches,
                                                                      windows.WindowDataset)
    sys.modules.pop("vmiseq.training", None)
    with pytest.warns(DeprecationWarning):
        from vmiseq.training import load_checkpoint
    from vmiseq.checkpoints import load_checkpoint as new_loader

    assert load_checkpoint is new_loader


def test_the_library_imports_no_deprecated_path():
    """A fresh interpreter with DeprecationWarning as an error imports the new paths and the
    models (which load the saving, tokenizer and scaler code)."""
    import subprocess

    modules = [*MOVED.values(), "vmiseq.streams", "vmiseq.models.lm", "vmiseq.models.forecaster", "vmiseq.models.dlinear",
               "vmiseq.models.vminet", "vmiseq.models.mlla", "vmiseq.integrations.hf", "vmiseq.cli"]
    code = "import importlib\nfor m in %r:\n    importlib.import_module(m)\n" % (modules,)
    proc = subprocess.run([sys.executable, "-W", "error:vmiseq:DeprecationWarning", "-c", code],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
