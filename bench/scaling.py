"""Multi-GPU scaling of the QLoRA recipe under DDP: tokens/s on N GPUs against N x tokens/s on one.

    python bench/scaling.py --lengths .device/lengths.json --gpus 1,2 --steps 20   # on a GPU machine

Saves the Falcon-7B-shaped random model once (bench/gpu_recipe.py), then for each N launches
`torchrun --nproc_per_node N bench/scaling.py --worker ...`. Every process loads its own NF4 copy
on its own GPU (load_base_model, checked 4-bit), adds LoRA and trains through the Trainer (DDP for
N > 1) with train.py's per-process config, so the effective batch (the seed's 4 x 2 rows) and the
schedule are the same for every N. Inputs are random ids with real dialogue lengths. Rank 0 times
the steady steps. Efficiency = tok/s(N) / (N x tok/s(1)); target >= 0.9.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def worker(args: argparse.Namespace) -> None:
    from gpu_recipe import StepTimer, Tok, random_samples

    from medbot_config import reference
    from medbot_model import add_lora, load_base_model
    from medbot_train import build_trainer, per_process, train

    n = int(os.environ.get("WORLD_SIZE", "1"))
    cfg = reference().replace(model_name=args.model, max_steps=args.steps, eval_steps=args.steps,
                              output_dir=args.work, logs_dir=args.work + "/logs", save_total_limit=1)  # fmt: skip
    run = per_process(cfg, n)
    pairs = json.loads(Path(args.lengths).read_text())["pairs"]
    rows = cfg.batch_size * cfg.grad_accum
    samples = random_samples(pairs, rows * args.steps, cfg.max_length, 0)  # the same data for every N
    model = add_lora(load_base_model(run), run)
    trainer = build_trainer(model, Tok(), samples, samples[:8], run)
    timer = StepTimer()
    trainer.add_callback(timer)
    train(trainer, run)
    if int(os.environ.get("RANK", "0")) == 0:
        steady = sorted(timer.times[3:])
        step = steady[len(steady) // 2]
        tokens = sum(len(s["input_ids"]) for s in samples) / args.steps  # real tokens per optimizer step
        out = {"gpus": n, "per_process": f"{run.batch_size}x{run.grad_accum}", "s_per_step": step,
               "tokens_per_s": tokens / step, "peak_gib": torch.cuda.max_memory_allocated() / 2**30}  # fmt: skip
        Path(args.out).write_text(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", required=True)
    ap.add_argument("--gpus", default="1,2")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--model", default=None)
    ap.add_argument("--work", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    from gpu_recipe import save_random_falcon

    base = Path(tempfile.mkdtemp())
    save_random_falcon(base / "falcon-7b-random")
    torch.cuda.empty_cache()
    results = []
    for n in [int(x) for x in args.gpus.split(",")]:
        if n > torch.cuda.device_count():
            print(f"skipping N={n}: this machine has {torch.cuda.device_count()} GPU(s)")
            continue
        out = base / f"n{n}.json"
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
                        __file__, "--worker", "--lengths", args.lengths, "--steps", str(args.steps),
                        "--model", str(base / "falcon-7b-random"), "--work", str(base / f"work{n}"),
                        "--out", str(out)], check=True)  # fmt: skip
        results.append(json.loads(out.read_text()))
    one = next((r["tokens_per_s"] for r in results if r["gpus"] == 1), None)
    print(f"\n{torch.cuda.get_device_name()}  (Falcon-7B-shaped, NF4 + LoRA r=32, effective batch 4x2 rows)")
    print("| GPUs | per process | s/step | tokens/s | efficiency | peak GiB/GPU |\n|---|---|---|---|---|---|")
    for r in results:
        eff = f"{r['tokens_per_s'] / (r['gpus'] * one):.2f}" if one else "n/a"
        print(f"| {r['gpus']} | {r['per_process']} | {r['s_per_step']:.3f} | {r['tokens_per_s']:.0f} | {eff} | "
              f"{r['peak_gib']:.2f} |")  # fmt: skip
    print(json.dumps(results))


if __name__ == "__main__":
    main()
