"""Training: a thin wrapper over the Hugging Face Trainer, with a metrics file, resume and plots.

    medbot-train --profile embedded --max-steps 40         # the whole recipe (`main`), as the notebook runs it
    trainer = build_trainer(model, tokenizer, train_samples, eval_samples, cfg)
    metrics = train_and_evaluate(trainer, tokenizer, eval_samples, cfg)   # eval, train (resuming), eval, plots
    save_adapter(trainer.model, tokenizer, cfg)

Train and eval losses go to `<logs_dir>/metrics.jsonl` (one JSON object a line) and to the
trackers in `cfg.report_to` (TensorBoard under `<logs_dir>/tensorboard` by default; W&B and MLflow
through the Trainer's own integrations when installed); checkpoints to `<output_dir>/checkpoint-N`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.integrations import TensorBoardCallback

from medbot_config import (
    CONFIG_FILE,
    TRACKERS,
    MedbotConfig,
    add_config_arguments,
    config_overrides,
    load_config_file,
    preset,
)
from medbot_model import add_lora, load_base_model, load_tokenizer
from medbot_utils import (
    DataCollator,
    format_stats_table,
    install_chat_template,
    load_data,
    parse_sources,
    source_name,
    tokenize_dialogues,
    write_token_stats,
)

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
RUN_CONFIG = "run_config.json"  # the config of the run whose checkpoints are in output_dir
SEAL = "medbot_complete.json"  # written last into a checkpoint, atomically, once all its files are on disk


def main(argv: list[str] | None = None) -> None:
    """`medbot-train` / `python train.py`: the notebook's stages, in its order, without the notebook."""
    ap = argparse.ArgumentParser(
        description="Train from a profile or a config file, on one GPU or several (DDP)."
    )
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--config", help="a MedbotConfig as JSON (e.g. a saved medbot_config.json) or YAML")
    group.add_argument("--profile", help="a named profile: embedded, fast, colab-t4, falcon-7b")
    ap.add_argument(
        "--data", dest="cfg__data_path", default=argparse.SUPPRESS, help="the same as --data-path"
    )
    add_config_arguments(ap)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if is_main_process() else logging.WARNING)
    cfg = load_config_file(args.config) if args.config else preset(args.profile)
    try:
        cfg = cfg.replace(**config_overrides(args))
    except (TypeError, ValueError) as e:  # the config's own checks, named on the command line
        ap.error(str(e))
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    run_cfg = per_process(cfg, processes)
    main_process = is_main_process()

    data = load_data(cfg)  # every source of data_path: deduplicated, split by query, weighted
    tokenizer = load_tokenizer(cfg)
    train_samples, train_drops = tokenize_dialogues(data.train, tokenizer, cfg, "train")
    eval_samples, eval_drops = tokenize_dialogues(data.eval, tokenizer, cfg, "eval")
    if main_process:
        print(data.summary(), train_drops.summary(), eval_drops.summary(), sep="\n")
        stats, _ = write_token_stats({"train": train_samples, "eval": eval_samples}, cfg)
        print(format_stats_table(stats))
        print(f"{processes} process(es); per process: batch {run_cfg.batch_size} x grad_accum {run_cfg.grad_accum}; "
              f"effective batch {run_cfg.batch_size * run_cfg.grad_accum * processes}")  # fmt: skip

    model = add_lora(load_base_model(run_cfg), run_cfg)
    trainer = build_trainer(model, tokenizer, train_samples, eval_samples, run_cfg)
    train_and_evaluate(trainer, tokenizer, eval_samples, run_cfg, eval_before=processes == 1)
    if main_process:
        save_adapter(trainer.model, tokenizer, cfg)  # the single-GPU config: what chat and eval read


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


