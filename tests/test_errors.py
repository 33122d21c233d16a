"""Bad inputs raise ValueError / TypeError whose message names the argument, what was
expected and what came (each case asserts on those pieces of the message)."""
from __future__ import annotations

import pytest
import torch

from vmiseq import VMISALayer, create_model, vmisa_global, vmisa_scan
from vmiseq.layers import CausalSelfAttention, GatedLinearAttention
from vmiseq.models import VMISAConfig

B, L, D = 2, 5, 4


def qv(b=B, l=L, d=D, dtype=torch.float32):
    return torch.randn(b, l, d).to(dtype)


def scan(**override):
    args = {"q": qv(), "v": qv(), "alpha": torch.rand(B, L), "beta": torch.tensor(1.0)}
    args.update(override)
    return lambda: vmisa_scan(args.pop("q"), args.pop("v"), args.pop("alpha"), args.pop("beta"), **args)


def layer_state(layer: VMISALayer, batch: int, **kw):
    return layer.init_state(batch, **kw)


LAYER = VMISALayer(8)
POS_LAYER = VMISALayer(8, alpha="position", max_len=16)
IMG_LAYER = VMISALayer(8, causal=False)


def at_position(layer: VMISALayer, position: torch.Tensor):
    state = layer.init_state(position.shape[0])
    state.position = position
    return state


def nan_state(layer: VMISALayer):
    state = layer.init_state(B)
    state.h[0, 0] = float("nan")
    return state

