"""The real 4-bit path on a tiny random Falcon, LoRA training through the HF Trainer, and resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch

from medbot_config import FALCON_TARGETS, MedbotConfig
from medbot_model import (
    NotQuantizedError,
    add_lora,
    check_4bit,
    count_4bit_layers,
    find_target_modules,
    load_base_model,
)
from medbot_train import SEAL, build_trainer, read_metrics, save_adapter, train
from medbot_utils import Dialogue, tokenize_dialogues


def samples(tokenizer, cfg, n=24):
    rows = [
        Dialogue(f"Patient {i} has a cough and a sore throat.", f"Rest and drink fluids, case {i}.", f"t:{i}")
        for i in range(n)
    ]
    return tokenize_dialogues(rows, tokenizer, cfg)[0]


def test_loader_makes_every_falcon_target_4bit(tiny_cfg):
    model = load_base_model(tiny_cfg)
    targets = [m for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in FALCON_TARGETS]
    assert len(targets) == 8  # 4 projections x 2 layers
    assert all(isinstance(m, bnb.nn.Linear4bit) for m in targets)
    assert all(m.weight.quant_state.quant_type == "nf4" for m in targets)
    assert all(m.weight.quant_state.nested for m in targets)  # double quantization
    assert count_4bit_layers(model) == (8, 9)  # lm_head stays in full precision, as in QLoRA


def test_check_4bit_fails_loudly_on_a_16bit_falcon(tiny_cfg):
    model = load_base_model(tiny_cfg.replace(load_in_4bit=False))
    with pytest.raises(NotQuantizedError, match="8 of 8 LoRA target layers are not 4-bit"):
        check_4bit(model, FALCON_TARGETS)


def test_plain_transformers_path_is_checked(tiny_falcon_dir):
    """Without our loader, transformers 5.17-5.24 leaves FalconLinear unquantized; the check catches it."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True)
    model = AutoModelForCausalLM.from_pretrained(
        tiny_falcon_dir, quantization_config=q, device_map={"": "cpu"}
    )
    n4, _ = count_4bit_layers(model)
    if n4 == 8:
        pytest.skip("this transformers quantizes FalconLinear itself")
    with pytest.raises(NotQuantizedError):
        check_4bit(model, FALCON_TARGETS)


def test_auto_targets_for_other_architectures():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    names = find_target_modules(LlamaForCausalLM(cfg))
    assert names == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def test_qlora_training_changes_lora_only_and_loss_falls(tiny_cfg, tokenizer, tmp_path):
    cfg = tiny_cfg.replace(max_steps=12, eval_steps=6, learning_rate=5e-3)
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "metrics.jsonl").write_text('{"step": 99, "loss": 0.5}\n')  # an older run's
    model = add_lora(load_base_model(cfg), cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = build_trainer(model, tokenizer, samples(tokenizer, cfg), samples(tokenizer, cfg, 4), cfg)
    train(trainer, cfg)
    after = dict(model.named_parameters())
    lora = [n for n in before if "lora_" in n]
    base = [n for n in before if "lora_" not in n]
    assert lora and base
    assert all(not after[n].requires_grad for n in base)
    assert all(torch.equal(before[n], after[n]) for n in base), "base weights changed"  # 4-bit bytes too
    assert sum(not torch.equal(before[n], after[n]) for n in lora) >= len(lora) // 2  # B starts at 0
    assert any(not torch.equal(before[n], after[n]) for n in lora if "lora_B" in n)
    rows = read_metrics(f"{cfg.logs_dir}/metrics.jsonl")
    losses = [r["loss"] for r in rows if "loss" in r]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 13))  # the stale row is gone
    assert sum(losses[-3:]) < sum(losses[:3])
    assert list((tmp_path / "logs" / "tensorboard").glob("events.out.tfevents.*"))

    out = save_adapter(model, tokenizer, cfg)
    assert {"adapter_config.json", "adapter_model.safetensors", "medbot_config.json"} <= {
        p.name for p in out.iterdir()
    }
    assert MedbotConfig.load(out) == cfg


def _losses(cfg):
    return {r["step"]: r["loss"] for r in read_metrics(f"{cfg.logs_dir}/metrics.jsonl") if "loss" in r}


