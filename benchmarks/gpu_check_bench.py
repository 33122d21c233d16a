"""The timing half of ``gpu_check.py``: do_bench over the benchmark shapes (eager and
CUDA-graphed, FLA's chunk_hgrn beside it), the targets, and the docs table."""
from __future__ import annotations

import datetime
import time
from pathlib import Path

import torch

from vmiseq.ops import vmisa_scan

K = 1024
SHAPES = [(1, 16 * K, 256), (4, 4 * K, 512), (8, 2 * K, 1024), (1, 64 * K, 256)]
DOCS_BEGIN, DOCS_END = "<!-- gpu_check:begin -->", "<!-- gpu_check:end -->"


def inputs(B, L, D, dtype, dev, decay, seed=0, strong=False):
    """q, v (dtype), alpha (fp32, small), decay (None, (B, L) or (B, L, D) fp32: in [0.9, 1),
    or [0, 1) when ``strong``), upstream gradient dy."""
    g = torch.Generator(device=dev).manual_seed(seed)
    q = torch.randn(B, L, D, device=dev, generator=g).to(dtype)
    v = torch.randn(B, L, D, device=dev, generator=g).to(dtype)
    alpha = torch.rand(B, L, device=dev, generator=g) * 0.1
    lo = 0.0 if strong else 0.9
    dec = None
    if decay == "token":
        dec = lo + (1 - lo) * torch.rand(B, L, device=dev, generator=g)
    elif decay == "channel":
        dec = lo + (1 - lo) * torch.rand(B, L, D, device=dev, generator=g)
    dy = torch.randn(B, L, D, device=dev, generator=g).to(dtype)
    return q, v, alpha, dec, dy


def timer(ctx):
    """ms per call: triton.testing.do_bench on CUDA (events, L2 flushed); one wall-clock call
    in the dry run (the interpreter is slow and the number meaningless)."""
    if ctx.cuda:
        import triton.testing

        return lambda fn: triton.testing.do_bench(fn, warmup=10, rep=50 if ctx.args.quick else 100)

    def once(fn):
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3

    return once


def ideal_bytes(B, L, D, elem, decay, backward):
    """Minimal traffic: q, v read and y written; fp32 alpha (B, L) and token decay read; the
    backward reads q, v, dy, alpha, decay and writes dq, dv, dalpha, ddecay."""
    big, tok = B * L * D, B * L
    n_tok = 1 + (decay == "token")
    fwd = 3 * big * elem + 4 * tok * n_tok
    return fwd + (5 * big * elem + 8 * tok * n_tok if backward else 0)


