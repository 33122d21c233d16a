#!/usr/bin/env python
"""VMINet beside MLLA on this CPU: parameters, MACs and throughput (images/s) of vminet_ti/xs/s/b
and mlla_t at 224 px, all measured in one run -- the comparison table both papers give.

For every model and batch size (16 and 64 by default):
  * training: forward + backward + AdamW step, train mode;
  * inference: eval mode, no_grad (VMINet also after ``fuse()``, its deployment form).
With ``--official`` (default on) the plain re-implementation of the official MLLA code
(``official_mlla.py``, same weights, outputs checked equal first) is timed too, so the vmiseq
MLLA is compared with the code the paper measured. Timings are interleaved: every round times
each (model, batch, mode) once, and the median over rounds is reported, so a change in machine
load hits every model alike; ratios are against mlla_t of the same run. MACs are counted on the
meta device (``count_vminet.count``, MACs = FLOPs / 2).

Writes a Markdown table, ``results/vision_models.json`` and ``results/vision_models.png``.
Run on an idle machine: ``python benchmarks/bench_vision_models.py`` (the JSON records the load).
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, machine_info, print_table, progress, save_plot, write_json  # noqa: E402
from count_vminet import count  # noqa: E402
from official_mlla import OfficialMLLA  # noqa: E402

import vmiseq  # noqa: E402
from vmiseq.models.mlla import convert_official_state_dict  # noqa: E402

# Paper figures: VMINet Table II (GMACs, ImageNet-1k top-1) and MLLA (GFLOPs as fvcore counts MACs).
PAPER = {
    "vminet_ti": dict(paper_gmacs=0.3, top1=70.7),
    "vminet_xs": dict(paper_gmacs=1.4, top1=78.6),
    "vminet_s": dict(paper_gmacs=2.3, top1=80.2),
    "vminet_b": dict(paper_gmacs=4.8, top1=82.1),
    "mlla_t": dict(paper_gmacs=4.2, top1=83.5),
}
BASELINE = "mlla_t"


def build_models(names: list[str], img_size: int, official: bool) -> dict[str, torch.nn.Module]:
    """The models to time; with ``official`` also the official MLLA holding mlla_t's weights."""
    torch.manual_seed(0)
    models = {n: vmiseq.create_model(n, img_size=img_size) for n in names}
    if official and BASELINE in models:
        ref = OfficialMLLA(img_size=img_size)
        models[BASELINE].load_state_dict(convert_official_state_dict(ref.state_dict(), models[BASELINE]))
        x = torch.randn(2, 3, img_size, img_size)
        with torch.no_grad():
            diff = (ref.eval()(x) - models[BASELINE].eval()(x)).abs().max().item()
        print(f"mlla_t vs official MLLA, same weights: max |logit difference| {diff:.2e}")
        if diff > 1e-3:
            raise SystemExit(f"mlla_t differs from the official MLLA by {diff:.2e}")
        models["mlla_t (official code)"] = ref
    return models


