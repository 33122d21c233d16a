"""VMINet: the official sizes and costs, the official block's outputs, resolutions, save/load,
v1/v2, fusing for deployment, parameter groups."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import vmiseq
from vmiseq.models.registry import create_model, list_models, register_model
from vmiseq.models.vminet import VMINet, VMINetConfig, convert_official_state_dict, stage_grids
from vmiseq.layers.vmisa import VMISALayer, resize_alpha_table

ROOT = Path(__file__).resolve().parents[1]

# Official code, v1 (mask off, BatchNorm after g): params and GMACs at 224 px (docs/design.md §2).
OFFICIAL = {
    "vminet_ti": (2.037e6, 0.35),
    "vminet_xs": (7.440e6, 1.26),
    "vminet_s": (13.347e6, 2.30),
    "vminet_b": (28.387e6, 4.78),
}


def _official():
    spec = importlib.util.spec_from_file_location("official_vminet", ROOT / "benchmarks" / "official_vminet.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _meta_model(name: str, **kw) -> VMINet:
    with torch.device("meta"):
        return create_model(name, **kw)


def _macs(model: VMINet, size=(224, 224)) -> float:
    x = torch.empty(1, model.config.in_chans, *size, device="meta")
    with FlopCounterMode(display=False) as counter:
        model.eval()(x)
    return counter.get_total_flops() / 2


@pytest.mark.parametrize("name", sorted(OFFICIAL))
@pytest.mark.parametrize("rank_mask", [False, True])
def test_param_counts_match_official(name, rank_mask):
    params = sum(p.numel() for p in _meta_model(name, rank_mask=rank_mask).parameters())
    target = OFFICIAL[name][0]
    assert abs(params - target) / target < 0.005, (name, rank_mask, params)
    if not rank_mask:  # v1 is reproduced exactly (to the rounding of the published figure)
        assert abs(params - target) < 1000


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_macs_match_official(name):
    gmacs = _macs(_meta_model(name)) / 1e9
    assert abs(gmacs - OFFICIAL[name][1]) / OFFICIAL[name][1] < 0.10, (name, gmacs)


def test_registry_lists_and_rejects():
    names = list_models()
    assert {"vminet_ti", "vminet_xs", "vminet_s", "vminet_b", "vminet_mnist"} <= set(names)
    assert list_models("vminet_x*") == ["vminet_xs"]
    assert vmiseq.list_models() == names and vmiseq.create_model is create_model
    with pytest.raises(ValueError, match="unknown model 'vminet_q'"):
        create_model("vminet_q")
    with pytest.raises(ValueError, match="unknown config fields"):
        create_model("vminet_ti", depth=3)
    with pytest.raises(ValueError, match="already registered"):
        register_model("vminet_ti", VMINet, {})
    with pytest.raises(ValueError, match="depths"):
        register_model("bad_variant", VMINet, {"depths": (2, 0)})


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="stage_strides"):
        VMINetConfig(depths=(1, 1), stage_strides=(2, 2, 2))
    with pytest.raises(ValueError, match="base_dim"):
        VMINetConfig(base_dim=0)
    with pytest.raises(ValueError, match="drop_path_rate"):
        VMINetConfig(drop_path_rate=1.5)
    with pytest.raises(ValueError, match="unknown VMINetConfig fields"):
        VMINetConfig.from_dict({"base_dim": 8, "widht": 3})
    m = create_model("vminet_ti", depths=(1, 1, 1, 1), img_size=32)
    with pytest.raises(ValueError, match=r"x: expected an image batch \(B, 3, H, W\)"):
        m(torch.randn(2, 1, 32, 32))


def test_forward_224_and_features():
    torch.manual_seed(0)
    m = create_model("vminet_ti").eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        feats = m.forward_features(x)
        logits = m.forward_head(feats[-1])
    assert [tuple(f.shape) for f in feats] == [(1, 24, 56, 56), (1, 48, 28, 28), (1, 96, 14, 14), (1, 192, 7, 7)]
    assert m.config.strides == (4, 8, 16, 32)
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()
    assert [layer.grid_size for layer in m.mixers()][:2] == [(56, 56), (56, 56)]


def test_forward_other_resolution_interpolates_alpha():
    torch.manual_seed(0)
    m = create_model("vminet_ti", depths=(1, 1, 1, 1), num_classes=7).eval()
    with torch.no_grad():
        y = m(torch.randn(2, 3, 160, 192))  # non-square, not the 224 the tables were sized for
        feats = m.forward_features(torch.randn(1, 3, 160, 192))
    assert y.shape == (2, 7) and torch.isfinite(y).all()
    assert [tuple(f.shape[2:]) for f in feats] == [(40, 48), (20, 24), (10, 12), (5, 6)]


def test_resize_alpha_table_keeps_constants_and_identity():
    t = torch.randn(56 * 56)
    assert torch.equal(resize_alpha_table(t, (56, 56), (56, 56)), t)
    c = torch.full((49,), 0.3)
    assert torch.allclose(resize_alpha_table(c, (7, 7), (9, 11)), torch.full((99,), 0.3))


def _randomise_bn(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.copy_(torch.randn(mod.running_mean.shape, generator=g) * 0.2)
            mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=g) + 0.5)
            mod.weight.data.copy_(torch.randn(mod.weight.shape, generator=g) * 0.5 + 1)
            mod.bias.data.copy_(torch.randn(mod.bias.shape, generator=g) * 0.1)


@pytest.mark.parametrize("version", [1, 2])
def test_matches_official_block_eval_and_train(version):
    """Same weights (converted from the official layout) -> same outputs, both modes; this also
    checks the weight converter and the v1/v2 definitions (mask, BatchNorm after g)."""
    official = _official()
    torch.manual_seed(version)
    ref = official.OfficialVMINet(depths=(1, 1, 2, 1), img_size=64, version=version)
    with torch.no_grad():
        _randomise_bn(ref)
        for name, p in ref.named_parameters():
            if name.endswith("stack") or ".sum." in name:
                p.normal_()
    ours = create_model("vminet_ti", depths=(1, 1, 2, 1), img_size=64, rank_mask=version == 2)
    assert ours.config.use_out_norm == (version == 1)
    ours.load_state_dict(convert_official_state_dict(ref.state_dict(), ours))
    x = torch.randn(3, 3, 64, 64)
    ref.eval(), ours.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-4)
    # training mode (batch statistics) and gradients, in float64 so rounding cannot hide a bug
    ref.double().train(), ours.double().train()
    xr = x.double().requires_grad_(True)
    xo = x.double().requires_grad_(True)
    yr, yo = ref(xr), ours(xo)
    torch.testing.assert_close(yo, yr, rtol=1e-9, atol=1e-9)
    g = torch.randn_like(yr)
    yr.backward(g), yo.backward(g)
    torch.testing.assert_close(xo.grad, xr.grad, rtol=1e-8, atol=1e-10)
    gr = ref.stages[2][1].stack.grad
    go = ours.stages[2].blocks[0].mixer
    torch.testing.assert_close(torch.stack([go.beta0.grad, go.beta1.grad]), gr, rtol=1e-8, atol=1e-10)


def test_fuse_keeps_outputs_and_locks_training(tmp_path):
    torch.manual_seed(0)
    m = create_model("vminet_ti", depths=(1, 2, 1, 1), img_size=64, rank_mask=False).eval()
    _randomise_bn(m)
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        before = m(x)
        m.fuse()
        after = m(x)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
    assert not any(isinstance(mod, torch.nn.BatchNorm2d) for mod in m.modules())
    assert all(layer.out_norm is None for layer in m.mixers())
    with pytest.raises(RuntimeError, match="fused"):
        m.train()
    with pytest.raises(RuntimeError, match="before fuse"):
        m.save_pretrained(tmp_path / "fused")
    with pytest.raises(ValueError, match="conv_dims"):
        VMISALayer(8, causal=True).fuse()


@pytest.mark.parametrize("fast", [True, False], ids=["onednn", "fallback"])
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(alpha="position", grid_size=(5, 7), rank_mask=True, out_norm=False),
        dict(alpha="position", grid_size=(5, 7), rank_mask=False, out_norm=True),
        dict(alpha="input", rank_mask=True, beta_per_channel=True),
        dict(alpha="constant", rank_mask=False, out_norm=True),
    ],
    ids=["v2", "v1", "input-alpha", "constant-alpha"],
)
def test_fused_residual_path_equals_the_plain_block(kwargs, fast, monkeypatch):
    """The deployment path (oneDNN epilogues, in-place element-wise work) computes exactly
    x + layer(x) of the unfused layer; without oneDNN's fused Linear it falls back."""
    import vmiseq.layers.fusion as vmisa_mod
    from vmiseq.layers import VMISABlock

    calls = []
    if fast:
        op = vmisa_mod._MKLDNN_LINEAR
        if op is None:
            pytest.skip("this torch build has no oneDNN fused Linear")

        class Spy:  # counts the fast path's calls, so the test knows which path ran
            def __call__(self, *a):
                calls.append("linear")
                return op(*a)

            def binary(self, *a):
                calls.append("binary")
                return op.binary(*a)

        monkeypatch.setattr(vmisa_mod, "_MKLDNN_LINEAR", Spy())
    else:
        monkeypatch.setattr(vmisa_mod, "_MKLDNN_LINEAR", None)
    torch.manual_seed(0)
    block = VMISABlock(12, expand=2, causal=False, norm="batchnorm", conv_kernel=3, **kwargs).eval()
    _randomise_bn(block)
    with torch.no_grad():
        block.mixer.beta0.uniform_(0.5, 1.5)
        block.mixer.beta1.uniform_(0.5, 1.5)
    x = torch.randn(3, 12, 5, 7).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        before = block(x)
        block.mixer.fuse()
        after = block(x)
        nchw = block(x.contiguous())  # a plain NCHW input works too
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(nchw, before, rtol=1e-5, atol=1e-5)
    assert after.shape == x.shape
    assert calls == (["linear", "linear", "binary"] * 2 if fast else [])
    # with autograd on (saliency maps of a deployed model) the plain path runs, with gradients
    xg = x.clone().requires_grad_(True)
    block(xg).sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()
    assert len(calls) == (6 if fast else 0)


