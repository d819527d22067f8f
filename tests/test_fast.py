"""The fast path: packing keeps every dialogue whole and apart, and learns exactly what padding does."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest
import torch
from conftest import ROOT

from medbot_fast import PackedCollator, cu_seqlens, pack_samples, packing_efficiency, patch_falcon_attention
from medbot_model import add_lora, load_base_model
from medbot_train import build_trainer, read_metrics, train
from medbot_utils import Dialogue, tokenize_dialogues


def fake(n: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = int(torch.randint(3, 40, (1,), generator=g))
        ids = torch.randint(0, 256, (length,), generator=g).tolist()  # 256 is the pad id
        out.append({"input_ids": ids, "labels": [-100] * 2 + ids[2:], "tag": i})
    return out


def test_packing_keeps_every_dialogue_whole_once():
    samples = fake(100)
    rows = pack_samples(samples, 64, pad_token_id=256, seed=1)
    assert all(len(r["input_ids"]) == len(r["labels"]) == len(r["position_ids"]) == 64 for r in rows)
    pieces = []
    for r in rows:
        starts = [i for i, p in enumerate(r["position_ids"]) if p == 0] + [64]
        pieces += [tuple(r["input_ids"][a:b]) for a, b in zip(starts, starts[1:])]
    docs = Counter(tuple(s["input_ids"]) for s in samples)
    assert all(pieces.count(d) >= c for d, c in docs.items())  # each dialogue appears whole
    assert sum(len(s["input_ids"]) for s in samples) == sum(
        sum(t != 256 for t in r["input_ids"]) for r in rows
    )
    assert 0.8 < packing_efficiency(rows) <= 1.0
    assert pack_samples(samples, 64, 256, seed=1) == rows  # deterministic
    with pytest.raises(ValueError, match="does not fit"):
        pack_samples([{"input_ids": [1] * 70, "labels": [1] * 70}], 64, 256, seed=0)


def test_cu_seqlens_splits_at_position_restarts_and_rows():
    pos = torch.tensor([[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]])
    cu, longest = cu_seqlens(pos)
    assert cu.tolist() == [0, 3, 5, 7, 10] and longest == 3


@pytest.fixture
def falcon_fp32(tiny_cfg):
    cfg = tiny_cfg.replace(load_in_4bit=False)
    return load_base_model(cfg).eval(), cfg


def test_packed_dialogues_never_attend_to_each_other(falcon_fp32):
    model, _ = falcon_fp32
    rows = pack_samples(fake(12, seed=3), 96, 256, seed=0)
    batch = PackedCollator()(rows)
    assert patch_falcon_attention(model) == 2
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        for r, row in enumerate(rows):
            starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [96]
            for a, b in zip(starts, starts[1:]):
                alone = model(input_ids=torch.tensor([row["input_ids"][a:b]])).logits[0]
                torch.testing.assert_close(packed[r, a:b], alone, atol=1e-5, rtol=1e-5)


def test_without_our_attention_packed_rows_leak(tiny_cfg):
    """The negative control: transformers' own Falcon attention lets a dialogue see the previous one."""
    model = load_base_model(tiny_cfg.replace(load_in_4bit=False)).eval()
    row = pack_samples(fake(2, seed=5)[:2], 96, 256, seed=0)[0]
    b = PackedCollator()([row])
    second = [i for i, p in enumerate(row["position_ids"]) if p == 0][1]
    with torch.no_grad():
        packed = model(input_ids=b["input_ids"], position_ids=b["position_ids"]).logits[0]
        alone = model(input_ids=b["input_ids"][:, second:]).logits[0]
    assert not torch.allclose(packed[second : second + 3], alone[:3], atol=1e-3)


def test_packed_training_learns_what_padded_training_learns(tiny_cfg, tokenizer, tmp_path):
    """Same dialogues per optimizer step, packed or padded: the same loss curve (fp32, CPU)."""
    rows = [Dialogue(f"Patient {i}: my {'knee' if i % 2 else 'back'} hurts.", "Rest. " * (1 + i % 5), f"t:{i}")
            for i in range(16)]  # fmt: skip
    base = tiny_cfg.replace(load_in_4bit=False, lora_dropout=0.0, max_steps=4, batch_size=1, eval_steps=100)
    samples = tokenize_dialogues(rows, tokenizer, base)[0]
    groups = [samples[i : i + 2] for i in range(0, len(samples), 2)]
    packed_rows = [pack_samples(g, 256, tokenizer.pad_token_id, seed=0)[0] for g in groups]

    def run(name: str, data: list, collator) -> list[float]:  # noqa: ANN001
        cfg = base.replace(output_dir=str(tmp_path / name), logs_dir=str(tmp_path / name / "logs"))
        model = add_lora(load_base_model(cfg), cfg)
        trainer = build_trainer(model, tokenizer, data, data[:1], cfg)
        trainer.data_collator = collator
        if isinstance(collator, PackedCollator):
            patch_falcon_attention(model)
        train(trainer, cfg)
        return [r["loss"] for r in read_metrics(f"{cfg.logs_dir}/metrics.jsonl") if "loss" in r]

    from medbot_utils import DataCollator

    padded = run(
        "padded", groups, lambda items: DataCollator(tokenizer.pad_token_id)([s for g in items for s in g])
    )
    packed = run("packed", packed_rows, PackedCollator())
    assert len(padded) == 4
    # the forward passes agree to 1e-6 (test above); the logged losses to ~1e-4 relative
    assert packed == pytest.approx(padded, rel=1e-3)


def test_packing_is_refused_where_dialogues_would_leak(tokenizer, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from medbot_config import reference

    cfg = reference().replace(packing=True, load_in_4bit=False, target_modules=None, output_dir=str(tmp_path))
    model = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2))  # fmt: skip
    samples = [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3], "attention_mask": [1, 1, 1]}]
    with pytest.raises(ValueError, match="packing needs a Falcon model"):
        build_trainer(model, tokenizer, samples, samples, cfg)


@pytest.mark.slow
def test_speed_benchmark_smoke_mode_prints_the_table(tmp_path):
    out = tmp_path / "speed.json"
    cmd = [
        sys.executable,
        "bench/train_speed.py",
        "--smoke",
        "--paths",
        "seed-4bit,ours-8/step,ours",
        "--out",
        str(out),
    ]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
    assert "Training speed on CPU" in res.stdout and "x seed" in res.stdout
    results = {r["path"]: r for r in json.loads(out.read_text())}
    assert set(results) == {"seed-4bit", "ours-8/step", "ours"}
    assert all(r["four_bit"] and r["tokens_per_s"] > 0 for r in results.values())
    # identical batches, packed vs padded: the same losses (fp32 on CPU)
    assert results["ours-8/step"]["losses"] == pytest.approx(results["seed-4bit"]["losses"], abs=1e-3)