def test_resume_gives_the_same_later_losses(tiny_cfg, tokenizer, tmp_path):
    from transformers import TrainerCallback

    def run(cfg, interrupt_at=None):
        model = add_lora(load_base_model(cfg), cfg)
        trainer = build_trainer(model, tokenizer, samples(tokenizer, cfg), samples(tokenizer, cfg, 4), cfg)
        if interrupt_at:

            class Interrupt(TrainerCallback):
                def on_step_end(self, args, state, control, **kw):
                    if state.global_step == interrupt_at:
                        raise KeyboardInterrupt  # what a Colab disconnect looks like to the loop

            trainer.add_callback(Interrupt())
        train(trainer, cfg)

    full = tiny_cfg.replace(output_dir=str(tmp_path / "a" / "out"), logs_dir=str(tmp_path / "a" / "logs"))
    run(full)
    part = tiny_cfg.replace(output_dir=str(tmp_path / "b" / "out"), logs_dir=str(tmp_path / "b" / "logs"))
    with pytest.raises(KeyboardInterrupt):
        run(part, interrupt_at=5)  # dies inside step 5: checkpoint-3 exists, step 4 was logged
    assert (tmp_path / "b" / "out" / "checkpoint-3").is_dir()
    assert max(_losses(part)) == 4
    run(part)  # a fresh process would do the same: new model, resume from checkpoint-3
    expected, got = _losses(full), _losses(part)
    assert sorted(got) == sorted(expected) == list(range(1, 7))  # step 4 logged once, not twice
    for step in (4, 5, 6):
        assert got[step] == pytest.approx(expected[step], rel=1e-5), step


def test_resume_refuses_checkpoints_of_a_different_run(tiny_cfg, tokenizer):
    def run(cfg):  # noqa: ANN001, ANN202
        model = add_lora(load_base_model(cfg), cfg)
        train(build_trainer(model, tokenizer, samples(tokenizer, cfg), samples(tokenizer, cfg, 4), cfg), cfg)

    first = tiny_cfg.replace(max_steps=3, eval_steps=3)
    run(first)
    with pytest.raises(ValueError, match="different run .*data_path"):
        run(first.replace(max_steps=4, data_path="other.jsonl"))
    run(first.replace(max_steps=4))  # extending the same run resumes
    assert read_metrics(f"{first.logs_dir}/metrics.jsonl")[-1]["step"] == 4


def test_report_to_picks_trackers_and_refuses_missing_or_unknown_ones(tiny_cfg, monkeypatch):
    import importlib.util

    import medbot_train
    from medbot_train import trackers

    assert trackers(tiny_cfg) == ["none"]  # TensorBoard is the default, added as our own callback
    with pytest.raises(ValueError, match="not supported"):
        tiny_cfg.replace(report_to=["comet"])
    real = importlib.util.find_spec
    monkeypatch.setattr(medbot_train.importlib.util, "find_spec", lambda name: real("json") if name == "wandb" else None if name == "mlflow" else real(name))  # fmt: skip
    assert trackers(tiny_cfg.replace(report_to=["tensorboard", "wandb"])) == ["wandb"]
    with pytest.raises(ValueError, match=r"\['mlflow'\] not installed"):
        trackers(tiny_cfg.replace(report_to=["mlflow"]))


def test_resume_skips_broken_checkpoints_and_shows_each_eval_once(tiny_cfg, tokenizer, capsys):
    """A truncated newest checkpoint and an empty one left by a kill are moved aside with a warning
    naming them, training resumes from the intact one before, and the metrics hold each eval once."""
    from medbot_train import evaluate

    def run(cfg):  # noqa: ANN001, ANN202
        model = add_lora(load_base_model(cfg), cfg)
        trainer = build_trainer(model, tokenizer, samples(tokenizer, cfg), samples(tokenizer, cfg, 4), cfg)
        evaluate(trainer)  # the notebook's "before training" eval
        train(trainer, cfg)
        return trainer

    cfg = tiny_cfg.replace(max_steps=6, eval_steps=3, save_total_limit=None)
    run(cfg)
    out = Path(cfg.output_dir)
    assert all((out / f"checkpoint-{n}" / SEAL).is_file() for n in (3, 6))  # each save sealed last
    weights = out / "checkpoint-6" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # a save cut short
    (out / "checkpoint-9").mkdir()  # a kill right after the folder was made
    trainer = run(cfg.replace(max_steps=9))
    said = capsys.readouterr().out
    assert (
        "checkpoint-9: no trainer_state.json" in said
        and "checkpoint-6: adapter_model.safetensors is" in said  # shorter than its seal says
    )
    assert (out / "checkpoint-9.broken").is_dir() and (out / "checkpoint-6.broken").is_dir()
    assert trainer.state.global_step == 9 and (out / "checkpoint-9" / "trainer_state.json").is_file()
    rows = read_metrics(f"{cfg.logs_dir}/metrics.jsonl")
    evals = [r["step"] for r in rows if "eval_loss" in r]
    assert evals == sorted(set(evals)) and 0 in evals and 9 in evals  # each once, in step order
    assert "Resuming from" in said and "checkpoint-3" in said


