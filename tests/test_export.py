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


def test_served_elsewhere_the_export_prompts_as_respond_does(tiny_cfg, tokenizer, tmp_path):
    """transformers' own pipeline on the exported folder builds, from the tokenizer's chat template,
    the same prompt ids for a 3-turn conversation as medbot's chat path; the adapter ships it too."""
    from transformers import AutoTokenizer, pipeline

    from medbot_chat import respond_stream
    from medbot_utils import chat_messages, chat_template

    adapter = _trained_looking_adapter(tiny_cfg, tokenizer)
    assert (adapter / "chat_template.jinja").read_text() == chat_template(tiny_cfg.prompt_template)
    out = tmp_path / "merged"
    export(adapter, out, "fp32")
    history = [("I have a cough.", "How long for?"), ("Two weeks.", "Any fever?")]
    seen = []

    def recording(generate):
        def wrapped(*args, **kwargs):
            seen.append((kwargs.get("input_ids", args[0] if args else None))[0].tolist())
            return generate(*args, **kwargs)

        return wrapped

    pipe = pipeline("text-generation", model=str(out), tokenizer=str(out))
    pipe.model.generate = recording(pipe.model.generate)
    pipe(chat_messages("No fever.", history), max_new_tokens=2, do_sample=False)
    ours = AutoTokenizer.from_pretrained(out)
    roomy = tiny_cfg.replace(gen_max_length=1024)  # room for the whole conversation
    stream = respond_stream(pipe.model, ours, roomy, "No fever.", history=history, max_new_tokens=2, seed=0)
    list(stream)
    assert stream.prompt_turns == 2 and len(seen) == 2
    assert seen[0] == seen[1]
    assert ours.decode(seen[0]).endswith("### Patient query: No fever.\n### Doctor opinion:")


def test_chat_merges_into_the_weights_the_export_and_training_used(tiny_cfg, tokenizer, tmp_path):
    """One fine-tuned model: chat's merge is the export's (the delta on the dequantized 4-bit base),
    not a merge into the original 16-bit weights, which differ by the 4-bit rounding."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from medbot_model import load_for_chat

    adapter = _trained_looking_adapter(tiny_cfg, tokenizer)
    export(adapter, tmp_path / "merged", "fp32")
    chat_model, _, cfg = load_for_chat(adapter, merge=True)
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    unquantized = PeftModel.from_pretrained(load_base_model(cfg.replace(load_in_4bit=False)), str(adapter))
    unquantized = unquantized.merge_and_unload()
    ids = tokenizer("### Patient query: I feel dizzy.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        chat, saved, original = (m.eval()(ids).logits for m in (chat_model, exported, unquantized))
    assert all(type(m).__name__ == "Linear" for n, m in chat_model.named_modules() if n.endswith("dense"))
    torch.testing.assert_close(chat, saved, atol=1e-5, rtol=1e-5)
    assert (chat - original).abs().max() > 1e-3  # the 4-bit rounding the adapter was trained against
