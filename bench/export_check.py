"""The merged export on a Falcon-7B-shaped model: tolerance, time, memory, and streaming speed.

    python bench/export_check.py --tokenizer .device/tok      # on the GPU machine (bitsandbytes carried)

Builds random Falcon-7B-shaped weights (bench/gpu_recipe.py), loads them the notebook's way (NF4,
checked), adds a LoRA adapter whose B matrices are random (a fresh adapter adds nothing, so it
would hide merge errors), saves it, runs `medbot_export.export` in bf16 (dequantize, merge,
compare logits, save), then decodes with the merged model through `respond` and `respond_stream`.
Prints one table; values are random, so only the numbers about the machinery mean anything.
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
from medbot_config import reference  # noqa: E402
from medbot_export import export  # noqa: E402
from medbot_model import add_lora, load_base_model  # noqa: E402
from medbot_train import save_adapter  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--lora-std", type=float, default=0.02, help="std of the random LoRA B entries")
    ap.add_argument("--tokens", type=int, default=128)
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    work = Path(tempfile.mkdtemp())
    save_random_falcon(work / "base")
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    tok.save_pretrained(work / "base")
    cfg = reference().replace(
        model_name=str(work / "base"), output_dir=str(work / "out"), logs_dir=str(work / "logs")
    )
    model = add_lora(load_base_model(cfg), cfg)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, args.lora_std)
    adapter = save_adapter(model, tok, cfg)
    del model
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    check = export(adapter, work / "merged", "bf16")
    t_export = time.perf_counter() - t0
    peak_export = torch.cuda.max_memory_allocated() / 2**30
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
    result = {"gpu": torch.cuda.get_device_name(), **check, "export_s": t_export, "export_peak_gib": peak_export,
              "respond_tok_s": speeds["respond"], "respond_stream_tok_s": speeds["respond_stream"]}  # fmt: skip
    print("| what | value |\n|---|---|")
    for k, v in result.items():
        print(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
