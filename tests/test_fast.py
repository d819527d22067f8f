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


def tiny_llama():
    """SmolLM2's architecture (Llama, grouped KV heads), tiny and random."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2)).eval()  # fmt: skip


@pytest.mark.parametrize("arch", ["llama", "falcon-generic"])
def test_generic_packing_keeps_dialogues_apart_in_attention(arch, tiny_cfg):
    """With the cache off, a row's second dialogue does not change when the first one does, and
    equals the dialogue alone. The negative control is in the attention, not the cache: the same
    forward with a plain causal mask over the row (what packing without per-dialogue masks does)
    lets the second dialogue see the first, and the test sees it."""
    from medbot_fast import enable_packing

    model = tiny_llama() if arch == "llama" else load_base_model(tiny_cfg.replace(load_in_4bit=False)).eval()
    if arch == "llama":
        assert enable_packing(model) == "generic"
    else:  # Falcon through transformers' own attention (the hook without our fast path)
        from medbot_fast import _no_cache_when_packed

        model.register_forward_pre_hook(_no_cache_when_packed, with_kwargs=True)
    first, other_first, second = [1, 5, 9, 13, 2, 7], [200, 3, 3, 250, 8, 100], [40, 41, 42, 43, 44]
    pos = torch.tensor([list(range(6)) + list(range(5))])

    def logits(head: list[int], **extra) -> torch.Tensor:
        with torch.no_grad():
            return model(input_ids=torch.tensor([head + second]), position_ids=pos, **extra).logits[0, 6:]

    with torch.no_grad():
        alone = model(input_ids=torch.tensor([second])).logits[0]
    torch.testing.assert_close(logits(first), alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits(first), logits(other_first), atol=1e-5, rtol=1e-5)
    causal = {"attention_mask": torch.ones(1, 11, dtype=torch.long), "use_cache": False}
    assert (logits(first, **causal) - logits(other_first, **causal)).abs().max() > 1e-3  # leak seen


@pytest.mark.parametrize("arch", ["falcon", "llama"])
def test_packed_training_learns_what_padded_training_learns(arch, tiny_cfg, tokenizer, tmp_path):
    """Same dialogues per optimizer step, packed or padded: the same loss curve (fp32, CPU), for
    Falcon (our attention) and a Llama (transformers' packed masks)."""
    from medbot_fast import enable_packing

    if arch == "llama":
        tiny_llama().save_pretrained(tmp_path / "llama")
        tokenizer.save_pretrained(tmp_path / "llama")
        tiny_cfg = tiny_cfg.replace(model_name=str(tmp_path / "llama"), target_modules=None)
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
            assert enable_packing(model) == ("falcon" if arch == "falcon" else "generic")
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


def test_packing_trains_a_non_falcon_model_and_logs_its_path(tokenizer, tmp_path, caplog):
    from medbot_config import reference

    cfg = reference().replace(packing=True, load_in_4bit=False, target_modules=None, output_dir=str(tmp_path),
                              pack_tokens=64, max_length=32)  # fmt: skip
    samples = [{"input_ids": [1, 2, 3, 4], "labels": [-100, 2, 3, 4], "attention_mask": [1] * 4}] * 6
    with caplog.at_level("INFO", logger="medbot_train"):
        trainer = build_trainer(tiny_llama(), tokenizer, samples, samples, cfg)
    assert isinstance(trainer.data_collator, PackedCollator) and len(trainer.train_dataset) == 1
    assert "generic attention" in caplog.text


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
    assert "MFU: no GPU peak (CPU run)" in res.stdout  # MFU only against a named GPU's spec peak
    results = {r["path"]: r for r in json.loads(out.read_text())}
    assert set(results) == {"seed-4bit", "ours-8/step", "ours"}
    assert all(r["four_bit"] and r["tokens_per_s"] > 0 for r in results.values())
    # identical batches, packed vs padded: the same losses (fp32 on CPU)
    assert results["ours-8/step"]["losses"] == pytest.approx(results["seed-4bit"]["losses"], abs=1e-3)
