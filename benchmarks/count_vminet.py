#!/usr/bin/env python
"""Parameters and multiply-accumulates of every VMINet variant, against the official figures.

MACs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (MACs = FLOPs / 2: convs
and matmuls; the element-wise VMI-SA sums are not counted, as in the official fvcore figures)
on the meta device, so even vminet_b at 224 px costs no real compute.
Writes a Markdown table and ``results/vminet_counts.json``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, print_table, write_json  # noqa: E402

from vmiseq.models.registry import create_model, list_models  # noqa: E402

# Official code (v1, measured) and the paper's Table II.
OFFICIAL = {
    "vminet_ti": dict(params_m=2.037, gmacs=0.35, paper_gmacs=0.3, top1=70.7),
    "vminet_xs": dict(params_m=7.440, gmacs=1.26, paper_gmacs=1.4, top1=78.6),
    "vminet_s": dict(params_m=13.347, gmacs=2.30, paper_gmacs=2.3, top1=80.2),
    "vminet_b": dict(params_m=28.387, gmacs=4.78, paper_gmacs=4.8, top1=82.1),
}


def count(name: str, img_size: int, **overrides) -> tuple[int, float]:
    """(parameters, MACs) of ``name`` at ``img_size``, on the meta device."""
    with torch.device("meta"):
        model = create_model(name, img_size=img_size, **overrides).eval()
    params = sum(p.numel() for p in model.parameters())
    x = torch.empty(1, model.config.in_chans, img_size, img_size, device="meta")
    with FlopCounterMode(display=False) as counter:
        model(x)
    return params, counter.get_total_flops() / 2


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--out", default=str(RESULTS_DIR / "vminet_counts.json"))
    args = p.parse_args(argv)
    rows = []
    for name in sorted(OFFICIAL, key=lambda n: OFFICIAL[n]["params_m"]):
        ref = OFFICIAL[name]
        p1, macs = count(name, args.img_size, rank_mask=False)
        p2, _ = count(name, args.img_size, rank_mask=True)
        rows.append({
            "model": name,
            "params v1 (M)": f"{p1 / 1e6:.3f}",
            "params v2 (M)": f"{p2 / 1e6:.3f}",
            "official params (M)": f"{ref['params_m']:.3f}",
            "params err v1 %": f"{100 * (p1 / 1e6 - ref['params_m']) / ref['params_m']:+.3f}",
            "params err v2 %": f"{100 * (p2 / 1e6 - ref['params_m']) / ref['params_m']:+.3f}",
            "GMACs": f"{macs / 1e9:.3f}",
            "official GMACs": f"{ref['gmacs']:.2f}",
            "GMACs err %": f"{100 * (macs / 1e9 - ref['gmacs']) / ref['gmacs']:+.1f}",
            "ImageNet top-1 (paper)": ref["top1"],
        })
    for name in list_models():
        if name not in OFFICIAL:
            entry_params, macs = count(name, create_model(name).config.img_size[0])
            rows.append({"model": name, "params v1 (M)": f"{entry_params / 1e6:.3f}", "GMACs": f"{macs / 1e9:.4f}"})
    print_table(rows, title=f"VMINet sizes at {args.img_size}px (v1: no rank mask, BatchNorm after g; v2: rank mask, no BatchNorm after g)")
    write_json(args.out, rows, args)
    return rows


if __name__ == "__main__":
    main()
