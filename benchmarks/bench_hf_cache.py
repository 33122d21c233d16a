"""Generation cache size per sequence inside transformers' ``generate``: the VMI-SA LM's
recurrent state against a GPT-2 KV cache of the same width and depth, by position.

    python benchmarks/bench_hf_cache.py [--tokens 2048] [--dim 128] [--depth 4]

Both models are randomly initialised (the cache size does not depend on the weights) and run
through ``model.generate`` with greedy decoding; a forward hook reads the cache each step
returns. Prints a table and writes ``benchmarks/results/hf_cache.json`` and ``.png``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import vmiseq  # noqa: F401 - registers vmiseq_lm with transformers
from vmiseq.integrations.hf import VMISAHFConfig, VMISAHFForCausalLM

RESULTS = Path(__file__).resolve().parent / "results"


def _kv_bytes(cache) -> int:
    total = 0
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


def trace(model, tokens: int, size_of) -> list[int]:
    sizes: list[int] = []

    def hook(_mod, _args, out):
        cache = out.get("cache", None) if hasattr(out, "get") else None
        if cache is None:
            cache = out.get("past_key_values", None)
        sizes.append(size_of(cache))

    handle = model.register_forward_hook(hook)
    try:
        with torch.no_grad():
            model.generate(torch.zeros(1, 1, dtype=torch.long), max_new_tokens=tokens, do_sample=False, min_new_tokens=tokens)
    finally:
        handle.remove()
    return sizes


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=2048, help="tokens to generate (default: %(default)s)")
    p.add_argument("--dim", type=int, default=128, help="model width (default: %(default)s)")
    p.add_argument("--depth", type=int, default=4, help="blocks (default: %(default)s)")
    p.add_argument("--vocab", type=int, default=256, help="vocabulary size (default: %(default)s)")
    args = p.parse_args(argv)
    if args.tokens < 16:
        p.error(f"--tokens: expected at least 16, got {args.tokens}")
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    vmisa = VMISAHFForCausalLM(VMISAHFConfig(vocab_size=args.vocab, dim=args.dim, depth=args.depth)).eval()
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=args.vocab, n_embd=args.dim, n_layer=args.depth, n_head=4,
                                      n_positions=args.tokens + 8, bos_token_id=0, eos_token_id=0)).eval()
    rows = {
        "VMI-SA (vmiseq_lm)": trace(vmisa, args.tokens, lambda c: c.nbytes()),
        "GPT-2 (KV cache)": trace(gpt2, args.tokens, _kv_bytes),
    }
    n = len(rows["VMI-SA (vmiseq_lm)"])
    marks = sorted({p for p in (1, 16, 256, 1024, 4096, 16384) if p <= n} | {n})
    print(f"cache bytes per sequence inside transformers' generate (width {args.dim}, {args.depth} blocks)")
    print(f"{'model':<22}" + "".join(f"{'pos ' + str(m):>14}" for m in marks))
    for name, sizes in rows.items():
        print(f"{name:<22}" + "".join(f"{sizes[m - 1]:>14,}" for m in marks))
    RESULTS.mkdir(exist_ok=True)
    payload = {"args": vars(args), "positions": list(range(1, args.tokens + 1)), "bytes": rows}
    (RESULTS / "hf_cache.json").write_text(json.dumps(payload))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, sizes in rows.items():
        ax.plot(range(1, len(sizes) + 1), sizes, label=name)
    ax.set(xscale="log", yscale="log", xlabel="position (tokens generated)", ylabel="cache bytes per sequence")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(RESULTS / "hf_cache.png", dpi=120)
    print(f"wrote {RESULTS / 'hf_cache.json'} and {RESULTS / 'hf_cache.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
