"""Compile the scan kernels for a GPU target without a GPU, and report their resources.

Triton can lower a kernel all the way to a cubin with its bundled ``ptxas`` on a machine
with no GPU. This catches lowering errors (``tl.gather``, ``tl.associative_scan``, dtype
handling) in CPU-only CI, and ``ptxas -v`` tells registers and spills per config, which is
how the autotuning space in :mod:`.triton_scan` was pruned. Must run WITHOUT
``TRITON_INTERPRET`` (the interpreter replaces the JIT functions).

    python -m vmiseq.kernels.compile_check --arch 90 --dtype bf16
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass

DTYPES = {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32", "fp64": "fp64"}


@dataclass
class Resources:
    kernel: str
    block_d: int
    num_warps: int
    maxnreg: int | None
    num_stages: int  # LOOP_STAGES
    decay: str  # "none", "token" or "channel"
    dtype: str
    registers: int
    spill_bytes: int
    vector_loads: bool  # some ld.global with more than one element per instruction


def _signature(fn, dtype: str, acc: str, consts: dict, gate: str | None = None) -> tuple[dict, dict]:
    """Argument types as the launcher passes them, and the 16-divisibility Triton's JIT
    would infer for pointers and for strides / sizes that are multiples of 16."""
    low = {"q_ptr", "v_ptr", "y_ptr", "dy_ptr", "dq_ptr", "dv_ptr"}
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in consts:
            sig[name] = "constexpr"
            continue
        if name.endswith("_ptr"):
            if name in low:
                sig[name] = "*" + dtype
            elif name in ("pos_ptr", "ckoff_ptr"):
                sig[name] = "*i64"
            elif name == "cu_ptr":
                sig[name] = "*i32"
            elif gate and name in ("alpha_ptr", "decay_ptr"):  # gates loaded in their own dtype
                sig[name] = "*" + gate
            else:
                sig[name] = "*" + acc
        else:
            sig[name] = "i32"
        attrs[(i,)] = [["tt.divisibility", 16]]
    return sig, attrs


def _ptxas_usage(ptx: str, arch: int) -> tuple[int, int]:
    import triton

    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        out = subprocess.run(
            [ptxas, f"-arch=sm_{arch}a" if arch >= 90 else f"-arch=sm_{arch}", "-v", src, "-o", os.path.join(tmp, "k.cubin")],
            capture_output=True, text=True, check=True,
        ).stderr
    regs = int(re.search(r"Used (\d+) registers", out).group(1))
    spills = sum(int(x) for x in re.findall(r"(\d+) bytes spill (?:stores|loads)", out))
    return regs, spills


def compile_variant(
    kernel: str, block_d: int, num_warps: int, num_stages: int, decay: str, dtype: str = "bf16", arch: int = 90,
    maxnreg: int | None = None, gate: str | None = None, **flags: bool,
) -> Resources:
    """Compile one specialisation of ``vmisa_fwd_kernel`` / ``vmisa_bwd_kernel`` (``kernel``
    "fwd" / "bwd"), or of ``segment_carry_kernel`` ("carry", with ``num_stages`` the
    power-of-two segment count), to a cubin (``flags`` override the constexpr switches)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from . import triton_kernels as tk
    from . import triton_scan as ts

    if ts.INTERPRET:
        raise RuntimeError("compile_check: unset TRITON_INTERPRET (the interpreter has no compiler)")
    acc = "fp64" if dtype == "fp64" else "fp32"
    if kernel == "carry":  # the split path's segment-carry scan: block_d x num_stages (= NSEG_P2) tile
        fn = tk.segment_carry_kernel
        consts = dict(HAS_DECAY=decay != "none", REVERSE=False, NSEG_P2=num_stages,
                      LOG2_NSEG=num_stages.bit_length() - 1, BLOCK_D=block_d, NATIVE_SCAN=True)
    else:
        fn = tk.vmisa_fwd_kernel if kernel == "fwd" else tk.vmisa_bwd_kernel
        consts = dict(
            BLOCK_T=ts.BLOCK_T, LOG2_T=ts.LOG2_BLOCK_T, BLOCK_D=block_d, ALPHA_PER_CH=False,
            HAS_DECAY=decay != "none", DECAY_PER_CH=decay == "channel", BETA_PER_CH=True, USE_MASK=True,
            VARLEN=False, NATIVE_SCAN=True, SUMMARY=False, LOOP_STAGES=num_stages,
        )
        if kernel == "bwd":
            consts["NEED_DDECAY"] = decay != "none"
    if kernel != "carry":
        # Triton's JIT specialises integer arguments equal to 1: a gate's unit channel stride
        # is a constant at run time, which is what lets its (BLOCK_T, BLOCK_D) tile vectorise
        consts.update(stride_ad=1, stride_dd=1)
    consts.update(flags)  # e.g. VARLEN=True, ALPHA_PER_CH=True, BETA_PER_CH=False, USE_MASK=False, SUMMARY=True
    sig, attrs = _signature(fn, DTYPES[dtype], acc, consts, gate)
    compiled = triton.compile(
        ASTSource(fn, sig, constexprs=consts, attrs=attrs),
        target=GPUTarget("cuda", arch, 32),
        options=dict(num_warps=num_warps, num_stages=1, **({"maxnreg": maxnreg} if maxnreg else {})),
    )
    ptx = compiled.asm["ptx"]
    regs, spills = _ptxas_usage(ptx, arch)
    # vector loads: ld.global.v2/v4/v8, or 8/16-byte cp.async copies (the pipelined loop's loads)
    vector = bool(re.search(r"ld\.global(?:\.\w+)*\.v[248]", ptx)
                  or re.search(r"cp\.async\.c[ag]\.shared\.global[^\n]*\], (?:0x10|0x8|16|8)\b", ptx))
    return Resources(kernel, block_d, num_warps, maxnreg, num_stages, decay, dtype, regs, spills, vector)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 (H100), 80 (A100)")
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    p.add_argument("--block-d", type=int, nargs="+", default=[16, 32, 64, 128])
    p.add_argument("--warps", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--stages", type=int, nargs="+", default=[1, 2], help="LOOP_STAGES (chunk-loop pipelining depth)")
    p.add_argument("--decay", nargs="+", default=["none", "token", "channel"], choices=["none", "token", "channel"])
    p.add_argument("--json", help="also write the table to this JSON file")
    args = p.parse_args(argv)
    rows = []
    print(f"{'kernel':6} {'BLOCK_D':>7} {'warps':>5} {'stages':>6} {'decay':>7} {'regs':>5} {'spill B':>8} vec")
    for kernel, bd, w, s, d in itertools.product(("fwd", "bwd"), args.block_d, args.warps, args.stages, args.decay):
        r = compile_variant(kernel, bd, w, s, d, args.dtype, args.arch)
        rows.append(asdict(r))
        print(f"{kernel:6} {bd:7d} {w:5d} {s:6d} {d:>7} {r.registers:5d} {r.spill_bytes:8d} {'yes' if r.vector_loads else 'no'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"arch": args.arch, "dtype": args.dtype, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
