"""Generation: batched ragged prompts, determinism, top-k / top-p sets, eos, streaming, CLI."""
from __future__ import annotations

import pytest
import torch

from vmiseq.cli import main as cli_main
from vmiseq.models import VMISAConfig, VMISAForCausalLM
from vmiseq.models.lm import sample_next
from vmiseq.data.tokenizer import Tokenizer

V = 29
MIXERS = {
    "vmisa": dict(mixer="vmisa", decay="input", rank_mask=True),
    "attention": dict(mixer="attention", max_len=128),
    "gla": dict(mixer="gla"),
}


def make(name: str, seed: int = 0) -> VMISAForCausalLM:
    torch.manual_seed(seed)
    model = VMISAForCausalLM(VMISAConfig(vocab_size=V, dim=16, depth=2, n_heads=2, mlp_ratio=2.0, **MIXERS[name])).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("name", list(MIXERS))
def test_batched_ragged_prompts_equal_each_alone(name):
    model = make(name)
    prompts = [torch.randint(0, V, (n,)) for n in (5, 1, 12, 5, 8)]
    batched = model.generate(prompts, max_new_tokens=15, temperature=0)
    for p, out in zip(prompts, batched):
        alone = model.generate(p.unsqueeze(0), max_new_tokens=15, temperature=0)[0]
        assert torch.equal(out, alone)
        assert torch.equal(out[: len(p)], p)


@pytest.mark.parametrize("name", list(MIXERS))
def test_generated_tokens_follow_the_full_forward(name):
    """Greedy generation = argmax of the parallel forward over the generated sequence."""
    model = make(name, seed=2)
    out = model.generate(torch.randint(0, V, (2, 6)), max_new_tokens=10, temperature=0)
    logits = model(out[:, :-1]).logits
    assert torch.equal(logits[:, 5:].argmax(-1), out[:, 6:])


def test_greedy_and_seeded_sampling_are_deterministic():
    model = make("vmisa")
    prompt = torch.randint(0, V, (3, 4))
    assert torch.equal(model.generate(prompt, 20, temperature=0), model.generate(prompt, 20, temperature=0))
    a = model.generate(prompt, 20, temperature=1.0, seed=7)
    assert torch.equal(a, model.generate(prompt, 20, temperature=1.0, seed=7))
    assert not torch.equal(a, model.generate(prompt, 20, temperature=1.0, seed=8))


def test_top_k_never_samples_outside_the_top_k():
    torch.manual_seed(0)
    logits = torch.randn(4, 50) * 3
    allowed = torch.topk(logits, 5, dim=-1).indices
    gen = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(400):
        tok = sample_next(logits, temperature=1.5, top_k=5, generator=gen)
        assert bool((allowed == tok.unsqueeze(1)).any(1).all())
        seen.update(tok.tolist())
    assert len(seen) > 4  # it does sample, not just argmax


def test_top_p_never_samples_outside_the_nucleus():
    torch.manual_seed(1)
    logits = torch.randn(3, 40) * 2
    probs = logits.softmax(-1)
    top_p = 0.6
    gen = torch.Generator().manual_seed(0)
    nucleus = []
    for row in probs:
        order = row.argsort(descending=True)
        cum = row[order].cumsum(0)
        n = int((cum < top_p).sum()) + 1  # smallest prefix reaching top_p
        nucleus.append(set(order[:n].tolist()))
    for _ in range(400):
        tok = sample_next(logits, temperature=1.0, top_p=top_p, generator=gen)
        for r, t in enumerate(tok.tolist()):
            assert t in nucleus[r]
    # top_p tiny keeps only the argmax
    assert torch.equal(sample_next(logits, top_p=1e-6, generator=gen), logits.argmax(-1))


def test_max_new_tokens_zero_returns_the_prompt():
    model = make("vmisa")
    prompt = torch.randint(0, V, (2, 7))
    assert torch.equal(model.generate(prompt, max_new_tokens=0), prompt)
    ragged = [torch.tensor([1, 2, 3]), torch.tensor([4])]
    out = model.generate(ragged, max_new_tokens=0)
    assert all(torch.equal(a, b) for a, b in zip(out, ragged))


def test_eos_stops_rows_and_streamer_sees_every_step():
    model = make("gla")
    prompt = torch.randint(0, V, (2, 3))
    free = model.generate(prompt, 12, temperature=0)
    eos = int(free[0, 5])  # the third generated token of row 0
    seen = []
    out = model.generate(prompt, 12, temperature=0, eos_token_id=eos, streamer=lambda t: seen.append(t.clone()))
    row0 = out[0, 3:].tolist()
    first = row0.index(eos)
    assert all(t == eos for t in row0[first:])
    streamed = torch.stack(seen, 1)
    assert torch.equal(streamed, out[:, 3 : 3 + streamed.shape[1]])
    lists = model.generate([prompt[0]], 12, temperature=0, eos_token_id=eos)
    assert lists[0][-1].item() == eos and len(lists[0]) == 3 + first + 1


