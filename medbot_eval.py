"""Evaluation: are the answers better than the base model's, and was medical knowledge kept?

    ppl = answer_perplexity(model, tokenizer, cfg, dialogues)          # of the reference answers
    scores = answer_metrics(generated, references)                      # ROUGE-L, BLEU, similarity, length
    diff = paired_bootstrap(scores_ft["similarity"], scores_base["similarity"])
    acc = knowledge_accuracy(model, tokenizer, questions)               # multiple choice by log-likelihood

Generation for evaluation goes through `respond()` (medbot_chat.py), the same path as chat, so
the safety layer's flag rates are measured on exactly what a user would see.
"""

from __future__ import annotations

import functools
import json
import math
import random
import statistics
from pathlib import Path
from typing import Any

import torch

from medbot_triage import Embedder  # all-MiniLM-L6-v2, shared with the triage model
from medbot_utils import Dialogue, progress, tokenize_conversation

# ----------------------------------------------------------------------------- text metrics


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 (rouge-score, stemmed)."""
    return _rouge_scorer().score(reference, prediction)["rougeL"].fmeasure


@functools.cache
def _rouge_scorer() -> Any:
    import logging

    from rouge_score import rouge_scorer

    logging.getLogger("absl").setLevel(logging.WARNING)  # rouge-score logs a line per scorer
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def bleu(prediction: str, reference: str) -> float:
    """Sentence BLEU (sacrebleu, 0-100, exponential smoothing)."""
    import sacrebleu

    return sacrebleu.sentence_bleu(prediction, [reference]).score


def answer_metrics(
    predictions: list[str], references: list[str], embedder: Embedder | None = None
) -> dict[str, list[float]]:
    """Per-answer ROUGE-L, BLEU, semantic similarity (if an embedder is given) and length in words."""
    scores = {
        "rouge_l": [rouge_l(p, r) for p, r in zip(predictions, references)],
        "bleu": [bleu(p, r) for p, r in zip(predictions, references)],
        "words": [float(len(p.split())) for p in predictions],
    }
    if embedder is not None:
        a, b = embedder(predictions), embedder(references)
        scores["similarity"] = (a * b).sum(-1).tolist()
    return scores


def paired_bootstrap(a: list[float], b: list[float], samples: int = 2000, seed: int = 0) -> dict[str, float]:
    """Mean of a - b over paired items, with a percentile bootstrap 95% interval."""
    if len(a) != len(b) or not a:
        raise ValueError("paired_bootstrap needs two equally long, non-empty lists")
    diffs = [x - y for x, y in zip(a, b)]
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(diffs, k=len(diffs))) for _ in range(samples))
    return {
        "diff": statistics.fmean(diffs),
        "low": means[int(0.025 * samples)],
        "high": means[int(0.975 * samples) - 1],
    }


# ----------------------------------------------------------------------------- perplexity of references


def answer_perplexity(
    model: Any, tokenizer: Any, cfg: Any, dialogues: list[Dialogue], batch: int = 8
) -> float:
    """exp(mean loss over reference-answer tokens), the conversation tokenized as in training."""
    losses = answer_losses(model, tokenizer, cfg, dialogues, batch)
    return math.exp(sum(nll for nll, _ in losses) / max(1, sum(n for _, n in losses)))


@torch.inference_mode()
def answer_losses(
    model: Any, tokenizer: Any, cfg: Any, dialogues: list[Dialogue], batch: int = 8
) -> list[tuple[float, int]]:
    """Per dialogue: (summed negative log-likelihood of its reference-answer tokens, their count).
    Kept per dialogue so that two models can be compared on the same dialogues with an interval."""
    device = next(model.parameters()).device
    out: list[tuple[float, int]] = []
    for i in progress(range(0, len(dialogues), batch), "perplexity (batches)"):
        rows = [
            tokenize_conversation(tokenizer, d.messages(), cfg.prompt_template, cfg.max_length)
            for d in dialogues[i : i + batch]
        ]
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id)
        labels = torch.full((len(rows), width), -100)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[j, :n], labels[j, :n], mask[j, :n] = (
                torch.tensor(r["input_ids"]),
                torch.tensor(r["labels"]),
                1,
            )
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        target = labels[:, 1:].to(device)
        keep = target != -100
        picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        nll, count = (-(picked * keep)).sum(dim=1).tolist(), keep.sum(dim=1).tolist()
        out += [(float(a), int(b)) for a, b in zip(nll, count)]
    return out


def load_mcq(path: str | Path, limit: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """Multiple-choice questions ({question, options: {letter: text}, answer_idx}); a seeded sample if limited."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    for i, r in enumerate(rows):
        if not isinstance(r.get("options"), dict) or r.get("answer_idx") not in r["options"]:
            raise ValueError(f"{path}:{i + 1}: needs 'options' (a dict) containing 'answer_idx'")
    if limit and limit < len(rows):
        rows = random.Random(seed).sample(rows, limit)
    return rows


@torch.inference_mode()
def option_logprobs(model: Any, tokenizer: Any, question: str, options: dict[str, str]) -> dict[str, float]:
    """Mean log-probability per token of each option's text after the question (no generation).

    The question runs once and its KV cache is shared by all options, which then run as one batch
    of their own tokens only (a question is usually far longer than its options).
    """
    device = next(model.parameters()).device
    p_ids = tokenizer(f"Question: {question.strip()}\nAnswer:")["input_ids"]
    keys = list(options)
    seqs = [tokenizer(" " + options[k].strip(), add_special_tokens=False)["input_ids"] or [tokenizer.eos_token_id]
            for k in keys]  # fmt: skip
    prefix = model(input_ids=torch.tensor([p_ids], device=device), use_cache=True)
    first = torch.log_softmax(prefix.logits[0, -1].float(), dim=-1)  # predicts each option's first token
    new_api = hasattr(prefix, "cache")  # transformers >= 5.2x renamed past_key_values to cache
    cache = prefix.cache if new_api else prefix.past_key_values
    cache.batch_repeat_interleave(len(keys))
    ids = torch.full((len(keys), max(len(q) for q in seqs)), tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    for j, q in enumerate(seqs):
        ids[j, : len(q)], mask[j, : len(q)] = torch.tensor(q), 1
    mask = torch.cat([torch.ones(len(keys), len(p_ids), dtype=mask.dtype), mask], dim=1)
    kw = {"cache": cache} if new_api else {"past_key_values": cache}
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), **kw).logits
    logp = torch.log_softmax(logits.float(), dim=-1)
    out = {}
    for j, (k, q) in enumerate(zip(keys, seqs)):
        later = logp[
            j, torch.arange(len(q) - 1, device=device), torch.tensor(q[1:], dtype=torch.long, device=device)
        ]
        out[k] = float(torch.cat([first[q[0]].view(1), later]).mean())
    return out


def knowledge_accuracy(model: Any, tokenizer: Any, questions: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy of picking the option with the highest mean log-probability."""
    correct = []
    for q in progress(questions, "knowledge questions"):
        scores = option_logprobs(model, tokenizer, q["question"], q["options"])
        correct.append(float(max(scores, key=scores.get) == q["answer_idx"]))
    return {"accuracy": statistics.fmean(correct) if correct else 0.0, "n": len(correct), "correct": correct}
