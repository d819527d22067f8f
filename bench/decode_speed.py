"""Chat decode speed, batch 1: the seed's `pipeline()` call and our `respond()`, in one run.

    python bench/decode_speed.py --tokenizer .device/tok     # on the GPU machine

Same Falcon-7B-shaped random-weight model for both, with a LoRA adapter (r=32 on the four Falcon
projections) as after training; the seed's sampling (T 0.7, top_k 50, top_p 0.95); 128 new tokens.
- seed: the plain HF stack as the seed wrote it: BitsAndBytesConfig (which leaves Falcon 16-bit
  on transformers 5.17-5.24), the unmerged PeftModel, `pipeline("text-generation")`.
- seed-4bit: the same, with the base really 4-bit (our loader).
- ours: `respond()` on the merged 16-bit model (load_for_chat's GPU default), static KV cache and
  torch.compile with CUDA graphs; the first two answers (compilation) are not timed.
The limit is weight bytes / memory bandwidth: bf16 ~217 tokens/s, 4-bit ~748 on an H100.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, pipeline  # noqa: E402

from bench.train_speed import FALCON_7B  # noqa: E402
from medbot_chat import respond  # noqa: E402
from medbot_config import FALCON_TARGETS, reference  # noqa: E402
from medbot_model import load_base_model  # noqa: E402

LIMITS = {"bf16": 217.0, "4-bit": 748.0}
QUERY = "I have had a dry cough and a mild fever for three days, and I feel tired. What should I do?"


def with_lora(model):  # noqa: ANN001, ANN201
    torch.manual_seed(0)
    lora = LoraConfig(
        r=32, lora_alpha=64, lora_dropout=0.05, target_modules=FALCON_TARGETS, task_type="CAUSAL_LM"
    )
    model = get_peft_model(model, lora)
    for n, p in model.named_parameters():  # a trained adapter has non-zero B
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=1e-3)
    return model.eval()


def timed(fn, runs: int) -> list[float]:  # noqa: ANN001
    rates = []
    for _ in range(runs):
        torch.cuda.synchronize()
        t = time.perf_counter()
        n = fn()
        torch.cuda.synchronize()
        rates.append(n / (time.perf_counter() - t))
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", required=True, help="a tokenizer folder (any BPE; ids < 65024)")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from transformers import FalconConfig, FalconForCausalLM

    work = Path(tempfile.mkdtemp())
    torch.manual_seed(0)
    with torch.device("cuda"):
        FalconForCausalLM(FalconConfig(**FALCON_7B)).to(torch.bfloat16).save_pretrained(work / "model")
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    tok.pad_token = tok.pad_token or tok.eos_token
    results = []

    def seed_path(name: str, model) -> None:  # noqa: ANN001
        pipe = pipeline("text-generation", model=model, tokenizer=tok)
        prompt = reference().prompt_template.format(query=QUERY)
        kw = dict(do_sample=True, temperature=0.7, top_k=50, top_p=0.95, max_new_tokens=args.new_tokens,
                  min_new_tokens=args.new_tokens, return_full_text=False)  # fmt: skip
        pipe(prompt, **kw)  # warm-up
        rates = timed(lambda: (pipe(prompt, **kw), args.new_tokens)[1], args.runs)
        results.append({"path": name, "tokens_per_s": statistics.median(rates), "rates": rates})
        print(name, rates, flush=True)

    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                           bnb_4bit_compute_dtype=torch.bfloat16)  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(work / "model", quantization_config=q, device_map={"": 0},
                                                 dtype=torch.bfloat16)  # fmt: skip
    seed_path("seed", with_lora(model))
    del model
    gc.collect()
    torch.cuda.empty_cache()
    cfg = reference().replace(model_name=str(work / "model"), compute_dtype="bf16")
    seed_path("seed-4bit", with_lora(load_base_model(cfg)))
    gc.collect()
    torch.cuda.empty_cache()

    model = with_lora(load_base_model(cfg.replace(load_in_4bit=False))).merge_and_unload().eval()
    prompt_len = len(tok(cfg.prompt_template.format(query=QUERY))["input_ids"])
    chat_cfg = cfg.replace(gen_max_length=prompt_len + args.new_tokens, stop_sequences=["\x00never"])

    def ours() -> int:
        return respond(model, tok, chat_cfg, QUERY).new_tokens

    t = time.perf_counter()
    for _ in range(2):
        ours()  # compilation and CUDA-graph capture
    print(f"compile + 2 warm-up answers: {time.perf_counter() - t:.0f} s", flush=True)
    rates = timed(ours, args.runs)
    results.append({"path": "ours", "tokens_per_s": statistics.median(rates), "rates": rates})

    seed = results[0]["tokens_per_s"]
    print(f"\nDecode, batch 1, {args.new_tokens} new tokens, {torch.cuda.get_device_name()}")
    print(f"{'path':<10} {'weights':>7} {'tok/s':>7} {'x seed':>7} {'% of limit':>10}")
    for r, w in zip(results, ["bf16", "4-bit", "bf16"]):
        print(f"{r['path']:<10} {w:>7} {r['tokens_per_s']:>7.1f} {r['tokens_per_s'] / seed:>7.2f} "
              f"{r['tokens_per_s'] / LIMITS[w]:>10.0%}")  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
