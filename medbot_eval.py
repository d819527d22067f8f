"""Evaluation: are the answers better than the base model's, and was medical knowledge kept?

    medbot-eval --adapter falcon-patient-chatbot/adapter                       # held-out split only
    medbot-eval --adapter falcon-patient-chatbot/adapter \
        --liveqa ../shared/data/dialogue/liveqa-test.jsonl --knowledge ../shared/data/knowledge --mcq 100
    python -m medbot_eval ...                                                  # the same, uninstalled

Both models are the same object: the base is the fine-tuned model with its adapter switched off,
so they see the same questions with the same sampling seed. Writes logs/eval_report.md (with the
plots), logs/eval_results.json and prints the tables. The pieces, for the notebook and scripts:

    ppl = answer_perplexity(model, tokenizer, cfg, dialogues)          # of the reference answers
    scores = answer_metrics(generated, references)                      # ROUGE-L, BLEU, similarity, length
    diff = paired_bootstrap(scores_ft["similarity"], scores_base["similarity"])
    acc = knowledge_accuracy(model, tokenizer, questions)               # multiple choice by log-likelihood

Generation for evaluation goes through `respond()` (medbot_chat.py), the same path as chat, so
the safety layer's flag rates are measured on exactly what a user would see.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import os
import platform
import random
import shutil
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from medbot_chat import respond_batch
from medbot_config import add_config_arguments, config_overrides
from medbot_triage import Embedder  # all-MiniLM-L6-v2, shared with the triage model
from medbot_utils import Dialogue, load_data, load_dialogues, parse_sources, progress, tokenize_conversation

METRICS = ("rouge_l", "bleu", "similarity", "words")

# ----------------------------------------------------------------------------- the evaluation run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapter", default="falcon-patient-chatbot/adapter")
    ap.add_argument(
        "--heldout",
        type=int,
        default=50,
        help="held-out dialogues to evaluate, per source (from the saved split)",
    )
    ap.add_argument("--eval-data", default=None, help="evaluate on the held-out split of this data_path instead of "
                    "the adapter's (e.g. a mix; the split by query hash keeps the adapter's own held-out queries out)")  # fmt: skip
    ap.add_argument("--liveqa", default=None, help="liveqa-test.jsonl (never trained on)")
    ap.add_argument("--knowledge", default=None, help="folder of multiple-choice .jsonl files")
    ap.add_argument("--mcq", type=int, default=100, help="questions per knowledge file (seeded sample)")
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="report folder (default: the config's logs_dir)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_arguments(ap)  # e.g. --temperature 0.2 --max-eval-samples 20 over the adapter's config
    args = ap.parse_args()
    if args.quiet:
        os.environ["MEDBOT_PROGRESS"] = "0"
    from medbot_model import load_for_chat

    model, tok, cfg = load_for_chat(args.adapter, merge=False)
    cfg = cfg.replace(**config_overrides(args))
    out_dir = Path(args.out or cfg.logs_dir)
    embedder = Embedder()
    held_by_source = heldout_sets(cfg.replace(data_path=args.eval_data or cfg.data_path), args.heldout)
    held = next(iter(held_by_source.values()))
    started = time.time()
    gen = {"batch": args.batch, "seed": args.seed, "gen_tokens": args.gen_tokens}
    results: dict[str, Any] = {"sets": {name: evaluate_set(model, tok, cfg, rows, embedder, **gen)
                                        for name, rows in held_by_source.items()}}  # fmt: skip
    data_files = [spec for spec, _ in parse_sources(args.eval_data or cfg.data_path)]
    if args.liveqa:
        live, _ = load_dialogues(args.liveqa)
        results["sets"]["liveqa"] = evaluate_set(model, tok, cfg, live, embedder, **gen)
        data_files.append(args.liveqa)
    if args.knowledge:
        results["knowledge"] = evaluate_knowledge(model, tok, Path(args.knowledge), args.mcq, args.seed)
        data_files += [str(p) for p in sorted(Path(args.knowledge).glob("*.jsonl"))]
    results["run"] = run_facts(cfg, args.seed, data_files, time.time() - started)
    write_report(results, cfg, held, out_dir)


def evaluate_set(
    model: Any, tok: Any, cfg: Any, rows: list[Dialogue], embedder: Embedder,
    *, batch: int = 8, seed: int = 0, gen_tokens: int = 128,
) -> dict:  # fmt: skip
    """Perplexity of references, then generated answers scored against them, for base and fine-tuned.
    Dialogues whose prompt leaves no room to answer within `cfg.gen_max_length` are skipped (counted)."""
    rows, skipped = fits_for_generation(tok, cfg, rows)
    if skipped:
        print(f"{skipped} dialogue(s) skipped: the prompt leaves fewer than {ANSWER_ROOM} of gen_max_length "
              f"{cfg.gen_max_length} tokens to answer")  # fmt: skip
    out: dict[str, Any] = {"n": len(rows), "skipped_too_long": skipped}
    for name in ("base", "finetuned"):
        with model.disable_adapter() if name == "base" else nullcontext():
            ppl = answer_perplexity(model, tok, cfg, rows)
            # batches of similar length: one long query would cut every answer in its batch short
            order = sorted(range(len(rows)), key=lambda j: len(rows[j].input))
            replies: list[Any] = [None] * len(rows)
            for i in progress(range(0, len(rows), batch), f"{name} answers (batches of {batch})"):
                idx = order[i : i + batch]
                got = respond_batch(model, tok, cfg, [rows[j].input for j in idx], seed=seed + i,
                                    histories=[rows[j].history for j in idx], max_new_tokens=gen_tokens)  # fmt: skip
                for j, reply in zip(idx, got):
                    replies[j] = reply
        answers = [r.answer for r in replies]
        scores = answer_metrics(answers, [d.output for d in rows], embedder)
        flagged = [any(f.code.startswith("answer.") for f in r.flags) for r in replies]
        out[name] = {
            "perplexity": ppl,
            "scores": scores,
            "answers": answers,
            "unsafe_rate": statistics.fmean(flagged),
        }
    out["diff"] = {
        m: paired_bootstrap(out["finetuned"]["scores"][m], out["base"]["scores"][m], seed=seed)
        for m in METRICS
    }
    out["perplexity_change"] = out["finetuned"]["perplexity"] / out["base"]["perplexity"] - 1
    return out


ANSWER_ROOM = 32  # tokens an answer needs at least, within gen_max_length, to be worth scoring


def fits_for_generation(
    tok: Any, cfg: Any, rows: list[Dialogue], room: int = ANSWER_ROOM
) -> tuple[list[Dialogue], int]:
    """The dialogues whose rendered prompt (history included) leaves `room` tokens to answer, and
    how many were left out (a long forum post can exceed a small model's whole generation budget)."""
    from medbot_utils import chat_messages, render_chat

    kept = []
    for d in rows:
        prompt = render_chat(tok, cfg.prompt_template, chat_messages(d.input, d.history), generation=True)
        if len(tok(prompt, add_special_tokens=False)["input_ids"]) + room <= cfg.gen_max_length:
            kept.append(d)
    return kept, len(rows) - len(kept)


def evaluate_knowledge(model: Any, tok: Any, folder: Path, limit: int, seed: int) -> dict:
    out = {}
    for path in sorted(folder.glob("*.jsonl")):
        questions = load_mcq(path, limit=limit, seed=seed)
        with model.disable_adapter():
            base = knowledge_accuracy(model, tok, questions)
        ft = knowledge_accuracy(model, tok, questions)
        out[path.stem] = {"n": len(questions), "base": base["accuracy"], "finetuned": ft["accuracy"],
                          "diff": paired_bootstrap(ft["correct"], base["correct"], seed=seed)}  # fmt: skip
    return out


def heldout_sets(cfg: Any, per_source: int) -> dict[str, list[Dialogue]]:
    """The held-out dialogues of the run's split, up to `per_source` from each source: one set
    `held-out` for a single source, `held-out <name>` for each source of a mix."""
    data = load_data(cfg.replace(max_eval_samples=None))
    names = list(dict.fromkeys(d.source for d in data.eval))
    if len(names) == 1:
        return {"held-out": data.eval[:per_source]}
    return {f"held-out {name}": [d for d in data.eval if d.source == name][:per_source] for name in names}


def run_facts(cfg: Any, seed: int, files: list[str], seconds: float) -> dict:
    """What a reader needs to reproduce the numbers: command, seed, config, data hashes, versions, hardware."""
    import peft
    import transformers

    def sha(path: str) -> str:
        p = Path(path)
        return hashlib.sha256(p.read_bytes()).hexdigest()[:16] if p.is_file() else "(not a file)"

    return {
        "command": " ".join(sys.argv),
        "seed": seed,
        "config": json.loads(json.dumps(cfg.__dict__)),
        "data_sha256": {f: sha(f) for f in files},
        "packages": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },  # fmt: skip
        "hardware": torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU ({platform.processor() or platform.machine()})",
        "seconds": round(seconds),
    }


