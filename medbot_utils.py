"""Data, prompts and tokens: everything between a dialogue file and a training batch.

    rows, report = load_dialogues("data/sample_dialogues.jsonl")
    train_rows, eval_rows = split_dialogues(rows, eval_fraction=0.1, seed=42)
    train_ds, train_report = tokenize_dialogues(train_rows, tokenizer, cfg)

Every record that is not used is accounted for in a `DataReport` (duplicate, empty answer,
over-long prompt ...) with its file and line, and malformed input raises `DataError` naming the
file, line and field. Nothing is dropped silently.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import random
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Field names of common dialogue shapes, tried in this order (matched case-insensitively).
# `input` wins over `instruction`: in ChatDoctor/medAlpaca data the instruction is a fixed
# preamble and the patient's words are in `input`.
QUERY_FIELDS = ["input", "patient", "question", "query", "instruction"]
ANSWER_FIELDS = ["output", "doctor", "answer", "response"]


class DataError(ValueError):
    """A malformed dialogue file; the message names the file, the line or record, and the field."""


@dataclass
class Dialogue:
    """One patient query and the doctor's answer, with where it came from."""

    input: str
    output: str
    where: str  # "file:line" (or "dataset:record N"), for reports and errors


@dataclass
class DataReport:
    """What happened to every record: kept, or dropped with a reason and its location."""

    source: str
    records: int = 0
    dropped: dict[str, list[str]] = field(default_factory=dict)

    def drop(self, reason: str, where: str) -> None:
        self.dropped.setdefault(reason, []).append(where)

    @property
    def kept(self) -> int:
        return self.records - sum(len(v) for v in self.dropped.values())

    def summary(self) -> str:
        lines = [f"{self.source}: {self.records} records, {self.kept} kept"]
        for reason, wheres in sorted(self.dropped.items()):
            shown = ", ".join(wheres[:5]) + (" ..." if len(wheres) > 5 else "")
            lines.append(f"  dropped {len(wheres)} ({reason}): {shown}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- loading


def load_dialogues(
    source: str | Path, input_field: str | None = None, output_field: str | None = None
) -> tuple[list[Dialogue], DataReport]:
    """Load patient/doctor pairs from a .json/.jsonl/.csv file or `hf:<dataset id>`.

    Args:
        source: a file path, or `hf:owner/name` for a Hugging Face dataset (train split).
        input_field: column of the patient query; None detects it from common shapes.
        output_field: column of the doctor answer; None detects it.

    Returns:
        The kept dialogues (exact duplicates and empty answers removed) and the report
        of every record dropped, with its location.

    Raises:
        DataError: unreadable bytes, bad JSON, a missing or non-string field, an empty query.
    """
    source = str(source)
    if source.startswith("hf:"):
        records = _read_hub_dataset(source[3:])
    else:
        records = _read_file(Path(source))
    report = DataReport(source=source, records=len(records))
    dialogues: list[Dialogue] = []
    seen: set[tuple[str, str]] = set()
    for where, record in records:
        query, answer = _extract_pair(record, where, input_field, output_field)
        if not answer:
            report.drop("empty answer", where)
            continue
        key = (query, answer)
        if key in seen:
            report.drop("exact duplicate", where)
            continue
        seen.add(key)
        dialogues.append(Dialogue(query, answer, where))
    log.info(report.summary())
    return dialogues, report


def _read_file(path: Path) -> list[tuple[str, Any]]:
    if not path.exists():
        raise DataError(f"{path}: no such file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: bytes are not UTF-8 (byte {e.start}: {e.reason})") from e
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _parse_jsonl(path, text)
    if suffix == ".json":
        return _parse_json_array(path, text)
    if suffix == ".csv":
        return _parse_csv(path, text)
    raise DataError(f"{path}: unsupported file type {suffix!r} (use .json, .jsonl or .csv)")


def _parse_jsonl(path: Path, text: str) -> list[tuple[str, Any]]:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue  # blank lines carry no record
        try:
            records.append((f"{path}:{number}", json.loads(line)))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{number}: bad JSON ({e.msg}, column {e.colno})") from e
    return records


def _parse_json_array(path: Path, text: str) -> list[tuple[str, Any]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: bad JSON ({e.msg}, column {e.colno})") from e
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))  # {"data": [...]} wrappers are common
    if not isinstance(data, list):
        raise DataError(f"{path}:1: expected a JSON array of records, got {type(data).__name__}")
    # Record positions: a JSON array has no per-record lines without a full parser, so name
    # the record index and the line where its object starts (found by a raw_decode walk).
    starts = _array_item_lines(text)
    return [(f"{path}:{starts[i] if i < len(starts) else '?'} (record {i})", r) for i, r in enumerate(data)]