def test_save_load_round_trip_exact(tmp_path):
    torch.manual_seed(0)
    m = create_model("vminet_ti", depths=(1, 1, 2, 1), img_size=64, num_classes=5, drop_path_rate=0.1)
    _randomise_bn(m)
    m.eval()
    m.save_pretrained(tmp_path / "m")
    n = VMINet.from_pretrained(tmp_path / "m").eval()
    assert n.config == m.config
    sa, sb = m.state_dict(), n.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(m(x), n(x))
    # through the registry, at another resolution: tables interpolated, not crashed
    k = create_model("vminet_ti", pretrained=tmp_path / "m", img_size=96)
    assert k.config.img_size == (96, 96)
    assert k.stages[0].blocks[0].mixer.alpha_table.shape == (24 * 24,)
    assert k.stages[0].blocks[0].mixer.grid_size == (24, 24)
    with torch.no_grad():
        assert k.eval()(torch.randn(1, 3, 96, 96)).shape == (1, 5)
    with pytest.raises(ValueError, match="only img_size and num_classes"):
        create_model("vminet_ti", pretrained=tmp_path / "m", depths=(1, 1, 1, 1))
    assert create_model("vminet_ti", pretrained=tmp_path / "m", num_classes=3).head.out_features == 3


def test_load_state_dict_from_another_resolution():
    torch.manual_seed(0)
    src = create_model("vminet_ti", depths=(1, 1, 1, 1), img_size=64)
    dst = create_model("vminet_ti", depths=(1, 1, 1, 1), img_size=(96, 128))
    dst.load_state_dict(src.state_dict())  # the pre-hook interpolates the (16*16,) tables
    layer_src, layer_dst = src.stages[0].blocks[0].mixer, dst.stages[0].blocks[0].mixer
    expected = resize_alpha_table(layer_src.alpha_table.detach(), (16, 16), (24, 32))
    assert torch.equal(layer_dst.alpha_table.detach(), expected)


