"""vmiseq inside transformers and timm (offline, tiny models)."""
from __future__ import annotations

import json

import pytest
import torch

import vmiseq
from vmiseq.models import VMISAConfig, VMISAForCausalLM
from vmiseq.data.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")

TEXT = "In the beginning God created the heaven and the earth. And the earth was without form, and void.\n" * 4


@pytest.fixture(scope="module")
def saved_lm(tmp_path_factory):
    torch.manual_seed(0)
    tok = Tokenizer.train_char(TEXT)
    lm = VMISAForCausalLM(VMISAConfig(vocab_size=tok.vocab_size, dim=32, depth=2)).eval()
    lm.tokenizer = tok
    folder = tmp_path_factory.mktemp("lm") / "model"
    lm.save_pretrained(folder)
    return lm, folder


def test_auto_classes_load_a_vmiseq_folder(saved_lm):
    from transformers import AutoConfig, AutoModelForCausalLM

    lm, folder = saved_lm
    assert json.loads((folder / "config.json").read_text())["model_type"] == "vmiseq_lm"
    config = AutoConfig.from_pretrained(folder)
    assert config.model_type == "vmiseq_lm" and config.dim == 32 and config.hidden_size == 32
    model = AutoModelForCausalLM.from_pretrained(folder)
    ids = torch.tensor([lm.tokenizer.encode("And God")])
    assert torch.equal(model(ids).logits, lm(ids).logits)


def test_greedy_generate_equals_vmiseq_and_cache_stays_fixed(saved_lm):
    from transformers import AutoModelForCausalLM

    from vmiseq.integrations.hf import VMISAStateCache

    lm, folder = saved_lm
    model = AutoModelForCausalLM.from_pretrained(folder)
    sizes = []
    model.register_forward_hook(lambda mod, args, out: sizes.append(out.cache.nbytes()))
    ids = torch.tensor([lm.tokenizer.encode("And the earth")])
    out = model.generate(ids, max_new_tokens=120, do_sample=False)
    assert torch.equal(out, lm.generate(ids, 120, temperature=0.0))
    # the cache after the prompt is as big as after 120 more tokens: O(1) memory per token
    assert len(sizes) == 120 and len(set(sizes)) == 1 and sizes[0] == lm.init_state(1).nbytes()
    cache = VMISAStateCache(lm.prefill(ids)[1])
    assert cache.get_seq_length() == ids.shape[1]


def test_sampling_batches_and_padding_policy(saved_lm):
    from transformers import AutoModelForCausalLM

    lm, folder = saved_lm
    model = AutoModelForCausalLM.from_pretrained(folder)
    ids = torch.tensor([lm.tokenizer.encode("And God"), lm.tokenizer.encode("In the ")[:7]])
    out = model.generate(ids, max_new_tokens=10, do_sample=True, top_k=5, num_return_sequences=2)
    assert out.shape == (4, ids.shape[1] + 10)
    mask = torch.ones_like(ids)
    mask[0, 0] = 0
    with pytest.raises(ValueError, match="attention_mask: padded batches"):
        model(ids, attention_mask=mask)


def test_pipeline_text_generation(saved_lm):
    from transformers import AutoModelForCausalLM, pipeline

    from vmiseq.integrations.hf import hf_tokenizer

    lm, folder = saved_lm
    model = AutoModelForCausalLM.from_pretrained(folder)
    pipe = pipeline("text-generation", model=model, tokenizer=hf_tokenizer(model), device="cpu")
    text = pipe("And God", max_new_tokens=12, do_sample=False)[0]["generated_text"]
    ids = torch.tensor([lm.tokenizer.encode("And God")])
    assert text == lm.tokenizer.decode(lm.generate(ids, 12, temperature=0.0)[0].tolist())


def test_trainer_step_and_round_trip(saved_lm, tmp_path):
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    lm, folder = saved_lm
    model = AutoModelForCausalLM.from_pretrained(folder)
    model.train()
    ids = torch.tensor(lm.tokenizer.encode(TEXT[:200]))
    rows = [{"input_ids": ids[i : i + 32], "labels": ids[i : i + 32]} for i in range(0, 160, 32)]
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=2, learning_rate=1e-2,
        report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, logging_strategy="no",
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = Trainer(model=model, args=args, train_dataset=rows).train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    # transformers-side save -> vmiseq load, and back
    model.save_pretrained(tmp_path / "hf")
    back = VMISAForCausalLM.from_pretrained(tmp_path / "hf")
    x = ids[:16].unsqueeze(0)
    model.eval()
    assert torch.equal(back(x).logits, model(x).logits)
    assert back.tokenizer is not None
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert torch.equal(again(x).logits, back(x).logits)


def test_timm_registry_features_and_data_config():
    m = timm.create_model("vminet_ti", num_classes=7)
    assert isinstance(m, vmiseq.models.VMINet) and m.config.num_classes == 7
    assert set(timm.list_models("vminet*")) >= {"vminet_ti", "vminet_xs", "vminet_s", "vminet_b", "vminet_mnist"}
    assert set(timm.list_pretrained("vminet*")) == {"vminet_xs", "vminet_s", "vminet_b"}
    cfg = timm.data.resolve_data_config({}, model=m)
    assert cfg["input_size"] == (3, 224, 224) and cfg["crop_pct"] == 0.875 and cfg["interpolation"] == "bicubic"
    assert "releases/download" in timm.create_model("vminet_xs").pretrained_cfg["url"]
    f = timm.create_model("vminet_mnist", features_only=True, out_indices=(1, 2))
    x = torch.randn(2, 1, 28, 28)
    feats = f(x)
    assert [t.shape[1] for t in feats] == f.feature_info.channels() == [64, 128]
    ref = vmiseq.create_model("vminet_mnist")
    ref.load_state_dict(f.model.state_dict())
    ref.eval(), f.eval()
    with torch.no_grad():
        want = ref.forward_features(x)
        got = f(x)
    assert all(torch.equal(a, b) for a, b in zip(got, want[1:]))


def test_import_stays_light_and_registers_in_either_order():
    import subprocess
    import sys

    code = (
        "import sys, timm\n"  # imported before vmiseq: registered at once
        "import vmiseq\n"
        "assert 'vminet_ti' in timm.list_models('vminet*')\n"
        "assert 'transformers' not in sys.modules, 'import vmiseq must not import transformers'\n"
        "from transformers import AutoConfig\n"  # imported after vmiseq: registered by the hook
        "assert AutoConfig.for_model('vmiseq_lm', dim=16).dim == 16\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=600)


def test_checkout_kernels_folder_never_loads_twice():
    """From a checkout's root, ``import kernels`` (transformers probes for the PyPI package of
    that name) must not load a second copy of vmiseq's kernels, which would register the
    custom ops again."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    ours = str(root / "kernels")
    code = (
        f"import os, sys; sys.path.insert(0, {str(root)!r})\n"
        "import vmiseq.kernels, kernels\n"
        f"ours = {ours!r}\n"
        "assert kernels is vmiseq.kernels or os.path.dirname(kernels.__file__) != ours, kernels.__file__\n"
        "assert not [m for m, mod in list(sys.modules.items()) if m.startswith('kernels.')\n"
        "            and os.path.dirname(getattr(mod, '__file__', '') or '') == ours]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