def test_generate_argument_errors():
    """Each bad argument raises before any work, naming the argument, expected and actual."""
    model = make("vmisa")
    p = torch.randint(0, V, (1, 3))
    for kwargs, exc, pieces in [
        (dict(max_new_tokens=-1), ValueError, ["max_new_tokens:", ">= 0", "-1"]),
        (dict(max_new_tokens=2, temperature=-1.0), ValueError, ["temperature:", ">= 0", "-1.0"]),
        (dict(max_new_tokens=2, temperature=float("nan")), ValueError, ["temperature:", "finite", "nan"]),
        (dict(max_new_tokens=2, temperature="0.5"), TypeError, ["temperature:", "number", "'0.5'"]),
        (dict(max_new_tokens=2, top_k=0), ValueError, ["top_k:", "positive int", "0"]),
        (dict(max_new_tokens=2, top_p=1.5), ValueError, ["top_p:", "(0, 1]", "1.5"]),
        (dict(max_new_tokens=2, top_p="0.9"), TypeError, ["top_p:", "(0, 1]", "'0.9'"]),
        (dict(max_new_tokens=2, eos_token_id=V), ValueError, ["eos_token_id:", f"[0, {V})", str(V)]),
        (dict(max_new_tokens=2, eos_token_id="3"), TypeError, ["eos_token_id:", "int", "'3'"]),
        (dict(max_new_tokens=2, seed="7"), TypeError, ["seed:", "int", "'7'"]),
        (dict(max_new_tokens=2, seed=2**64), ValueError, ["seed:", "2**64", str(2**64)]),
        (dict(max_new_tokens=2, prefill_chunk_size=-1), ValueError, ["prefill_chunk_size:", "positive int", "-1"]),
        (dict(max_new_tokens=2, prefill_chunk_size=0), ValueError, ["prefill_chunk_size:", "positive int", "0"]),
        (dict(max_new_tokens=2, streamer="print"), TypeError, ["streamer:", "callable", "str"]),
        (dict(max_new_tokens=2, temprature=0.5), TypeError, ["unexpected keyword", "'temprature'", "temperature"]),
    ]:
        with pytest.raises(exc) as info:
            model.generate(p, **kwargs)
        missing = [piece for piece in pieces if piece not in str(info.value)]
        assert not missing, f"{kwargs}: message {str(info.value)!r} lacks {missing}"


def test_float_token_ids_are_rejected_not_truncated():
    model = make("vmisa")
    for prompts, pieces in [
        ([[1.5, 2.0]], ["input_ids[0]:", "integer", "torch.float32"]),
        ([[1, 2], [3.0]], ["input_ids[1]:", "integer", "torch.float32"]),
        (torch.tensor([[1.0, 2.0]]), ["input_ids:", "integer", "torch.float32"]),
        ([["a", "b"]], ["input_ids[0]:", "int token ids", "'a'"]),
    ]:
        with pytest.raises(TypeError) as info:
            model.generate(prompts, max_new_tokens=2)
        assert all(piece in str(info.value) for piece in pieces), str(info.value)
    with pytest.raises(ValueError, match="chunk_size: expected a positive int"):
        model.prefill(torch.tensor([[1, 2, 3]]), chunk_size=-1)


def _dropout_model(name: str) -> VMISAForCausalLM:
    """A model whose train mode visibly differs from eval mode (dropout 0.3 everywhere)."""
    torch.manual_seed(3)
    cfg = dict(MIXERS[name], dropout=0.3)
    return VMISAForCausalLM(VMISAConfig(vocab_size=V, dim=16, depth=2, n_heads=2, mlp_ratio=2.0, **cfg)).train()


