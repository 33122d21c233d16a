#!/usr/bin/env python
"""Training comparison: VMI-SA vs the Transformer and GLA baselines, same harness and budget.

Runs ``experiments/lm.py`` once per (mixer, context) on character-level tiny-shakespeare
(first 90 % train, last 10 % validation) at nanoGPT's CPU "baby" budget: width 128, 4 blocks,
batch 12 x context 64, 2,000 steps. Longer contexts keep the same token budget (fewer
sequences per step). Each run is a separate process, one after the other, so the wall-clock
columns compare like with like; the validation loss is over the whole held-out split.

    python benchmarks/bench_lm.py
    python benchmarks/bench_lm.py --contexts 64 --mixers vmisa,attention --steps 200   # quicker
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))  # the experiments' harness
from common import RESULTS_DIR, load, print_table, write_json  # noqa: E402
from harness import ArgumentProblem, run_script  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
TOKENS_PER_STEP = 12 * 64  # nanoGPT baby: batch 12, context 64


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA), help="character-level corpus (default: %(default)s)")
    p.add_argument("--mixers", default="vmisa,attention,gla", help="comma-separated mixers (default: %(default)s)")
    p.add_argument("--contexts", default="64,256,1024", help="context lengths (default: %(default)s)")
    p.add_argument("--steps", type=int, default=2000, help="steps at context 64; longer contexts keep the token budget (default: %(default)s)")
    p.add_argument("--out-dir", default=str(RESULTS_DIR / "lm"), help="runs and results (default: %(default)s)")
    p.add_argument("--extra", action="append", default=[], metavar="MIXER=ARGS",
                   help="extra experiments/lm.py flags for one mixer, e.g. 'vmisa=--lr 2e-3' (repeatable)")
    args = p.parse_args(argv)
    if not Path(args.data).is_file():
        raise ArgumentProblem(f"--data: expected a text file, got {args.data!r} (not found)")
    extra = {}
    for item in args.extra:
        mixer, _, flags = item.partition("=")
        extra[mixer] = flags.split()
    budget = args.steps * TOKENS_PER_STEP
    rows = []
    for ctx in [int(c) for c in args.contexts.split(",")]:
        batch = max(1, TOKENS_PER_STEP // ctx)
        steps = round(budget / (batch * ctx))
        for mixer in args.mixers.split(","):
            out = Path(args.out_dir) / f"{mixer}-ctx{ctx}"
            cmd = [
                sys.executable, str(ROOT / "experiments" / "lm.py"), "--data", args.data, "--tokenizer", "char",
                "--mixer", mixer, "--block-size", str(ctx), "--batch-size", str(batch), "--max-steps", str(steps),
                "--out-dir", str(out), "--sample-tokens", "200", "--no-progress", *extra.get(mixer, []),
            ]
            print(f"\n=== {mixer}, context {ctx}, batch {batch}, {steps} steps ===", flush=True)
            env = dict(os.environ, HF_DATASETS_OFFLINE="1")
            load_before = load()  # the machine's load: a shared machine slows every run it overlaps
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stderr[-3000:])
                raise SystemExit(f"run failed: {' '.join(cmd)}")
            res = json.loads((out / "results.json").read_text())
            rows.append({
                "mixer": mixer, "context": ctx, "batch": batch, "steps": steps, "params": res["params"],
                "val_loss": res["val_loss"], "val_bpc": res["val_bpc"], "train_s": res["train_seconds"],
                "train_cpu_s": res.get("train_cpu_seconds"), "step_ms": res.get("step_ms_median"),
                "load": (load_before + load()) / 2,
            })
            print(f"{mixer}: val loss {res['val_loss']:.4f}, train {res['train_seconds']:.1f} s", flush=True)
            print(res.get("sample", "")[:300])
    print_table(rows, ["mixer", "context", "batch", "steps", "params", "val_loss", "val_bpc", "train_s", "train_cpu_s", "step_ms", "load"],
                title="Character-level tiny-shakespeare, same token budget per context")
    write_json(Path(args.out_dir) / "bench_lm.json", rows, args)


if __name__ == "__main__":
    run_script(main)
