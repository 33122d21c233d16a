"""Long streams: carried-state training (sampler + truncated BPTT), the per-position loss
measurement, and the causal layer's default staying responsive on long streams."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vmiseq.layers import VMISALayer
from vmiseq.models.lm import VMISAConfig, VMISAForCausalLM
from vmiseq.streams import CarriedState, ContiguousStreams, log_bins, sliding_window_losses, stream_losses

VOCAB, L, B, STREAM = 11, 8, 3, 32


def tiny_model(mixer: str) -> VMISAForCausalLM:
    torch.manual_seed(0)
    cfg = VMISAConfig(vocab_size=VOCAB, dim=16, depth=2, mixer=mixer, n_heads=2, mlp_ratio=1.0)
    return VMISAForCausalLM(cfg).double()


def grads(model: VMISAForCausalLM, loss: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad()
    loss.backward()
    return [p.grad.clone() for p in model.parameters()]


def row_stream(ds: ContiguousStreams, row: int, index: int) -> torch.Tensor:
    """Tokens of ``row``'s current stream, as the model has read it since step 0, through the
    end of batch ``index`` (one piece of text, rebuilt from the sampler's public pieces)."""
    j = index + int(ds.phase[row])
    segment, within = divmod(j, ds.stream_steps)
    start = ds.stream_start(int(ds.rows[row]), segment)
    skipped = max(0, within - index)  # a stream already under way at step 0 is read from there
    within -= skipped
    offsets = start + skipped * ds.block_size + torch.arange((within + 1) * ds.block_size + 1)
    return ds.ids[offsets % len(ds.ids)], within


@pytest.mark.parametrize("mixer", ["vmisa", "gla"])
def test_carried_step_equals_one_forward_over_the_stream(mixer):
    model = tiny_model(mixer)
    ids = np.random.default_rng(0).integers(0, VOCAB, 500)
    ds = ContiguousStreams(ids, L, B, STREAM, seed=3)
    carried = CarriedState()
    checked_deep = 0
    tol = 1e-10 if mixer == "vmisa" else 1e-6  # GLA computes its heads in float32
    for i in range(7):
        x, y, reset = ds.batch(i)
        loss = carried.loss(model, x, y, reset)
        g_step = grads(model, loss)
        # reference: per row, one forward over the whole stream so far; the loss of the
        # last window's tokens, and its gradients with the earlier part detached
        ref_losses, prefix_states = [], []
        for r in range(B):
            tokens, within = row_stream(ds, r, i)
            assert torch.equal(tokens[-L - 1 : -1], x[r]) and torch.equal(tokens[-L:], y[r])
            full = model(tokens[:-1].unsqueeze(0)).logits[0, -L:]
            ref_losses.append(torch.nn.functional.cross_entropy(full, tokens[-L:], reduction="sum"))
            checked_deep += within > 0
            with torch.no_grad():
                prefix = model(tokens[: -L - 1].unsqueeze(0), output_state=True).state if within else None
            prefix_states.append(prefix)
        ref = torch.stack(ref_losses).sum() / (B * L)
        assert abs(loss.item() - ref.item()) < 1e-5
        # the gradient of the same loss with the earlier part of each stream detached
        ref_detached = 0
        for r in range(B):
            out = model(x[r : r + 1], state=prefix_states[r], targets=y[r : r + 1])
            ref_detached = ref_detached + out.loss / B
        for a, b in zip(g_step, grads(model, ref_detached)):
            torch.testing.assert_close(a, b, atol=tol, rtol=1e-4)
        if any(s is not None for s in prefix_states):  # full BPTT differs: the cut is real
            g_full = grads(model, ref)
            assert max((a - b).abs().max().item() for a, b in zip(g_step, g_full)) > 1e-6
    assert checked_deep >= B * 4  # most windows continued a carried state


def test_sampler_rows_are_contiguous_and_resume_exactly():
    ids = np.arange(1000)
    for rank in range(2):
        ds = ContiguousStreams(ids, L, B, STREAM, seed=5, rank=rank, world=2)
        prev = None
        resets = torch.zeros(B, dtype=torch.long)
        for i in range(3 * ds.stream_steps):
            x, y, reset = ds.batch(i)
            assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], (x[:, -1] + 1) % len(ids))
            assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(B, L - 1, dtype=x.dtype)) | bool((x[:, 1:] == 0).any())
            if prev is not None:
                cont = ~reset
                assert torch.equal(x[cont, 0], (prev[cont, -1] + 1) % len(ids))  # row r continues row r
            resets += reset.long()
            prev = x
        assert torch.equal(resets, torch.full((B,), 3))  # one new stream per stream_steps, every row
    # staggered: not all rows start fresh at the same step
    ds = ContiguousStreams(ids, L, 4, STREAM, seed=5)
    assert len({int(p) for p in ds.phase}) == 4
    # resume: an iterator started at step s yields batch s, s+1, ... of the uninterrupted run
    full = ContiguousStreams(ids, L, B, STREAM, seed=5)
    resumed = iter(ContiguousStreams(ids, L, B, STREAM, seed=5, start=5))
    for i in range(5, 9):
        for a, b in zip(full.batch(i), next(resumed)):
            assert torch.equal(a, b)
    # other ranks read other streams
    assert not torch.equal(ContiguousStreams(ids, L, B, STREAM, seed=5, rank=1, world=2).batch(0)[0], full.batch(0)[0])


