#!/usr/bin/env python
"""Long streams: next-token loss against position, far past the training context.

``--part lm``: trains (or re-uses) language models with ``experiments/lm.py`` at nanoGPT's
CPU "baby" budget (width 128, 4 blocks, batch 12 x context 64, 2,000 steps) and measures the
mean next-token loss in log-spaced position bins over long held-out streams, the state
carried in chunks of 512 tokens:

- ``vmisa-streams``: the default VMI-SA LM (contiguous training streams of 4 windows,
  carried states); ``vmisa-streams-1024`` (not in the default list): streams of 16 windows
- ``vmisa-windows``: the earlier default: decay "scalar", independent windows from the zero
  state (``--decay scalar --stream-length 0``); ``vmisa-input-windows`` (not in the default
  list) isolates the training: the new decay trained on windows
- ``gla-streams`` / ``gla-windows``: the GLA baseline, both ways
- ``attention``: the Transformer baseline (learned positions end at the context): inside
  its context, then a sliding window (windows of 64 advancing by 32, each prediction sees
  at least 32 tokens)

on tiny-shakespeare (streams of 16,384 tokens = 256x the context) and on the KJV default
corpus (streams of 262,144 tokens = 4,096x). Streams (4 on tiny-shakespeare, 1 on KJV) start
at evenly spaced places of the held-out text, read cyclically; 32 more streams of 1,024
tokens sharpen the short bins. A measured model is cached (``length_eval.npz`` in its run);
``--no-train`` measures what is there, the last checkpoint of a run still training included.
The layer part streams 10^6 random tokens through a causal ``VMISALayer(dim=64)`` for each
decay and reports how much the output still responds to its input.

``--part forecast`` runs ``benchmarks/bench_length_forecast.py`` (a forecaster's error
against history length); ``--part all`` runs both.

    python benchmarks/bench_length.py                    # everything (trains 10 models: long)
    python benchmarks/bench_length.py --corpora ts --models vmisa-streams,vmisa-windows
    python benchmarks/bench_length.py --quick            # a smoke run: 60 steps, short streams
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, print_table, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
MODELS = {  # name -> experiments/lm.py flags
    "vmisa-streams": ["--mixer", "vmisa"],  # the default: decay "input", contiguous streams
    "vmisa-windows": ["--mixer", "vmisa", "--decay", "scalar", "--stream-length", "0"],  # the earlier default
    "gla-streams": ["--mixer", "gla"],
    "gla-windows": ["--mixer", "gla", "--stream-length", "0"],
    "attention": ["--mixer", "attention"],
    "vmisa-input-windows": ["--mixer", "vmisa", "--stream-length", "0"],  # ablation: new decay, old training
    "vmisa-streams-1024": ["--mixer", "vmisa", "--stream-length", "1024"],  # ablation: longer streams, fewer fresh rows
}
DEFAULT_MODELS = "vmisa-streams,vmisa-windows,gla-streams,gla-windows,attention"
CORPORA = {  # name -> (--data, stream length, long streams)
    "ts": (str(SHAKESPEARE), 16_384, 4),
    "kjv": ("kjv", 262_144, 1),
}
TARGET_BINS = {"ts": (1_024, 16_384), "kjv": (16_384, 262_144)}  # must not be worse than [32, 64)
SHORT_LENGTH, CHUNK, SHORT_WINDOW = 1_024, 512, 64


def train(name: str, corpus: str, out: Path, args) -> dict:
    """Train one model with experiments/lm.py (or re-use a finished run in ``out``)."""
    done = out / "results.json"
    if done.is_file() and (out / "model").is_dir() and not args.retrain:
        print(f"re-using {out}")
        return json.loads(done.read_text())
    cmd = [sys.executable, str(ROOT / "experiments" / "lm.py"), "--data", CORPORA[corpus][0], *MODELS[name],
           "--max-steps", str(args.steps), "--out-dir", str(out), "--sample-tokens", "0", "--no-progress"]
    if args.quick:
        cmd += ["--eval-interval", "30", "--eval-batches", "2", "--final-eval-windows", "50", "--warmup-steps", "10"]
    if (out / "checkpoints" / "last.ckpt").is_file() and not args.retrain:
        cmd += ["--resume", "last"]  # an interrupted run continues where it stopped
    print("training:", " ".join(cmd[1:]), flush=True)
    proc = subprocess.run(cmd, env=dict(os.environ, HF_DATASETS_OFFLINE="1"), capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr[-3000:])
        raise SystemExit(f"training failed: {' '.join(cmd)}")
    return json.loads(done.read_text())


def held_out_ids(corpus: str, model, cache: Path) -> np.ndarray:
    """Token ids of the held-out split, as experiments/lm.py makes it (last 10 %)."""
    from vmiseq.data.text import load_text, split_text, tokenize_cached

    _, val_text = split_text(load_text(CORPORA[corpus][0]), 0.1)
    return tokenize_cached(val_text, model.tokenizer, cache)


def per_position(model, ids: np.ndarray, length: int, n_long: int, n_short: int, window) -> tuple[np.ndarray, ...]:
    """Summed loss and count at every position of ``n_long`` streams of ``length`` tokens and
    ``n_short`` streams of ``SHORT_LENGTH``, starts evenly spaced over the held-out text.

    Also ``short``: at every position of the long streams, the loss of the same token with
    only 32-63 tokens of context (windows of 64 from the zero state, advancing by 32). That
    is the [32, 64) position bin of streams that start every 32 tokens through the same text
    the long bins read, so comparing a long bin with it asks, token for token, whether more
    context hurts; the 36-stream [32, 64) bin (about 1,100 tokens) is too small for that.
    """
    from vmiseq.streams import sliding_window_losses, stream_losses

    total, count, short = np.zeros(length), np.zeros(length), np.zeros(length)
    starts = [int(i * len(ids) / n_long) for i in range(n_long)]
    for i in range(n_long):  # one stream at a time: KJV's 262k tokens make 8k windows
        short += sliding_window_losses(model, ids, starts[i : i + 1], length, SHORT_WINDOW).sum(0).numpy()
    for n, size in ((n_long, length), (n_short, min(SHORT_LENGTH, length))):
        starts = [int(i * len(ids) / n) for i in range(n)]
        group = max(1, (1 << 20) // size)  # streams run side by side, ~1M tokens at a time
        for i in range(0, n, group):
            if window is None:
                loss = stream_losses(model, ids, starts[i : i + group], size, chunk=CHUNK)
            else:
                loss = sliding_window_losses(model, ids, starts[i : i + group], size, window)
            total[:size] += loss.sum(0).numpy()
            count[:size] += loss.shape[0]
    return total, count, short


def load_run(run: Path, corpus: str):
    """The trained model of a run: its saved ``model/`` when finished, else the model of its
    last checkpoint (a run still training). Returns (model, steps trained)."""
    from vmiseq.models.lm import VMISAConfig, VMISAForCausalLM

    if (run / "model").is_dir() and (run / "results.json").is_file():
        model = VMISAForCausalLM.from_pretrained(run / "model")
        return model.eval(), json.loads((run / "results.json").read_text())["steps"]
    from vmiseq.data.text import load_text
    from vmiseq.data.tokenizer import Tokenizer

    from vmiseq.checkpoints import load_checkpoint

    ckpt = load_checkpoint(run / "checkpoints" / "last.ckpt")  # never unpickles code
    hp = ckpt["hyper_parameters"]
    if hp["args"].get("tokenizer", "char") != "char":
        raise SystemExit(f"{run}: only finished runs (model/) of BPE models can be measured")
    model = VMISAForCausalLM(VMISAConfig.from_dict(hp["config"]))
    model.load_state_dict({k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")})
    model.tokenizer = Tokenizer.train_char(load_text(CORPORA[corpus][0]))  # as experiments/lm.py builds it
    model.run_args = hp["args"]
    return model.eval(), int(ckpt["global_step"])


def bin_means(total: np.ndarray, count: np.ndarray, bins) -> list[float]:
    return [float(total[a:b].sum() / count[a:b].sum()) for a, b in bins]


def run_lm(args) -> None:
    from vmiseq.streams import log_bins

    torch.set_num_threads(args.threads)
    runs = Path(args.runs_dir)
    rows, curves = [], {}
    for corpus in args.corpora.split(","):
        data, length, n_long = CORPORA[corpus]
        if corpus == "ts" and not Path(data).is_file():
            print(f"skipping tiny-shakespeare: {data} not found")
            continue
        if args.quick:
            length, n_long = min(length, 4_096), 2
        lo, hi = TARGET_BINS[corpus]
        hi = min(hi, length)
        bins = log_bins(32, length)
        for name in args.models.split(","):
            run = runs / f"{corpus}-{name}"
            if args.no_train and not (run / "results.json").is_file() and not (run / "checkpoints" / "last.ckpt").is_file():
                print(f"skipping {corpus} {name}: no trained run in {run}")
                continue
            if args.no_train:
                res = json.loads((run / "results.json").read_text()) if (run / "results.json").is_file() else {}
            else:
                res = train(name, corpus, run, args)
            model, steps = load_run(run, corpus)
            res = res or {"stream_length": getattr(model, "run_args", {}).get("stream_length", 0)}
            ids = held_out_ids(corpus, model, runs / ".cache")
            window = 64 if name == "attention" else None
            t0 = time.perf_counter()
            key = {"steps": steps, "length": length, "long": args.long_streams or n_long, "short": args.short_streams}
            cached = run / "length_eval.npz"  # a measured model is not measured again
            key["version"] = 2  # with the same-tokens short-context losses
            if cached.is_file() and json.loads(str(np.load(cached)["key"])) == key:
                total, count, short = (np.load(cached)[k] for k in ("total", "count", "short"))
            else:
                total, count, short = per_position(model, ids, length, key["long"], key["short"], window)
                np.savez(cached, total=total, count=count, short=short, key=json.dumps(key))
            means = bin_means(total, count, bins)
            early, late = bin_means(total, count, [(32, 64), (lo, hi)])
            n_streams = key["long"]
            late_long = float(total[lo:hi].sum() / (n_streams * (hi - lo)))  # the long streams alone
            same = float(short[lo:hi].sum() / (n_streams * (hi - lo)))
            row = {"corpus": corpus, "model": name, "steps": steps, "stream_length": res.get("stream_length", 0),
                   "val_loss": res.get("val_loss"), "early_32_64": early, "late": late, "late_bin": f"[{lo}, {hi})",
                   "late_long_streams": late_long, "same_tokens_32_64": same, "late_vs_same_tokens": late_long / same,
                   "target_met": late_long <= same, "eval_s": time.perf_counter() - t0,
                   "train_s": res.get("train_seconds")}
            row.update({f"[{a},{b})": m for (a, b), m in zip(bins, means)})
            rows.append(row)
            curves[f"{corpus}/{name}"] = {"bins": bins, "loss": means}
            print(f"{corpus} {name} ({steps} steps): [32,64) {early:.3f}, [{lo},{hi}) {late:.3f}; same tokens "
                  f"with 32-63 tokens of context {same:.3f} -> x{late_long / same:.4f}", flush=True)
        cols = (["model", "steps", "stream_length", "val_loss"] + [f"[{a},{b})" for a, b in bins]
                + ["same_tokens_32_64", "late_vs_same_tokens", "target_met"])
        print_table([r for r in rows if r["corpus"] == corpus], cols,
                    title=f"{corpus}: mean next-token loss by position (state carried in chunks of {CHUNK})")
    layer = [] if args.no_layer else layer_response(tokens=4_096 if args.quick else 1_000_000)
    out = Path(args.out)
    write_json(out.with_suffix(".json"), rows, args, curves=curves, layer=layer)
    plot(curves, out.with_suffix(".png"))


@torch.no_grad()
def layer_response(tokens: int = 1_000_000, chunk: int = 8_192, seed: int = 0) -> list[dict]:
    """Does a causal ``VMISALayer(dim=64)`` still respond to its input deep into a stream?

    Streams random float32 inputs and, at checkpoints, measures how much the next output
    changes when the next input is replaced by another random input, relative to the same
    replacement at position 100; also the RMS of the state.
    """
    from vmiseq.layers import VMISALayer

    marks = [100] + [m for m in (1_000, 10_000, 100_000, 400_000, 1_000_000) if m <= tokens]
    rows = []
    for name, kwargs in (("default (decay 'input')", {}), ("decay 'scalar'", {"decay": "scalar"}),
                         ("decay None (paper)", {"decay": None})):
        torch.manual_seed(seed)
        layer = VMISALayer(dim=64, causal=True, **kwargs).eval()
        gen = torch.Generator().manual_seed(seed + 1)
        x_a, x_b = torch.randn(1, 1, 64, generator=gen), torch.randn(1, 1, 64, generator=gen)
        state, pos, base = None, 0, None
        for mark in marks:
            while pos < mark:
                n = min(chunk, mark - pos)
                _, state = layer(torch.randn(1, n, 64, generator=gen), state, output_state=True)
                pos += n
            change = (layer(x_a, state) - layer(x_b, state)).norm().item()
            base = change if base is None else base
            rows.append({"layer": name, "position": mark, "response": change, "ratio_to_pos100": change / base,
                         "state_rms": state.h.pow(2).mean().sqrt().item()})
    print_table(rows, title="Causal VMISALayer(dim=64): output change when the next input is replaced (float32)")
    return rows


def plot(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    corpora = sorted({k.split("/")[0] for k in curves}, reverse=True)
    if not corpora:
        return
    fig, axes = plt.subplots(1, len(corpora), figsize=(6.5 * len(corpora), 4.2), squeeze=False)
    titles = {"ts": "tiny-shakespeare (held-out 10 %)", "kjv": "KJV Bible (held-out 10 %)"}
    for ax, corpus in zip(axes[0], corpora):
        for key, c in curves.items():
            if key.split("/")[0] != corpus:
                continue
            name = key.split("/")[1]
            centers = [np.sqrt(max(a, 1) * b) for a, b in c["bins"]]
            ax.plot(centers, c["loss"], marker="o", label=name, linestyle="--" if "windows" in name else "-")
        ax.axvline(64, color="grey", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel("position in the stream (tokens; training context 64 dotted)")
        ax.set_ylabel("mean next-token loss (nats)")
        ax.set_title(titles.get(corpus, corpus))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


def run_forecast(argv) -> None:
    path = Path(__file__).resolve().parent / "bench_length_forecast.py"
    if not path.is_file():
        print(f"skipping the forecast part: {path.name} is not in this tree")
        return
    spec = importlib.util.spec_from_file_location("bench_length_forecast", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(argv)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=("lm", "forecast", "all"), default="lm", help="which half to run (default: %(default)s)")
    p.add_argument("--corpora", default="ts,kjv", help=f"comma-separated, of {tuple(CORPORA)} (default: %(default)s)")
    p.add_argument("--models", default=DEFAULT_MODELS, help=f"comma-separated, of {tuple(MODELS)} (default: %(default)s)")
    p.add_argument("--steps", type=int, default=2000, help="training steps of every model (default: %(default)s)")
    p.add_argument("--runs-dir", default=str(RESULTS_DIR / "length" / "runs"), help="trained models (default: %(default)s)")
    p.add_argument("--retrain", action="store_true", help="train again even where a finished run exists")
    p.add_argument("--no-train", action="store_true", help="only measure: finished runs, or the last checkpoint of runs in progress")
    p.add_argument("--long-streams", type=int, default=0, help="long streams per corpus (default: 4 tiny-shakespeare, 1 KJV)")
    p.add_argument("--short-streams", type=int, default=32, help=f"extra streams of {SHORT_LENGTH} tokens (default: %(default)s)")
    p.add_argument("--no-layer", action="store_true", help="skip the VMISALayer response check (10^6 tokens)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the measurement (default: %(default)s)")
    p.add_argument("--out", default=str(RESULTS_DIR / "bench_length"), help="JSON and PNG path stem (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="smoke run: 60 steps, streams of 4,096 tokens")
    args, rest = p.parse_known_args(argv)
    bad = [m for m in args.models.split(",") if m not in MODELS] + [c for c in args.corpora.split(",") if c not in CORPORA]
    if bad:
        p.error(f"--models/--corpora: unknown names {bad}; expected models {list(MODELS)} and corpora {list(CORPORA)}")
    if args.quick:
        args.steps = min(args.steps, 60)
        args.runs_dir = str(Path(args.runs_dir).parent / "quick-runs")
        args.out = str(Path(args.out).parent / "bench_length_quick")
    if args.part in ("lm", "all"):
        if rest:
            p.error(f"unrecognized arguments: {rest}")
        run_lm(args)
    if args.part in ("forecast", "all"):
        run_forecast(rest if args.part == "forecast" else [])


if __name__ == "__main__":
    main()