def make_jobs(models: dict[str, torch.nn.Module], batches: list[int], img_size: int) -> list[tuple]:
    """(model, batch, mode, callable) for every measurement."""
    jobs = []
    for name, model in models.items():
        for bs in batches:
            x = torch.randn(bs, 3, img_size, img_size)
            y = torch.randint(0, 1000, (bs,))
            net = copy.deepcopy(model).train()  # a private copy: optimiser steps change weights, not cost
            opt = torch.optim.AdamW(net.parameters(), lr=1e-5)

            def train(net=net, opt=opt, x=x, y=y):
                opt.zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(net(x), y).backward()
                opt.step()

            jobs.append((name, bs, "train", train))
            variants = [("infer", model.eval())]
            if hasattr(model, "fuse"):
                variants.append(("infer fused", copy.deepcopy(model).fuse()))
            for mode, m in variants:
                def infer(m=m, x=x):
                    with torch.no_grad():
                        m(x)

                jobs.append((name, bs, mode, infer))
    return jobs


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="vminet_ti,vminet_xs,vminet_s,vminet_b,mlla_t", help="comma-separated")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch-sizes", default="16,64", help="comma-separated (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds (median) after one warm-up round")
    p.add_argument("--official", action=argparse.BooleanOptionalAction, default=True,
                   help="also time the official MLLA code with mlla_t's weights")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--out", default=str(RESULTS_DIR / "vision_models"), help="output prefix for .json/.png")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n for n in args.models.split(",") if n]
    unknown = sorted(set(names) - set(PAPER))
    if unknown:
        p.error(f"--models: expected names from {sorted(PAPER)}, got {unknown}")
    batches = [int(b) for b in args.batch_sizes.split(",") if b]
    if args.rounds < 1:
        p.error(f"--rounds: expected at least 1 timed round, got {args.rounds}")
    load_before = os.getloadavg()

    counts = {n: count(n, args.img_size) for n in names}
    models = build_models(names, args.img_size, args.official)
    jobs = make_jobs(models, batches, args.img_size)
    times: dict[tuple, list[float]] = {(n, b, m): [] for n, b, m, _ in jobs}
    t_start, rows = time.time(), []
    for r in progress(range(args.rounds + 1), desc="rounds"):
        for name, bs, mode, fn in jobs:
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            print(f"  round {r}: {name} batch {bs} {mode}: {dt:.2f} s", flush=True)
            if r > 0:  # round 0 warms up every job (allocator, oneDNN primitives)
                times[(name, bs, mode)].append(dt)
        print(f"round {r} done after {time.time() - t_start:.0f} s, load {os.getloadavg()[0]:.1f}", flush=True)
        if r > 0:  # results after every round: a slow machine still leaves a complete table behind
            rows = report(times, r, counts, models, batches, args, load_before)

    return rows


def report(times, rounds_done, counts, models, batches, args, load_before) -> list[dict]:
    """Table, JSON and plot from the medians of the rounds timed so far."""
    ips = {key: key[1] / statistics.median(ts) for key, ts in times.items()}
    rows = []
    for name in models:
        base = name.split(" ")[0]
        params, macs = counts.get(base, (None, None))
        row = {"model": name, "params (M)": params / 1e6, "GMACs": macs / 1e9,
               "paper GMACs": PAPER[base]["paper_gmacs"], "ImageNet top-1 (paper)": PAPER[base]["top1"]}
        for bs in batches:
            for mode in ("train", "infer", "infer fused"):
                if (name, bs, mode) in ips:
                    row[f"{mode} img/s b{bs}"] = ips[(name, bs, mode)]
            if BASELINE in models:
                row[f"train x{BASELINE} b{bs}"] = ips[(name, bs, "train")] / ips[(BASELINE, bs, "train")]
                row[f"infer x{BASELINE} b{bs}"] = ips[(name, bs, "infer")] / ips[(BASELINE, bs, "infer")]
        rows.append(row)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    info = machine_info()
    title = (f"{args.img_size}px, CPU {info['cpu']} x{torch.get_num_threads()} threads, load "
             f"{load_before[0]:.1f} before / {os.getloadavg()[0]:.1f} after; median of {rounds_done} interleaved rounds")
    print_table(rows, columns, title=title)
    out = Path(args.out)
    write_json(out.with_suffix(".json"), rows, args, load_before=list(load_before),
               load_after=list(os.getloadavg()), rounds_done=rounds_done, raw_seconds={" / ".join(map(str, k)): v for k, v in times.items()})
    series = {f"{mode} b{bs}": [r.get(f"{mode} img/s b{bs}", float("nan")) for r in rows]
              for bs in batches for mode in ("train", "infer")}
    save_plot(out.with_suffix(".png"), [r["model"] for r in rows], series, xlabel="model", ylabel="images / s",
              title=f"CPU throughput at {args.img_size}px (same run)", kind="bar", logy=True)
    return rows


if __name__ == "__main__":
    main()
