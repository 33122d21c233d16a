"""MLLA: the official parameter counts and FLOPs, the official block's outputs (eval and, in
float64, training mode with input gradients), any resolution, checkpoint conversion,
save/load, the registry and the image experiment."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from vmiseq.models.mlla import MLLA, MLLAConfig, convert_official_state_dict
from vmiseq.models.registry import create_model, list_models

ROOT = Path(__file__).resolve().parents[1]

# Official code (github LeapLabTHU/MLLA) at 224 px, 1000 classes; the paper's GFLOPs (= GMACs).
OFFICIAL = {"mlla_t": (24_392_200, 4.2), "mlla_s": (43_015_048, 7.3), "mlla_b": (95_983_960, 16.2)}
SMALL = dict(embed_dim=32, depths=(1, 2, 1, 1), num_heads=(1, 2, 4, 8), num_classes=10)


def _official():
    spec = importlib.util.spec_from_file_location("official_mlla", ROOT / "benchmarks" / "official_mlla.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Perturb every weight and BatchNorm statistic so no init symmetry hides a mismatch."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)


def _pair(img_size: int, dtype=torch.float32, **kw):
    """An official model built at ``img_size`` and ours holding the same weights."""
    cfg = {**SMALL, **kw}
    mod = _official()
    official = mod.OfficialMLLA(img_size=img_size, **cfg).to(dtype)
    _randomise(official)
    if dtype == torch.float64:  # the official RoPE table is computed in float32: recompute it in float64
        for name, buf in official.named_buffers():
            if name.endswith("rope.rotations"):
                buf.copy_(mod.RoPE.table((buf.shape[0], buf.shape[1], 2 * buf.shape[2]), dtype=dtype))
    ours = MLLA(MLLAConfig(img_size=img_size, **cfg)).to(dtype)
    ours.load_state_dict(convert_official_state_dict(official.state_dict(), ours))
    return official, ours


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_official_parameter_counts(name):
    with torch.device("meta"):
        model = create_model(name)
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL[name][0]


@pytest.mark.parametrize("name", ["mlla_t", pytest.param("mlla_s", marks=pytest.mark.slow),
                                  pytest.param("mlla_b", marks=pytest.mark.slow)])
def test_flops_within_5_percent_of_the_paper(name):
    gflops = OFFICIAL[name][1]
    with torch.device("meta"):
        model = create_model(name)
    with FlopCounterMode(display=False) as counter:
        model(torch.empty(1, 3, 224, 224, device="meta"))
    macs = counter.get_total_flops() / 2
    assert abs(macs / 1e9 - gflops) / gflops < 0.05


def test_eval_outputs_equal_official_at_224_for_mlla_t():
    torch.manual_seed(0)
    official = _official().OfficialMLLA(img_size=224).eval()
    _randomise(official)
    ours = create_model("mlla_t").eval()
    ours.load_state_dict(convert_official_state_dict({"model": official.state_dict()}, ours))
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), official(x), rtol=1e-4, atol=1e-4)


def test_train_mode_outputs_and_input_grads_equal_official_float64():
    torch.manual_seed(1)
    official, ours = _pair(64, torch.float64)
    x = torch.randn(3, 3, 64, 64, dtype=torch.float64)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = official.train()(x1), ours.train()(x2)
    torch.testing.assert_close(y2, y1, rtol=1e-9, atol=1e-10)
    g = torch.randn_like(y1)
    (y1 * g).sum().backward()
    (y2 * g).sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-8, atol=1e-10)
    grads = dict(official.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-7, atol=1e-9, msg=name)


@pytest.mark.parametrize("size", [96, 32])
def test_any_resolution_equals_an_official_model_built_for_it(size):
    """Weights of a 64 px model run at another size give the official model built at that size."""
    torch.manual_seed(2)
    official, _ = _pair(size)
    ours = MLLA(MLLAConfig(img_size=64, **SMALL))
    ours.load_state_dict(convert_official_state_dict(official.state_dict(), ours))
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), official.eval()(x), rtol=1e-4, atol=1e-5)


def test_non_square_and_odd_inputs_and_forward_features():
    model = MLLA(MLLAConfig(**SMALL)).eval()
    feats = model.forward_features(torch.randn(2, 3, 80, 48))
    assert [tuple(f.shape) for f in feats] == [(2, 32, 20, 12), (2, 64, 10, 6), (2, 128, 5, 3), (2, 256, 3, 2)]
    assert model(torch.randn(1, 3, 75, 51)).shape == (1, 10)
    with torch.no_grad():  # the head is the pooled, normalised last stage map
        x = torch.randn(1, 3, 64, 64)
        torch.testing.assert_close(model(x), model.forward_head(model.forward_features(x)[-1].permute(0, 2, 3, 1)))


def test_convert_rejects_other_models_and_drops_rope_tables():
    official, ours = _pair(64)
    sd = official.state_dict()
    assert any(k.endswith("rope.rotations") for k in sd)
    out = convert_official_state_dict({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, ours)
    assert set(out) == set(ours.state_dict())
    del sd["head.weight"]
    with pytest.raises(ValueError, match="missing.*head.weight"):
        convert_official_state_dict(sd, ours)


def test_registry_save_load_and_groups(tmp_path):
    assert {"mlla_t", "mlla_s", "mlla_b", "mlla_mnist"} <= set(list_models("mlla*"))
    model = create_model("mlla_mnist").eval()
    x = torch.randn(2, 1, 28, 28)
    model.save_pretrained(tmp_path / "m")
    loaded = create_model("mlla_mnist", pretrained=tmp_path / "m").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    assert create_model("mlla_mnist", pretrained=tmp_path / "m", num_classes=3)(x).shape == (2, 3)
    decay, no_decay = model.param_groups(0.05)
    assert decay["weight_decay"] == 0.05 and all(p.ndim > 1 for p in decay["params"])
    assert all(p.ndim <= 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_config_and_input_errors():
    with pytest.raises(ValueError, match="num_heads"):
        MLLAConfig(embed_dim=32, depths=(1, 1), num_heads=(3, 2))
    with pytest.raises(ValueError, match="embed_dim: expected a multiple of 4"):
        MLLAConfig(embed_dim=30)
    with pytest.raises(ValueError, match="stem_strides"):
        MLLAConfig(stem_strides=(4, 1))
    with pytest.raises(ValueError, match="unknown config fields"):
        create_model("mlla_t", rank_mask=True)
    model = create_model("mlla_mnist")
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        model(torch.randn(2, 3, 28, 28))
    with pytest.raises(TypeError, match="floating-point"):
        model(torch.zeros(2, 1, 28, 28, dtype=torch.long))


def test_image_experiment_trains_mlla_mnist(tmp_path):
    from vmiseq import data_images as di

    if not Path(di.FASHION_MNIST_DIR, "t10k-labels-idx1-ubyte.gz").is_file():
        pytest.skip("dataset-fashion-mnist not installed")
    from experiment_scripts import load_script

    exp = load_script("imagenet")
    res = exp.main(["--model", "mlla_mnist", "--epochs", "1", "--train-subset", "128", "--val-subset", "64",
                    "--batch-size", "32", "--out-dir", str(tmp_path / "fm"), "--no-progress"])
    assert res["model"] == "mlla_mnist" and res["params"] == sum(
        p.numel() for p in create_model("mlla_mnist").parameters())
    assert 0.0 <= res["final"]["val/acc1"] <= 1.0 and torch.isfinite(torch.tensor(res["final"]["val/loss"]))
    saved = MLLA.from_pretrained(tmp_path / "fm" / "model")  # the trained model, written by save_pretrained
    assert saved.config.num_classes == 10 and saved.config.in_chans == 1
    metrics = exp.main(["--val-subset", "64", "--batch-size", "32", "--out-dir", str(tmp_path / "ev"), "--no-progress",
                        "--eval-only", "--checkpoint", str(tmp_path / "fm" / "model")])
    assert abs(metrics["val/acc1"] - res["final"]["val/acc1"]) < 1e-6