def _array_item_lines(text: str) -> list[int]:
    decoder, lines = json.JSONDecoder(), []
    i = text.index("[") + 1  # the array itself, or the list inside a {"data": [...]} wrapper
    while True:
        while i < len(text) and text[i] in " \t\r\n,":
            i += 1
        if i >= len(text) or text[i] == "]":
            return lines
        lines.append(text.count("\n", 0, i) + 1)
        _, i = decoder.raw_decode(text, i)


def _parse_csv(path: Path, text: str) -> list[tuple[str, Any]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if not reader.fieldnames:
        raise DataError(f"{path}:1: CSV has no header row")
    records = []
    for row in reader:
        where = f"{path}:{reader.line_num}"
        if None in row:
            raise DataError(f"{where}: more cells than the header's {len(reader.fieldnames)} columns")
        records.append((where, row))
    return records


def _read_hub_dataset(dataset_id: str) -> list[tuple[str, Any]]:
    import datasets  # only the hub path needs it

    ds = datasets.load_dataset(dataset_id, split="train")
    return [(f"hf:{dataset_id} record {i}", dict(r)) for i, r in enumerate(ds)]


def _pick_field(record: dict, explicit: str | None, candidates: list[str], where: str, role: str) -> str:
    if explicit is not None:
        if explicit not in record:
            raise DataError(f"{where}: field {explicit!r} ({role}) is missing; found {sorted(record)}")
        return explicit
    by_lower = {k.lower(): k for k in record}
    for name in candidates:
        if name in by_lower:
            key = by_lower[name]
            # ChatDoctor shape: a fixed `instruction` plus the real query in `input`; fall back
            # to `instruction` only when `input` is empty.
            if name == "input" and role == "patient query" and not str(record[key] or "").strip():
                continue
            return key
    raise DataError(
        f"{where}: no {role} field; expected one of {candidates} (or set the field name), "
        f"found {sorted(record)}"
    )


def _extract_pair(
    record: Any, where: str, input_field: str | None, output_field: str | None
) -> tuple[str, str]:
    if not isinstance(record, dict):
        raise DataError(
            f"{where}: expected an object with query and answer fields, got {type(record).__name__}"
        )
    q_key = _pick_field(record, input_field, QUERY_FIELDS, where, "patient query")
    a_key = _pick_field(record, output_field, ANSWER_FIELDS, where, "doctor answer")
    for key in (q_key, a_key):
        if not isinstance(record[key], str):
            raise DataError(f"{where}: field {key!r} must be a string, got {type(record[key]).__name__}")
    query, answer = record[q_key].strip(), record[a_key].strip()
    if not query:
        raise DataError(f"{where}: field {q_key!r} (patient query) is empty")
    return query, answer


# ----------------------------------------------------------------------------- split


def normalize_query(text: str) -> str:
    """The key used to keep a query on one side of the split: case and spacing ignored."""
    return " ".join(text.lower().split())


def split_dialogues(
    dialogues: list[Dialogue], eval_fraction: float, seed: int
) -> tuple[list[Dialogue], list[Dialogue]]:
    """Deterministic train/eval split by distinct query: no patient query lands in both."""
    groups: dict[str, list[Dialogue]] = {}
    for d in dialogues:
        groups.setdefault(normalize_query(d.input), []).append(d)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    n_eval = max(1, round(len(keys) * eval_fraction)) if len(keys) > 1 else 0
    eval_keys = set(keys[:n_eval])
    train = [d for d in dialogues if normalize_query(d.input) not in eval_keys]
    evals = [d for d in dialogues if normalize_query(d.input) in eval_keys]
    return train, evals


# ----------------------------------------------------------------------------- prompts and tokens


def format_prompt(query: str, template: str) -> str:
    """The prompt the model sees; the answer follows it after one space."""
    return template.format(query=query.strip())


def format_conversation(query: str, template: str, history: list[tuple[str, str]] | None = None) -> str:
    """A multi-turn prompt: earlier (query, answer) exchanges in the training template, then the query."""
    turns = [format_prompt(q, template) + " " + a.strip() for q, a in history or []]
    return "\n".join(turns + [format_prompt(query, template)])


def tokenize_pair(tokenizer: Any, prompt: str, answer: str, max_length: int) -> dict[str, Any]:
    """Token ids for prompt + " " + answer + EOS, with labels only on the answer.

    Prompt and answer are tokenized separately so the label boundary is exact.

    Returns:
        input_ids, attention_mask, labels (-100 on the prompt), prompt_len, answer_len
        (untruncated, EOS included) and truncated (bool).
    """
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    answer_ids = tokenizer(" " + answer.strip(), add_special_tokens=False)["input_ids"]
    answer_ids = answer_ids + [tokenizer.eos_token_id]
    ids = prompt_ids + answer_ids
    labels = [-100] * len(prompt_ids) + answer_ids
    truncated = len(ids) > max_length
    ids, labels = ids[:max_length], labels[:max_length]
    return {
        "input_ids": ids,
        "attention_mask": [1] * len(ids),
        "labels": labels,
        "prompt_len": len(prompt_ids),
        "answer_len": len(answer_ids),
        "truncated": truncated,
    }


def tokenize_dialogues(
    dialogues: list[Dialogue], tokenizer: Any, cfg: Any, name: str = "train"
) -> tuple[list[dict[str, Any]], DataReport]:
    """Tokenize a split with `cfg.prompt_template`; over-long samples are truncated or dropped.

    A sample whose prompt alone fills max_length leaves no answer to learn and is always
    dropped; every drop and truncation is in the returned report.
    """
    report = DataReport(source=f"{name} split", records=len(dialogues))
    samples = []
    for d in dialogues:
        s = tokenize_pair(tokenizer, format_prompt(d.input, cfg.prompt_template), d.output, cfg.max_length)
        if s["prompt_len"] >= cfg.max_length:
            report.drop(f"prompt alone exceeds max_length={cfg.max_length}", d.where)
        elif s["truncated"] and cfg.overlong == "drop":
            report.drop(f"longer than max_length={cfg.max_length}", d.where)
        else:
            samples.append(s)
    n_trunc = sum(s["truncated"] for s in samples)
    if n_trunc:
        log.info("%s: %d of %d samples truncated at %d tokens", name, n_trunc, len(samples), cfg.max_length)
    return samples, report


class DataCollator:
    """Pads a batch to its longest row; padding is masked in attention and labels.

    Labels are masked by position, not by token id: the pad id is often EOS, and the EOS
    that ends each answer must still be learned.
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(s["input_ids"]) for s in batch)
        out: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": []}
        for s in batch:
            pad = width - len(s["input_ids"])
            out["input_ids"].append(s["input_ids"] + [self.pad_token_id] * pad)
            out["attention_mask"].append(s["attention_mask"] + [0] * pad)
            out["labels"].append(s["labels"] + [-100] * pad)
        return {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}


# ----------------------------------------------------------------------------- length statistics


def length_stats(values: list[int]) -> dict[str, float]:
    """count, min, mean, median, p90, p99 and max of a list of token counts."""
    if not values:
        return {"count": 0}
    ordered = sorted(values)

    def pct(p: float) -> float:  # nearest-rank percentile: an actual observed length
        return float(ordered[min(len(ordered) - 1, max(0, -(-len(ordered) * p // 100) - 1))])

    return {
        "count": len(ordered),
        "min": float(ordered[0]),
        "mean": statistics.fmean(ordered),
        "median": float(statistics.median(ordered)),
        "p90": pct(90),
        "p99": pct(99),
        "max": float(ordered[-1]),
    }


def token_stats(samples: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Length statistics of prompts, answers and whole samples (before truncation)."""
    prompts = [s["prompt_len"] for s in samples]
    answers = [s["answer_len"] for s in samples]
    totals = [p + a for p, a in zip(prompts, answers)]
    stats = {"prompt": length_stats(prompts), "answer": length_stats(answers), "sample": length_stats(totals)}
    stats["sample"]["fraction_truncated"] = (
        sum(s["truncated"] for s in samples) / len(samples) if samples else 0.0
    )
    return stats


def format_stats_table(stats_by_split: dict[str, dict[str, dict[str, float]]]) -> str:
    """A plain-text table: one row per split and part."""
    cols = ["count", "min", "mean", "median", "p90", "p99", "max"]
    lines = [f"{'split':<6} {'part':<7} " + " ".join(f"{c:>7}" for c in cols) + "  truncated"]
    for split, stats in stats_by_split.items():
        for part, s in stats.items():
            cells = " ".join(f"{s.get(c, 0):>7.0f}" if c != "mean" else f"{s.get(c, 0):>7.1f}" for c in cols)
            trunc = f"  {s['fraction_truncated']:.1%}" if "fraction_truncated" in s else ""
            lines.append(f"{split:<6} {part:<7} {cells}{trunc}")
    return "\n".join(lines)


def plot_length_histogram(
    samples_by_split: dict[str, list[dict[str, Any]]], max_length: int, path: str | Path
) -> Path:
    """Histogram of whole-sample token lengths per split, with the truncation limit marked."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for split, samples in samples_by_split.items():
        lengths = [s["prompt_len"] + s["answer_len"] for s in samples]
        ax.hist(lengths, bins=40, alpha=0.6, label=f"{split} ({len(lengths)})")
    ax.axvline(max_length, color="k", linestyle="--", label=f"max_length={max_length}")
    ax.set(xlabel="tokens per sample (prompt + answer + EOS)", ylabel="samples", title="Token lengths")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
