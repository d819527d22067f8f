"""Export: LoRA merged into dense weights (a 4-bit base dequantized), verified, loadable without peft."""

from __future__ import annotations

import json

import torch

from medbot_export import export
from medbot_model import add_lora, load_base_model
from medbot_train import save_adapter


def _trained_looking_adapter(cfg, tokenizer):
    """A LoRA adapter with non-zero B (a fresh one adds nothing, so a merge bug could not show)."""
    model = add_lora(load_base_model(cfg), cfg)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return save_adapter(model, tokenizer, cfg)


def test_export_merges_a_4bit_adapter_into_plain_weights(tiny_cfg, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    adapter = _trained_looking_adapter(tiny_cfg, tokenizer)
    out = tmp_path / "merged"
    check = export(adapter, out, "fp32")
    assert check["max_rel_diff"] <= check["logit_tolerance"] and check["top1_agreement"] == 1.0
    assert check["layer_max_rel_diff"] <= check["layer_tolerance"] == 1e-4
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config  # servers load it as a plain model
    merged = AutoModelForCausalLM.from_pretrained(out)  # no peft, no bitsandbytes
    assert all(type(m).__name__ != "Linear4bit" for m in merged.modules())
    base = load_base_model(tiny_cfg.replace(load_in_4bit=False))
    ids = tokenizer("### Patient query: I feel dizzy.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a, b = merged(ids).logits, base(ids).logits
    assert (a - b).abs().max() > 1e-3  # the merge changed the model: the adapter is in the weights
    assert json.loads((out / "medbot_config.json").read_text())["prompt_template"] == tiny_cfg.prompt_template


def test_export_in_bf16_stays_within_the_stated_tolerance(tiny_cfg, tokenizer, tmp_path):
    adapter = _trained_looking_adapter(tiny_cfg, tokenizer)
    check = export(adapter, tmp_path / "merged16", "bf16")
    assert check["dtype"] == "bfloat16" and check["max_rel_diff"] <= check["logit_tolerance"]
    assert 0 < check["layer_max_rel_diff"] <= check["layer_tolerance"]
    assert (tmp_path / "merged16" / "model.safetensors").exists()


def test_a_wrong_merge_is_caught(tiny_cfg, tokenizer, tmp_path, monkeypatch):
    """If the delta were added twice, the per-layer comparison must refuse to save."""
    import pytest

    import medbot_export

    adapter = _trained_looking_adapter(tiny_cfg, tokenizer)
    real = medbot_export.dense_weight
    monkeypatch.setattr(medbot_export, "dense_weight", lambda layer: real(layer) * 1.05)  # a 5% error
    with pytest.raises(RuntimeError, match="differ"):
        export(adapter, tmp_path / "bad", "fp32")
    assert not (tmp_path / "bad").exists()