def test_an_unsealed_checkpoint_beside_sealed_ones_is_not_used(tmp_path, capsys):
    """A kill after the Trainer wrote its files but before the seal: the files look whole, but the
    save never finished, so the sealed checkpoint before it is used; folders from before seals
    (none sealed) are still judged file by file."""
    from safetensors.torch import save_file

    from medbot_train import seal_checkpoint, usable_checkpoint

    def checkpoint(step: int) -> Path:
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        save_file({"w": torch.ones(8)}, str(folder / "adapter_model.safetensors"))
        return folder

    old = checkpoint(3)
    new = checkpoint(6)
    assert usable_checkpoint(tmp_path) == str(new)  # no seals anywhere: verified, and whole
    seal_checkpoint(old)
    assert json.loads((old / SEAL).read_text())["files"]["adapter_model.safetensors"] > 0
    assert not list(old.glob("*.tmp"))
    assert usable_checkpoint(tmp_path) == str(old)
    assert f"checkpoint-6: no {SEAL}" in capsys.readouterr().out
    assert (tmp_path / "checkpoint-6.broken").is_dir()  # moved aside, kept
    (old / "extra.json").write_text("{}")  # a file the seal does not list is not a problem...
    assert usable_checkpoint(tmp_path) == str(old)
    (old / "trainer_state.json").write_text(json.dumps({"global_step": 3, "x": 1}))  # ...a changed one is
    assert usable_checkpoint(tmp_path) is None
    assert "trainer_state.json is" in capsys.readouterr().out


def test_checkpoint_problems_name_the_file(tmp_path):
    import zipfile

    from medbot_train import checkpoint_problem

    folder = tmp_path / "checkpoint-1"
    folder.mkdir()
    assert "no trainer_state.json" in checkpoint_problem(folder)
    from safetensors.torch import save_file

    (folder / "trainer_state.json").write_text("{")
    (folder / "adapter_model.safetensors").write_bytes(b"")
    assert "adapter_model.safetensors does not read" in checkpoint_problem(folder)
    save_file({"w": torch.ones(64)}, str(folder / "adapter_model.safetensors"))
    assert "trainer_state.json does not read" in checkpoint_problem(folder)
    (folder / "trainer_state.json").write_text("{}")
    torch.save({"state": torch.ones(256)}, folder / "optimizer.pt")
    assert checkpoint_problem(folder) is None
    data = bytearray((folder / "optimizer.pt").read_bytes())
    with zipfile.ZipFile(folder / "optimizer.pt") as z:
        member = next(i for i in z.infolist() if i.file_size > 500)
    data[member.header_offset + 30 + len(member.filename) + len(member.extra) + 100] ^= 0xFF  # flip a byte
    (folder / "optimizer.pt").write_bytes(bytes(data))
    assert "optimizer.pt" in checkpoint_problem(folder)


def test_one_process_never_becomes_data_parallel_on_a_multi_gpu_machine(tmp_path, capsys, monkeypatch):
    """What a 2-GPU machine gives a single process (n_gpu 2, so the Trainer would wrap
    nn.DataParallel) is pinned to one GPU and said; a torchrun/accelerate process is left alone."""
    from transformers import TrainingArguments

    from medbot_train import one_gpu_per_process

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    _ = args.device
    args._n_gpu = 2  # as transformers counts two visible GPUs
    assert one_gpu_per_process(args, visible=2).n_gpu == 1
    assert "2 GPUs visible: this process trains on cuda:0 only" in capsys.readouterr().out
    monkeypatch.setenv("WORLD_SIZE", "2")
    args._n_gpu = 2
    assert one_gpu_per_process(args, visible=2).n_gpu == 2  # distributed: each process has its own GPU