# (id, call, exception type, pieces the message must contain: argument, expected, actual)
CASES = [
    ("q-rank", scan(q=torch.randn(L, D)), ValueError, ["q:", "3-D (B, L, D)", "2-D", f"({L}, {D})"]),
    ("v-batch", scan(v=qv(b=3)), ValueError, ["v:", f"({B}, {L}, {D})", f"(3, {L}, {D})"]),
    ("v-width", scan(v=qv(d=D + 1)), ValueError, ["v:", f"({B}, {L}, {D})", f"({B}, {L}, {D + 1})"]),
    ("alpha-batch", scan(alpha=torch.rand(3, L)), ValueError, ["alpha:", f"(B, L) = ({B}, {L})", f"(3, {L})"]),
    ("alpha-length", scan(alpha=torch.rand(L + 2)), ValueError, ["alpha:", f"L={L}", f"({L + 2},)"]),
    ("alpha-width", scan(alpha=torch.rand(B, L, D + 1)), ValueError, ["alpha:", f"({B}, {L}, {D})", f"({B}, {L}, {D + 1})"]),
    ("alpha-rank", scan(alpha=torch.rand(B, L, D, 1)), ValueError, ["alpha:", "(L,), (B, L) or (B, L, D)", f"({B}, {L}, {D}, 1)"]),
    ("beta-shape", scan(beta=torch.ones(D + 1)), ValueError, ["beta:", f"(D,) = ({D},)", f"({D + 1},)"]),
    ("q-integer", scan(q=torch.ones(B, L, D, dtype=torch.long), v=torch.ones(B, L, D, dtype=torch.long)), TypeError, ["q:", "floating-point", "torch.int64"]),
    ("alpha-integer", scan(alpha=torch.ones(B, L, dtype=torch.int32)), TypeError, ["alpha:", "floating-point", "torch.int32"]),
    ("q-not-tensor", scan(q=[[1.0]]), TypeError, ["q:", "(B, L, D) tensor", "list"]),
    ("initial-state-batch", scan(initial_state=torch.zeros(3, D)), ValueError, ["initial_state:", f"(B, D) = ({B}, {D})", f"(3, {D})"]),
    ("initial-state-device", scan(initial_state=torch.zeros(B, D, device="meta")), ValueError, ["initial_state:", "cpu", "meta"]),
    ("decay-shape", scan(decay=torch.rand(L)), ValueError, ["decay:", "(B, L) or (B, L, D)", f"({L},)"]),
    ("offset-negative", scan(offset=-1), ValueError, ["offset:", "non-negative", "-1"]),
    ("offset-shape", scan(offset=torch.tensor([1, 2, 3])), ValueError, ["offset:", f"({B},)", "(3,)"]),
    ("offset-float", scan(offset=torch.tensor([1.0, 2.0])), TypeError, ["offset:", "integer", "torch.float32"]),
    ("backend", scan(backend="cuda"), ValueError, ["backend:", "'naive'", "'cuda'"]),
    ("global-beta", lambda: vmisa_global(qv(), qv(), torch.rand(L), torch.ones(D + 1), 1.0), ValueError, ["beta0:", f"({D},)", f"({D + 1},)"]),
    ("global-alpha", lambda: vmisa_global(qv(), qv(), torch.rand(L + 1), 1.0, 1.0), ValueError, ["alpha:", f"L={L}", f"({L + 1},)"]),
    # ---- the layer
    ("layer-x-width", lambda: LAYER(torch.randn(B, L, 6)), ValueError, ["x:", "C=8", f"({B}, {L}, 6)"]),
    ("layer-x-rank", lambda: LAYER(torch.randn(L, 8)), ValueError, ["x:", "(B, L, C)", f"({L}, 8)"]),
    ("layer-x-integer", lambda: LAYER(torch.ones(B, L, 8, dtype=torch.long)), TypeError, ["x:", "floating-point", "torch.int64"]),
    ("state-batch", lambda: LAYER(torch.randn(B, L, 8), layer_state(LAYER, 3)), ValueError, ["state.", f"batch {B}", "(3, "]),
    ("state-width", lambda: LAYER(torch.randn(B, L, 8), layer_state(VMISALayer(6), B)), ValueError, ["state.", "width 8", "(2, 6, 3)"]),
    ("state-device", lambda: LAYER(torch.randn(B, L, 8), layer_state(LAYER, B, device="meta")), ValueError, ["state.", "cpu", "meta"]),
    ("state-type", lambda: LAYER(torch.randn(B, L, 8), {"h": 0}), TypeError, ["state:", "VMISAState", "dict"]),
    ("position-beyond-max-len", lambda: POS_LAYER(torch.randn(B, 20, 8)), ValueError, ["x:", "20", "max_len=16"]),
    ("state-position-beyond-max-len", lambda: POS_LAYER(torch.randn(B, 10, 8), POS_LAYER(torch.randn(B, 10, 8), output_state=True)[1]), ValueError, ["state:", "max_len=16", "20"]),
    ("batchnorm-causal", lambda: VMISALayer(8, causal=True, norm="batchnorm"), ValueError, ["norm:", "'batchnorm'", "causal=True", "leak future tokens"]),
    ("layer-backend", lambda: VMISALayer(8, backend="cuda"), ValueError, ["backend:", "'naive'", "'cuda'"]),
    ("alpha-mode", lambda: VMISALayer(8, alpha="learned"), ValueError, ["alpha:", "'input', 'position', 'constant'", "'learned'"]),
    ("decay-mode", lambda: VMISALayer(8, decay="gate"), ValueError, ["decay:", "'input'", "'gate'"]),
    ("norm-name", lambda: VMISALayer(8, norm="groupnorm"), ValueError, ["norm:", "'layernorm'", "'groupnorm'"]),
    ("position-without-max-len", lambda: VMISALayer(8, alpha="position"), ValueError, ["max_len:", "positive", "None"]),
    ("decay-noncausal", lambda: VMISALayer(8, causal=False, decay="input"), ValueError, ["decay:", "causal", "'input'"]),
    ("dim", lambda: VMISALayer(0), ValueError, ["dim:", "positive int", "0"]),
    ("image-channels", lambda: VMISALayer(8, causal=False)(torch.randn(1, 3, 4, 4)), ValueError, ["x:", "C=8", "(1, 3, 4, 4)"]),
    ("step-shape", lambda: LAYER.step(torch.randn(B, 1, 8), LAYER.init_state(B)), ValueError, ["x_t:", "(B, C)", f"({B}, 1, 8)"]),
    ("init-state-batch", lambda: LAYER.init_state(0), ValueError, ["batch_size:", "positive int", "0"]),
    # ---- values that used to give silently wrong results
    ("decay-above-one", scan(decay=torch.full((B, L), 2.0)), ValueError, ["decay:", "[0, 1]", "2.0"]),
    ("decay-negative", scan(decay=-torch.rand(B, L, D)), ValueError, ["decay:", "[0, 1]", "-0."]),
    ("decay-nan", scan(decay=torch.full((B, L), float("nan"))), ValueError, ["decay:", "[0, 1]", "nan"]),
    ("offset-int64-overflow", scan(offset=2**63), ValueError, ["offset:", "2**63 - L", str(2**63)]),
    ("offset-tensor-overflow", scan(offset=torch.tensor([0, 2**63 - 2])), ValueError, ["offset:", "2**63 - L", str(2**63 - 2)]),
    ("scan-overflow", scan(q=qv() * 1e30, v=qv() * 1e30), ValueError, ["q, v:", "non-finite", "overflow", "e+30"]),
    ("scan-nan", scan(v=torch.full((B, L, D), float("nan"))), ValueError, ["q, v:", "finite", "NaN"]),
    ("layer-half-input", lambda: LAYER(torch.randn(B, L, 8).half()), TypeError, ["x:", "torch.float32", "torch.float16", "autocast"]),
    ("image-bf16-input", lambda: IMG_LAYER(torch.randn(1, 8, 4, 4).bfloat16()), TypeError, ["x:", "torch.float32", "torch.bfloat16"]),
    ("gla-half-input", lambda: GatedLinearAttention(8, 2)(torch.randn(B, L, 8).half()), TypeError, ["x:", "torch.float32", "torch.float16"]),
    ("attention-bf16-input", lambda: CausalSelfAttention(8, 2)(torch.randn(B, L, 8).bfloat16()), TypeError, ["x:", "torch.float32", "torch.bfloat16"]),
    ("step-half-input", lambda: LAYER.step(torch.randn(B, 8).half(), LAYER.init_state(B)), TypeError, ["x_t:", "torch.float32", "torch.float16"]),
    ("step-negative-position", lambda: POS_LAYER.step(torch.randn(B, 8), at_position(POS_LAYER, torch.tensor([-1, 0]))), ValueError, ["state.position:", "non-negative", "-1"]),
    ("forward-negative-position", lambda: POS_LAYER(torch.randn(B, L, 8), at_position(POS_LAYER, torch.tensor([3, -2]))), ValueError, ["state.position:", "non-negative", "-2"]),
    ("step-float-position", lambda: POS_LAYER.step(torch.randn(B, 8), at_position(POS_LAYER, torch.tensor([1.5, 1.0]))), TypeError, ["state.position:", "integer", "torch.float32"]),
    ("layer-overflow", lambda: LAYER(torch.randn(B, L, 8) * 1e30), ValueError, ["x:", "non-finite", "overflow", "e+30"]),
    ("layer-nan", lambda: LAYER(torch.full((B, L, 8), float("nan"))), ValueError, ["x:", "finite", "NaN"]),
    ("step-overflow", lambda: LAYER.step(torch.randn(B, 8) * 1e30, LAYER.init_state(B)), ValueError, ["x_t:", "non-finite", "overflow"]),
    ("image-nan", lambda: IMG_LAYER(torch.full((1, 8, 4, 4), float("inf"))), ValueError, ["x:", "finite", "NaN or inf"]),
    ("state-nan", lambda: LAYER(torch.randn(B, L, 8), nan_state(LAYER)), ValueError, ["state.h:", "finite", "NaN"]),
    # ---- model configs: a wrong type is an error, never parsed or cut
    ("create-model-img-size-str", lambda: create_model("vminet_mnist", img_size="28"), TypeError, ["img_size:", "(H, W) pair of ints", "'28'"]),
    ("create-model-rank-mask-str", lambda: create_model("vminet_mnist", rank_mask="yes"), TypeError, ["rank_mask:", "bool", "'yes'"]),
    ("create-model-depths-float", lambda: create_model("vminet_mnist", depths=(2, 2.5, 2)), TypeError, ["depths:", "ints", "2.5"]),
    ("lm-config-rank-mask-str", lambda: VMISAConfig(rank_mask="yes"), TypeError, ["rank_mask:", "bool", "'yes'"]),
    ("lm-config-dropout-str", lambda: VMISAConfig(dropout="0.1"), TypeError, ["dropout:", "number", "'0.1'"]),
]


