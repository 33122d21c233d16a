"""Input checks shared by the layers: dtype policy, stream positions, non-finite results.

Policy (docs/core.md, "Input checks"): checks that only read shapes and dtypes always run;
checks that read values cost a pass or a host sync, so they run on the public entry points
in eager mode only (never under torch.compile) and read the smallest tensor that can tell:
the (B,) positions and the (B, D) state, never the (B, L, D) activations.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
from torch import Tensor

from ..ops.checks import check_position_values, require_integer, values_checkable


def check_dtype(name: str, x: Tensor, expected: torch.dtype) -> None:
    """One dtype per layer: ``x`` must have the parameters' dtype, except under autocast.

    A layer does not cast silently (half input would give float32 output, or fail deep
    inside a conv): convert the layer (``layer.to(x.dtype)``) or the input, or run under
    ``torch.autocast``, which casts per op and is the supported way to mix precisions.
    """
    if x.dtype != expected and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(
            f"{name}: expected dtype {expected} (the dtype of the layer's parameters), got {x.dtype}; "
            f"convert the layer (.to({x.dtype})) or the input (.to({expected})), or run under torch.autocast"
        )


def check_position_dtype(position: Tensor) -> None:
    require_integer("state.position", position)


def check_positions(position: Tensor) -> tuple[int, int]:
    """Eager check of a state's (B,) integer positions: >= 0; returns (min, max). One host sync."""
    return check_position_values("state.position", position)


def _all_finite(t: Tensor) -> bool:
    """One reduction in the common case (a sum is finite only if every element is; the
    per-element test runs only when the sum is not, e.g. overflowed from huge finite values)."""
    t = t.detach()  # a read, not part of the graph
    total = t.sum(dtype=torch.float64 if t.dtype == torch.float64 else torch.float32)
    return math.isfinite(float(total)) or bool(torch.isfinite(t).all())


def check_finite_state(
    module: nn.Module, h: Tensor, x: Tensor, h_in: Optional[Tensor], name: str = "x", what: str = "state"
) -> None:
    """Raise when the (B, D) state ``h`` after a call is NaN/inf, naming the cause.

    With a plain prefix sum (or any decay) every token's contribution reaches the final
    state, and NaN/inf propagate through sums and products, so one look at the small state
    stands for the whole (B, L, D) computation. Eager mode only.
    """
    if not values_checkable(h) or h.numel() == 0 or _all_finite(h):
        return
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: expected finite values, got NaN or inf (the layer's {what} became non-finite)")
    if h_in is not None and not bool(torch.isfinite(h_in).all()):
        raise ValueError("state.h: expected a finite state, got NaN or inf (from an earlier call)")
    for pname, p in module.named_parameters():
        if not bool(torch.isfinite(p).all()):
            raise ValueError(f"{pname}: the layer's parameter holds NaN or inf (diverged training?)")
    peak = float(x.abs().max())
    raise ValueError(
        f"{name}: the layer's {h.dtype} {what} became non-finite (inf/NaN) although the input is finite: "
        f"values up to |{name}| = {peak:.3g} overflow {h.dtype} arithmetic (norm statistics, q*v or the "
        f"state sum); rescale the input"
    )


def check_finite_output(module: nn.Module, out: Tensor, x: Tensor, name: str = "x") -> None:
    """The stateless (non-causal) form: one reduction over the output, eager mode only."""
    check_finite_state(module, out, x, None, name, what="output")
