"""The ``vmiseq`` command line.

    vmiseq generate --model runs/lm/model --prompt "And God said" --max-new-tokens 200
    vmiseq convert XS-ckpt.pth.tar vminet_xs_official

``generate`` prints the prompt, then each new piece of text as soon as its token is sampled
(constant memory per token for VMI-SA models). ``convert`` turns a released official VMINet
checkpoint into a ``save_pretrained`` folder (read without unpickling code).
"""
from __future__ import annotations

import argparse
import math
import sys
from typing import Callable, Optional, Sequence

DEVICE_TYPES = ("cpu", "cuda", "mps")


def _checked_device(name: str):
    """``--device`` as a torch.device that exists on this machine (checked before loading,
    so a bad device is not reported as unreadable weights)."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in DEVICE_TYPES:
        raise ValueError(f"--device: expected cpu, cuda, cuda:N or mps, got {name!r}")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"--device: {name!r} asked for, but this machine has no usable CUDA device; use --device cpu")
        if device.index is not None and device.index >= count:
            raise ValueError(f"--device: expected cuda:0 ... cuda:{count - 1} (this machine has {count}), got {name!r}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device: {name!r} asked for, but MPS is not available on this machine; use --device cpu")
    return device


def _number(kind: type, check: Callable[[float], bool], expected: str):
    """An argparse type: parse with ``kind``, then require ``check`` (NaN fails every check)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


def _generate(args: argparse.Namespace) -> int:
    import torch

    from .models.lm import VMISAForCausalLM

    device = _checked_device(args.device)
    model = VMISAForCausalLM.from_pretrained(args.model, map_location=str(device))
    model.eval()
    tok = model.tokenizer
    if tok is None:
        raise ValueError(f"--model: {args.model!r} was saved without a tokenizer; save it with model.tokenizer set")
    ids = tok.encode(args.prompt)
    if not ids:
        ids = [tok.eos_token_id]  # an empty prompt starts from the end-of-text marker
    eos = tok.eos_token_id if args.stop_at_eos else None
    stream = model.generate_stream(
        torch.tensor([ids], device=device),
        args.max_new_tokens,
        temperature=0.0 if args.greedy else args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        eos_token_id=eos,
        seed=args.seed,
    )
    out = sys.stdout
    out.write(args.prompt)
    out.flush()
    for piece in tok.stream_decode(int(t[0]) for t in stream):
        out.write(piece)
        out.flush()
    out.write("\n")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from .pretrained import convert_checkpoint

    out = convert_checkpoint(args.checkpoint, args.out, model=args.model)
    print(f"saved {out}; load it with vmiseq.create_model(NAME, pretrained={str(out)!r})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vmiseq", description="VMI-SA sequence models: tools.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    g = sub.add_parser("generate", help="stream text from a saved language model",
                       description="Stream text from a model saved by save_pretrained (e.g. experiments/lm.py's OUT/model).")
    g.add_argument("--model", required=True, help="directory written by VMISAForCausalLM.save_pretrained")
    g.add_argument("--prompt", default="", help="text to continue (default: empty, start of a document)")
    g.add_argument("--max-new-tokens", type=_number(int, lambda n: n >= 0, "an int >= 0"), default=200,
                   help="tokens to generate (default: %(default)s)")
    g.add_argument("--temperature", type=_number(float, lambda t: math.isfinite(t) and t >= 0, "a finite number >= 0"),
                   default=0.8, help="sampling temperature, 0 = greedy (default: %(default)s)")
    g.add_argument("--top-k", type=_number(int, lambda k: k > 0, "a positive int"), default=None,
                   help="sample among the k most likely tokens")
    g.add_argument("--top-p", type=_number(float, lambda p: 0.0 < p <= 1.0, "a probability in (0, 1]"), default=None,
                   help="nucleus sampling probability mass")
    g.add_argument("--greedy", action="store_true", help="always take the most likely token")
    g.add_argument("--seed", type=int, default=None, help="seed of the sampler (default: random)")
    g.add_argument("--stop-at-eos", action="store_true", help="stop at the end-of-text token")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default: %(default)s)")
    g.set_defaults(func=_generate)
    c = sub.add_parser("convert", help="convert an official VMINet checkpoint into a save_pretrained folder",
                       description="Convert a released official VMINet checkpoint (github yws-wxs/VMINet, *.pth.tar) "
                       "into a folder that create_model(NAME, pretrained=OUT) and VMINet.from_pretrained load.")
    c.add_argument("checkpoint", help="the downloaded official checkpoint file")
    c.add_argument("out", help="folder to write (replaced atomically if it exists)")
    c.add_argument("--model", default=None, help="registry name (default: inferred from the checkpoint's shapes)")
    c.set_defaults(func=_convert)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``vmiseq`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (ValueError, TypeError) as exc:
        print(f"vmiseq: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
