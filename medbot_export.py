"""Export: the LoRA adapter merged into plain 16-bit weights, a model folder any server loads.

    python medbot_export.py --adapter falcon-patient-chatbot/adapter --out falcon-patient-chatbot/merged
    vllm serve falcon-patient-chatbot/merged         # or TGI: --model-id falcon-patient-chatbot/merged

A QLoRA adapter was trained against the *dequantized* 4-bit base, so that is what it is merged
into: each 4-bit layer is dequantized, its LoRA delta (B @ A * alpha/r) added, and the result
stored as an ordinary nn.Linear in the export dtype. Before saving, the merged model's logits are
compared with the adapter model's on a few prompts; the export fails if they differ by more than
the stated tolerance. The folder gets the tokenizer and medbot_config.json (the prompt template).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medbot_config import CONFIG_FILE, MedbotConfig
from medbot_utils import chat_messages, render_chat

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
    for name, module in list(model.named_modules()):
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
    merged.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    cfg.replace(model_name=str(out), load_in_4bit=False).save(out / CONFIG_FILE)  # chat's template travels
    (out / "export_check.json").write_text(json.dumps(check, indent=2))
    return check


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapter", default="falcon-patient-chatbot/adapter")
    ap.add_argument("--out", default="falcon-patient-chatbot/merged")
    ap.add_argument(
        "--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 (fp32 for fp32 runs)"
    )
    args = ap.parse_args()
    check = export(args.adapter, args.out, args.dtype)
    print(json.dumps(check, indent=2))
    print(f"saved a merged model to {args.out} (load it with AutoModelForCausalLM, vLLM or TGI)")


if __name__ == "__main__":
    main()
