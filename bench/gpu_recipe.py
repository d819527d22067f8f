"""The full recipe path on a GPU: Falcon-7B-shaped random weights, our 4-bit loader, LoRA, Trainer, eval.

    python bench/gpu_recipe.py --lengths .device/lengths.json --steps 25   # on the device machine

Builds a Falcon-7B-shaped model (vocab 65024, hidden 4544, 32 layers, 71 query heads, multi-query,
parallel attention, no bias, no alibi) with random bf16 weights, saves it like a hub checkpoint, then
runs exactly the notebook's path on it: `load_base_model` (NF4 + double quant, checked 4-bit),
`add_lora` (r=32 on the four Falcon projections), `build_trainer`/`train` (batch 4 x accumulation 2,
paged AdamW 8-bit, checkpointing), `evaluate`. Inputs are random token ids whose prompt/answer
lengths follow real dialogue rows (bench/length_mix.py). Prints peak GPU memory and s/step.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from transformers import FalconConfig, FalconForCausalLM, TrainerCallback  # noqa: E402

from medbot_config import reference  # noqa: E402
from medbot_model import add_lora, count_4bit_layers, load_base_model  # noqa: E402
from medbot_train import build_trainer, evaluate, train  # noqa: E402

FALCON_7B = dict(
    vocab_size=65024,
    hidden_size=4544,
    num_hidden_layers=32,
    num_attention_heads=71,
    multi_query=True,
    parallel_attn=True,
    bias=False,
    alibi=False,
    new_decoder_architecture=False,
    bos_token_id=11,
    eos_token_id=11,
)


def save_random_falcon(path: Path) -> None:
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = FalconForCausalLM(FalconConfig(**FALCON_7B)).to(torch.bfloat16)
    model.save_pretrained(path)
    del model
    torch.cuda.empty_cache()


def random_samples(pairs: list[list[int]], n: int, max_length: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for p, a in (rng.choice(pairs) for _ in range(n)):
        ids = [rng.randrange(12, 65024) for _ in range(min(p + a, max_length))]
        labels = [-100] * p + ids[p:]
        out.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels[: len(ids)]})
    return out


class StepTimer(TrainerCallback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self.tokens = 0

    def on_step_begin(self, args, state, control, **kw):
        torch.cuda.synchronize()
        self.t = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self.t)


class Tok:  # the collator only needs a pad id
    pad_token_id = 11


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", required=True)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--out", default=None, help="JSON result file")
    args = ap.parse_args()
    pairs = json.loads(Path(args.lengths).read_text())["pairs"]
    work = Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    save_random_falcon(work / "falcon-7b-random")
    t_save = time.perf_counter() - t0

    cfg = reference().replace(
        model_name=str(work / "falcon-7b-random"),
        max_steps=args.steps,
        eval_steps=args.steps,
        logging_steps=5,
        output_dir=str(work / "out"),
        logs_dir=str(work / "logs"),
    )
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    model = load_base_model(cfg)  # raises NotQuantizedError unless every target is 4-bit
    t_load = time.perf_counter() - t0
    n4, nlin = count_4bit_layers(model)
    mem_loaded = torch.cuda.max_memory_allocated() / 2**30
    model = add_lora(model, cfg)
    train_s = random_samples(pairs, cfg.batch_size * cfg.grad_accum * args.steps, cfg.max_length, 0)
    eval_s = random_samples(pairs, 64, cfg.max_length, 1)
    trainer = build_trainer(model, Tok(), train_s, eval_s, cfg)
    timer = StepTimer()
    trainer.add_callback(timer)
    train(trainer, cfg)
    ev = evaluate(trainer)
    steady = sorted(timer.times[3:])  # the first steps include allocator and kernel warm-up
    real_tokens = sum(len(s["input_ids"]) for s in train_s) / args.steps
    result = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "bitsandbytes": __import__("bitsandbytes").__version__,
        "linear_4bit": n4,
        "linear_total": nlin,
        "steps": args.steps,
        "s_per_step_median": steady[len(steady) // 2],
        "s_per_step_mean_all": sum(timer.times) / len(timer.times),
        "real_tokens_per_step": real_tokens,
        "real_tokens_per_s": real_tokens / steady[len(steady) // 2],
        "peak_gib_after_load": mem_loaded,
        "peak_gib_training": torch.cuda.max_memory_allocated() / 2**30,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
        "eval_loss": ev["eval_loss"],
        "save_random_s": t_save,
        "load_4bit_s": t_load,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
