"""Tiling constants shared by the Triton launchers and the custom op's fake (shape-only)
implementation; importing this module does not import triton."""
from __future__ import annotations

import math

# Tokens per chunk. Fixed (not autotuned) because the decay backward reads the state
# checkpoints the forward wrote at this stride.
BLOCK_T = 64
LOG2_BLOCK_T = int(math.log2(BLOCK_T))


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def checkpoint_rows(n_seq: int, batch: int, length: int, varlen: bool) -> int:
    """Rows of the chunk-entry state buffer: batch * chunks, or for a packed batch the
    upper bound sum_n ceil(l_n / BLOCK_T) <= T // BLOCK_T + N."""
    if varlen:
        return length // BLOCK_T + n_seq
    return batch * cdiv(length, BLOCK_T)
