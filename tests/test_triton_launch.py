"""Launch geometry, config choice and the triton version check, on CPU (pure functions:
nothing here runs a kernel, and geometry.py does not import triton)."""
from __future__ import annotations

import warnings

import pytest

from vmiseq.kernels import geometry
from vmiseq.kernels.geometry import BLOCK_T, cdiv, plan_launch

K = 1024
# The benchmark shapes of the targets, and batch 1 at 64k tokens with wider channels.
SHAPES = [(1, 16 * K, 256), (4, 4 * K, 512), (8, 2 * K, 1024), (1, 64 * K, 256), (1, 64 * K, 1024),
          (1, 64 * K, 2048)]
BLOCKS = {"fwd": (16, 32, 64), "bwd": (16, 32)}  # the BLOCK_D values of the GPU config space


@pytest.mark.parametrize("gpu,sms", sorted(geometry.SM_COUNT.items()))
@pytest.mark.parametrize("B,L,D", SHAPES)
@pytest.mark.parametrize("kernel", ["fwd", "bwd"])
def test_every_benchmark_shape_fills_twice_the_sms(kernel, B, L, D, gpu, sms):
    """Whatever BLOCK_D the tuner picks among those the plan allows, the grid has >= 2x the
    SM count of an H100 / H200, batch 1 included; segments tile each sequence exactly."""
    plan = plan_launch(B, L, D, sm_count=sms, block_ds=BLOCKS[kernel])
    assert plan.min_programs_planned >= 2 * sms, (gpu, plan)
    n_chunks = cdiv(L, BLOCK_T)
    assert (plan.n_seg - 1) * plan.seg_chunks < n_chunks <= plan.n_seg * plan.seg_chunks
    assert plan.n_seg <= geometry.MAX_SEGMENTS and set(plan.block_ds) <= set(BLOCKS[kernel])


def test_large_grids_stay_one_pass():
    """(8, 2k, 1024): 512 programs at BLOCK_D=16 already fill the GPU: one pass, and only the
    block sizes that keep the grid full may be tuned."""
    plan = plan_launch(8, 2 * K, 1024, sm_count=132, block_ds=BLOCKS["fwd"])
    assert not plan.split and plan.block_ds == (16,) and plan.programs(16) == 512
    plan = plan_launch(8, 64 * K, 2048, sm_count=132, block_ds=BLOCKS["fwd"])
    assert not plan.split and plan.block_ds == (16, 32)


def test_small_batch_is_split():
    plan = plan_launch(1, 16 * K, 256, sm_count=132, block_ds=BLOCKS["fwd"])
    assert plan.split and plan.n_work == plan.n_seg and plan.seg_chunks >= 2
    # the old (ceil(D / BLOCK_D), N) grid had 4-16 programs here
    assert plan_launch(1, 16 * K, 256, sm_count=132, split="never").programs(64) == 4


def test_plan_options():
    assert not plan_launch(1, 16 * K, 256, sm_count=0).split  # the interpreter's default
    assert not plan_launch(1, 16 * K, 256, sm_count=132, varlen=True).split  # packed: one pass
    assert not plan_launch(1, 3 * BLOCK_T, 16, sm_count=132).split  # too short to cut
    forced = plan_launch(64, 300, 512, sm_count=2, split="always")
    assert forced.split and forced.n_seg == 3 and forced.seg_chunks == 2
    with pytest.raises(ValueError, match="split: expected"):
        plan_launch(1, 64, 16, sm_count=1, split="sometimes")
    assert geometry.work_bucket(1) == 1 and geometry.work_bucket(70_000) == geometry.work_bucket(65_536)
    assert geometry.checkpoint_rows(3, 2, 130, varlen=False) == 6


# ----------------------------------------------------------------------------- config choice
tuning = pytest.importorskip("vmiseq.kernels.tuning", reason="triton is not installed")


def _cfg(bd):
    import triton

    return triton.Config({"BLOCK_D": bd, "LOOP_STAGES": 1}, num_warps=4)


def test_tuner_picks_the_fastest_and_returns_what_it_launched(monkeypatch):
    import triton.testing

    launched = []
    a, b, pinned = _cfg(16), _cfg(32), _cfg(64)
    monkeypatch.setattr(triton.testing, "do_bench", lambda fn, **kw: (fn(), {16: 2.0, 32: 1.0}[launched[-1]])[1])
    t = tuning.Tuner("fwd")
    cfg = t.run(("k",), [a, b], lambda c: launched.append(c.kwargs["BLOCK_D"]), pinned)
    assert cfg is b and launched[-1] == 32
    launched.clear()
    assert t.run(("k",), [a, b], lambda c: launched.append(c.kwargs["BLOCK_D"]), pinned) is b
    assert launched == [32]  # cached: no second tuning


def test_tuner_without_autotune_uses_the_pinned_config(monkeypatch):
    monkeypatch.setenv(tuning.AUTOTUNE_ENV, "0")
    launched = []
    pinned = _cfg(64)
    cfg = tuning.Tuner("bwd").run(("k",), [_cfg(16), _cfg(32)], lambda c: launched.append(c), pinned)
    assert cfg is pinned and launched == [pinned]
    monkeypatch.delenv(tuning.AUTOTUNE_ENV)
    tuning.set_autotune(False)
    try:
        assert not tuning.autotune_enabled()
    finally:
        tuning.set_autotune(True)
    assert tuning.autotune_enabled()


def test_tuner_falls_back_to_pinned_when_configs_fail(monkeypatch):
    import triton.testing

    pinned = _cfg(64)

    def launch(c):
        if c is not pinned:
            raise RuntimeError("out of resources")

    monkeypatch.setattr(triton.testing, "do_bench", lambda fn, **kw: fn())
    t = tuning.Tuner("fwd")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert t.run(("k",), [_cfg(16), _cfg(32)], launch, pinned) is pinned  # every config fails
        assert t.run(("j",), [_cfg(16)], launch, pinned) is pinned  # the only candidate fails
    assert any("pinned" in str(x.message) for x in w)
    with pytest.raises(RuntimeError, match="out of resources"):
        tuning.Tuner("fwd").run(("k",), [pinned], lambda c: launch(_cfg(8)), pinned)


def test_triton_version_check(monkeypatch):
    import triton

    from vmiseq.kernels import availability

    assert availability._version_tuple("3.8.0+git1234") == (3, 8, 0) and availability._version_tuple("3.4") == (3, 4)
    availability.triton_unavailable_reason.cache_clear()
    monkeypatch.setattr(triton, "__version__", "3.1.0")
    try:
        reason = availability.triton_unavailable_reason()
        assert "too old" in reason and not availability.triton_available()
    finally:
        availability.triton_unavailable_reason.cache_clear()
    monkeypatch.undo()
    assert availability.triton_available()