def train_and_evaluate(
    trainer: Trainer, tokenizer: Any, eval_samples: list[dict], cfg: MedbotConfig, *, eval_before: bool = True
) -> dict:
    """The training stage, as the notebook and `train.py` both run it: eval loss before, train
    (resuming), eval loss after and per source; writes `<logs_dir>/eval_metrics.json` and
    `<logs_dir>/loss.png` (main process). Returns the metrics and the plot's path.

    `eval_before=False` skips the first evaluation: under DDP an evaluation before the first step
    changes the run (measured with 2 gloo processes: step 2's loss 5.689 instead of the one-process
    5.681; identical without it), so several processes start training straight away."""
    before = evaluate(trainer) if eval_before else None
    train(trainer, cfg)
    after = evaluate(trainer)
    by_source = evaluate_sources(trainer, eval_samples, tokenizer, cfg)
    out: dict[str, Any] = {"before": before, "after": after, "by_source": by_source}
    if is_main_process():
        logs = Path(cfg.logs_dir)
        (logs / "eval_metrics.json").write_text(json.dumps(out, indent=2))
        out["loss_plot"] = plot_losses(logs / METRICS_FILE, logs / "loss.png")
        if before:
            print(
                f"before training: eval loss {before['eval_loss']:.4f}, perplexity {before['perplexity']:.2f}"
            )
        print(f"after training:  eval loss {after['eval_loss']:.4f}, perplexity {after['perplexity']:.2f}")
        if by_source:
            print(format_sources(by_source))
    return out


class MetricsFileCallback(TrainerCallback):
    """Appends every logged train/eval loss to a JSON Lines file.

    On resume, lines from steps after the checkpoint are removed first: they were logged by
    the interrupted run and will be logged again.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.written: list[dict[str, Any]] = []  # rows of this process (e.g. an eval before training)
        self.evals: list[float] = []  # eval losses during training, for the overfitting flag

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if state.global_step == 0:  # a fresh run: rows of earlier runs in this folder are stale
            kept = self.written
        else:  # a resume: the checkpoint's rows once each (an eval before this resume repeats step N)
            kept = _once_each([r for r in read_metrics(self.path) if r["step"] <= state.global_step])
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        row = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4)}
        row.update(
            {k: v for k, v in logs.items() if k in ("loss", "eval_loss", "learning_rate", "grad_norm")}
        )
        if "eval_loss" in row and state.global_step > 0:
            self.evals.append(row["eval_loss"])
            if len(self.evals) >= 3 and self.evals[-3] < self.evals[-2] < self.evals[-1]:
                row["eval_loss_rising"] = True  # the plot marks it
                log.warning("eval loss rose at two evals in a row (%s): the model may be overfitting; "
                            "the checkpoint before the rise may be the better one",
                            " -> ".join(f"{x:.3f}" for x in self.evals[-3:]))  # fmt: skip
        if len(row) > 2:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            self.written.append(row)


class CheckpointSealCallback(TrainerCallback):
    """Seals each checkpoint once the Trainer has written it: every file flushed to disk, then a
    manifest (file names and sizes) written under a temporary name and renamed into place, which is
    atomic on POSIX filesystems and NTFS. Until the seal is there the checkpoint does not count
    (`usable_checkpoint`): a kill or a power cut during a save leaves an unsealed folder, never one
    that looks whole. The Trainer writes its files in place; redirecting its private
    `_save_checkpoint` to a temporary folder would break with its next release, the seal does not.
    """

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            seal_checkpoint(folder)


def seal_checkpoint(folder: str | Path) -> None:
    """Flush a finished checkpoint's files to disk, then write its SEAL atomically."""
    folder = Path(folder)
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(SEAL)):
        _fsync(path)
        files[path.relative_to(folder).as_posix()] = path.stat().st_size
    tmp = folder / f"{SEAL}.tmp"
    tmp.write_text(json.dumps({"files": files}, indent=1))
    _fsync(tmp)
    os.replace(tmp, folder / SEAL)
    _fsync(folder)  # the rename itself


