#!/usr/bin/env python
"""VMINet throughput (images/s, CPU): vmiseq's VMINet against a plain NCHW re-implementation
of the official model (``official_vminet.py``), same weights, same batch, same run.

Measured for each batch size:
  * training: forward + backward + AdamW step, train mode (batch-statistics BatchNorm);
  * inference: eval mode, no_grad — vmiseq unfused and after ``fuse()`` (BatchNorms folded).
Before timing, outputs are checked to agree (eval and train mode, and after fusing).

Writes a Markdown table, ``results/vminet_speed.json`` and ``results/vminet_speed.png``.
Run on an idle machine: ``python benchmarks/bench_vminet.py`` (the JSON records the load).
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, machine_info, print_table, save_plot, time_fn, write_json  # noqa: E402
from official_vminet import OfficialVMINet  # noqa: E402

import vmiseq  # noqa: E402
from vmiseq.models.vminet import convert_official_state_dict  # noqa: E402


def build_pair(model: str, version: int, img_size: int, seed: int = 0):
    """(official reference, vmiseq model) holding identical weights."""
    variants = {"vminet_ti": (24, 2), "vminet_xs": (48, 2), "vminet_s": (48, 4), "vminet_b": (96, 2)}
    if model not in variants:
        raise ValueError(f"--model: expected one of {sorted(variants)}, got {model!r}")
    C, k = variants[model]
    torch.manual_seed(seed)
    ref = OfficialVMINet(base_dim=C, expand=k, img_size=img_size, version=version)
    with torch.no_grad():  # non-trivial BatchNorm statistics and betas, so the check means something
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    ours = vmiseq.create_model(model, img_size=img_size, rank_mask=version == 2)
    ours.load_state_dict(convert_official_state_dict(ref.state_dict(), ours))
    return ref, ours


def check_outputs(ref, ours, x) -> dict[str, float]:
    """Max |difference| of logits: eval, train (batch statistics) and fused eval."""
    out = {}
    with torch.no_grad():
        ref.eval(), ours.eval()
        r = ref(x)
        out["eval"] = (ours(x) - r).abs().max().item()
        fused = copy.deepcopy(ours).fuse()
        out["fused"] = (fused(x) - r).abs().max().item()
        ref.train(), ours.train()
        r_tr, o_tr = copy.deepcopy(ref)(x), copy.deepcopy(ours)(x)  # copies: keep running stats intact
        out["train"] = (o_tr - r_tr).abs().max().item()
    out["logit_scale"] = r.abs().max().item()
    return out


def train_step_fn(model, x, y):
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    return step


def infer_fn(model, x):
    def run():
        with torch.no_grad():
            model(x)

    return run


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vminet_ti", help="vminet_ti|xs|s|b (default: %(default)s)")
    p.add_argument("--version", type=int, default=2, choices=(1, 2), help="official block version (2: rank mask)")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch-sizes", default="16,64", help="comma-separated (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats (median) per measurement")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--out", default=str(RESULTS_DIR / "vminet_speed"), help="output prefix for .json/.png")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    ref, ours = build_pair(args.model, args.version, args.img_size)
    x_check = torch.randn(4, 3, args.img_size, args.img_size)
    check = check_outputs(ref, ours, x_check)
    print(f"max |logit difference| vs official (logits up to {check['logit_scale']:.2f}): "
          f"eval {check['eval']:.2e}, train {check['train']:.2e}, fused eval {check['fused']:.2e}")
    tol = 1e-3 * max(1.0, check["logit_scale"])
    if max(check["eval"], check["train"], check["fused"]) > tol:
        raise SystemExit(f"outputs differ from the official block beyond {tol:.1e}: {check}")

    rows = []
    for bs in [int(b) for b in args.batch_sizes.split(",") if b]:
        x = torch.randn(bs, 3, args.img_size, args.img_size)
        y = torch.randint(0, 1000, (bs,))
        row = {"batch": bs}
        # Fresh copies per measurement: optimiser steps change the weights, not the cost.
        t_ref = time_fn(train_step_fn(copy.deepcopy(ref), x, y), warmup=1, repeats=args.repeats)["median"]
        t_ours = time_fn(train_step_fn(copy.deepcopy(ours), x, y), warmup=1, repeats=args.repeats)["median"]
        row["train official img/s"] = bs / t_ref
        row["train vmiseq img/s"] = bs / t_ours
        row["train speed-up"] = t_ref / t_ours
        ref_eval, ours_eval = copy.deepcopy(ref).eval(), copy.deepcopy(ours).eval()
        fused = copy.deepcopy(ours).fuse()
        i_ref = time_fn(infer_fn(ref_eval, x), warmup=1, repeats=args.repeats)["median"]
        i_ours = time_fn(infer_fn(ours_eval, x), warmup=1, repeats=args.repeats)["median"]
        i_fused = time_fn(infer_fn(fused, x), warmup=1, repeats=args.repeats)["median"]
        row["infer official img/s"] = bs / i_ref
        row["infer vmiseq img/s"] = bs / i_ours
        row["infer fused img/s"] = bs / i_fused
        row["infer speed-up (fused)"] = i_ref / i_fused
        rows.append(row)
        print(row, flush=True)

    title = (f"{args.model} (v{args.version}) at {args.img_size}px, CPU {machine_info()['cpu']} "
             f"x{torch.get_num_threads()} threads; official = plain NCHW re-implementation, same weights, same run")
    print_table(rows, title=title)
    out = Path(args.out)
    write_json(out.with_suffix(".json"), rows, args, output_check=check)
    series = {
        "train: official": [r["train official img/s"] for r in rows],
        "train: vmiseq": [r["train vmiseq img/s"] for r in rows],
        "infer: official": [r["infer official img/s"] for r in rows],
        "infer: vmiseq fused": [r["infer fused img/s"] for r in rows],
    }
    save_plot(out.with_suffix(".png"), [f"batch {r['batch']}" for r in rows], series, xlabel="batch size",
              ylabel="images / s", title=f"{args.model} throughput on CPU ({args.img_size}px)", kind="bar")


if __name__ == "__main__":
    main()
