"""VMISAForCausalLM: streaming == parallel, chunked prefill, save/load, bad input."""
from __future__ import annotations

import json

import pytest
import torch

from vmiseq.layers.gla import GatedLinearAttention, gla_chunk, gla_naive
from vmiseq.models import VMISAConfig, VMISAForCausalLM
from vmiseq.models.lm import LMState
from vmiseq.data.tokenizer import Tokenizer

V = 37

CONFIGS = {
    "vmisa-scalar": dict(mixer="vmisa", decay="scalar"),
    "vmisa-paper": dict(mixer="vmisa", decay=None, alpha="position", rank_mask=True, max_len=64),
    "vmisa-input-decay": dict(mixer="vmisa", decay="input", alpha="constant", rank_mask=True, mlp_ratio=0),
    "attention": dict(mixer="attention", max_len=64),
    "gla": dict(mixer="gla"),
}


def make(name: str, seed: int = 0, **over) -> VMISAForCausalLM:
    torch.manual_seed(seed)
    kw = dict(vocab_size=V, dim=16, depth=2, n_heads=2, expand=2, mlp_ratio=2.0)
    kw.update(CONFIGS[name])
    kw.update(over)
    model = VMISAForCausalLM(VMISAConfig(**kw)).eval()
    # Non-trivial parameters everywhere (alpha, beta, decay), so mismatches cannot hide.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("name", list(CONFIGS))
def test_step_by_step_equals_full_forward(name):
    model = make(name)
    ids = torch.randint(0, V, (3, 40))
    with torch.no_grad():
        full = model(ids).logits
        logits, state = model.prefill(ids[:, :1])
        steps = [logits]
        for t in range(1, ids.shape[1]):
            logits, state = model.step(ids[:, t], state)
            steps.append(logits)
    assert torch.allclose(torch.stack(steps, 1), full, atol=1e-4, rtol=0), (torch.stack(steps, 1) - full).abs().max()
    assert torch.equal(state.position, torch.full((3,), 40))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_random_chunked_prefill_equals_prefill_at_once(name):
    model = make(name, seed=1)
    ids = torch.randint(0, V, (2, 50))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        at_once = model(ids, output_state=True)
        outs, state, start = [], None, 0
        while start < ids.shape[1]:
            size = int(torch.randint(1, 12, (1,), generator=gen))
            out = model(ids[:, start : start + size], state, output_state=True)
            outs.append(out.logits)
            state, start = out.state, start + size
    assert torch.allclose(torch.cat(outs, 1), at_once.logits, atol=1e-4, rtol=0)
    # the next token after either state gives the same logits
    nxt = torch.randint(0, V, (2,))
    a, _ = model.step(nxt, at_once.state)
    b, _ = model.step(nxt, state)
    assert torch.allclose(a, b, atol=1e-4, rtol=0)


def test_vmisa_state_is_constant_size_attention_grows():
    vm, att = make("vmisa-scalar"), make("attention")
    sizes = {}
    for name, model in (("vmisa", vm), ("attention", att)):
        _, state = model.prefill(torch.randint(0, V, (1, 4)))
        first = state.nbytes()
        for _ in range(20):
            _, state = model.step(torch.tensor([1]), state)
        sizes[name] = (first, state.nbytes())
    assert sizes["vmisa"][0] == sizes["vmisa"][1]
    assert sizes["attention"][1] > sizes["attention"][0]


def test_labels_shift_and_targets_agree():
    model = make("vmisa-scalar")
    ids = torch.randint(0, V, (2, 12))
    a = model(ids, labels=ids).loss
    b = model(ids[:, :-1], targets=ids[:, 1:]).loss
    assert torch.allclose(a, b, atol=1e-6)
    loss = model(ids, targets=ids).loss
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_gla_chunked_equals_reference_loop():
    torch.manual_seed(0)
    B, H, L, dk, dv = 2, 3, 37, 4, 5
    q, k, v = torch.randn(B, H, L, dk), torch.randn(B, H, L, dk), torch.randn(B, H, L, dv)
    log_a = (torch.nn.functional.logsigmoid(3 * torch.randn(B, H, L, dk)) / 16).clamp(min=-4)
    S0 = torch.randn(B, H, dk, dv)
    o1, s1 = gla_naive(q, k, v, log_a, S0)
    o2, s2 = gla_chunk(q, k, v, log_a, S0)
    assert torch.allclose(o1, o2, atol=1e-4) and torch.allclose(s1, s2, atol=1e-4)
    layer = GatedLinearAttention(16, 2)
    x = torch.randn(2, 21, 16)
    ref = GatedLinearAttention(16, 2, backend="naive")
    ref.load_state_dict(layer.state_dict())
    assert torch.allclose(layer(x), ref(x), atol=1e-5)


def test_save_load_round_trip_with_tokenizer(tmp_path):
    model = make("vmisa-scalar")
    tok = Tokenizer.train_char("abcdefghij klmnop\n")
    model.tokenizer = tok
    model.save_pretrained(tmp_path / "m")
    loaded = VMISAForCausalLM.from_pretrained(tmp_path / "m")
    ids = torch.randint(0, V, (2, 9))
    assert torch.equal(model(ids).logits, loaded(ids).logits)
    assert loaded.config == model.config
    assert loaded.tokenizer.encode("abc j") == tok.encode("abc j")


