"""Training speed: the seed recipe and ours, measured side by side in one run.

    python bench/length_mix.py --out .device/lengths.json          # here (needs ../shared/data)
    python bench/train_speed.py --lengths .device/lengths.json      # on the GPU machine
    python bench/train_speed.py --smoke                             # CPU, tiny Falcon (tests)

Model: Falcon-7B's shape (vocab 65024, hidden 4544, 32 layers, 71 query heads, one key/value
head, parallel attention, no bias) with random bf16 weights, saved like a hub checkpoint; speed
and memory do not depend on the values. Inputs: random token ids whose prompt/answer lengths are
drawn from real dialogue rows (capped at 512), so padding and packing behave as on real data.

Paths (each through the HF Trainer, as the notebook trains):
- seed: the seed recipe as the plain HF stack runs it (BitsAndBytesConfig NF4 + double quant, which
  transformers 5.17-5.24 silently leaves 16-bit on Falcon; prepare_model_for_kbit_training;
  gradient checkpointing; paged_adamw_8bit; dynamic padding; batch 4 x accumulation 2).
- seed-4bit: the same recipe with our loader, so Falcon is really 4-bit.
- ours-8/step: our fast path on the seed's batches (the same 8 dialogues per optimizer step, each
  micro-batch's 4 dialogues packed into one row), for the loss-parity check.
- ours: the default fast profile (packed rows of 4096 tokens, 2 per optimizer step, no
  checkpointing, bf16 norms, flash varlen attention with one key/value head).
- ours-t4: the Colab T4 profile (fp16, packed 4096-token rows, gradient checkpointing).
Columns: real (non-padding) tokens/s, s per optimizer step (median after warm-up), peak GPU
memory (allocated), MFU = tokens/s x 28.5 GFLOP / the spec dense peak of the GPU that ran (printed;
`--peak-tflops` for a GPU not in SPEC_PEAK_TFLOPS), and the ratio to `seed`.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    BitsAndBytesConfig,
    FalconConfig,
    FalconForCausalLM,
    TrainerCallback,  # noqa: E402
)

from medbot_config import reference  # noqa: E402
from medbot_fast import PackedCollator, pack_samples, patch_falcon_attention  # noqa: E402
from medbot_model import add_lora, check_4bit, load_base_model  # noqa: E402
from medbot_train import build_trainer, train  # noqa: E402
from medbot_utils import DataCollator  # noqa: E402

FLOP_PER_TOKEN = 28.5e9  # Falcon-7B forward + backward (input grads only: the base is frozen), no recompute
# Spec dense peaks, TFLOP/s, bf16 (fp16 for the T4, which has no bf16), by a fragment of the CUDA
# device name, most specific first: MFU by convention divides by the peak of the GPU that ran.
SPEC_PEAK_TFLOPS = {"H200": 989, "H100 PCIe": 756, "H100": 989, "A100": 312, "L4": 121, "T4": 65}
PAD = 11
PROFILE = "--profile" in sys.argv
FALCON_7B = dict(
    vocab_size=65024, hidden_size=4544, num_hidden_layers=32, num_attention_heads=71, multi_query=True,
    parallel_attn=True, bias=False, alibi=False, new_decoder_architecture=False, bos_token_id=11, eos_token_id=11,
)  # fmt: skip
TINY = dict(FALCON_7B, vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4)


class Tok:  # the Trainer path needs only a pad id
    pad_token_id = PAD


class StepTimer(TrainerCallback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def _sync(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_step_begin(self, args, state, control, **kw):  # noqa: ANN001
        self._sync()
        self.t = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
        self._sync()
        self.times.append(time.perf_counter() - self.t)


class DtypeProbe(TrainerCallback):
    """Prints the dtypes that reach the first attention layer once (fp32 there means slow kernels)."""

    def on_train_begin(self, args, state, control, model=None, **kw):  # noqa: ANN001
        import medbot_fast

        original = medbot_fast._attention

        def probe(q, k, v, pos):  # noqa: ANN001, ANN202
            print(f"  attention inputs: q {q.dtype} {tuple(q.shape)}, k {k.dtype}", flush=True)
            medbot_fast._attention = original
            return original(q, k, v, pos)

        medbot_fast._attention = probe


class GroupCollator:
    """Pads one pre-made group of dialogues (a seed micro-batch) as the seed's collator would."""

    def __call__(self, items: list[list[dict]]) -> dict:
        return DataCollator(PAD)([s for group in items for s in group])