def graphed(fn):
    """fn captured in a CUDA graph (warmed up, hence tuned, on a side stream first)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g.replay


def _ours(q, v, alpha, dec, dy):
    leaves = [x.detach().requires_grad_(True) for x in (q, v, alpha) + ((dec,) if dec is not None else ())]
    d = leaves[3] if dec is not None else None

    def fwd():
        with torch.no_grad():
            return vmisa_scan(q, v, alpha, 1.0, decay=dec, backend="triton")

    def fwd_bwd():
        y = vmisa_scan(leaves[0], leaves[1], leaves[2], 1.0, decay=d, backend="triton")
        return torch.autograd.grad(y, leaves, dy)

    return fwd, fwd_bwd


def _fla(q, v, alpha, dec, dy):
    """chunk_hgrn(x, g) with x = alpha q v and g = log(decay) (zeros without decay), both
    precomputed outside the timing: favourable to FLA."""
    try:
        from fla.ops.hgrn import chunk_hgrn
    except ImportError:
        return None
    B, L, D = q.shape
    x = (alpha.unsqueeze(-1) * q.float() * v.float()).to(q.dtype).requires_grad_(True)
    g = torch.zeros(B, L, D, device=q.device) if dec is None else dec.log().unsqueeze(-1).expand(B, L, D)
    g = g.to(q.dtype).contiguous().requires_grad_(True)

    def fwd():
        with torch.no_grad():
            return chunk_hgrn(x, g)[0]

    def fwd_bwd():
        return torch.autograd.grad(chunk_hgrn(x, g)[0], (x, g), dy)

    return fwd, fwd_bwd


def section_bench(ctx):
    a = ctx.args
    shapes = SHAPES if ctx.cuda else [(1, 256, 16), (2, 128, 24)]
    dtypes = (["bf16"] if a.quick else ["bf16", "fp32"]) if ctx.cuda else ["fp32"]
    dtype_of = {"bf16": torch.bfloat16, "fp32": torch.float32}
    rows, errors = [], []
    for B, L, D in shapes:
        for dt in dtypes:
            for decay in ("none", "token"):
                q, v, alpha, dec, dy = inputs(B, L, D, dtype_of[dt], ctx.dev, decay, seed=6)
                ours, fla = _ours(q, v, alpha, dec, dy), _fla(q, v, alpha, dec, dy) if ctx.cuda else None
                for i, mode in enumerate(("fwd", "fwd+bwd")):
                    row = {"shape": f"({B},{L},{D})", "dtype": dt, "decay": decay, "mode": mode}
                    try:
                        row["ms"] = ctx.time(ours[i])
                        gb = ideal_bytes(B, L, D, dtype_of[dt].itemsize, decay, mode == "fwd+bwd")
                        row["GB/s"] = gb / (row["ms"] * 1e-3) / 1e9
                        row["% copy"] = 100 * row["GB/s"] / ctx.copy_gbs
                        if ctx.cuda:
                            row["graph ms"] = ctx.time(graphed(ours[i]))
                        if fla is not None:
                            row["fla ms"] = ctx.time(fla[i])
                            row["x fla"] = row["fla ms"] / row["ms"]
                    except Exception as e:  # one failing timing must not stop the others
                        row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
                        errors.append(row["error"])
                    rows.append(row)
                del q, v, alpha, dec, dy, ours, fla
    return {"rows": rows, "copy_GBps": ctx.copy_gbs, "fla": any("fla ms" in r for r in rows), "ok": not errors}


def targets(ctx, sections) -> list[dict]:
    """Forward >= 85 % of the copy bandwidth at every shape, dtype and decay (eager);
    forward+backward >= 2x chunk_hgrn at (1,16k,256) and (8,2k,1024)."""
    rows = sections.get("bench", {}).get("rows", [])
    out = []
    for r in rows:
        if r["mode"] == "fwd" and "% copy" in r:
            out.append({"target": "fwd >= 85% of copy", "shape": f"{r['shape']} {r['dtype']} {r['decay']}",
                        "value": r["% copy"], "met": r["% copy"] >= 85})
    fla_shapes = {"(1,16384,256)", "(8,2048,1024)"}
    for r in rows:
        if r["mode"] == "fwd+bwd" and r["shape"] in fla_shapes:
            value = r.get("x fla")
            out.append({"target": "fwd+bwd >= 2x FLA chunk_hgrn", "shape": f"{r['shape']} {r['dtype']} {r['decay']}",
                        "value": value if value is not None else "FLA not installed", "met": bool(value and value >= 2)})
    return out


def _fmt(x, spec=".3f"):
    return "-" if x is None else (format(x, spec) if isinstance(x, float) else str(x))


def docs_table(results) -> str:
    env = results["sections"].get("env", {})
    bench = results["sections"].get("bench", {})
    rows = {(r["shape"], r["dtype"], r["decay"], r["mode"]): r for r in bench.get("rows", [])}
    lines = [
        f"Measured by `benchmarks/gpu_check.py` on {env.get('device', '?')} "
        f"({datetime.date.today().isoformat()}, torch {env.get('torch', '?')}, triton {env.get('triton', '?')}); "
        f"device copy {_fmt(env.get('copy_GBps'), '.0f')} GB/s. Sections: "
        + ", ".join(f"{n} {s.get('status')}{'' if s.get('ok', True) else ' (check failed)'}"
                    for n, s in results["sections"].items()) + ".",
        "",
        "| shape | dtype | decay | fwd ms | fwd GB/s | fwd % copy | fwd graphed ms | fwd+bwd ms | graphed ms "
        "| FLA chunk_hgrn fwd+bwd ms | x FLA |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (shape, dt, decay, mode), f in rows.items():
        if mode != "fwd":
            continue
        b = rows.get((shape, dt, decay, "fwd+bwd"), {})
        lines.append(
            f"| {shape} | {dt} | {decay} | {_fmt(f.get('ms'))} | {_fmt(f.get('GB/s'), '.0f')} | "
            f"{_fmt(f.get('% copy'), '.1f')} | {_fmt(f.get('graph ms'))} | {_fmt(b.get('ms'))} | "
            f"{_fmt(b.get('graph ms'))} | {_fmt(b.get('fla ms'))} | {_fmt(b.get('x fla'), '.2f')} |"
        )
    met = [t for t in results.get("targets", [])]
    lines += ["", f"Targets met: {sum(t['met'] for t in met)} of {len(met)} (details in `benchmarks/results/gpu_check.json`)."]
    return "\n".join(lines)


def write_docs_table(path: Path, results) -> None:
    """Replace the text between the gpu_check markers of ``path`` (atomic rename)."""
    text = path.read_text()
    if DOCS_BEGIN not in text or DOCS_END not in text:
        raise ValueError(f"--docs: {path} has no {DOCS_BEGIN} ... {DOCS_END} markers")
    head, rest = text.split(DOCS_BEGIN, 1)
    _, tail = rest.split(DOCS_END, 1)
    new = f"{head}{DOCS_BEGIN}\n{docs_table(results)}\n{DOCS_END}{tail}"
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "x") as f:
        f.write(new)
    tmp.replace(path)