@pytest.mark.parametrize("damage", ["no_marker", "truncated_weights", "bad_json"])
def test_half_written_save_fails_clearly(tmp_path, damage):
    model = make("gla")
    path = model.save_pretrained(tmp_path / "m")
    if damage == "no_marker":  # a crash before the last file: what a copy in progress looks like
        (path / "COMPLETE").unlink()
        match = "not a complete saved model"
    elif damage == "truncated_weights":
        w = path / "model.safetensors"
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
        match = "corrupt or unreadable weights"
    else:
        (path / "config.json").write_text("{\"config\": ")
        match = "config.json"
    with pytest.raises(ValueError, match=match):
        VMISAForCausalLM.from_pretrained(path)


def test_saved_config_is_plain_json(tmp_path):
    path = make("attention").save_pretrained(tmp_path / "m")
    meta = json.loads((path / "config.json").read_text())
    assert meta["model_class"] == "VMISAForCausalLM" and meta["config"]["mixer"] == "attention"


@pytest.mark.parametrize("name", ["attention", "gla"])
def test_weights_saved_with_the_former_block_names_load(tmp_path, name):
    """The baselines' pre-norm block once named its norms ``norm1`` / ``norm2`` (now ``norm`` /
    ``mlp_norm``, as ``VMISABlock``): a folder saved then still loads, with the same outputs."""
    from safetensors.torch import load_file, save_file

    model = make(name)
    path = model.save_pretrained(tmp_path / "m")
    new = load_file(str(path / "model.safetensors"))
    old = {k.replace(".norm.", ".norm1.").replace(".mlp_norm.", ".norm2."): v for k, v in new.items()}
    assert any(".norm1." in k for k in old) and any(".norm2." in k for k in old)
    save_file(old, str(path / "model.safetensors"), metadata={"format": "pt"})
    loaded = VMISAForCausalLM.from_pretrained(path).eval()
    ids = torch.randint(0, V, (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


# ------------------------------------------------------------------ bad input
def test_token_ids_outside_vocab():
    model = make("vmisa-scalar")
    with pytest.raises(ValueError, match=r"token id 37 is outside the vocabulary \[0, 37\)"):
        model(torch.tensor([[1, 2, V]]))
    with pytest.raises(ValueError, match="token id -1"):
        model.generate(torch.tensor([[1, -1]]), 3)
    with pytest.raises(TypeError, match="integer tensor"):
        model(torch.zeros(1, 3))


def test_empty_prompt_rejected():
    model = make("vmisa-scalar")
    with pytest.raises(ValueError, match="non-empty prompt"):
        model.generate(torch.zeros(1, 0, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="non-empty"):
        model.generate([[1, 2], []], 3)
    with pytest.raises(ValueError, match="at least one token"):
        model(torch.zeros(2, 0, dtype=torch.long))


def test_prompt_past_max_len_with_position_alpha():
    model = make("vmisa-paper")  # alpha="position", max_len=64
    with pytest.raises(ValueError, match="beyond max_len=64"):
        model(torch.randint(0, V, (1, 65)))
    with pytest.raises(ValueError, match="beyond max_len=64"):
        model.generate(torch.randint(0, V, (1, 60)), max_new_tokens=10)
    out = model.generate(torch.randint(0, V, (1, 60)), max_new_tokens=5, temperature=0)  # reaches 64 exactly
    assert out.shape == (1, 65)


def test_state_from_another_model_rejected():
    a, b = make("vmisa-scalar"), make("vmisa-scalar", depth=3)
    _, state = a.prefill(torch.randint(0, V, (2, 5)))
    with pytest.raises(ValueError, match="another model"):
        b.step(torch.tensor([1, 2]), state)
    with pytest.raises(ValueError, match="another model"):
        make("gla")(torch.tensor([[1, 2]]).repeat(2, 1), state)
    wide = make("vmisa-scalar", dim=32)
    with pytest.raises(ValueError, match="state.conv: expected shape"):
        wide.step(torch.tensor([1, 2]), state)
    with pytest.raises(ValueError, match="batch size 3"):
        a.step(torch.tensor([1, 2, 3]), state)
    with pytest.raises(TypeError, match="LMState"):
        a.step(torch.tensor([1, 2]), state.layers)


def test_config_validation():
    with pytest.raises(ValueError, match="mixer: expected one of"):
        VMISAConfig(mixer="mamba")
    with pytest.raises(ValueError, match="max_len"):
        VMISAConfig(mixer="attention")
    with pytest.raises(ValueError, match="unknown fields"):
        VMISAConfig.from_dict({"dim": 8, "width": 3})
    with pytest.raises(TypeError, match="VMISAConfig"):
        VMISAForCausalLM({"dim": 8})


def test_lmstate_select_and_cat_round_trip():
    model = make("vmisa-scalar")
    _, state = model.prefill(torch.randint(0, V, (3, 6)))
    back = LMState.cat([state.select(torch.tensor([0])), state.select(torch.tensor([1, 2]))])
    for x, y in zip(back.layers, state.layers):
        assert torch.equal(x.h, y.h) and torch.equal(x.conv, y.conv)
