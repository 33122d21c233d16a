"""Input checks and normalisation shared by the operators (and the layers' own checks).

A leaf module: it imports only torch, so every other module (the dispatcher in
:mod:`.scan`, the packed-batch helpers in :mod:`.varlen`, ``vmiseq.layers``) can use it.
Policy (docs/core.md, "Input checks"): checks that read only shapes and dtypes always run;
checks that read values cost a host sync, so they run in eager mode only (never under
torch.compile) and read the smallest tensor that can tell.
"""
from __future__ import annotations

import torch
from torch import Tensor

MAX_POSITION = 2**63 - 1  # positions are int64


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 for float64 inputs, float32 for float32 and half types."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def values_checkable(x: Tensor) -> bool:
    """Whether checks that read values (a host sync) may run: eager mode on real data, not
    under torch.compile / export tracing and not on the ``meta`` device (shape-only runs)."""
    return not torch.compiler.is_compiling() and x.device.type != "meta"


def require_tensor(name: str, x, expected: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected {expected}, got {type(x).__name__}")


def require_float(name: str, x: Tensor) -> None:
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")


def require_device(name: str, x: Tensor, ref: Tensor) -> None:
    if x.device != ref.device:
        raise ValueError(f"{name}: expected a tensor on {ref.device} (the device of q), got one on {x.device}")


def check_qv(q: Tensor, v: Tensor) -> None:
    """q and v: floating (B, L, D) tensors of one shape, on one device."""
    require_tensor("q", q, "a (B, L, D) tensor")
    require_tensor("v", v, "a (B, L, D) tensor")
    if q.dim() != 3:
        raise ValueError(f"q: expected a 3-D (B, L, D) tensor, got {q.dim()}-D with shape {tuple(q.shape)}")
    if v.shape != q.shape:
        raise ValueError(f"v: expected the shape of q {tuple(q.shape)}, got {tuple(v.shape)}")
    require_float("q", q)
    require_float("v", v)
    require_device("v", v, q)


def per_token(name: str, x: Tensor, q: Tensor, allow_table: bool) -> Tensor:
    """(L,), (B, L) or (B, L, D) -> (B|1, L, 1|D), validated against q (B, L, D)."""
    B, L, D = q.shape
    require_tensor(name, x, "a tensor")
    require_float(name, x)
    require_device(name, x, q)
    if allow_table and x.dim() == 1:
        if x.shape[0] != L:
            raise ValueError(f"{name}: expected a (L,) table with L={L}, got shape {tuple(x.shape)}")
        return x.reshape(1, L, 1)
    if x.dim() == 2:
        if tuple(x.shape) != (B, L):
            raise ValueError(f"{name}: expected shape (B, L) = {(B, L)}, got {tuple(x.shape)}")
        return x.unsqueeze(-1)
    if x.dim() == 3:
        if tuple(x.shape) != (B, L, D):
            raise ValueError(f"{name}: expected shape (B, L, D) = {(B, L, D)}, got {tuple(x.shape)}")
        return x
    shapes = "(L,), (B, L) or (B, L, D)" if allow_table else "(B, L) or (B, L, D)"
    raise ValueError(f"{name}: expected shape {shapes} with (B, L, D) = {(B, L, D)}, got {tuple(x.shape)}")


def channel_param(name: str, x, q: Tensor) -> Tensor:
    """A scalar (python number, 0-d or 1-element tensor) or a (D,) tensor."""
    D = q.shape[-1]
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return torch.tensor(float(x), dtype=acc_dtype(q.dtype), device=q.device)
    require_tensor(name, x, "a scalar tensor or a (D,) tensor")
    require_float(name, x)
    require_device(name, x, q)
    if x.dim() == 0 or (x.dim() == 1 and x.shape[0] == 1 and D != 1):
        return x.reshape(())
    if x.dim() == 1 and x.shape[0] == D:
        return x
    raise ValueError(f"{name}: expected a scalar tensor or shape (D,) = ({D},), got shape {tuple(x.shape)}")


def require_integer(name: str, x: Tensor) -> None:
    """Positions and offsets are integer tensors (int64 after conversion)."""
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{name}: expected an integer tensor, got dtype {x.dtype}")


def check_position_values(name: str, position: Tensor, n_tokens: int = 1) -> tuple[int, int]:
    """Eager check of integer positions: >= 0, and the last one a call reaches,
    ``position + n_tokens - 1``, fits in int64 (it would wrap round to a negative one).
    Returns (min, max); (0, 0) when empty or not checkable (one host sync otherwise)."""
    if position.numel() == 0 or not values_checkable(position):
        return 0, 0
    lo, hi = (int(x) for x in torch.aminmax(position))
    if lo < 0:
        raise ValueError(f"{name}: expected non-negative positions, got {lo}")
    if hi > MAX_POSITION - max(n_tokens - 1, 0):
        raise ValueError(f"{name}: expected positions <= 2**63 - L (int64, L={n_tokens}), got {hi}")
    return lo, hi


def offset_positions(offset, q: Tensor, n_seq: int, packed: bool) -> Tensor:
    """offset: int or (n_seq,) integer tensor -> (n_seq|1, 1) int64 position of each first token.

    ``n_seq`` is B, or N packed sequences (``packed``: cu_seqlens given).
    """
    dims = "(N,)" if packed else "(B,)"
    L = q.shape[1]
    if isinstance(offset, bool) or not isinstance(offset, (int, Tensor)):
        raise TypeError(f"offset: expected an int or a {dims} integer tensor, got {type(offset).__name__}")
    if isinstance(offset, int):
        if offset < 0:
            raise ValueError(f"offset: expected a non-negative position, got {offset}")
        if offset + max(L - 1, 0) > MAX_POSITION:
            raise ValueError(f"offset: expected a position <= 2**63 - L = {MAX_POSITION - max(L - 1, 0)} "
                             f"(int64 positions for L={L} tokens), got {offset}")
        return torch.full((1, 1), offset, dtype=torch.long, device=q.device)
    require_integer("offset", offset)
    if offset.dim() == 0:
        offset = offset.reshape(1)
    if offset.dim() != 1 or offset.shape[0] not in (1, n_seq):
        packed_note = "with cu_seqlens " if packed else ""
        raise ValueError(
            f"offset: {packed_note}expected an int or shape {dims} = ({n_seq},), got shape {tuple(offset.shape)}"
        )
    require_device("offset", offset, q)
    offset = offset.to(torch.long)
    check_position_values("offset", offset, L)  # one host sync on a (B,) tensor: eager only
    return offset.reshape(-1, 1)


def check_cu_seqlens(cu_seqlens, q: Tensor) -> int:
    """Validate ``cu_seqlens`` against q (1, T, D); return the number of sequences N."""
    if not isinstance(cu_seqlens, Tensor):
        raise TypeError(f"cu_seqlens: expected a 1-D int32 tensor of N+1 offsets, got {type(cu_seqlens).__name__}")
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"cu_seqlens: expected an int32 (or int64) tensor, got dtype {cu_seqlens.dtype}")
    if cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 2:
        raise ValueError(
            f"cu_seqlens: expected a 1-D tensor of N+1 >= 2 offsets, got shape {tuple(cu_seqlens.shape)}"
        )
    if cu_seqlens.device != q.device:
        raise ValueError(f"cu_seqlens: expected a tensor on {q.device} (the device of q), got one on {cu_seqlens.device}")
    if q.shape[0] != 1:
        raise ValueError(
            f"q: with cu_seqlens the sequences are packed in one batch row, expected shape (1, T, D), "
            f"got {tuple(q.shape)}"
        )
    if values_checkable(cu_seqlens):  # value checks need a host sync: eager only
        T = q.shape[1]
        first, last = int(cu_seqlens[0]), int(cu_seqlens[-1])
        if first != 0 or last != T:
            raise ValueError(f"cu_seqlens: expected offsets from 0 to T={T}, got {first} ... {last}")
        if bool((cu_seqlens[1:] < cu_seqlens[:-1]).any()):
            raise ValueError("cu_seqlens: expected non-decreasing offsets, got a decreasing step")
    return cu_seqlens.shape[0] - 1