def test_carried_state_round_trips_through_a_checkpoint():
    model = tiny_model("vmisa")
    ids = np.random.default_rng(1).integers(0, VOCAB, 300)
    ds = ContiguousStreams(ids, L, B, STREAM, seed=0)
    a = CarriedState()
    for i in range(3):
        a.loss(model, *ds.batch(i))
    b = CarriedState()
    b.load_state_dict({k: v.clone() for k, v in a.state_dict().items()})
    assert b.state_dict().keys() == a.state_dict().keys()
    x, y, reset = ds.batch(3)
    assert a.loss(model, x, y, reset).item() == b.loss(model, x, y, reset).item()
    with pytest.raises(ValueError, match="mask"):
        a.state.reset_rows(torch.ones(B + 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="stream_length"):
        ContiguousStreams(ids, L, B, L + 1)


@pytest.mark.parametrize("mixer", ["vmisa", "gla", "attention"])
def test_per_position_losses_match_one_forward(mixer):
    model = tiny_model(mixer) if mixer != "attention" else VMISAForCausalLM(
        VMISAConfig(vocab_size=VOCAB, dim=16, depth=2, mixer="attention", n_heads=2, max_len=16)).double()
    ids = np.random.default_rng(2).integers(0, VOCAB, 200)
    starts = [0, 150]  # the second stream wraps around the end of the text
    rows = torch.from_numpy(ids)[(torch.tensor(starts).unsqueeze(1) + torch.arange(41)) % len(ids)]

    def ce(logits, gold):
        return torch.nn.functional.cross_entropy(logits.transpose(1, 2), gold, reduction="none")

    if mixer == "attention":
        got = sliding_window_losses(model, ids, starts, 40, window=16)
        assert torch.allclose(got[:, :16], ce(model(rows[:, :16]).logits, rows[:, 1:17]).float(), atol=1e-6)
        win = rows[:, 24:41]  # window [24, 40) scores positions [32, 40)
        assert torch.allclose(got[:, 32:40], ce(model(win[:, :-1]).logits[:, 8:], win[:, 9:]).float(), atol=1e-6)
        with pytest.raises(ValueError, match="length"):
            sliding_window_losses(model, ids, starts, 41, window=16)
    else:
        got = stream_losses(model, ids, starts, 40, chunk=7)
        assert torch.allclose(got, ce(model(rows[:, :-1]).logits, rows[:, 1:]).float(), atol=1e-6)
    assert log_bins(32, 1024) == [(0, 32), (32, 64), (64, 256), (256, 1024)]


def _response(layer: VMISALayer, state, x_a: torch.Tensor, x_b: torch.Tensor) -> float:
    """How much the next output changes when the next input is x_b instead of x_a."""
    return (layer(x_a, state) - layer(x_b, state)).norm().item()


@torch.no_grad()
def test_default_causal_layer_stays_alive_on_a_long_stream():
    torch.manual_seed(0)
    n, chunk = 100_000, 10_000
    layers = {"default": VMISALayer(dim=64, causal=True), "paper": VMISALayer(dim=64, causal=True, decay=None)}
    assert layers["default"].decay_mode == "input" and VMISALayer(8, causal=False).decay_mode is None
    x_a, x_b = torch.randn(1, 1, 64), torch.randn(1, 1, 64)
    early, late, rms = {}, {}, {}
    for name, layer in layers.items():
        layer.eval()
        gen = torch.Generator().manual_seed(1)
        _, state = layer(torch.randn(1, 100, 64, generator=gen), output_state=True)
        early[name] = _response(layer, state, x_a, x_b)
        for _ in range(0, n - 100, chunk):
            _, state = layer(torch.randn(1, chunk, 64, generator=gen), state, output_state=True)
        late[name] = _response(layer, state, x_a, x_b)
        rms[name] = state.h.pow(2).mean().sqrt().item()
    # the default responds to its input after 10^5 tokens as it did at position 100
    assert late["default"] >= 0.5 * early["default"]
    # the paper's prefix sum: its state grows like t (the property the default avoids)
    assert rms["paper"] > 100 * rms["default"]


def test_lm_experiment_ddp_checkpoints_every_ranks_carried_state(tmp_path):
    """Two gloo processes train on their own streams; the checkpoint holds both ranks'
    carried states and a DDP run resumes from it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    data = tmp_path / "corpus.txt"
    data.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 40)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_DATASETS_OFFLINE="1")
    args = [sys.executable, str(root / "experiments" / "lm.py"), "--data", str(data), "--out-dir", str(tmp_path / "ddp"),
            "--dim", "16", "--depth", "1", "--block-size", "8", "--batch-size", "2", "--stream-length", "32",
            "--eval-interval", "3", "--eval-batches", "1", "--final-eval-windows", "4", "--sample-tokens", "0",
            "--no-progress", "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"]
    r = subprocess.run([*args, "--max-steps", "6"], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    ckpt = torch.load(tmp_path / "ddp" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    h = ckpt["carried_state"]["0.h"]
    assert h.shape == (2, 2, 16) and not torch.equal(h[0], h[1])  # (ranks, rows, width): each rank its own rows
    assert torch.equal(ckpt["carried_state"]["0.position"][0], torch.tensor([16, 24]))  # rows 2 and 3 windows into their streams
    r = subprocess.run([*args, "--max-steps", "9", "--resume", "last"], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