def quality_table(results: dict) -> list[str]:
    lines = ["| set | metric | base | fine-tuned | difference [95% CI] |", "|---|---|---|---|---|"]
    for name, r in results["sets"].items():
        b, f = r["base"], r["finetuned"]
        lines.append(f"| {name} (n={r['n']}) | perplexity of reference answers | {b['perplexity']:.2f} | "
                     f"{f['perplexity']:.2f} | {r['perplexity_change']:+.1%} |")  # fmt: skip
        for m in METRICS:
            d = r["diff"][m]
            lines.append(f"| | {m} | {statistics.fmean(b['scores'][m]):.3f} | {statistics.fmean(f['scores'][m]):.3f} | "
                         f"{d['diff']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] |")  # fmt: skip
        lines.append(f"| | unsafe answers flagged | {b['unsafe_rate']:.1%} | {f['unsafe_rate']:.1%} | |")
    return lines


def write_report(results: dict, cfg: Any, held: list[Dialogue], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = ["# medbot evaluation report", "", "Not for medical use: research evaluation only.", "",
             "## Answer quality: base vs fine-tuned", ""] + quality_table(results)  # fmt: skip
    if "knowledge" in results:
        lines += ["", "## Knowledge probe (multiple choice, option log-likelihood)", "",
                  "| set | n | base | fine-tuned | difference [95% CI] |", "|---|---|---|---|---|"]  # fmt: skip
        for name, k in results["knowledge"].items():
            d = k["diff"]
            lines.append(f"| {name} | {k['n']} | {k['base']:.3f} | {k['finetuned']:.3f} | "
                         f"{d['diff']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] |")  # fmt: skip
    held_name = next(iter(results["sets"]))
    held_set = results["sets"][held_name]
    lines += [
        "",
        f"## Example answers ({held_name})",
        "",
        "| patient query | reference | base | fine-tuned |",
        "|---|---|---|---|",
    ]
    for i, d in enumerate(held[:3]):
        cells = [d.input, d.output, held_set["base"]["answers"][i], held_set["finetuned"]["answers"][i]]
        lines.append("| " + " | ".join(c.replace("|", "/").replace("\n", " ")[:300] for c in cells) + " |")
    lines += ["", "## Plots", ""]
    plot_metrics(results, out_dir / "eval_metrics.png")
    for png in ("loss.png", "token_lengths.png", "eval_metrics.png"):
        src = Path(cfg.logs_dir) / png
        if src.exists() and not (out_dir / png).exists():
            shutil.copy(src, out_dir / png)  # the training run's plots travel with the report
        if (out_dir / png).exists():
            lines.append(f"![{png}]({png})")
    lines += ["", "## Reproduce", "", "```json", json.dumps(results["run"], indent=2), "```"]
    path = out_dir / "eval_report.md"
    path.write_text("\n".join(lines) + "\n")
    slim = {k: v for k, v in results.items() if k != "sets"}
    slim["sets"] = {n: {k: v for k, v in r.items() if k not in ("base", "finetuned")} | {
        m: {"perplexity": r[m]["perplexity"], "unsafe_rate": r[m]["unsafe_rate"],
            **{s: statistics.fmean(v) for s, v in r[m]["scores"].items()}} for m in ("base", "finetuned")}
        for n, r in results["sets"].items()}  # fmt: skip
    (out_dir / "eval_results.json").write_text(json.dumps(slim, indent=2))
    print("\n".join(quality_table(results)))
    print(f"\nreport: {path}")
    return path


def plot_metrics(results: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    sets = list(results["sets"])
    fig, axes = plt.subplots(1, 3, figsize=(10, 3))
    for ax, m in zip(axes, ("rouge_l", "bleu", "similarity")):
        for j, name in enumerate(("base", "finetuned")):
            vals = [statistics.fmean(results["sets"][s][name]["scores"][m]) for s in sets]
            ax.bar([i + 0.4 * j for i in range(len(sets))], vals, width=0.4, label=name)
        ax.set_xticks([i + 0.2 for i in range(len(sets))], sets)
        ax.set_title(m)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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


if __name__ == "__main__":
    main()
