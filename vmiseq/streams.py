"""Training and measuring recurrent language models on long streams.

A recurrent LM trained only on short windows that each start from the zero state never
visits the states it reaches a few thousand tokens into a real stream, and fails there
(docs/lm.md, "Long streams"). The cure used here is truncated back-propagation through time
over contiguous text: every batch row reads its own stream window after window, and the
state reached at the end of one training step is carried, detached, into the next. The
model then trains on states of every age, from fresh (a row's stream has just started) to
``stream_length`` tokens deep, at no extra cost per step.

- :class:`~vmiseq.data.text.ContiguousStreams` (re-exported here): the sampler. Batch ``i`` is a pure function of
  ``(seed, i, rank)`` (so a resumed run sees the same batches) and yields ``(x, y, reset)``:
  row r continues row r of batch i-1 unless ``reset[r]``, when it starts a new stream at a
  random place of the text. Resets are staggered across rows, so every step mixes fresh
  and deep states.
- :class:`CarriedState`: keeps the detached states between steps (with ``state_dict`` /
  ``load_state_dict`` for checkpoints) and computes the loss of one step.
- :func:`stream_losses` / :func:`sliding_window_losses`: per-position next-token loss over
  long held-out streams (state carried in chunks; a Transformer slides its window), the
  measurement behind ``benchmarks/bench_length.py``.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .data.text import ContiguousStreams  # noqa: F401 - the sampler CarriedState is trained with
from .models.lm import LMState, VMISAForCausalLM


class CarriedState:
    """The detached model state carried from one training step to the next.

    ``loss(model, x, y, reset)`` runs one step: it continues the carried state (rows with
    ``reset`` start from zero), keeps the final state detached for the next step, and
    returns the mean next-token loss. The gradient therefore reaches back only into the
    current window (truncated BPTT), while the forward pass sees the whole stream.
    """

    def __init__(self) -> None:
        self.state: Optional[LMState] = None
        self._pending: dict[str, Tensor] = {}

    def loss(self, model: VMISAForCausalLM, x: Tensor, y: Tensor, reset: Tensor) -> Tensor:
        if self._pending:  # restored from a checkpoint: rebuild on the device of the batch
            like = model.init_state(int(next(iter(self._pending.values())).shape[0]), device=x.device)
            self.state, self._pending = LMState.from_tensors(self._pending, like), {}
        state = self.state
        if state is not None and state.batch_size != x.shape[0]:
            state = None  # e.g. another batch size after a resume: start every row afresh
        if state is not None:
            state = state.reset_rows(reset.to(x.device))
        out = model(x, state=state, targets=y, output_state=True)
        self.state = out.state.detach()
        return out.loss

    def state_dict(self) -> dict[str, Tensor]:
        """The carried state as named tensors (empty before the first step)."""
        if self._pending:
            return dict(self._pending)
        return {} if self.state is None else self.state.to_tensors()

    def load_state_dict(self, tensors: dict[str, Tensor]) -> None:
        """Restore what :meth:`state_dict` returned (an empty dict clears the state); the
        state is rebuilt on the device of the next batch."""
        self.state, self._pending = None, dict(tensors)


# ---------------------------------------------------------------------------- measuring
def _stream_rows(ids: np.ndarray, starts: list[int], length: int) -> Tensor:
    """(len(starts), length + 1) ids; each row reads the text cyclically from its start."""
    ids_t = torch.from_numpy(np.asarray(ids, dtype=np.int64))
    offsets = torch.tensor(starts).unsqueeze(1) + torch.arange(length + 1)
    return ids_t[offsets % len(ids_t)]


@torch.no_grad()
def stream_losses(model: VMISAForCausalLM, ids: np.ndarray, starts: list[int], length: int, chunk: int = 512) -> Tensor:
    """Next-token loss at every position of streams carried in chunks.

    Row s of the result holds, at position t, the loss of predicting token ``t + 1`` of the
    stream that begins at ``ids[starts[s]]`` (read cyclically) from tokens ``0..t``, the
    model's state carried from chunk to chunk of ``chunk`` tokens. Returns (len(starts),
    length) float32.
    """
    model.eval()
    rows = _stream_rows(ids, starts, length).to(model.lm_head.weight.device)
    out, state = [], None
    for a in range(0, length, chunk):
        b = min(length, a + chunk)
        res = model(rows[:, a:b], state=state, output_state=True)
        state = res.state
        out.append(F.cross_entropy(res.logits.transpose(1, 2).float(), rows[:, a + 1 : b + 1], reduction="none").cpu())
    return torch.cat(out, dim=1)


@torch.no_grad()
def sliding_window_losses(model: VMISAForCausalLM, ids: np.ndarray, starts: list[int], length: int, window: int,
                          batch_windows: int = 64) -> Tensor:
    """:func:`stream_losses` for a model with a bounded context (a Transformer).

    Positions below ``window`` are scored by one forward over the stream's first ``window``
    tokens. Past it, windows of ``window`` tokens advance by ``window // 2`` and each scores
    its second half, so every prediction sees at least ``window // 2`` tokens of context.
    ``length - window`` must be a multiple of ``window // 2``.
    """
    half = window // 2
    if length < window or (length - window) % half:
        raise ValueError(f"length: expected window + a multiple of window // 2 = {half}, got {length}")
    model.eval()
    device = model.lm_head.weight.device
    rows = _stream_rows(ids, starts, length)
    losses = torch.empty(len(starts), length)

    def score(win: Tensor, skip: int) -> Tensor:
        logits = model(win[:, :-1].to(device)).logits[:, skip:]
        return F.cross_entropy(logits.transpose(1, 2).float(), win[:, skip + 1 :].to(device), reduction="none").cpu()

    losses[:, :window] = score(rows[:, : window + 1], 0)
    jobs = [(s, b) for s in range(len(starts)) for b in range(half, length - window + 1, half)]
    for i in range(0, len(jobs), batch_windows):
        group = jobs[i : i + batch_windows]
        loss = score(torch.stack([rows[s, b : b + window + 1] for s, b in group]), half)
        for k, (s, b) in enumerate(group):
            losses[s, b + half : b + window] = loss[k]
    return losses


def log_bins(lo: int, hi: int, factor: int = 4) -> list[tuple[int, int]]:
    """Position bins [lo, 2 lo), [2 lo, 2 lo * factor), ... up to ``hi`` (the last may be cut)."""
    edges = [0, lo, 2 * lo]
    while edges[-1] < hi:
        edges.append(min(hi, edges[-1] * factor))
    return list(zip(edges[:-1], edges[1:]))