@pytest.mark.parametrize("name", list(MIXERS))
def test_interleaved_streams_on_a_train_mode_model_equal_each_alone(name):
    """Generation never reads or writes model.training: two streams advanced in turn on a
    model in train mode give the tokens each gives alone (= eval mode, no dropout), and the
    model is in train mode at every step and afterwards."""
    model = _dropout_model(name)
    p1, p2 = torch.randint(0, V, (1, 5)), torch.randint(0, V, (2, 3))
    alone1 = model.generate(p1, 19, temperature=1.0, seed=1)
    alone2 = model.generate(p2, 19, temperature=0.7, top_k=10, seed=2)
    s1 = model.generate_stream(p1, 19, temperature=1.0, seed=1)
    s2 = model.generate_stream(p2, 19, temperature=0.7, top_k=10, seed=2)
    got1, got2 = [], []
    for t1, t2 in zip(s1, s2):
        assert model.training
        got1.append(t1)
        got2.append(t2)
    assert torch.equal(torch.stack(got1, 1), alone1[:, 5:])
    assert torch.equal(torch.stack(got2, 1), alone2[:, 3:])
    assert model.training and all(m.training for m in model.modules())
    # the tokens are the eval-mode ones: generation drops nothing
    assert torch.equal(model.eval().generate(p1, 19, temperature=1.0, seed=1), alone1)
    # and training in between still drops (the flag was not left off)
    model.train()
    x = torch.randint(0, V, (2, 8))
    assert not torch.equal(model(x).logits, model(x).logits)


def test_generation_in_threads_equals_generation_alone():
    import threading

    model = _dropout_model("vmisa")
    prompts = [torch.randint(0, V, (1, n)) for n in (2, 7, 4, 9)]
    alone = [model.generate(p, 40, temperature=1.0, seed=i) for i, p in enumerate(prompts)]
    out, start = {}, threading.Barrier(len(prompts))

    def run(i: int) -> None:
        start.wait()  # all threads generate at the same time (torch ops release the GIL)
        out[i] = model.generate(prompts[i], 40, temperature=1.0, seed=i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(out[i], alone[i]) for i in range(len(prompts)))
    assert model.training


def test_unseeded_streams_draw_their_seed_once_from_the_global_rng():
    """seed=None: repeatable under torch.manual_seed, and a stream's tokens do not depend on
    what other streams (or other code using the global RNG) do while it runs."""
    model = make("vmisa")
    prompt = torch.randint(0, V, (2, 4))
    torch.manual_seed(11)
    alone = model.generate(prompt, 12, temperature=1.0)
    torch.manual_seed(11)
    stream = model.generate_stream(prompt, 12, temperature=1.0)
    got = [next(stream)]
    other = model.generate_stream(prompt, 12, temperature=1.0)
    for tok in stream:
        next(other, None)
        torch.rand(100)  # unrelated use of the global RNG
        got.append(tok)
    assert torch.equal(torch.stack(got, 1), alone[:, 4:])


def test_stream_is_lazy_and_state_size_stays_fixed():
    model = make("vmisa")
    stream = model.generate_stream(torch.randint(0, V, (1, 4)), max_new_tokens=1000, temperature=0)
    first = [int(next(stream)[0]) for _ in range(3)]
    assert len(first) == 3  # produced without running the remaining 997 steps
    stream.close()


def test_cli_generate_streams_text(tmp_path, capsys):
    text = "the cat sat on the mat. the dog sat on the log.\n" * 4
    tok = Tokenizer.train_char(text)
    torch.manual_seed(0)
    model = VMISAForCausalLM(VMISAConfig(vocab_size=tok.vocab_size, dim=16, depth=1, mlp_ratio=0))
    model.tokenizer = tok
    model.save_pretrained(tmp_path / "m")
    assert cli_main(["generate", "--model", str(tmp_path / "m"), "--prompt", "the ", "--max-new-tokens", "20", "--greedy"]) == 0
    out = capsys.readouterr().out
    ids = model.generate(torch.tensor([tok.encode("the ")]), 20, temperature=0)[0]
    assert len(ids) == 4 + 20
    assert out == tok.decode(ids.tolist()) + "\n"  # the prompt, then the 20 greedy tokens as text
    assert cli_main(["generate", "--model", str(tmp_path / "missing"), "--prompt", "x"]) == 2
    assert "not a directory" in capsys.readouterr().err
    # bad flags: a one-line error naming the flag and the value, exit status 2, no traceback
    m = str(tmp_path / "m")
    assert cli_main(["generate", "--model", m, "--device", "bogus"]) == 2
    err = capsys.readouterr().err
    assert "--device" in err and "'bogus'" in err and "corrupt" not in err
    if not torch.cuda.is_available():
        assert cli_main(["generate", "--model", m, "--device", "cuda"]) == 2
        err = capsys.readouterr().err
        assert "--device" in err and "no usable CUDA device" in err
    for flag, value in [("--temperature", "nan"), ("--temperature", "-1"), ("--top-p", "0"), ("--top-k", "0"), ("--max-new-tokens", "-3")]:
        with pytest.raises(SystemExit) as exc:
            cli_main(["generate", "--model", m, flag, value])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert flag in err and repr(value) in err, err
    with pytest.raises(SystemExit) as exc:
        cli_main(["generate", "--help"])
    assert exc.value.code == 0