def test_rank_mask_switch_v1_v2():
    torch.manual_seed(0)
    v2 = create_model("vminet_ti", depths=(1, 1, 1, 1), img_size=64)
    v1 = create_model("vminet_ti", depths=(1, 1, 1, 1), img_size=64, rank_mask=False)
    assert all(layer.rank_mask for layer in v2.mixers()) and not any(layer.rank_mask for layer in v1.mixers())
    assert all(layer.out_norm is None for layer in v2.mixers())
    assert all(isinstance(layer.out_norm, torch.nn.BatchNorm2d) for layer in v1.mixers())
    # v2 without the BatchNorm after g has v1's structure otherwise: same weights, the mask changes the output
    v2b = create_model("vminet_ti", depths=(1, 1, 1, 1), img_size=64, rank_mask=True, out_norm=True)
    v2b.load_state_dict(v1.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(v1.eval()(x), v2b.eval()(x))


def test_param_groups_no_decay_on_1d():
    m = create_model("vminet_ti", depths=(1, 1, 1, 1), img_size=64)
    decay, no_decay = m.param_groups(0.025)
    assert decay["weight_decay"] == 0.025 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in m.named_parameters()}
    nd = {names[id(p)] for p in no_decay["params"]}
    assert all(names[id(p)].endswith("weight") and p.ndim > 1 for p in decay["params"])
    assert any(n.endswith("beta0") for n in nd) and any(n.endswith("alpha_table") for n in nd)
    assert any(n.endswith("norm.weight") for n in nd) and any(n.endswith("conv.bias") for n in nd)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(m.parameters()))


def test_drop_path_in_channels_and_classes_options():
    m = create_model("vminet_ti", depths=(1, 1, 2, 1), img_size=32, in_chans=1, num_classes=0, drop_path_rate=0.2)
    rates = [b.drop_path.p for s in m.stages for b in s.blocks]
    assert rates[0] == 0.0 and math.isclose(rates[-1], 0.2) and rates == sorted(rates)
    m.train()
    out = m(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, 192)  # num_classes=0: pooled features
    out.sum().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_grids_follow_conv_arithmetic():
    cfg = VMINetConfig(img_size=(225, 97))
    assert stage_grids(cfg) == [(57, 25), (29, 13), (15, 7), (8, 4)]
    small = create_model("vminet_mnist")
    assert small.grids == [(14, 14), (7, 7), (4, 4)]
    with torch.no_grad():
        assert small.eval()(torch.randn(3, 1, 28, 28)).shape == (3, 10)