@pytest.mark.parametrize("call,exc,pieces", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_message(call, exc, pieces):
    with pytest.raises(exc) as info:
        call()
    msg = str(info.value)
    missing = [p for p in pieces if p not in msg]
    assert not missing, f"message {msg!r} lacks {missing}"


def test_enough_cases():
    assert len(CASES) >= 12


def test_step_position_beyond_max_len():
    layer = VMISALayer(4, alpha="position", max_len=3).eval()
    state = layer.init_state(1)
    with torch.no_grad():
        for _ in range(3):
            _, state = layer.step(torch.randn(1, 4), state)
        with pytest.raises(ValueError, match=r"max_len=3"):
            layer.step(torch.randn(1, 4), state)


def test_empty_inputs_do_not_crash():
    """L = 0 gives an empty result (and the state passes through), never an exception."""
    y, final = vmisa_scan(qv(l=0), qv(l=0), torch.rand(B, 0), 1.0, output_final_state=True)
    assert y.shape == (B, 0, D) and final.shape == (B, D)
    out, state = LAYER(torch.randn(B, 0, 8), output_state=True)
    assert out.shape == (B, 0, 8) and state.position.tolist() == [0, 0]
    s1 = LAYER(torch.randn(B, 7, 8), output_state=True)[1]
    out, s2 = LAYER(torch.randn(B, 0, 8), s1, output_state=True)
    assert out.shape == (B, 0, 8) and torch.equal(s2.h, s1.h) and s2.position.tolist() == [7, 7]
    assert VMISALayer(8, causal=False)(torch.randn(B, 8, 0, 5)).shape == (B, 8, 0, 5)