def random_samples(pairs: list[list[int]], n: int, vocab: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for p, a in (rng.choice(pairs) for _ in range(n)):
        ids = [rng.randrange(12, vocab) for _ in range(min(p + a, 512))]
        out.append(
            {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": ([-100] * p + ids[p:])[: len(ids)]}
        )
    return out


def load(path: str, cfg, plain: bool):  # noqa: ANN001
    if not plain:
        return load_base_model(cfg)
    q = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )  # fmt: skip
    device = {"": 0} if torch.cuda.is_available() else {"": "cpu"}
    return AutoModelForCausalLM.from_pretrained(
        path, quantization_config=q, device_map=device, dtype=torch.bfloat16
    )


def run_path(name: str, cfg, data, collator, plain: bool, steps: int) -> dict:  # noqa: ANN001
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    model = load(cfg.model_name, cfg, plain)
    try:
        check_4bit(model, cfg.target_modules)
        four_bit = True
    except RuntimeError:
        four_bit = False
    model = add_lora(model, cfg)
    trainer = build_trainer(model, Tok(), data, data[:2], cfg)
    if collator is not None:
        trainer.data_collator = collator
    if isinstance(collator, PackedCollator):  # pre-packed rows without cfg.packing: patch here
        patch_falcon_attention(model)
    timer = StepTimer()
    trainer.add_callback(timer)
    trainer.add_callback(DtypeProbe())
    if PROFILE:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            train(trainer, cfg)
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=60))
    else:
        train(trainer, cfg)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    steady = timer.times[3:] if len(timer.times) > 5 else timer.times
    step_s = statistics.median(steady)
    tokens = real_tokens(trainer.train_dataset, cfg) / max(1, len(timer.times))
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
    del trainer, model
    return {
        "path": name, "four_bit": four_bit, "s_per_step": step_s, "real_tokens_per_step": tokens,
        "tokens_per_s": tokens / step_s, "peak_gib": peak,
        "losses": losses, "steps": len(timer.times),
    }  # fmt: skip


def real_tokens(data, cfg) -> float:  # noqa: ANN001
    """Non-padding tokens in the data the Trainer consumed during `max_steps`."""

    def count(item) -> int:  # noqa: ANN001
        if isinstance(item, list):  # a group of padded dialogues
            return sum(len(s["input_ids"]) for s in item)
        if "position_ids" in item:  # a packed row: labels of padding are -100 and its ids are PAD
            return sum(1 for t in item["input_ids"] if t != PAD) or len(item["input_ids"])
        return len(item["input_ids"])

    per_step = cfg.batch_size * cfg.grad_accum
    return statistics.fmean(count(x) for x in data) * per_step * cfg.max_steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", help="JSON from bench/length_mix.py")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--smoke", action="store_true", help="tiny Falcon on CPU, a few steps")
    ap.add_argument("--paths", default="seed,seed-4bit,ours-8/step,ours,ours-t4")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--profile", action="store_true", help="print the top CUDA kernels of each path")
    ap.add_argument(
        "--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, if not in the table"
    )
    args = ap.parse_args()
    shape = TINY if args.smoke else FALCON_7B
    if args.lengths:
        pairs = json.loads(Path(args.lengths).read_text())["pairs"]
    else:  # smoke: a spread like the dialogue mix, scaled down
        pairs = [[random.Random(i).randint(20, 60), random.Random(-i).randint(10, 200)] for i in range(200)]
    work = Path(tempfile.mkdtemp())
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        FalconForCausalLM(FalconConfig(**shape)).to(torch.bfloat16).save_pretrained(work / "model")
    gc.collect()

    steps = 3 if args.smoke else args.steps
    base = reference().replace(
        model_name=str(work / "model"), max_steps=steps, eval_steps=10**6, logging_steps=1, warmup_ratio=0.0,
        output_dir=str(work / "out"), logs_dir=str(work / "logs"), save_total_limit=1,
        compute_dtype="bf16" if torch.cuda.is_available() else "fp32",
    )  # fmt: skip
    if not torch.cuda.is_available():
        base = base.replace(optim="adamw_torch")
    samples = random_samples(pairs, 8 * steps * 4, shape["vocab_size"], seed=1)
    groups = [samples[i : i + 4] for i in range(0, len(samples), 4)]
    packed_groups = [pack_samples(g, 2048, PAD, seed=0)[0] for g in groups]  # 4 dialogues <= 2048 tokens
    fast = base.replace(packing=True, pack_tokens=4096, batch_size=1, grad_accum=2, gradient_checkpointing=False,
                        upcast_norms=False)  # fmt: skip
    t4 = fast.replace(
        gradient_checkpointing=True, compute_dtype="fp16" if torch.cuda.is_available() else "fp32"
    )
    plan = {
        "seed": (base.replace(batch_size=1), groups, GroupCollator(), True),
        "seed-4bit": (base.replace(batch_size=1), groups, GroupCollator(), False),
        "ours-8/step": (fast.replace(packing=False), packed_groups, PackedCollator(), False),
        "ours": (fast, samples, None, False),
        "ours-t4": (t4, samples, None, False),
        "ours-8k": (fast.replace(pack_tokens=8192), samples, None, False),
    }
    results = []
    for name in args.paths.split(","):
        cfg, data, collator, plain = plan[name]
        cfg = cfg.replace(
            output_dir=str(work / name.replace("/", "-"))
        )  # no path resumes another's checkpoint
        r = run_path(name, cfg, data, collator, plain, steps)
        results.append(r)
        print(
            f"{name}: {r['tokens_per_s']:.0f} tok/s, {r['s_per_step']:.3f} s/step, {r['peak_gib']:.1f} GiB",
            flush=True,
        )
    import bitsandbytes
    import transformers

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(
        f"\ntorch {torch.__version__}, transformers {transformers.__version__}, bitsandbytes {bitsandbytes.__version__}"
    )
    peak = spec_peak_tflops(device, args.peak_tflops)
    for r in results:
        r["mfu"] = r["tokens_per_s"] * FLOP_PER_TOKEN / (peak * 1e12) if peak else float("nan")
    print(
        f"MFU against {peak:g} TFLOP/s, the spec dense peak of {device}"
        if peak
        else "MFU: no GPU peak (CPU run)"
    )
    report(results, device)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


