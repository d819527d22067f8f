"""QLoRA + DDP: train.py under torchrun with 2 CPU processes (gloo) reproduces a 1-process run."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from conftest import ROOT

from medbot_train import read_metrics

pytestmark = pytest.mark.slow


def _run(args: list[str], tmp_path) -> None:
    env = os.environ | {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_two_processes_follow_the_one_process_loss_curve(tiny_cfg, tmp_path):
    cfg = tiny_cfg.replace(
        data_path=str(ROOT / "data" / "sample_dialogues.jsonl"),
        lora_dropout=0.0,  # dropout masks differ per process; without it the maths is identical
        batch_size=2,
        grad_accum=2,
        max_steps=5,
        eval_steps=5,
        learning_rate=5e-3,  # large steps: gradients that were not averaged across processes would show
    )
    runs = {}
    for name in ("one", "two"):
        run = cfg.replace(output_dir=str(tmp_path / name / "out"), logs_dir=str(tmp_path / name / "logs"))
        run.save(tmp_path / f"{name}.json")
        runs[name] = run
    out1 = _run([sys.executable, "train.py", "--config", str(tmp_path / "one.json")], tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out2 = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
                 "train.py", "--config", str(tmp_path / "two.json")], tmp_path)  # fmt: skip
    assert "1 process(es); per process: batch 2 x grad_accum 2; effective batch 4" in out1
    assert "2 process(es); per process: batch 2 x grad_accum 1; effective batch 4" in out2
    one = {
        r["step"]: r["loss"] for r in read_metrics(tmp_path / "one" / "logs" / "metrics.jsonl") if "loss" in r
    }
    rows = read_metrics(tmp_path / "two" / "logs" / "metrics.jsonl")
    two = {r["step"]: r["loss"] for r in rows if "loss" in r}
    assert sorted(one) == sorted(two) == [1, 2, 3, 4, 5]
    assert len([r for r in rows if "loss" in r]) == 5  # one writer: every step logged once
    print("\nstep  1 process  2 processes")
    for step in sorted(one):
        print(f"{step:4d}  {one[step]:.6f}  {two[step]:.6f}")
        assert two[step] == pytest.approx(one[step], rel=1e-4, abs=1e-5)
    assert len(list((tmp_path / "two" / "logs" / "tensorboard").glob("events.*"))) == 1
    from safetensors.torch import load_file

    w1 = load_file(tmp_path / "one" / "out" / "adapter" / "adapter_model.safetensors")
    w2 = load_file(tmp_path / "two" / "out" / "adapter" / "adapter_model.safetensors")
    assert w1.keys() == w2.keys()
    lora_b = [k for k in w1 if "lora_B" in k]
    assert min(float(w1[k].abs().max()) for k in lora_b) > 1e-3  # B started at zero: training moved it
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-5  # the same trained adapter


def test_effective_batch_is_kept_or_refused(tiny_cfg):
    from medbot_train import per_process

    def shape(batch, accum, n):
        c = per_process(tiny_cfg.replace(batch_size=batch, grad_accum=accum), n)
        return c.batch_size, c.grad_accum

    assert shape(4, 2, 1) == (4, 2)
    assert shape(4, 2, 2) == (4, 1)
    assert shape(4, 2, 4) == (2, 1)
    assert shape(4, 2, 8) == (1, 1)
    assert shape(2, 8, 2) == (2, 4)
    with pytest.raises(ValueError, match="cannot be split over 3 processes"):
        per_process(tiny_cfg.replace(batch_size=4, grad_accum=2), 3)
