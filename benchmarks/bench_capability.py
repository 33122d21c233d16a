#!/usr/bin/env python
"""What each token mixer can do: recall, copying and induction in the same 2-layer model.

Every mixer -- the causal ``VMISALayer`` with its defaults (built as ``VMISALayer(dim,
causal=True)``, so it follows the library's default), each decay / alpha option, VMI-SA
with the ``expand`` that gives it GLA's state size, GLA and softmax attention -- goes into
the same ``VMISAForCausalLM`` (embedding, 2 residual blocks without MLP, final norm, tied
head) and is trained from scratch with the same optimiser and token budget on the tasks of
``vmiseq.tasks``:

- MQAR (Zoology): one model per (mixer, width) trained on a mixture of every (sequence
  length, key-value pairs) cell of the grid, evaluated cell by cell (a heat map);
- selective copying (Mamba); induction heads (trained at one length, also tested at 4x);
- copy at distance d = 2 ... 256 (one model per distance; sequences of d + 64 tokens).

Budget (full mode; run times in docs/capability.md): AdamW 3e-3, 5 % warm-up then cosine,
``--tokens-per-step`` tokens a step, at most ``--steps`` steps per model, a check on held-out
batches every ``--eval-every`` steps that stops a run once it scores >= 0.99
(a solved task costs no more steps). Copy distances stop growing for a mixer once it scores
at most twice chance at a shorter distance (a delay line it cannot hold at d, it cannot hold
at 2d). Reported accuracies are on separate test batches. State bytes are per sequence, from
the model's own streaming state (``LMState.nbytes``) after a sequence of the task's length.

    python benchmarks/bench_capability.py --jobs 2                 # full grid (widths 64, 128, 256)
    python benchmarks/bench_capability.py --jobs 6 --widths 64,128 # the run in docs/capability.md
    python benchmarks/bench_capability.py --quick                  # smoke run of the pipeline
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))  # the experiments' harness
from capability_plots import plot_all  # noqa: E402
from common import RESULTS_DIR, machine_info, print_table, progress, write_json  # noqa: E402
from harness import cosine_with_warmup  # noqa: E402

from vmiseq.layers.vmisa import VMISALayer  # noqa: E402
from vmiseq.models.lm import VMISAConfig, VMISAForCausalLM  # noqa: E402
from vmiseq.tasks import MQAR, CopyAtDistance, InductionHeads, SelectiveCopy, SyntheticTask, accuracy  # noqa: E402

MAX_LEN = 2048  # position tables (attention, alpha="position") cover every length tested
DEPTH = 2
TEST_SEED, VAL_SEED = 1_000_003, 2_000_003  # held-out batches: never drawn in training


@dataclass(frozen=True)
class Mixer:
    """A token mixer to benchmark: ``kind`` is "vmisa", "gla" or "attention"; ``options``
    are VMISALayer keyword arguments on top of ``VMISALayer(dim, causal=True)``."""

    name: str
    kind: str
    options: tuple = ()

    def build(self, dim: int, vocab_size: int) -> VMISAForCausalLM:
        """The benchmark's model with this mixer in both blocks."""
        config = VMISAConfig(vocab_size=vocab_size, dim=dim, depth=DEPTH, mixer=self.kind, mlp_ratio=0.0, max_len=MAX_LEN)
        model = VMISAForCausalLM(config)
        if self.kind == "vmisa":  # the layer as users build it: its own defaults plus our options
            for block in model.blocks:
                block.mixer = VMISALayer(dim, causal=True, **dict(self.options))
        return model


def gla_state_expand(dim: int) -> int:
    """The VMI-SA ``expand`` whose D-vector holds as many floats as GLA's key-value matrices."""
    gla = VMISAForCausalLM(VMISAConfig(vocab_size=2, dim=dim, depth=1, mixer="gla")).blocks[0].mixer
    return max(1, round(gla.n_heads * gla.dk * gla.dv / dim))