def test_overfitting_guard_counts_epochs_and_flags_a_rising_eval_loss(tmp_path, caplog):
    from types import SimpleNamespace

    from medbot_config import reference
    from medbot_train import MetricsFileCallback, epochs_warning, plot_losses

    seed = reference()  # 500 steps x 4 x 2 rows
    small = epochs_warning(seed, 55)
    assert "72.7 epochs (500 steps x 8 dialogues a step / 55 training dialogues)" in small
    assert "WARNING" in small and "about 20 steps (max_steps)" in small
    assert "WARNING" not in epochs_warning(seed, 5000)  # 0.8 epochs
    assert "0.8 epochs" in epochs_warning(seed.replace(packing=True), 50_000, per_row=10.0)

    callback = MetricsFileCallback(tmp_path / "metrics.jsonl")
    state = SimpleNamespace(is_world_process_zero=True, global_step=0, epoch=0.0)
    with caplog.at_level("WARNING", logger="medbot_train"):
        for step, loss in ((10, 2.0), (20, 1.5), (30, 1.6), (40, 1.8)):
            state.global_step = step
            callback.on_log(None, state, None, logs={"eval_loss": loss})
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r.get("eval_loss_rising", False) for r in rows] == [False, False, False, True]
    assert "eval loss rose at two evals in a row (1.500 -> 1.600 -> 1.800)" in caplog.text
    assert plot_losses(tmp_path / "metrics.jsonl", tmp_path / "loss.png").stat().st_size > 5000


def test_eval_loss_per_source_of_a_mix(tiny_cfg, tokenizer):
    """After training on one kind of text, the per-source eval separates the kinds; one source gives nothing."""
    from medbot_train import evaluate_sources

    cfg = tiny_cfg.replace(max_steps=10, eval_steps=10, learning_rate=5e-3)

    def tagged(rows, source):
        return [s | {"source": source} for s in tokenize_dialogues(rows, tokenizer, cfg)[0]]

    seen = [Dialogue(f"Patient {i} has a cough.", "Rest and drink fluids.", f"a:{i}") for i in range(24)]
    unseen = [Dialogue(f"Zq {i} xv?", "Wkpj lmno qrst uvwx yz.", f"b:{i}") for i in range(6)]
    model = add_lora(load_base_model(cfg), cfg)
    trainer = build_trainer(model, tokenizer, tagged(seen, "a"), tagged(seen[:4], "a"), cfg)
    train(trainer, cfg)
    rows_before = read_metrics(f"{cfg.logs_dir}/metrics.jsonl")
    by_source = evaluate_sources(trainer, tagged(seen[:4], "a") + tagged(unseen, "b"), tokenizer, cfg)
    assert list(by_source) == ["a", "b"]
    assert by_source["a"]["dialogues"] == 4 and by_source["b"]["dialogues"] == 6
    assert by_source["a"]["eval_loss"] < by_source["b"]["eval_loss"]
    assert by_source["b"]["perplexity"] == pytest.approx(math.exp(by_source["b"]["eval_loss"]))
    assert read_metrics(f"{cfg.logs_dir}/metrics.jsonl") == rows_before  # the loss curve file is untouched
    assert evaluate_sources(trainer, tagged(seen[:4], "a"), tokenizer, cfg) == {}


def test_an_eval_forward_on_cpu_keeps_the_4bit_layout_training_uses(tiny_cfg, tokenizer):
    """bitsandbytes would repack 4-bit layers for its AVX-512 CPU kernels on a no-grad eval forward,
    rounding their block scales to bfloat16 for good; the loaded model keeps the layout (and the
    weights) training reads, so evaluation, chat and export see the same model."""
    model = load_base_model(tiny_cfg).eval()
    ids = tokenizer("### Patient query: I feel dizzy.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        model(ids)
    states = [m.weight.quant_state for m in model.modules() if type(m).__name__ == "Linear4bit"]
    assert states and not any(getattr(s, "packing_format_for_cpu", False) for s in states)
    assert all(s.dtype == torch.float32 for s in states)  # the block scales' dtype, not bfloat16
