"""Generation: batched ragged prompts, determinism, top-k / top-p sets, eos, streaming, CLI."""
from __future__ import annotations

import pytest
import torch

from vmiseq.cli import main as cli_main
from vmiseq.models import VMISAConfig, VMISAForCausalLM
from vmiseq.models.lm import sample_next
from vmiseq.tokenizer import Tokenizer

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
    model = make("vmisa")
    p = torch.randint(0, V, (1, 3))
    for kwargs, match in [
        (dict(max_new_tokens=-1), "max_new_tokens"),
        (dict(max_new_tokens=2, temperature=-1.0), "temperature"),
        (dict(max_new_tokens=2, top_k=0), "top_k"),
        (dict(max_new_tokens=2, top_p=1.5), "top_p"),
        (dict(max_new_tokens=2, eos_token_id=V), "eos_token_id"),
    ]:
        with pytest.raises(ValueError, match=match):
            model.generate(p, **kwargs)


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
    with pytest.raises(SystemExit) as exc:
        cli_main(["generate", "--help"])
    assert exc.value.code == 0