def _fsync(path: Path) -> None:
    """Flush a file, or a folder's entries, to disk where the OS allows (Windows opens no folders)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _once_each(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows in step order, one train row and one eval row per step (the first logged)."""
    seen: set[tuple[int, bool]] = set()
    out = []
    for row in sorted(rows, key=lambda r: r["step"]):  # stable: the first logged of a step stays first
        key = (row["step"], "eval_loss" in row)
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl file (empty if it does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def training_args(cfg: MedbotConfig) -> TrainingArguments:
    """The seed recipe as TrainingArguments, adjusted to the hardware found."""
    on_gpu = torch.cuda.is_available()
    dtype_flags = {}
    if on_gpu:
        from medbot_model import compute_dtype

        dtype = compute_dtype(cfg)
        dtype_flags = {"bf16": dtype == torch.bfloat16, "fp16": dtype == torch.float16}
    optim = cfg.optim if cfg.optim != "auto" else ("paged_adamw_8bit" if on_gpu else "adamw_torch")
    args = TrainingArguments(
        output_dir=cfg.output_dir,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=round(cfg.warmup_ratio * cfg.max_steps),
        max_steps=cfg.max_steps,
        eval_strategy="steps",
        eval_steps=cfg.eval_steps,
        save_strategy="steps",
        save_steps=cfg.eval_steps,
        save_total_limit=cfg.save_total_limit,
        logging_steps=cfg.logging_steps,
        report_to=trackers(cfg),  # TensorBoard is added in build_trainer, writing under logs_dir
        optim=optim,
        seed=cfg.seed,
        data_seed=cfg.seed,
        remove_unused_columns=False,  # our samples carry prompt_len etc.; the collator picks columns
        dataloader_num_workers=0,
        dataloader_pin_memory=on_gpu,
        ddp_find_unused_parameters=False,  # every LoRA weight is used in every step (multi-GPU runs)
        use_cpu=not on_gpu,  # without a GPU, several processes (torchrun) form a gloo DDP group
        ddp_backend="gloo" if not on_gpu and int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
        **dtype_flags,
    )
    return one_gpu_per_process(args, torch.cuda.device_count() if on_gpu else 0)


def one_gpu_per_process(args: TrainingArguments, visible: int) -> TrainingArguments:
    """One process trains on one GPU, whatever the machine has.

    The Trainer would wrap the model in nn.DataParallel when one process sees several GPUs: each
    step would then take batch_size rows per GPU, silently changing the recipe with the machine
    (and DataParallel is slower than DDP). For several GPUs run `accelerate launch train.py` or
    `torchrun`: one process per GPU (WORLD_SIZE set), which this leaves alone.
    """
    if visible > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        _ = args.device  # transformers counts the GPUs while choosing the device
        args._n_gpu = 1
        print(f"{visible} GPUs visible: this process trains on cuda:0 only (the recipe does not change with the "
              "machine); for all of them: accelerate launch train.py")  # fmt: skip
    return args


EPOCHS_WARN = 3.0  # passes over the training dialogues beyond which a small set is memorised


def epochs_warning(cfg: MedbotConfig, dialogues: int, per_row: float = 1.0) -> str:
    """How many times the run will see each training dialogue, and a warning above EPOCHS_WARN.

    epochs = max_steps x rows per step (batch_size x grad_accum) x dialogues per row (1, or
    the packing's average) / training dialogues (after the sources' weights). With several
    sources, or a weight, each source's passes are its weight times that, one line each.
    """
    per_step = cfg.batch_size * cfg.grad_accum * per_row
    epochs = cfg.max_steps * per_step / max(1, dialogues)
    lines = [f"Training passes over the data: {epochs:.1f} epochs ({cfg.max_steps} steps x {per_step:.0f} "
             f"dialogues a step / {dialogues} training dialogues)"]  # fmt: skip
    sources = parse_sources(cfg.data_path)
    if len(sources) > 1 or sources[0][1] != 1.0:
        lines += [
            f"  {source_name(spec)}: {epochs * weight:.1f} epochs (weight {weight:g})"
            for spec, weight in sources
        ]
    over = [(source_name(spec), epochs * weight) for spec, weight in sources if epochs * weight > EPOCHS_WARN]
    if over:
        fewer = max(1, int(EPOCHS_WARN * cfg.max_steps / max(e for _, e in over)))
        names = ", ".join(f"{name} ({e:.1f})" for name, e in over)
        lines.append(f"WARNING: over {EPOCHS_WARN:g} epochs of {names}: the model learns these {dialogues} dialogues "
                     f"by heart rather than how doctors answer: use more data (data_path), a lower weight, "
                     f"or about {fewer} steps (max_steps)")  # fmt: skip
    return "\n".join(lines)


def build_trainer(
    model: Any, tokenizer: Any, train_samples: list[dict], eval_samples: list[dict], cfg: MedbotConfig
) -> Trainer:
    """An HF Trainer over tokenized samples, logging losses to logs/metrics.jsonl too."""
    if not train_samples or not eval_samples:
        raise ValueError(
            f"{len(train_samples)} training and {len(eval_samples)} evaluation samples: both splits need "
            "at least one (check the data and drop reports, max_length and eval_fraction)"
        )
    collator: Any = DataCollator(tokenizer.pad_token_id)
    dialogues = len(train_samples)
    if cfg.packing:
        from medbot_fast import PackedCollator, enable_packing, pack_samples, packing_efficiency

        path = enable_packing(model)  # Falcon: our attention; others: transformers' packed masks
        train_samples = pack_samples(train_samples, cfg.pack_tokens, tokenizer.pad_token_id, cfg.seed)
        eval_samples = pack_samples(eval_samples, cfg.pack_tokens, tokenizer.pad_token_id, cfg.seed)
        log.info("packed into %d rows of %d tokens (%.0f%% dialogue tokens, %s attention)",
                 len(train_samples), cfg.pack_tokens, 100 * packing_efficiency(train_samples), path)  # fmt: skip
        collator = PackedCollator()
    if is_main_process():
        print(epochs_warning(cfg, dialogues, dialogues / len(train_samples)))
    return Trainer(
        model=model,
        args=training_args(cfg),
        train_dataset=train_samples,
        eval_dataset=eval_samples,
        data_collator=collator,
        callbacks=[MetricsFileCallback(Path(cfg.logs_dir) / METRICS_FILE), CheckpointSealCallback()]
        + (
            [TensorBoardCallback(SummaryWriter(log_dir=str(Path(cfg.logs_dir) / "tensorboard")))]
            if is_main_process() and "tensorboard" in cfg.report_to
            else []
        ),
    )


def trackers(cfg: MedbotConfig) -> list[str]:
    """The trackers the Trainer reports to itself: cfg.report_to except TensorBoard (added as a
    callback writing under logs_dir). A tracker that is not installed is an error, not a silent skip."""
    missing = [t for t in cfg.report_to if importlib.util.find_spec(TRACKERS[t]) is None]
    if missing:
        raise ValueError(
            f"report_to={cfg.report_to}: {missing} not installed (pip install {' '.join(TRACKERS[t] for t in missing)})"
        )
    return [t for t in cfg.report_to if t != "tensorboard"] or ["none"]


def is_main_process() -> bool:
    """True in a single process, and in rank 0 of a distributed run (the one that writes files)."""
    return int(os.environ.get("RANK", "0")) == 0


def evaluate(trainer: Trainer) -> dict[str, float]:
    """Eval loss and perplexity (exp of the mean token loss on answers)."""
    metrics = trainer.evaluate()
    loss = metrics["eval_loss"]
    return {"eval_loss": loss, "perplexity": math.exp(min(loss, 50.0))}


def evaluate_sources(
    trainer: Trainer, eval_samples: list[dict], tokenizer: Any, cfg: MedbotConfig
) -> dict[str, dict[str, float]]:
    """Eval loss and perplexity on each source's held-out dialogues (empty for a single source):
    what a mix does for each kind of data, beside the overall number."""
    names = list(dict.fromkeys(s["source"] for s in eval_samples))
    if len(names) < 2:
        return {}
    out = {}
    for name in names:
        mine = [s for s in eval_samples if s["source"] == name]
        if cfg.packing:
            from medbot_fast import pack_samples

            mine = pack_samples(mine, cfg.pack_tokens, tokenizer.pad_token_id, cfg.seed)
        loss = trainer.evaluate(eval_dataset=mine, metric_key_prefix="eval_source")["eval_source_loss"]
        out[name] = {"eval_loss": loss, "perplexity": math.exp(min(loss, 50.0)), "dialogues": sum(
            s["source"] == name for s in eval_samples)}  # fmt: skip
    return out


def format_sources(by_source: dict[str, dict[str, float]]) -> str:
    """One line a source: held-out dialogues, eval loss, perplexity."""
    return "\n".join(f"  {name:<28} {m['dialogues']:>5} held-out  eval loss {m['eval_loss']:.4f}  "
                     f"perplexity {m['perplexity']:.2f}" for name, m in by_source.items())  # fmt: skip


def train(trainer: Trainer, cfg: MedbotConfig) -> Any:
    """Train to cfg.max_steps, resuming from the newest checkpoint when cfg.resume allows."""
    last = usable_checkpoint(cfg.output_dir) if cfg.resume and Path(cfg.output_dir).is_dir() else None
    stamp = Path(cfg.output_dir) / RUN_CONFIG
    if last and stamp.exists():
        _check_same_run(MedbotConfig.load(stamp), cfg, last)
    if last:
        log.info("resuming from %s", last)
        print(f"Resuming from {last}")
    if is_main_process():
        cfg.save(stamp)
    with _lora_inputs_uncast(trainer.model, enabled=not cfg.upcast_norms and torch.cuda.is_available()):
        return trainer.train(resume_from_checkpoint=last)


def usable_checkpoint(output_dir: str | Path) -> str | None:
    """The newest checkpoint that is complete and readable, or None (a fresh start).

    A kill during a save (or a sync tool that copied half a file) leaves a checkpoint that would
    crash the resume with a library traceback, and the same crash on every re-run. Each one found
    broken is moved aside to `checkpoint-N.broken` (kept, never deleted) with a warning naming
    it, and the next older one is tried. Where checkpoints carry a SEAL (all that this module's
    Trainer writes), one without it is broken; folders from before seals are verified file by file.
    """
    folders = sorted(
        (p for p in Path(output_dir).glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
        reverse=True,
    )
    sealed = any((f / SEAL).is_file() for f in folders)
    for folder in folders:
        problem = checkpoint_problem(folder, expect_seal=sealed)
        if problem is None:
            return str(folder)
        aside = folder.with_name(folder.name + ".broken")
        n = 1
        while aside.exists():
            n += 1
            aside = folder.with_name(f"{folder.name}.broken{n}")
        if is_main_process():
            folder.rename(aside)
        message = f"{folder}: {problem}; moved to {aside.name}, trying the previous checkpoint"
        log.warning(message)
        print(f"WARNING: {message}")
    if folders:
        print(f"WARNING: no usable checkpoint in {output_dir}: training starts from step 0")
    return None


def checkpoint_problem(folder: Path, expect_seal: bool = False) -> str | None:
    """What makes a checkpoint folder unusable (None if nothing): a missing trainer state or
    weights, no SEAL where one is expected, a file missing or of another size than its SEAL says,
    or a file that does not read whole (JSON that does not parse, safetensors whose data is shorter
    than its header says, torch files whose zip records fail their CRC)."""
    import zipfile

    if not (folder / "trainer_state.json").is_file():
        return "no trainer_state.json (the save did not finish)"
    if not list(folder.glob("*.safetensors")) and not list(folder.glob("*.bin")):
        return "no model weights"
    if (folder / SEAL).is_file():
        try:
            listed = json.loads((folder / SEAL).read_text())["files"]
        except (ValueError, KeyError, TypeError) as e:
            return f"{SEAL} does not read ({type(e).__name__})"
        for name, size in listed.items():
            path = folder / name
            if not path.is_file():
                return f"{name} is missing (listed in {SEAL})"
            if path.stat().st_size != size:
                return f"{name} is {path.stat().st_size} bytes, {size} when saved"
    elif expect_seal:
        return f"no {SEAL} (the save did not finish)"
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        try:
            if path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".safetensors":
                _check_safetensors_length(path)
            elif path.suffix in (".pt", ".pth", ".bin"):
                with zipfile.ZipFile(path) as z:
                    bad = z.testzip()
                if bad is not None:
                    return f"{path.name}: record {bad} fails its checksum"
        except Exception as e:  # any failure to read is the answer, whatever library raised it
            return f"{path.name} does not read ({type(e).__name__}: {str(e)[:120]})"
    return None


def _check_safetensors_length(path: Path) -> None:
    """safetensors' header names where each tensor's bytes end; the file must hold them all."""
    import struct

    with path.open("rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if path.stat().st_size < 8 + header_len + end:
        raise ValueError(f"truncated: {path.stat().st_size} bytes, the header needs {8 + header_len + end}")


# Fields that change what a checkpoint has learned; a resumed run must agree on all of them
# (max_steps, eval_steps and logging may change: extending a run is a normal resume).
SAME_RUN_FIELDS = ("model_name", "data_path", "input_field", "output_field", "near_duplicates", "eval_fraction", "seed", "max_length",
                   "prompt_template", "lora_r", "lora_alpha", "target_modules", "load_in_4bit", "packing",
                   "pack_tokens", "batch_size", "grad_accum")  # fmt: skip


def _check_same_run(saved: MedbotConfig, cfg: MedbotConfig, checkpoint: str) -> None:
    """Refuse to resume a checkpoint that another configuration (other data, model ...) wrote."""
    differ = [f for f in SAME_RUN_FIELDS if getattr(saved, f) != getattr(cfg, f)]
    if differ:
        raise ValueError(
            f"{checkpoint} was written by a different run ({', '.join(f'{f}: {getattr(saved, f)!r} -> {getattr(cfg, f)!r}' for f in differ)}); "
            f"remove {cfg.output_dir} or choose another output_dir, or set resume=False to start over there"
        )


@contextlib.contextmanager
def _lora_inputs_uncast(model: Any, enabled: bool) -> Iterator[None]:
    """Stop peft from copying every 16-bit activation to fp32 before each (fp32) LoRA layer.

    Under the Trainer's autocast the LoRA matmuls run in 16-bit anyway; the copies cost ~20% of
    a fast-path step (measured with torch.profiler on an H100). Restored afterwards, because
    outside autocast (chat) the LoRA layers need the cast.
    """
    layers = [m for m in model.modules() if hasattr(m, "cast_input_dtype_enabled")] if enabled else []
    saved = [m.cast_input_dtype_enabled for m in layers]
    for m in layers:
        m.cast_input_dtype_enabled = False
    try:
        yield
    finally:
        for m, value in zip(layers, saved):
            m.cast_input_dtype_enabled = value


def save_adapter(model: Any, tokenizer: Any, cfg: MedbotConfig) -> Path:
    """Save the LoRA adapter, the tokenizer and the config chat will read, in cfg.adapter_dir.

    The tokenizer is saved with the conversation template as its chat template (not the base
    model's), so whatever applies the tokenizer's template prompts as training did.
    """
    out = cfg.adapter_dir
    model.save_pretrained(str(out))
    install_chat_template(tokenizer, cfg.prompt_template).save_pretrained(str(out))
    cfg.save(out / CONFIG_FILE)
    return out


def plot_losses(metrics_path: str | Path, path: str | Path) -> Path:
    """Train and eval loss against optimizer step, saved as a PNG."""
    import matplotlib.pyplot as plt

    rows = _once_each(read_metrics(metrics_path))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for key, style, label in (("loss", "-", "train loss"), ("eval_loss", "o-", "eval loss")):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if pts:
            ax.plot(*zip(*pts), style, label=label)
    rising = [(r["step"], r["eval_loss"]) for r in rows if r.get("eval_loss_rising")]
    if rising:
        ax.plot(*zip(*rising), "rx", markersize=10, label="eval loss rising (overfitting?)")
    ax.set(xlabel="optimizer step", ylabel="loss (answer tokens)", title="Training")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
