"""Windows over one split of a series: the forecasting datasets and a sampler of long histories.

- :class:`WindowDataset`: sliding ``(x, y)`` windows, input ``data[s : s + seq_len]`` and
  target the next ``pred_len`` rows (optionally with the absolute row of ``x[0]``).
- :class:`RandomHistoryBatches`: batches whose windows reach further back than ``seq_len``, so
  a recurrent forecaster trains on the states of long streams.
- :class:`EpochShuffle`: plain shuffled windows, the permutation a function of (seed, epoch).

Both samplers read the epoch from an optional ``epoch_of`` callable when an epoch starts (a
trainer's restored step count), so an epoch replayed after a resume draws what it drew before.

Built by :func:`vmiseq.data.timeseries.prepare_forecast_data`.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, RandomSampler, Sampler


class WindowDataset(Dataset):
    """Sliding windows over one split: ``(x (seq_len, N), y (pred_len, N))`` float32 tensors.

    ``values`` is the already-scaled part of the series (its own rows only); ``first_row`` is
    the absolute row of ``values[0]`` in the file. With ``return_index=True`` an item is
    ``(x, y, t0)`` where ``t0`` is the absolute row of ``x[0]`` (models with a learned daily
    cycle need the phase of the window).
    """

    def __init__(
        self,
        values: np.ndarray,
        seq_len: int,
        pred_len: int,
        name: str = "data",
        first_row: int = 0,
        return_index: bool = False,
    ) -> None:
        if not isinstance(seq_len, int) or seq_len <= 0:
            raise ValueError(f"seq_len: expected a positive int, got {seq_len!r}")
        if not isinstance(pred_len, int) or pred_len <= 0:
            raise ValueError(f"pred_len: expected a positive int, got {pred_len!r}")
        if values.ndim != 2:
            raise ValueError(f"values: expected a (T, N) array, got shape {values.shape}")
        if values.shape[0] < seq_len + pred_len:
            raise ValueError(
                f"{name}: expected at least seq_len + pred_len = {seq_len} + {pred_len} = {seq_len + pred_len} rows, "
                f"got {values.shape[0]}"
            )
        self.values = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
        self.seq_len, self.pred_len = seq_len, pred_len
        self.first_row, self.return_index = int(first_row), bool(return_index)

    def __len__(self) -> int:
        return self.values.shape[0] - self.seq_len - self.pred_len + 1

    def __getitem__(self, i) -> tuple[torch.Tensor, torch.Tensor]:
        """Window ``i``; ``(i, length)`` (from :class:`RandomHistoryBatches`): the same targets
        with a history of ``length`` rows ending where window ``i``'s input ends."""
        length = self.seq_len
        if isinstance(i, tuple):
            i, length = i
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"window {i} out of range for {len(self)} windows")
        first = i + self.seq_len - length
        if first < 0 or length < 1:
            raise IndexError(f"window {i}: a history of {length} rows would start before this part's first row")
        x = self.values[first : i + self.seq_len]
        y = self.values[i + self.seq_len : i + self.seq_len + self.pred_len]
        if self.return_index:
            return x, y, torch.tensor(self.first_row + first, dtype=torch.long)
        return x, y


class RandomHistoryBatches(Sampler):
    """Batches of training windows with histories of random length: long-stream states in training.

    A forecaster trained only on ``seq_len`` windows never sees the recurrent state a long
    stream builds. Each epoch every window comes once; with probability ``p_long`` its history
    reaches back a log-uniform number of rows in ``[seq_len, max_len]`` (capped by the rows
    before it), else ``seq_len`` rows. Windows are sorted by that length and cut into batches
    of ``batch_size`` (a batch uses its shortest length, so its histories stack), and the
    batches are shuffled. Everything is drawn from (seed, epoch) alone (``set_epoch``; a resumed
    run replays an epoch exactly); under DDP each rank takes every world-size-th batch. Items
    are ``(index, length)`` pairs for :class:`WindowDataset`.
    """

    def __init__(
        self, dataset: "WindowDataset", batch_size: int, max_len: int, p_long: float = 0.5, seed: int = 0, epoch_of=None
    ) -> None:
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        if not isinstance(max_len, int) or max_len < dataset.seq_len:
            raise ValueError(f"max_len: expected an int >= seq_len={dataset.seq_len}, got {max_len!r}")
        if not 0.0 <= p_long <= 1.0:
            raise ValueError(f"p_long: expected a probability in [0, 1], got {p_long!r}")
        self.dataset, self.batch_size, self.max_len, self.p_long, self.seed = dataset, batch_size, max_len, p_long, seed
        self.epoch = 0
        self.epoch_of = epoch_of  # optional callable: the epoch, read when an epoch's first batch is drawn

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @staticmethod
    def _world() -> tuple[int, int]:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def batches(self) -> list[list[tuple[int, int]]]:
        """This epoch's batches (all ranks), each a list of (window index, history length)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        n, L = len(self.dataset), self.dataset.seq_len
        order = torch.randperm(n, generator=g)
        u = torch.rand(n, generator=g, dtype=torch.float64)
        longer = torch.rand(n, generator=g) < self.p_long
        want = torch.exp(np.log(L) + u * (np.log(self.max_len) - np.log(L))).floor().long()
        length = torch.where(longer, want, torch.full_like(want, L))
        length = torch.minimum(length, order + L)  # window i has i + seq_len rows up to its end
        ranked = order[torch.argsort(length, stable=True)]
        lengths = torch.sort(length, stable=True).values
        full = n // self.batch_size
        out = []
        for b in torch.randperm(full, generator=g).tolist():
            idx = ranked[b * self.batch_size : (b + 1) * self.batch_size]
            shortest = int(lengths[b * self.batch_size])
            out.append([(int(i), shortest) for i in idx])
        return out

    def __iter__(self):
        if self.epoch_of is not None:
            self.set_epoch(self.epoch_of())
        rank, world = self._world()
        yield from self.batches()[rank::world]

    def __len__(self) -> int:
        rank, world = self._world()
        return len(range(rank, len(self.dataset) // self.batch_size, world))


class EpochShuffle(RandomSampler):
    """Shuffles the training windows with a permutation drawn from (seed, epoch) alone.

    The epoch is read when the first window of an epoch is drawn, from ``epoch_of`` (the
    trainer's global step over the steps per epoch: restored exactly by a resume, unlike
    Lightning's epoch counters around a restart), so an epoch replayed after ``--resume`` sees
    the batches the uninterrupted run saw. (Under DDP Lightning swaps this RandomSampler for
    its ``DistributedSampler``, seeded by epoch.)
    """

    def __init__(self, dataset, seed: int, epoch_of=None) -> None:
        super().__init__(dataset, generator=torch.Generator())
        self.seed, self.epoch_of = seed, epoch_of
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.seed * 1_000_003 + epoch)

    def __iter__(self):
        if self.epoch_of is not None:
            self.set_epoch(self.epoch_of())
        yield from super().__iter__()
