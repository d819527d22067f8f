"""Export: LoRA merged into dense weights (a 4-bit base dequantized), verified, loadable without peft; GGUF and Ollama."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import ROOT

from medbot_export import export
from medbot_model import add_lora, load_base_model
from medbot_train import save_adapter

ROOT_DATA = ROOT / "data"


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
    from medbot_utils import chat_messages, template_for

    adapter = _trained_looking_adapter(tiny_cfg, tokenizer)
    assert (adapter / "chat_template.jinja").read_text() == template_for(tokenizer, tiny_cfg.prompt_template)
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


# ---------------------------------------------------------------- GGUF for llama.cpp and Ollama


def gguf_ready_export(tmp_path, arch: str):
    """A merged export folder as `export` writes it, tiny and random, with SmolLM2's real BPE
    tokenizer (llama.cpp's converter recognises its pre-tokenizer; the byte-level test tokenizer it
    would refuse) carrying medbot's chat template."""
    from transformers import AutoTokenizer, FalconConfig, FalconForCausalLM, LlamaConfig, LlamaForCausalLM

    from medbot_config import reference
    from medbot_export import fix_falcon_kv_heads
    from medbot_model import embedded_model_dir
    from medbot_utils import install_chat_template

    cfg = reference()
    tok = install_chat_template(AutoTokenizer.from_pretrained(embedded_model_dir()), cfg.prompt_template)
    ids = {"vocab_size": len(tok), "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    torch.manual_seed(0)
    if arch == "falcon":  # Falcon-7B's layout: multi-query, parallel attention, no bias
        model = FalconForCausalLM(FalconConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, multi_query=True,
                                               parallel_attn=True, bias=False, alibi=False, **ids))  # fmt: skip
        fix_falcon_kv_heads(model.config)
    else:  # SmolLM2's layout
        model = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                             num_key_value_heads=2, tie_word_embeddings=True, **ids))  # fmt: skip
    folder = tmp_path / arch
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    cfg.replace(model_name=str(folder), load_in_4bit=False).save(folder / "medbot_config.json")
    return folder, tok


@pytest.mark.slow
@pytest.mark.parametrize("arch, types", [("falcon", ["q8_0", "f16"]), ("llama", ["q8_0"])])
def test_gguf_export_round_trips_with_template_stops_and_modelfile(tmp_path, arch, types, monkeypatch):
    import gguf

    import medbot_export
    from medbot_export import GGUF_TOLERANCE, export_gguf

    folder, tok = gguf_ready_export(tmp_path, arch)
    checks = export_gguf(folder, types)
    assert list(checks) == [f"medbot.{t}.gguf" for t in types]
    for name, check in checks.items():  # loaded back through transformers' gguf_file=, three prompts
        assert check["max_rel_diff"] <= GGUF_TOLERANCE[check["type"]]
        reader = gguf.GGUFReader(folder / name)
        field = {f.name: f.contents() for f in reader.fields.values()}
        assert field["general.architecture"] == arch
        assert field["tokenizer.chat_template"] == tok.chat_template
        assert (
            field["medbot.stop_sequences"] == ["###"]
            and "not for medical use" in field["general.description"]
        )
    assert checks["medbot.q8_0.gguf"]["max_rel_diff"] > 0  # really quantized
    modelfile = (folder / "Modelfile").read_text()
    assert "FROM ./medbot.q8_0.gguf" in modelfile and 'PARAMETER stop "###"' in modelfile
    assert f"PARAMETER stop {json.dumps(tok.eos_token)}" in modelfile and "PARAMETER top_k 50" in modelfile
    assert not list(folder.glob("*.converted.gguf"))
    if arch == "falcon":  # a file outside the tolerance is refused and removed
        monkeypatch.setitem(medbot_export.GGUF_TOLERANCE, "f16", 1e-9)  # f16 rounds: over it
        with pytest.raises(RuntimeError, match="logits differ"):
            export_gguf(folder, ["f16"])
        assert not (folder / "medbot.f16.gguf").exists()


def test_ollama_template_renders_what_the_chat_template_renders(tokenizer):
    """The Modelfile's TEMPLATE, executed by Go's text/template (Ollama's engine), gives the text
    the Jinja chat template gives, for a 3-turn conversation, a system turn and a finished turn."""
    import os
    import shutil
    import subprocess

    from conftest import ROOT

    from medbot_config import PROMPT_TEMPLATE
    from medbot_export import ollama_template
    from medbot_utils import chat_messages, render_chat

    if shutil.which("go") is None:
        if os.environ.get("MEDBOT_REQUIRE_GO"):
            raise AssertionError("go is required here (apt-get install golang-go)")
        pytest.skip("needs Go (apt-get install golang-go) to run Ollama's template engine")
    template = ollama_template(PROMPT_TEMPLATE, tokenizer.eos_token)
    cases = [
        chat_messages("No fever.", [("I have a cough.", "How long for?"), ("Two weeks.", "Any fever?")]),
        [{"role": "system", "content": "Answer briefly."}, *chat_messages("My ear hurts.")],
        [*chat_messages("Hi"), {"role": "assistant", "content": "Hello, what brings you here?"}],
    ]
    for messages in cases:
        run = subprocess.run(["go", "run", str(ROOT / "tests" / "tools" / "gotemplate.go")], capture_output=True,
                             text=True, input=json.dumps({"template": template, "messages": messages}), check=True)  # fmt: skip
        expected = render_chat(
            tokenizer, PROMPT_TEMPLATE, messages, generation=messages[-1]["role"] == "user"
        )
        assert run.stdout == expected
    with pytest.raises(ValueError, match="Go templates"):
        ollama_template("### Q {{{{x}}}}: {query}", "<eos>")


