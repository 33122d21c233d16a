"""Synthetic capability tasks (vmiseq.tasks) and the capability benchmark's harness."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from vmiseq.layers.vmisa import VMISALayer
from vmiseq.tasks import IGNORE, MQAR, CopyAtDistance, InductionHeads, SelectiveCopy, accuracy

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
TASKS = [
    MQAR(seq_len=32, num_pairs=6, vocab_size=32),
    SelectiveCopy(context_len=20, num_tokens=5, vocab_size=10),
    InductionHeads(seq_len=24, vocab_size=8),
    CopyAtDistance(distance=5, seq_len=20, vocab_size=7),
]


@pytest.mark.parametrize("task", TASKS, ids=lambda t: type(t).__name__)
def test_shapes_ids_and_determinism(task):
    b = task.sample(9, seed=3)
    assert b.inputs.shape == b.targets.shape == (9, task.seq_len)
    assert b.inputs.dtype == b.targets.dtype == torch.long
    assert 0 <= int(b.inputs.min()) and int(b.inputs.max()) < task.vocab_size
    scored = b.targets[b.targets != IGNORE]
    assert scored.numel() > 0 and 0 <= int(scored.min()) and int(scored.max()) < task.vocab_size
    again = task.sample(9, seed=3)
    assert torch.equal(b.inputs, again.inputs) and torch.equal(b.targets, again.targets)
    assert not torch.equal(b.inputs, task.sample(9, seed=4).inputs)
    stream = list(task.batches(4, seed=1, num_batches=3))
    assert len(stream) == 3 and not torch.equal(stream[0].inputs, stream[1].inputs)
    assert all(torch.equal(a.inputs, c.inputs) for a, c in zip(stream, task.batches(4, seed=1, num_batches=3)))


def test_mqar_answers_are_the_paired_values():
    task = MQAR(seq_len=40, num_pairs=8, vocab_size=40)
    b = task.sample(16, seed=0)
    for x, y in zip(b.inputs.tolist(), b.targets.tolist()):
        keys, values = x[0:16:2], x[1:16:2]
        assert len(set(keys)) == 8 and all(1 <= k < 20 for k in keys) and all(20 <= v < 40 for v in values)
        pairs = dict(zip(keys, values))
        queries = [(t, x[t], y[t]) for t in range(16, 40) if y[t] != IGNORE]
        assert sorted(q[1] for q in queries) == sorted(keys)  # every key asked once
        assert all(pairs[k] == v for _, k, v in queries)
        assert all(x[t] == 0 for t in range(16, 40) if y[t] == IGNORE)  # blanks between queries
        assert all(y[t] == IGNORE for t in range(16))


def test_selective_copy_answers_data_in_order():
    task = SelectiveCopy(context_len=30, num_tokens=6, vocab_size=12)
    b = task.sample(8, seed=2)
    for x, y in zip(b.inputs.tolist(), b.targets.tolist()):
        data = [t for t in x[:30] if t != 0]
        assert len(data) == 6 and all(1 <= t <= 10 for t in data)
        assert x[30:] == [11] * 6 and y[30:] == data and y[:30] == [IGNORE] * 30


def test_induction_target_follows_the_first_trigger():
    task = InductionHeads(seq_len=16, vocab_size=6)
    b = task.sample(32, seed=5)
    for x, y in zip(b.inputs.tolist(), b.targets.tolist()):
        assert x[-1] == 5 and x[:-1].count(5) == 1
        first = x.index(5)
        assert first < 14 and y[-1] == x[first + 1] and y[:-1] == [IGNORE] * 15


def test_copy_at_distance_is_a_delay_line():
    b = CopyAtDistance(distance=3, seq_len=10, vocab_size=5).sample(4, seed=0)
    assert torch.equal(b.targets[:, 3:], b.inputs[:, :-3]) and bool((b.targets[:, :3] == IGNORE).all())


@pytest.mark.parametrize(
    "make, arg",
    [
        (lambda: MQAR(seq_len=10, num_pairs=4), "seq_len"),
        (lambda: MQAR(seq_len=64, num_pairs=8, vocab_size=16), "vocab_size"),
        (lambda: MQAR(num_pairs=0), "num_pairs"),
        (lambda: SelectiveCopy(context_len=3, num_tokens=4), "context_len"),
        (lambda: InductionHeads(seq_len=3), "seq_len"),
        (lambda: CopyAtDistance(distance=8, seq_len=8), "seq_len"),
        (lambda: CopyAtDistance(distance=0), "distance"),
        (lambda: MQAR().sample(0), "batch_size"),
    ],
)
def test_bad_arguments_name_themselves(make, arg):
    with pytest.raises(ValueError, match=arg):
        make()


def test_seed_type_is_checked():
    with pytest.raises(TypeError, match="seed"):
        MQAR().sample(2, seed="0")


def test_accuracy_counts_only_scored_positions():
    targets = torch.tensor([[IGNORE, 2, 1], [0, IGNORE, IGNORE]])
    logits = torch.nn.functional.one_hot(torch.tensor([[1, 2, 0], [0, 0, 0]]), 3).float()
    assert accuracy(logits, targets) == pytest.approx(2 / 3)
    assert math.isnan(accuracy(logits, torch.full_like(targets, IGNORE)))
    with pytest.raises(ValueError, match="logits"):
        accuracy(logits[:, :2], targets)


# ---------------------------------------------------------------- the benchmark harness
@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))
    import bench_capability

    yield bench_capability
    sys.path.remove(str(BENCH))


def test_default_mixer_is_the_layer_default(bench):
    models = {m.name: m for m in bench.mixers(16)}
    layer = models["vmisa"].build(16, 32).blocks[0].mixer
    assert layer.extra_repr() == VMISALayer(16, causal=True).extra_repr()
    # one entry per real option: the variants never repeat the default configuration
    reprs = [m.build(16, 32).blocks[0].mixer.extra_repr() for m in models.values() if m.kind == "vmisa"]
    assert len(set(reprs)) == len(reprs)
    assert {"gla", "attention"} <= set(models)


def test_state_matched_expand_equals_gla_state(bench):
    for dim in (32, 64):
        models = {m.name: m for m in bench.mixers(dim)}
        matched = next(m for name, m in models.items() if name.startswith("vmisa expand="))
        h = matched.build(dim, 8).init_state(1).layers[0].h
        S = models["gla"].build(dim, 8).init_state(1).layers[0].S
        assert h.numel() == S.numel()


def test_one_training_step_per_mixer(bench):
    task = MQAR(seq_len=16, num_pairs=3, vocab_size=16)
    for mixer in bench.mixers(16):
        torch.manual_seed(0)
        model = mixer.build(16, task.vocab_size)
        before = [p.detach().clone() for p in model.parameters()]
        run = bench.train(model, [task], bench.Budget(steps=1, tokens_per_step=64), seed=0)
        assert run["steps"] == 1 and math.isfinite(run["final_loss"]), mixer.name
        assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters())), mixer.name
        assert 0.0 <= bench.evaluate(model, task, 4, seed=1) <= 1.0


def test_pipeline_end_to_end(bench, tmp_path):
    """run_mixer, the summary table, the plots and the JSON on a micro grid (2 steps a model)."""
    plan = bench.Plan(widths=(16,), seq_lens=(12,), pairs=(2, 3), distances=(2, 4), small_vocab=8,
                      selective=SelectiveCopy(context_len=8, num_tokens=2, vocab_size=8), induction_len=8)
    budget = bench.Budget(steps=2, tokens_per_step=48, eval_every=1, test_sequences=4)
    mixer = next(m for m in bench.mixers(16) if m.name == "gla")
    res = bench.run_mixer(mixer, 16, plan, budget, seed=0, full_suite=True)
    assert [c["pairs"] for c in res["mqar"]] == [2, 3] and res["state_bytes"][12] > 0
    assert [c["distance"] for c in res["copy"]] == [2, 4]
    rows = bench.summary_rows([res])
    assert rows[0]["mixer"] == "gla" and "copy >=0.99 up to d" in rows[0]
    pngs = bench.plot_all([res], tmp_path / "cap")
    assert len(pngs) == 4 and all(p.stat().st_size > 0 for p in pngs)
    json.dumps(res)  # the results are plain JSON


def test_solved_up_to_stops_at_the_first_failure(bench):
    copy = [{"distance": 2, "accuracy": 1.0}, {"distance": 4, "accuracy": 0.5}, {"distance": 8, "accuracy": 1.0}]
    assert bench.solved_up_to(copy) == 2
    assert bench.solved_up_to([{"distance": 2, "accuracy": None}]) == 0