def mixers(dim: int, names: Sequence[str] | None = None) -> list[Mixer]:
    """Default VMI-SA, its options (those equal to the default dropped), VMI-SA at GLA's
    state size, GLA and attention; ``names`` keeps a subset."""
    default = VMISALayer(dim, causal=True)
    out = [Mixer("vmisa", "vmisa")]
    for key, values in (("decay", (None, "scalar", "input")), ("alpha", ("position", "constant"))):
        for value in values:
            current = default.decay_mode if key == "decay" else default.alpha_mode
            if value != current:
                opts = ((key, value),) + ((("max_len", MAX_LEN),) if value == "position" else ())
                out.append(Mixer(f"vmisa {key}={value}", "vmisa", opts))
    expand = gla_state_expand(dim)
    if expand != default.expand:
        out.append(Mixer(f"vmisa expand={expand}", "vmisa", (("expand", expand),)))
    out += [Mixer("gla", "gla"), Mixer("attention", "attention")]
    if names is not None:
        unknown = set(names) - {m.name for m in out}
        if unknown:
            raise ValueError(f"--mixers: unknown {sorted(unknown)}; expected names from {[m.name for m in out]}")
        out = [m for m in out if m.name in names]
    return out


@dataclass
class Budget:
    """How long each model trains (see the module docstring)."""

    steps: int = 200
    tokens_per_step: int = 1536
    lr: float = 3e-3
    eval_every: int = 100
    stop_at: float = 0.99
    test_sequences: int = 256

    def batch_size(self, task: SyntheticTask) -> int:
        return max(1, self.tokens_per_step // task.seq_len)


@torch.no_grad()
def evaluate(model: VMISAForCausalLM, task: SyntheticTask, sequences: int, seed: int) -> float:
    """Accuracy on ``sequences`` held-out sequences (in batches of about 8k tokens)."""
    model.eval()
    per_batch = max(1, 8192 // task.seq_len)
    hits = total = 0.0
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, sequences, per_batch):
        batch = task.sample(min(per_batch, sequences - start), gen)
        acc = accuracy(model(batch.inputs).logits, batch.targets)
        n = int((batch.targets != -100).sum())
        hits, total = hits + acc * n, total + n
    model.train()
    return hits / max(total, 1)


def train(model: VMISAForCausalLM, tasks: Sequence[SyntheticTask], budget: Budget, seed: int) -> dict:
    """Train on ``tasks`` (one task a step, in turn) until every one scores >= stop_at on its
    validation batches or the step budget is spent. Returns steps, wall and CPU seconds, last loss."""
    opt = torch.optim.AdamW(model.parameters(), lr=budget.lr, weight_decay=0.1, betas=(0.9, 0.98))
    sched = cosine_with_warmup(opt, max(1, budget.steps // 20), budget.steps, min_lr_ratio=0.1, warmup_start_ratio=0.1)
    streams = [t.batches(budget.batch_size(t), seed=seed + i) for i, t in enumerate(tasks)]
    val_sequences = max(32, 64 // len(tasks))
    t0, cpu0, step, loss = time.perf_counter(), time.process_time(), 0, float("nan")
    model.train()
    while step < budget.steps:
        batch = next(streams[step % len(streams)])
        out = model(batch.inputs, targets=batch.targets)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        step, loss = step + 1, out.loss.item()
        if step % budget.eval_every == 0 and all(evaluate(model, t, val_sequences, VAL_SEED) >= budget.stop_at for t in tasks):
            break
    return {"steps": step, "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - cpu0, "final_loss": loss}


def state_bytes(model: VMISAForCausalLM, seq_len: int) -> int:
    """Bytes of the model's streaming state for one sequence after ``seq_len`` tokens."""
    with torch.no_grad():
        ids = torch.zeros(1, seq_len, dtype=torch.long)
        return model(ids, output_state=True).state.nbytes()


@dataclass
class Plan:
    """The grid: widths, MQAR cells, copy distances and the other tasks' sizes."""

    widths: tuple = (64, 128, 256)
    width_mixers: tuple = ("vmisa", "gla")  # the mixers run (MQAR only) at the wider widths
    seq_lens: tuple = (64, 128, 256, 512)
    pairs: tuple = (4, 8, 16, 32, 64)
    mqar_vocab: int = 256
    distances: tuple = (2, 4, 8, 16, 32, 64, 128, 256)
    copy_span: int = 64  # scored positions per copy sequence (length = distance + span)
    small_vocab: int = 16  # copy, selective copy, induction
    selective: SelectiveCopy = field(default_factory=lambda: SelectiveCopy(context_len=64, num_tokens=8, vocab_size=16))
    induction_len: int = 64

    def mqar_cells(self) -> list[MQAR]:
        """Every (L, N) of the grid with 4N <= L (Zoology's condition: room for the queries)."""
        return [MQAR(L, N, self.mqar_vocab) for L in self.seq_lens for N in self.pairs if 4 * N <= L]


def _fit(mixer: Mixer, dim: int, tasks: Sequence[SyntheticTask], budget: Budget, seed: int) -> tuple[VMISAForCausalLM, dict]:
    """A fresh model (same seed for every mixer and task) trained on ``tasks``."""
    torch.manual_seed(seed)
    model = mixer.build(dim, tasks[0].vocab_size)
    return model, train(model, tasks, budget, seed)


def _log(mixer: Mixer, dim: int, what: str, run: dict, acc: float) -> None:
    print(f"  {mixer.name} w{dim} {what}: {run['steps']} steps, {run['cpu_seconds']:.0f} s CPU, accuracy {acc:.3f}", flush=True)


PARTS = ("mqar", "selective", "induction", "copy")


def run_part(mixer: Mixer, dim: int, part: str, plan: Plan, budget: Budget, seed: int) -> dict:
    """One task family (``PARTS``) for one (mixer, width): the result fields it fills."""
    res: dict = {}
    if part == "mqar":
        cells = plan.mqar_cells()
        model, res["mqar_train"] = _fit(mixer, dim, cells, budget, seed)
        res["params"] = model.num_parameters(non_embedding=True)
        res["mqar"] = [{"seq_len": c.seq_len, "pairs": c.num_pairs, "accuracy": evaluate(model, c, budget.test_sequences, TEST_SEED)}
                       for c in cells]
        res["mqar_mean"] = sum(c["accuracy"] for c in res["mqar"]) / len(cells)
        res["state_bytes"] = {L: state_bytes(model, L) for L in plan.seq_lens}
        _log(mixer, dim, "MQAR (mean of cells)", res["mqar_train"], res["mqar_mean"])
    elif part == "selective":
        model, run = _fit(mixer, dim, [plan.selective], budget, seed)
        res["selective_copy"] = dict(run, accuracy=evaluate(model, plan.selective, budget.test_sequences, TEST_SEED))
        _log(mixer, dim, "selective copy", run, res["selective_copy"]["accuracy"])
    elif part == "induction":
        ind = InductionHeads(plan.induction_len, plan.small_vocab)
        model, run = _fit(mixer, dim, [ind], budget, seed)
        long = InductionHeads(4 * plan.induction_len, plan.small_vocab)
        res["induction"] = dict(run, accuracy=evaluate(model, ind, budget.test_sequences, TEST_SEED),
                                accuracy_4x=evaluate(model, long, budget.test_sequences, TEST_SEED))
        _log(mixer, dim, "induction", run, res["induction"]["accuracy"])
    elif part == "copy":
        res["copy"], chance = [], 1.0 / plan.small_vocab
        for d in plan.distances:
            failed = [c["distance"] for c in res["copy"] if c["accuracy"] is not None and c["accuracy"] <= 2 * chance]
            if failed:  # a delay line it cannot hold at d, it cannot hold at 2d: save the budget
                res["copy"].append({"distance": d, "accuracy": None, "skipped": f"<= 2x chance at distance {failed[0]}"})
                continue
            task = CopyAtDistance(d, d + plan.copy_span, plan.small_vocab)
            model, run = _fit(mixer, dim, [task], budget, seed)
            res["copy"].append(dict(run, distance=d, accuracy=evaluate(model, task, budget.test_sequences, TEST_SEED)))
            _log(mixer, dim, f"copy d={d}", run, res["copy"][-1]["accuracy"])
    else:
        raise ValueError(f"part: expected one of {PARTS}, got {part!r}")
    return res


def run_mixer(mixer: Mixer, dim: int, plan: Plan, budget: Budget, seed: int, full_suite: bool) -> dict:
    """Every task for one (mixer, width); ``full_suite`` False runs MQAR only."""
    res: dict = {"mixer": mixer.name, "kind": mixer.kind, "options": dict(mixer.options), "width": dim}
    for part in PARTS if full_suite else ("mqar",):
        res.update(run_part(mixer, dim, part, plan, budget, seed))
    return res


def quick_settings() -> tuple[Plan, Budget, list[str]]:
    """The --quick smoke run: tiny grid, few steps (checks the pipeline, not the mixers)."""
    plan = Plan(widths=(64,), seq_lens=(64,), pairs=(4, 8), distances=(2, 8),
                selective=SelectiveCopy(context_len=32, num_tokens=4, vocab_size=16), induction_len=32)
    return plan, Budget(steps=30, tokens_per_step=1024, eval_every=1000, test_sequences=64), ["vmisa", "gla", "attention"]


def solved_up_to(copy: list[dict], threshold: float = 0.99) -> int:
    """The largest distance d such that every distance <= d scored >= threshold (0: none)."""
    best = 0
    for c in copy:
        if c["accuracy"] is None or c["accuracy"] < threshold:
            break
        best = c["distance"]
    return best


def summary_rows(results: list[dict]) -> list[dict]:
    """One table row per (mixer, width); a task not (yet) run shows as NaN."""
    nan, rows = float("nan"), []
    for r in results:
        row = {"mixer": r["mixer"], "width": r["width"]}
        if "state_bytes" in r:
            longest = max(r["state_bytes"])
            row.update({f"state B/seq @{longest}": r["state_bytes"][longest], "MQAR mean": r["mqar_mean"]})
        if r["width"] == min(x["width"] for x in results) and not r["mixer"].startswith("vmisa expand="):
            row.update({"sel. copy": r.get("selective_copy", {}).get("accuracy", nan),
                        "induction": r.get("induction", {}).get("accuracy", nan),
                        "induction 4x": r.get("induction", {}).get("accuracy_4x", nan),
                        "copy >=0.99 up to d": solved_up_to(r["copy"]) if "copy" in r else nan})
        rows.append(row)
    columns = list(dict.fromkeys(k for row in rows for k in row))  # every column any row has
    return [{c: row.get(c, nan) for c in columns} for row in rows]


def load_results(path: Path) -> list[dict]:
    """Results of a finished run (its JSON) or of an interrupted one (its .partial.jsonl)."""
    if path.suffix == ".jsonl":
        merged: dict[tuple, dict] = {}
        for line in path.read_text().splitlines():
            r = json.loads(line)
            r.pop("part")
            merged.setdefault((r["mixer"], r["width"]), {}).update(r)
        results = list(merged.values())
    else:
        results = json.loads(path.read_text())["results"]
    for r in results:  # JSON keys are strings
        if "state_bytes" in r:
            r["state_bytes"] = {int(k): v for k, v in r["state_bytes"].items()}
    return results


def _job(args: tuple) -> dict:
    mixer, dim, part, plan, budget, seed, threads, t0 = args
    torch.set_num_threads(threads)
    r = run_part(mixer, dim, part, plan, budget, seed)
    print(f"[{time.perf_counter() - t0:7.0f}s] done: {mixer.name} width {dim} {part}", flush=True)
    return r


def run_jobs(jobs: list, plan: Plan, budget: Budget, seed: int, workers: int, threads: int, t0: float, partial: Path) -> list[dict]:
    """Every (mixer, width, part) job, merged into one result per (mixer, width) in the order
    of ``jobs``. ``workers`` > 1 runs them in that many processes, the longest (copy, then
    the wider models) first. Each finished job is appended to ``partial`` (JSON lines) at
    once, so an interrupted run keeps what it measured."""
    args = [(m, w, part, plan, budget, seed, threads, t0) for m, w, part in jobs]
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_text("")
    merged: dict[tuple, dict] = {}
    for m, w, _ in jobs:
        merged.setdefault((m.name, w), {"mixer": m.name, "kind": m.kind, "options": dict(m.options), "width": w})

    def keep(i: int, r: dict) -> None:
        m, w, part = jobs[i]
        merged[(m.name, w)].update(r)
        with partial.open("a") as f:
            f.write(json.dumps({"mixer": m.name, "width": w, "part": part, **r}) + "\n")

    if workers <= 1:
        for i, a in enumerate(progress(args, desc="jobs")):
            keep(i, _job(a))
    else:
        order = sorted(range(len(args)), key=lambda i: (args[i][2] != "copy", -args[i][1]))
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(_job, args[i]): i for i in order}
            for fut in as_completed(futures):
                keep(futures[fut], fut.result())
    return list(merged.values())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run under 2 minutes (tiny grid, 30 steps)")
    p.add_argument("--mixers", default=None, help="comma-separated mixer names (default: all; see --list)")
    p.add_argument("--list", action="store_true", help="print the mixer names and exit")
    p.add_argument("--widths", default=None, help="comma-separated widths (default: 64,128,256; quick: 64)")
    p.add_argument("--steps", type=int, default=None, help="most steps per model (default: 200; quick: 30)")
    p.add_argument("--tokens-per-step", type=int, default=None, help="tokens per training step (default: 1536)")
    p.add_argument("--eval-every", type=int, default=None, help="early-stop check interval (default: 100)")
    p.add_argument("--seed", type=int, default=0, help="seed of every model and task stream (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=1, help="(mixer, width) jobs run in parallel processes (default: %(default)s)")
    p.add_argument("--replot", default=None, metavar="JSON", help="redraw the table and plots of a results JSON (or .partial.jsonl) and exit")
    p.add_argument("--out", default=None, help="results JSON (default: results/capability.json; quick: capability_quick.json)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.replot:
        results = load_results(Path(args.replot))
        print_table(summary_rows(results), title="Capability map")
        plot_all(results, Path(args.replot.split(".")[0]))
        return
    if args.list:
        print("\n".join(m.name for m in mixers(64)))
        return
    plan, budget, names = quick_settings() if args.quick else (Plan(), Budget(), None)
    if args.mixers:
        names = [n.strip() for n in args.mixers.split(",")]
    if args.widths:
        plan.widths = tuple(int(w) for w in args.widths.split(","))
    for name in ("steps", "tokens_per_step", "eval_every"):
        if getattr(args, name) is not None:
            setattr(budget, name, getattr(args, name))
    out = Path(args.out) if args.out else RESULTS_DIR / ("capability_quick.json" if args.quick else "capability.json")
    start_machine = machine_info()
    t0, cpu0 = time.perf_counter(), time.process_time()
    jobs = [(m, plan.widths[0], part) for m in mixers(plan.widths[0], names)
            for part in (PARTS if not m.name.startswith("vmisa expand=") else ("mqar",))]
    for w in plan.widths[1:]:
        jobs += [(m, w, "mqar") for m in mixers(w, names) if m.name in plan.width_mixers]
    results = run_jobs(jobs, plan, budget, args.seed, args.jobs, args.threads, t0, out.with_suffix(".partial.jsonl"))
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0 + children.ru_utime + children.ru_stime
    table = print_table(summary_rows(results), title=f"Capability map ({wall / 60:.1f} min wall, {cpu / 60:.1f} min CPU)")
    pngs = plot_all(results, out.with_suffix(""))
    write_json(out, results, args, plan=str(plan), budget=vars(budget), wall_seconds=wall, cpu_seconds=cpu, machine_at_start=start_machine, loadavg_at_end=list(os.getloadavg()),
               table=table, plots=[str(p) for p in pngs])


if __name__ == "__main__":
    main()