# ---------------------------------------------------------------- model card and upload


def test_model_card_of_an_export_names_base_data_recipe_checks_safety_and_licences(
    tiny_cfg, tokenizer, tmp_path
):
    import hashlib

    from huggingface_hub import ModelCard

    from medbot_export import model_card

    cfg = tiny_cfg.replace(data_path=str(ROOT_DATA / "sample_dialogues.jsonl"))
    adapter = _trained_looking_adapter(cfg, tokenizer)
    out = tmp_path / "merged"
    export(adapter, out, "fp32")
    results = tmp_path / "eval_results.json"
    results.write_text(json.dumps({"sets": {"held-out": {"n": 12, "base": {"perplexity": 9.5, "rouge_l": 0.1, "bleu": 1.0, "similarity": 0.4},
                                                         "finetuned": {"perplexity": 6.25, "rouge_l": 0.2, "bleu": 2.0, "similarity": 0.5}}}}))  # fmt: skip
    text = model_card(out, results)
    card = ModelCard(text)  # parses: the Hub metadata block is valid YAML
    assert card.data.library_name == "transformers" and "not-for-clinical-use" in card.data.tags
    digest = hashlib.sha256((ROOT_DATA / "sample_dialogues.jsonl").read_bytes()).hexdigest()
    for expected in ("Not for medical use", f"`{digest}`", "written for medbot", f"QLoRA (4-bit NF4, double quantization): rank {cfg.lora_r}",
                     "| held-out | 12 | 9.50 → 6.25 | 0.100 → 0.200", "export_check.json", "code, not part of these weights",
                     str(tiny_cfg.model_name)):  # fmt: skip
        assert expected in text, expected
    assert "Not evaluated yet" in model_card(adapter, tmp_path / "missing.json")  # no results: said so
    assert ModelCard(model_card(adapter)).data.library_name == "peft"


def test_model_card_names_the_hub_base_of_the_embedded_default_and_its_licence(tmp_path):
    from huggingface_hub import ModelCard

    from medbot_config import EMBEDDED_MODEL, reference
    from medbot_export import model_card

    (tmp_path / "adapter_config.json").write_text("{}")
    reference().replace(
        model_name=EMBEDDED_MODEL, data_path="../shared/data/dialogue/genmedgpt5k.jsonl"
    ).save(tmp_path / "medbot_config.json")
    card = ModelCard(model_card(tmp_path))
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and card.data.license == "apache-2.0"
    assert "research use only" in card.text  # the data file's licence note
    # a mix: one row and one licence line a source, with its weight; a URL is named whole
    from medbot_config import GENMEDGPT_URL

    reference().replace(data_path=f"{GENMEDGPT_URL}:2,../shared/data/dialogue/health-forums.jsonl:0.5").save(
        tmp_path / "medbot_config.json"
    )
    text = model_card(tmp_path)
    assert f"| `{GENMEDGPT_URL}` | 2 | `(not a local file)` | Apache-2.0" in text
    assert "| `health-forums.jsonl` | 0.5 |" in text and "- Training data `health-forums.jsonl`: MIT" in text
    assert "near duplicates (word-trigram similarity >= 0.8) removed across sources" in text


def test_publish_writes_the_card_then_uploads_the_folder(tmp_path, monkeypatch):
    import huggingface_hub

    from medbot_config import reference
    from medbot_export import publish

    calls = []

    class FakeApi:  # the network boundary: huggingface_hub's own calls, recorded
        def create_repo(self, repo_id, **kw):
            calls.append(("create_repo", repo_id, kw))

        def upload_folder(self, **kw):
            calls.append(("upload_folder", kw["repo_id"], kw))
            assert (tmp_path / "README.md").read_text().startswith("---")  # the card is there before upload
            return "https://huggingface.co/me/medbot/commit/abc"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    (tmp_path / "adapter_config.json").write_text("{}")
    reference().save(tmp_path / "medbot_config.json")
    assert publish(tmp_path, "me/medbot").endswith("/commit/abc")
    assert calls[0] == ("create_repo", "me/medbot", {"private": True, "exist_ok": True})
    assert calls[1][2]["folder_path"] == str(tmp_path)
