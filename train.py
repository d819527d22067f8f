"""Train from a config file, on one GPU or several of one host (Accelerate / torchrun, DDP).

    python train.py --profile embedded                                   # one process
    python train.py --profile embedded --max-steps 40 --lora-r 16        # any config field, as a flag
    python train.py --config my_run.json                                 # a saved MedbotConfig (or .yaml)
    accelerate launch --num_processes 2 train.py --config my_run.json    # 2 GPUs, QLoRA + DDP
    torchrun --nproc_per_node 4 train.py --config my_run.json            # the same through torchrun

The notebook's recipe, cell for cell, without the notebook. Under N processes each process loads
its own 4-bit copy of the base on its own GPU and trains the same LoRA weights (the HF Trainer
wraps the model in DistributedDataParallel); the effective batch - batch_size x grad_accum on one
GPU - is kept by sharing its rows out over the N processes, so max_steps, the learning-rate
schedule and the samples per step are those of the single-GPU run. Rank 0 alone writes
checkpoints, logs/metrics.jsonl, TensorBoard and the adapter.
"""

from __future__ import annotations

import argparse
import logging
import os

from medbot_config import MedbotConfig, add_config_arguments, config_overrides, load_config_file, preset
from medbot_model import add_lora, load_base_model, load_tokenizer
from medbot_train import (
    build_trainer,
    evaluate,
    evaluate_sources,
    format_sources,
    is_main_process,
    save_adapter,
    train,
)
from medbot_utils import format_stats_table, load_data, split_token_stats, tokenize_dialogues


def per_process(cfg: MedbotConfig, processes: int) -> MedbotConfig:
    """The config each of `processes` processes runs so that the effective batch stays the same:
    the rows per optimizer step (batch_size x grad_accum) are shared out, largest micro-batch first."""
    rows = cfg.batch_size * cfg.grad_accum
    if rows % processes:
        raise ValueError(
            f"the effective batch {cfg.batch_size} x {cfg.grad_accum} = {rows} rows cannot be split over "
            f"{processes} processes without changing it: make batch_size x grad_accum a multiple of {processes}"
        )
    share = rows // processes
    batch = max(b for b in range(1, cfg.batch_size + 1) if share % b == 0)
    return cfg.replace(batch_size=batch, grad_accum=share // batch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--config", help="a MedbotConfig as JSON (e.g. a saved medbot_config.json) or YAML")
    group.add_argument("--profile", help="a named profile: embedded, fast, colab-t4, falcon-7b")
    ap.add_argument(
        "--data", dest="cfg__data_path", default=argparse.SUPPRESS, help="the same as --data-path"
    )
    add_config_arguments(ap)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO if is_main_process() else logging.WARNING)
    cfg = load_config_file(args.config) if args.config else preset(args.profile)
    try:
        cfg = cfg.replace(**config_overrides(args))
    except (TypeError, ValueError) as e:  # the config's own checks, named on the command line
        ap.error(str(e))
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    run_cfg = per_process(cfg, processes)

    data = load_data(cfg)  # every source of data_path: deduplicated, split by query, weighted
    tokenizer = load_tokenizer(cfg)
    train_samples, train_drops = tokenize_dialogues(data.train, tokenizer, cfg, "train")
    eval_samples, eval_drops = tokenize_dialogues(data.eval, tokenizer, cfg, "eval")
    if is_main_process():
        print(data.summary(), train_drops.summary(), eval_drops.summary(), sep="\n")
        print(format_stats_table(split_token_stats({"train": train_samples, "eval": eval_samples})))
        print(f"{processes} process(es); per process: batch {run_cfg.batch_size} x grad_accum {run_cfg.grad_accum}; "
              f"effective batch {run_cfg.batch_size * run_cfg.grad_accum * processes}")  # fmt: skip

    model = add_lora(load_base_model(run_cfg), run_cfg)
    trainer = build_trainer(model, tokenizer, train_samples, eval_samples, run_cfg)
    train(trainer, run_cfg)
    after = evaluate(trainer)
    if is_main_process():
        print(f"eval loss {after['eval_loss']:.4f}, perplexity {after['perplexity']:.2f}")
    by_source = evaluate_sources(trainer, eval_samples, tokenizer, run_cfg)
    if is_main_process() and by_source:
        print(format_sources(by_source))
        save_adapter(trainer.model, tokenizer, cfg)  # the single-GPU config: what chat and eval read


if __name__ == "__main__":
    main()