def check_unit_interval(name: str, x: Tensor) -> None:
    """Values in [0, 1] (NaN fails). A decay above 1 grows the state exponentially, where the
    chunked and step-by-step forms also stop agreeing in float32; 0 resets the state."""
    if x.numel() and not bool(((x >= 0) & (x <= 1)).all()):
        bad = x[~((x >= 0) & (x <= 1))]
        raise ValueError(
            f"{name}: expected values in [0, 1] (a forget gate multiplying the state), got "
            f"{bad.numel()} outside, e.g. {bad.flatten()[0].item()!r} (min {x.min().item()!r}, max {x.max().item()!r})"
        )


def non_finite_message(name: str, inputs: tuple[Tensor, ...], state: Tensor) -> str:
    """Why the ``state`` after a call is NaN/inf: non-finite ``inputs``, or overflow."""
    if not all(bool(torch.isfinite(t).all()) for t in inputs):
        return f"{name}: expected finite values, got NaN or inf (the state became non-finite)"
    peak = max(float(t.abs().max()) for t in inputs if t.numel())
    return (
        f"{name}: the {state.dtype} state became non-finite (inf/NaN) although the inputs are finite: "
        f"values up to |{name}| = {peak:.3g} overflow {state.dtype} arithmetic; rescale the input"
    )
