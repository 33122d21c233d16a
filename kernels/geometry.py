"""Launch geometry of the Triton scan: tiling constants and the (pure, CPU-testable) plan of
how many programs a launch has. Importing this module does not import triton.

A program owns one (work item, block of ``BLOCK_D`` channels) pair and walks its tokens in
chunks of ``BLOCK_T``. A work item is a whole sequence, or, on the small-batch path, one
*segment* of ``seg_chunks`` chunks of a sequence (then the launcher runs three passes:
segment summaries, a scan of the segment carries, a replay of every segment from its carry).
The grid is 1-D (``programs = d_blocks * work items``), so it has no 65,535 limit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

# Tokens per chunk. Fixed (not autotuned) because the decay backward reads the state
# checkpoints the forward wrote at this stride.
BLOCK_T = 64
LOG2_BLOCK_T = int(math.log2(BLOCK_T))
# The carry scan loads all segments of a sequence as one (MAX_SEGMENTS, block) tile.
MAX_SEGMENTS = 256
# Multiprocessors of the GPUs the targets are stated for (the launcher asks the device).
SM_COUNT = {"H100 SXM": 132, "H200": 132}


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_pow2(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


def checkpoint_rows(n_seq: int, batch: int, length: int, varlen: bool) -> int:
    """Rows of the chunk-entry state buffer: batch * chunks, or for a packed batch the
    upper bound sum_n ceil(l_n / BLOCK_T) <= T // BLOCK_T + N."""
    if varlen:
        return length // BLOCK_T + n_seq
    return batch * cdiv(length, BLOCK_T)


def work_bucket(n_work: int) -> int:
    """Autotuning bucket of the number of work items: its power of two (1, 2-3, 4-7, ...)."""
    return max(1, int(n_work)).bit_length()


@dataclass(frozen=True)
class LaunchPlan:
    """How one launch covers (N sequences) x (D channels).

    ``n_seg`` segments of ``seg_chunks`` chunks per sequence (``n_seg == 1``: one pass, each
    program walks a whole sequence); ``block_ds``: the BLOCK_D values the autotuner may use
    (every one of them gives at least ``min_programs`` programs when that is reachable)."""

    n_seq: int
    d: int
    n_seg: int
    seg_chunks: int
    block_ds: tuple[int, ...]
    min_programs: int

    @property
    def split(self) -> bool:
        return self.n_seg > 1

    @property
    def n_work(self) -> int:
        return self.n_seq * self.n_seg

    def programs(self, block_d: int) -> int:
        return cdiv(self.d, block_d) * self.n_work

    @property
    def min_programs_planned(self) -> int:
        """Programs of the worst (widest) BLOCK_D the autotuner may pick."""
        return min(self.programs(bd) for bd in self.block_ds)


def plan_launch(
    n_seq: int,
    length: int,
    d: int,
    *,
    sm_count: int,
    block_ds: tuple[int, ...] = (16, 32, 64),
    varlen: bool = False,
    programs_per_sm: int = 2,
    split_programs_per_sm: int = 4,
    min_seg_chunks: int = 2,
    split: str = "auto",
) -> LaunchPlan:
    """Plan one launch over ``n_seq`` sequences of (at most) ``length`` tokens and ``d`` channels.

    * One pass when some BLOCK_D gives ``>= programs_per_sm * sm_count`` programs; the
      BLOCK_D values that give fewer are dropped (unless none qualifies).
    * Otherwise (``split="auto"``; ``"always"`` forces it, ``"never"`` forbids it) each
      sequence is cut into segments of ``>= min_seg_chunks`` chunks, as many as needed for
      ``split_programs_per_sm * sm_count`` programs at the widest BLOCK_D (at most
      ``MAX_SEGMENTS``; ``"always"``: at least as many as segments of ``min_seg_chunks``
      allow). Packed (varlen) batches are never split: their sequences differ in
      length, and many of them already fill the grid.
    ``sm_count = 0`` plans no split (the interpreter's default).
    """
    if split not in ("auto", "always", "never"):
        raise ValueError(f"split: expected 'auto', 'always' or 'never', got {split!r}")
    block_ds = tuple(sorted(set(block_ds)))
    fit = [bd for bd in block_ds if bd <= max(16, next_pow2(d))] or block_ds[:1]
    target = programs_per_sm * sm_count
    n_chunks = cdiv(max(length, 1), BLOCK_T)

    def filled(n_seg: int) -> tuple[int, ...]:  # the blocks that reach the target, else the narrowest
        return tuple(bd for bd in fit if cdiv(d, bd) * n_seq * n_seg >= target) or (fit[0],)

    def one_pass() -> LaunchPlan:
        return LaunchPlan(n_seq, d, 1, n_chunks, filled(1), target)

    if varlen or split == "never" or n_chunks < 2 * min_seg_chunks:
        return one_pass()
    if split == "auto" and cdiv(d, fit[0]) * n_seq >= target:
        return one_pass()
    want = max(split_programs_per_sm * sm_count, 2)
    segs = cdiv(want, n_seq * cdiv(d, fit[-1]))  # segments per sequence at the widest block
    if split == "always":
        segs = max(segs, n_chunks // min_seg_chunks)
    seg_chunks = max(min_seg_chunks, n_chunks // max(segs, 1), cdiv(n_chunks, MAX_SEGMENTS))
    n_seg = cdiv(n_chunks, seg_chunks)
    if n_seg < 2:
        return one_pass()
    return LaunchPlan(n_seq, d, n_seg, seg_chunks, filled(n_seg), target)
