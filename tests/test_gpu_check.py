"""benchmarks/gpu_check.py, the one-command GPU check, run end to end on CPU (``--dry-run``:
toy sizes through Triton's interpreter), so the script a GPU run depends on is itself
tested: every section runs and records its result, failures are recorded rather than fatal,
and the docs table is rewritten between its markers."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed")
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is the CPU stand-in for the GPU check")
def test_gpu_check_dry_run(tmp_path):
    docs = tmp_path / "kernels.md"
    docs.write_text("# t\n\nbefore\n<!-- gpu_check:begin -->\nnot yet run\n<!-- gpu_check:end -->\nafter\n")
    out = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(tmp_path), "--docs", str(docs)],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    res = json.loads((tmp_path / "gpu_check_dryrun.json").read_text())["results"]
    sections = res["sections"]
    assert set(sections) == {"env", "geometry", "tests", "reverse", "packed", "large", "determinism", "bench"}
    assert all(s["status"] == "ok" and s.get("ok", True) for s in sections.values()), sections
    assert {(r["decay"], r["split"]) for r in sections["reverse"]["rows"]} == {
        (d, s) for d in ("token", "channel") for s in (False, True)}
    bench = sections["bench"]["rows"]
    assert {(r["decay"], r["mode"]) for r in bench} == {(d, m) for d in ("none", "token") for m in ("fwd", "fwd+bwd")}
    assert all(r["GB/s"] > 0 for r in bench) and res["targets"]
    text = docs.read_text()
    assert "not yet run" not in text and "| (1,256,16) | fp32 | none |" in text
    assert text.startswith("# t\n\nbefore\n") and text.endswith("<!-- gpu_check:end -->\nafter\n")


def test_gpu_check_fails_soft(tmp_path, monkeypatch):
    """A section that raises is recorded with its error; the others still run."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(SCRIPT.parent))

    def boom(ctx):
        raise RuntimeError("no device today")

    from vmiseq.kernels import triton_scan

    # the dry run's Ctx sets a 2-SM launch policy: keep it away from the other tests
    monkeypatch.setattr(triton_scan, "SETTINGS", dataclasses.replace(triton_scan.SETTINGS))
    monkeypatch.setitem(gpu_check.SECTIONS, "geometry", boom)
    args = gpu_check.argparse.Namespace(dry_run=True, quick=True, budget_s=100.0, out=str(tmp_path))
    res = gpu_check.run_sections(gpu_check.Ctx(args), ["env", "geometry", "tests"], tmp_path / "g.json")
    s = res["sections"]
    assert s["geometry"]["status"] == "error" and "no device today" in s["geometry"]["error"]
    assert s["env"]["status"] == "ok" and s["tests"]["status"] == "ok"
    assert json.loads((tmp_path / "g.json").read_text())["results"]["sections"]["geometry"]["status"] == "error"