def spec_peak_tflops(device: str, override: float | None = None) -> float | None:
    """The spec dense peak for MFU: `override`, else the table's entry for this device name."""
    if override:
        return override
    if device == "CPU":
        return None
    for fragment, tflops in SPEC_PEAK_TFLOPS.items():
        if fragment in device:
            return float(tflops)
    raise SystemExit(f"no spec peak for {device!r}: pass --peak-tflops (its dense bf16 TFLOP/s)")


def report(results: list[dict], device: str) -> None:
    ref = next((r for r in results if r["path"] == "seed"), results[0])
    print(f"\nTraining speed on {device} (Falcon-7B shape, random weights; real tokens only)")
    print(
        f"{'path':<12} {'4-bit':>5} {'tok/s':>8} {'s/step':>7} {'tok/step':>8} {'peak GiB':>8} {'MFU':>6} {'x seed':>7}"
    )
    for r in results:
        print(f"{r['path']:<12} {'yes' if r['four_bit'] else 'NO':>5} {r['tokens_per_s']:>8.0f} {r['s_per_step']:>7.3f} "
              f"{r['real_tokens_per_step']:>8.0f} {r['peak_gib']:>8.2f} {r['mfu']:>6.1%} "
              f"{r['tokens_per_s'] / ref['tokens_per_s']:>7.2f}")  # fmt: skip
    by = {r["path"]: r for r in results}
    if "seed-4bit" in by and "ours-8/step" in by:
        a, b = by["seed-4bit"]["losses"], by["ours-8/step"]["losses"]
        diffs = [abs(x - y) for x, y in zip(a, b)]
        print("\nLoss parity on identical batches (seed-4bit vs ours-8/step), step by step:")
        print("  seed-4bit  : " + " ".join(f"{x:.4f}" for x in a))
        print("  ours-8/step: " + " ".join(f"{x:.4f}" for x in b))
        print(f"  max |diff| {max(diffs):.4f}, mean {statistics.fmean(diffs):.4f}")
        if "seed" in by:
            noise = [abs(x - y) for x, y in zip(by["seed"]["losses"], a)]
            print(
                f"  for scale: seed (16-bit Falcon) vs seed-4bit, same batches: max |diff| {max(noise):.4f}"
            )


if __name__ == "__main__":
    main()
