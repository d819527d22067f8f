"""The merged export on a Falcon-7B-shaped model: tolerance, time, memory, and streaming speed.

    python bench/export_check.py --tokenizer .device/tok      # on the GPU machine (bitsandbytes carried)
    python bench/export_check.py --base embedded              # SmolLM2-135M's real weights, CPU is enough

Builds random Falcon-7B-shaped weights (bench/gpu_recipe.py), loads them the notebook's way (NF4,
checked), adds a LoRA adapter whose B matrices are random (a fresh adapter adds nothing, so it
would hide merge errors), saves it, runs `medbot_export.export` in bf16 (dequantize, merge,
compare logits, save), then decodes with the merged model through `respond` and `respond_stream`.
It also measures what "one fine-tuned model" avoids: the logits of the export (the delta on the
dequantized 4-bit base, the weights the adapter was trained against) against a merge into the
original 16-bit weights. Prints one table; with random weights only the machinery's numbers mean
anything (`--base embedded` gives the 4-bit rounding of a real model).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from gpu_recipe import save_random_falcon  # noqa: E402

from medbot_chat import respond, respond_stream  # noqa: E402
from medbot_config import EMBEDDED_MODEL, reference  # noqa: E402
from medbot_export import compare, export, logits_for  # noqa: E402
from medbot_model import add_lora, load_base_model  # noqa: E402
from medbot_train import save_adapter  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", help="a Falcon tokenizer folder (random Falcon-7B-shaped weights)")
    ap.add_argument("--base", choices=["falcon-7b-shaped", "embedded"], default="falcon-7b-shaped")
    ap.add_argument("--lora-std", type=float, default=0.02, help="std of the random LoRA B entries")
    ap.add_argument("--tokens", type=int, default=128)
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medbot_model import load_tokenizer

    work = Path(tempfile.mkdtemp())
    if args.base == "embedded":
        cfg = reference().replace(model_name=EMBEDDED_MODEL, target_modules=None, compute_dtype="fp32"
                                  if not torch.cuda.is_available() else "auto")  # fmt: skip
        tok = load_tokenizer(cfg)
    else:
        if not args.tokenizer:
            ap.error("--tokenizer is needed for the Falcon-7B-shaped base")
        save_random_falcon(work / "base")
        tok = AutoTokenizer.from_pretrained(args.tokenizer)
        tok.save_pretrained(work / "base")
        cfg = reference().replace(model_name=str(work / "base"))
    cfg = cfg.replace(output_dir=str(work / "out"), logs_dir=str(work / "logs"))
    gpu = torch.cuda.is_available()
    model = add_lora(load_base_model(cfg), cfg)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, args.lora_std)
    adapter = save_adapter(model, tok, cfg)
    del model
    if gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    check = export(adapter, work / "merged", "bf16" if gpu else "fp32")
    t_export = time.perf_counter() - t0
    peak_export = torch.cuda.max_memory_allocated() / 2**30 if gpu else float("nan")
    vs16 = merge_into_16bit_difference(adapter, work / "merged", tok, cfg)
    print(json.dumps({**check, **vs16, "export_s": t_export}), flush=True)  # before decoding (needs MiniLM)
    if not gpu:  # decoding speed needs the GPU; the merge numbers are the point here
        return
    torch.cuda.empty_cache()

    merged = AutoModelForCausalLM.from_pretrained(
        work / "merged", dtype=torch.bfloat16, device_map={"": 0}
    ).eval()
    chat_cfg = cfg.replace(
        load_in_4bit=False, gen_max_length=256, stop_sequences=["\x00\x01"]
    )  # never stops early
    q = "I have had a dry cough and a mild fever for three days."
    speeds = {}
    for name in ("respond", "respond_stream", "respond", "respond_stream"):  # second round: compiled, warm
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        if name == "respond":
            n = respond(merged, tok, chat_cfg, q, seed=0, max_new_tokens=args.tokens).new_tokens
        else:
            stream = respond_stream(merged, tok, chat_cfg, q, seed=0, max_new_tokens=args.tokens)
            list(stream)
            n = stream.reply.new_tokens
        torch.cuda.synchronize()
        speeds[name] = n / (time.perf_counter() - t0)
    result = {"gpu": torch.cuda.get_device_name(), **check, **vs16, "export_s": t_export, "export_peak_gib": peak_export,
              "respond_tok_s": speeds["respond"], "respond_stream_tok_s": speeds["respond_stream"]}  # fmt: skip
    print("| what | value |\n|---|---|")
    for k, v in result.items():
        print(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |")
    print(json.dumps(result))


@torch.inference_mode()
def merge_into_16bit_difference(adapter: Path, merged_dir: Path, tok, cfg) -> dict[str, float]:  # noqa: ANN001
    """Logits of the export vs the same adapter merged into the original (unquantized) weights."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    device = {"": 0} if torch.cuda.is_available() else None
    ours = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=dtype, device_map=device).eval()
    reference_logits = logits_for(ours, tok, cfg)
    del ours
    plain = load_base_model(cfg.replace(load_in_4bit=False))
    other = PeftModel.from_pretrained(plain, str(adapter)).merge_and_unload().eval()
    diff = compare(reference_logits, logits_for(other, tok, cfg))
    return {f"vs_16bit_merge_{k}": v for k, v in diff.items()}


if __name__ == "__main__":
    main()
