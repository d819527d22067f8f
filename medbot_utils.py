"""Data, prompts and tokens: everything between a dialogue file and a training batch.

    data = load_data(cfg)          # every source of cfg.data_path: loaded, repeats removed, split, weighted
    print(data.summary())           # per source: records, kept, drops (with file:line), train/eval rows
    train_ds, train_report = tokenize_dialogues(data.train, tokenizer, cfg)
    stats, histogram = write_token_stats({"train": train_ds}, cfg)

Files hold patient/doctor pairs (`{input, output}` and the other field names below) or whole
conversations: OpenAI `{"messages": [{"role", "content"}]}` or ShareGPT `{"conversations":
[{"from", "value"}]}`, with an optional system turn first. One conversation template (the seed's
prompt is its single-turn case) is written into the tokenizer as its Jinja `chat_template`, and
training, chat, evaluation and export all render prompts through it: the prompt a served model
sees is byte for byte the prompt it was trained on.

Every record that is not used is accounted for in a `DataReport` (duplicate, empty answer,
over-long prompt ...) with its file and line, and malformed input raises `DataError` naming the
file, line and field. Nothing is dropped silently.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import logging
import random
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
csv.field_size_limit(2**31 - 1)  # long answers are data, not errors (the default stops at 128 KiB)

# Field names of common dialogue shapes, tried in this order (matched case-insensitively).
# `input` wins over `instruction`: in ChatDoctor/medAlpaca data the instruction is a fixed
# preamble and the patient's words are in `input`.
QUERY_FIELDS = ["input", "patient", "question", "query", "instruction"]
ANSWER_FIELDS = ["output", "doctor", "answer", "response"]


class DataError(ValueError):
    """A malformed dialogue file; the message names the file, the line or record, and the field."""


@dataclass
class Dialogue:
    """A conversation: earlier exchanges, the last patient message and the doctor's answer to it.

    A single-turn pair has no history. Training learns every doctor answer of the conversation;
    evaluation answers `input` after `history` and compares with `output`.
    """

    input: str  # the last patient message
    output: str  # the doctor's answer to it
    where: str  # "file:line" (or "dataset:record N"), for reports and errors
    history: list[tuple[str, str]] = field(default_factory=list)  # earlier (patient, doctor) turns
    system: str = ""  # a system turn, if the conversation had one
    source: str = ""  # the short name of the file or dataset it came from (per-source stats)

    def messages(self) -> list[dict[str, str]]:
        """The conversation as chat messages (system, user, assistant, ...), as chat templates read them."""
        out = [{"role": "system", "content": self.system}] if self.system else []
        for patient, doctor in [*self.history, (self.input, self.output)]:
            out += [{"role": "user", "content": patient}, {"role": "assistant", "content": doctor}]
        return out

    @property
    def first_query(self) -> str:
        return self.history[0][0] if self.history else self.input


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
    """Load conversations from a .json/.jsonl/.csv file or `hf:<dataset id>`.

    A record is a patient/doctor pair (fields detected as below, or named) or a conversation
    under `messages` (OpenAI: role/content) or `conversations` (ShareGPT: from/value).

    Args:
        source: a file path, an http(s) URL of a .json/.jsonl/.csv file, or `hf:owner/name`
            for a Hugging Face dataset (train split).
        input_field: column of the patient query; None detects it from common shapes.
        output_field: column of the doctor answer; None detects it.

    Returns:
        The kept dialogues (exact duplicates and empty answers removed) and the report
        of every record dropped, with its location.

    Raises:
        DataError: unreadable bytes, bad JSON, a missing or non-string field, an empty query,
            a conversation whose roles are unknown or out of order.
    """
    source = str(source)
    if source.startswith("hf:"):
        records = _read_hub_dataset(source[3:])
    elif source.startswith(("http://", "https://")):
        records = _read_url(source)
    else:
        records = _read_file(Path(source))
    if not records:
        raise DataError(f"{source}: no records (the file is empty or holds only a header)")
    report = DataReport(source=source, records=len(records))
    dialogues: list[Dialogue] = []
    seen: set[tuple] = set()
    for where, record in records:
        turns = _conversation_field(record)
        if turns is not None:
            system, pairs, problem = _extract_conversation(record, turns, where)
        else:
            system, pairs, problem = "", [_extract_pair(record, where, input_field, output_field)], None
        if problem is None and not all(answer for _, answer in pairs):
            problem = "empty answer"
        if problem:
            report.drop(problem, where)
            continue
        key = (system, *pairs)
        if key in seen:
            report.drop("exact duplicate", where)
            continue
        seen.add(key)
        dialogues.append(Dialogue(pairs[-1][0], pairs[-1][1], where, history=pairs[:-1], system=system,
                                  source=source_name(source)))  # fmt: skip
    log.info(report.summary())
    return dialogues, report


def _read_file(path: Path) -> list[tuple[str, Any]]:
    if not path.exists():
        raise DataError(f"{path}: no such file")
    return _parse_bytes(path, path.read_bytes(), path.suffix.lower())


URL_TIMEOUT_S = 60


def _read_url(url: str) -> list[tuple[str, Any]]:
    """A data file by http(s) URL (a raw file in a public repository), read like a local one;
    its records are named `url:line`. The type comes from the URL's file name."""
    import urllib.error
    import urllib.parse
    import urllib.request
    from pathlib import PurePosixPath

    try:
        with urllib.request.urlopen(url, timeout=URL_TIMEOUT_S) as response:
            raw = response.read()
    except urllib.error.HTTPError as e:
        raise DataError(f"{url}: HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DataError(f"{url}: cannot download ({reason}); without a network, download the file "
                        "elsewhere and pass its path") from e  # fmt: skip
    return _parse_bytes(url, raw, PurePosixPath(urllib.parse.urlparse(url).path).suffix.lower())


def _parse_bytes(name: str | Path, raw: bytes, suffix: str) -> list[tuple[str, Any]]:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{name}:{line}: bytes are not UTF-8 (byte {e.start}: {e.reason})") from e
    if suffix == ".jsonl":
        return _parse_jsonl(name, text)
    if suffix == ".json":
        return _parse_json_array(name, text)
    if suffix == ".csv":
        return _parse_csv(name, text)
    raise DataError(f"{name}: unsupported file type {suffix!r} (use .json, .jsonl or .csv)")


def _parse_jsonl(path: str | Path, text: str) -> list[tuple[str, Any]]:
    records = []
    # split on "\n" only: str.splitlines also breaks at U+2028/U+2029/U+0085, which JSON allows
    # inside strings, and would cut such a record in two
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue  # blank lines carry no record
        try:
            records.append((f"{path}:{number}", json.loads(line)))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{number}: bad JSON ({e.msg}, column {e.colno})") from e
        except RecursionError as e:
            raise DataError(f"{path}:{number}: JSON nested too deeply to read") from e
    return records


def _parse_json_array(path: str | Path, text: str) -> list[tuple[str, Any]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: bad JSON ({e.msg}, column {e.colno})") from e
    except RecursionError as e:
        raise DataError(f"{path}:1: JSON nested too deeply to read") from e
    wrapped = isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list)
    if wrapped:
        data = next(iter(data.values()))  # {"data": [...]} wrappers are common
    if not isinstance(data, list):
        raise DataError(f"{path}:1: expected a JSON array of records, got {type(data).__name__}")
    # Record positions: the line where each record's object starts, found by a raw_decode walk
    # over the array (linear: lines are counted from the previous record, not from the start).
    starts = _array_item_lines(text, wrapped)
    return [(f"{path}:{starts[i]} (record {i})", r) for i, r in enumerate(data)]


def _array_item_lines(text: str, wrapped: bool) -> list[int]:
    decoder, lines = json.JSONDecoder(), []
    i = _skip_space(text, 0)
    if wrapped:  # {"key": [ ...: step over the key (it may itself hold "[") to the array
        _, i = decoder.raw_decode(text, _skip_space(text, i + 1))
        i = _skip_space(text, i) + 1  # the ":"
        i = _skip_space(text, i)
    i += 1  # the "["
    line, counted = 1, 0
    while True:
        while i < len(text) and text[i] in " \t\r\n,":
            i += 1
        if i >= len(text) or text[i] == "]":
            return lines
        line += text.count("\n", counted, i)
        counted = i
        lines.append(line)
        _, i = decoder.raw_decode(text, i)


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def _parse_csv(path: str | Path, text: str) -> list[tuple[str, Any]]:
    # strict: a malformed quote (an answer whose quote never closes would otherwise swallow every
    # following row into one answer, silently) is an error naming the line where its record starts
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    records: list[tuple[str, Any]] = []
    ended = 1  # the line where the last good record (or the header) ended
    try:
        if not reader.fieldnames:
            raise DataError(f"{path}:1: CSV has no header row")
        ended = reader.line_num
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if None in row:
                raise DataError(f"{where}: more cells than the header's {len(reader.fieldnames)} columns")
            records.append((where, row))
            ended = reader.line_num
    except csv.Error as e:
        raise DataError(f"{path}:{ended + 1}: malformed CSV record ({e}; is a quote left unclosed?)") from e
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


# Chat roles as the common conversation formats spell them (OpenAI role / ShareGPT from).
ROLES = {"system": "system", "user": "user", "human": "user", "patient": "user",
         "assistant": "assistant", "gpt": "assistant", "doctor": "assistant", "bot": "assistant", "model": "assistant"}  # fmt: skip


def _conversation_field(record: Any) -> str | None:
    """`messages` (OpenAI) or `conversations` (ShareGPT) when the record is a conversation."""
    if isinstance(record, dict):
        for key in ("messages", "conversations"):
            if key in record:
                return key
    return None


def _extract_conversation(
    record: dict, key: str, where: str
) -> tuple[str, list[tuple[str, str]], str | None]:
    """(system, [(patient, doctor), ...], reason to drop or None) from a conversation record.

    Errors (raised, naming the turn): a turn that is not an object, a role or text missing or not
    a string, an unknown role, a system turn after the first, two patient or two doctor turns in a
    row, a conversation that starts with the doctor, an empty patient turn. Dropped and reported:
    a conversation that does not end with a doctor answer (nothing to learn for its last message).
    """
    turns = record[key]
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where}: field {key!r} must be a non-empty list of turns")
    role_key, text_key = ("role", "content") if key == "messages" else ("from", "value")
    system, pairs, pending = "", [], None
    for n, turn in enumerate(turns):
        at = f"{where}: field '{key}[{n}]"
        if not isinstance(turn, dict):
            raise DataError(
                f"{at}' must be an object with {role_key!r} and {text_key!r}, got {type(turn).__name__}"
            )
        for name in (role_key, text_key):
            if not isinstance(turn.get(name), str):
                raise DataError(f"{at}.{name}' is missing or not a string")
        role = ROLES.get(turn[role_key].strip().lower())
        text = turn[text_key].strip()
        if role is None:
            raise DataError(f"{at}.{role_key}' is {turn[role_key]!r}; expected one of {sorted(ROLES)}")
        if role == "system":
            if n != 0:
                raise DataError(f"{at}.{role_key}': a system turn may only come first")
            system = text
        elif role == "user":
            if pending is not None:
                raise DataError(f"{at}.{role_key}': two patient turns in a row (roles must alternate)")
            if not text:
                raise DataError(f"{at}.{text_key}' (patient turn) is empty")
            pending = text
        else:
            if pending is None:
                raise DataError(f"{at}.{role_key}': a doctor turn with no patient turn before it")
            pairs.append((pending, text))
            pending = None
    if pending is not None:
        return system, pairs, "conversation ends with a patient turn (no answer to learn)"
    return system, pairs, None


# ----------------------------------------------------------------------------- split


def normalize_query(text: str) -> str:
    """The key used to keep a query on one side of the split: case and spacing ignored."""
    return " ".join(text.lower().split())


def split_dialogues(
    dialogues: list[Dialogue], eval_fraction: float, seed: int
) -> tuple[list[Dialogue], list[Dialogue]]:
    """Deterministic train/eval split by distinct first patient message: none lands in both.

    A query's side depends only on the query and the seed (a hash below `eval_fraction`), not on
    what else is in the data: adding a source, or training on one source of a mix, never moves a
    query across the split, so a model trained on one file can be evaluated on the held-out part
    of a mix. Below SMALL_SPLIT distinct queries, where a hash's luck would matter (61 queries
    might hold out 2 or 11), exactly round(n x eval_fraction) are held out, lowest hashes first.
    """
    keys = sorted({normalize_query(d.first_query) for d in dialogues}, key=lambda k: _unit_hash(k, seed))
    eval_keys = {k for k in keys if _unit_hash(k, seed) < eval_fraction}
    if len(keys) < SMALL_SPLIT and len(keys) > 1:  # a small file: exactly its share, at least one
        eval_keys = set(keys[: max(1, round(len(keys) * eval_fraction))])
    train = [d for d in dialogues if normalize_query(d.first_query) not in eval_keys]
    evals = [d for d in dialogues if normalize_query(d.first_query) in eval_keys]
    return train, evals


SMALL_SPLIT = 1000  # distinct queries below which the split takes exactly its share (hash order)


def _unit_hash(key: str, seed: int) -> float:
    """A number in [0, 1) fixed by the key and the seed (the same on every machine and run)."""
    digest = hashlib.blake2b(f"{seed}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


# ----------------------------------------------------------------------------- several sources


@dataclass
class DataSplit:
    """The training and evaluation dialogues of every source, and what happened to each record."""

    train: list[Dialogue]  # weighted: a source of weight 2 appears twice, of weight 0.5 half
    eval: list[Dialogue]  # unweighted, sources interleaved so any prefix is balanced
    reports: list[DataReport]  # one a source: its drops, near duplicates included
    weights: dict[str, float]
    train_unweighted: dict[str, int]  # training rows a source had before its weight

    def summary(self) -> str:
        """A table: per source, records read, kept, train rows (before and after weight), eval rows."""
        lines = [report.summary() for report in self.reports]
        if len(self.reports) > 1 or any(w != 1.0 for w in self.weights.values()):
            header = f"{'source':<28} {'records':>8} {'kept':>7} {'weight':>6} {'train':>7} {'eval':>6}"
            lines += ["", header]
            for report, name in zip(self.reports, self.weights):
                n_train = sum(d.source == name for d in self.train)
                n_eval = sum(d.source == name for d in self.eval)
                lines.append(f"{name:<28} {report.records:>8} {report.kept:>7} {self.weights[name]:>6g} "
                             f"{n_train:>7} {n_eval:>6}")  # fmt: skip
            lines.append(f"{'all':<28} {sum(r.records for r in self.reports):>8} "
                         f"{sum(r.kept for r in self.reports):>7} {'':>6} {len(self.train):>7} {len(self.eval):>6}")  # fmt: skip
        return "\n".join(lines)


def load_data(cfg: Any) -> DataSplit:
    """Every source of `cfg.data_path`, deduplicated across sources, split, weighted.

    `data_path` is one source or several, comma-separated, each with an optional weight:
    `genmedgpt5k.jsonl:1,health-forums.jsonl:0.5,hf:owner/name:2`. In order:
    1. each source is loaded (`load_dialogues`: validation, exact duplicates within it);
    2. a dialogue equal to an earlier one of any source (case and spacing ignored) is dropped, and
       so is a near duplicate of any earlier dialogue: word-trigram Jaccard similarity of the
       whole conversation at least `cfg.near_duplicates` (MinHash LSH from `datasketch` finds the
       candidates, the exact similarity decides); each drop names the dialogue it repeats;
    3. the split by first patient query runs over all sources at once (`split_dialogues`: a
       query is on one side only, whichever source it comes from);
    4. a source's training rows are repeated (weight > 1) or subsampled (weight < 1), seeded.
       Evaluation rows are never weighted: every source is measured on all of its held-out rows
       (up to `cfg.max_eval_samples` in all, taken in turn from each source).
    """
    sources = parse_sources(cfg.data_path)
    names = [source_name(spec) for spec, _ in sources]
    if len(set(names)) < len(names):
        raise ValueError(f"data_path {cfg.data_path!r}: two sources share a name ({names}); rename one file")
    loaded = [load_dialogues(spec, cfg.input_field, cfg.output_field) for spec, _ in sources]
    reports = [report for _, report in loaded]
    dialogues = drop_repeats([rows for rows, _ in loaded], reports, cfg.near_duplicates)
    train, evals = split_dialogues(dialogues, cfg.eval_fraction, cfg.seed)
    weights = dict(zip(names, (w for _, w in sources)))
    unweighted = {name: sum(d.source == name for d in train) for name in names}
    train = _weighted(train, weights, cfg.seed)
    evals = _interleaved(evals, names)
    if cfg.max_eval_samples:
        evals = evals[: cfg.max_eval_samples]
    return DataSplit(train, evals, reports, weights, unweighted)


def parse_sources(data_path: str) -> list[tuple[str, float]]:
    """`a.jsonl:1.0,b.csv:0.5,hf:owner/name` -> [(spec, weight), ...]; weight 1 when not given."""
    out = []
    for item in data_path.split(","):
        item = item.strip()
        match = re.fullmatch(r"(.+?):(\d+(?:\.\d*)?|\.\d+)", item)
        spec, weight = (match.group(1), float(match.group(2))) if match else (item, 1.0)
        if not spec:
            raise ValueError(f"data_path {data_path!r}: an empty source (two commas, or a comma at an end)")
        if not 0 < weight <= 100:
            raise ValueError(f"data_path {data_path!r}: weight {weight:g} of {spec!r} must be in (0, 100]")
        out.append((spec, weight))
    return out


def describe_data(data_path: str) -> str:
    """One line a source, before anything is downloaded: what it is, its size, its licence
    (licences as `data/model_card.toml` records them; the model card prints the same)."""
    import tomllib

    facts = tomllib.loads((Path(__file__).parent / "data" / "model_card.toml").read_text())["data_licence"]
    lines = []
    for spec, weight in parse_sources(data_path):
        file_name = source_file_name(spec)
        path = Path(spec)
        size = f"{path.stat().st_size / 1e6:.1f} MB" if path.is_file() else "size known once loaded"
        where = "by URL" if "://" in spec else "Hugging Face hub" if spec.startswith("hf:") else "local file"
        licence = facts.get(file_name, "licence not recorded: check its source before training")
        lines.append(f"data: {source_name(spec)} (weight {weight:g}; {where}, {size}); licence: {licence}")
    return "\n".join(lines)


def source_file_name(spec: str) -> str:
    """The file name of a source (or the dataset id): the key its licence is recorded under."""
    return spec[3:] if spec.startswith("hf:") else Path(spec.split("?")[0]).name


def source_name(spec: str | Path) -> str:
    """A short name for a source: the file name without extension, or the dataset id."""
    spec = str(spec)
    if spec.startswith("hf:"):
        return spec[3:]
    return Path(spec.split("?")[0].rstrip("/")).stem


def drop_repeats(
    sources: list[list[Dialogue]], reports: list[DataReport], threshold: float
) -> list[Dialogue]:
    """The dialogues of all sources, minus exact repeats across sources and near duplicates.

    The first occurrence (in source order, then file order) is kept; every drop goes into its
    source's report with the location of the dialogue it repeats. `threshold` >= 1 keeps near
    duplicates (exact repeats are still dropped).
    """
    kept: list[Dialogue] = []
    first_of: dict[str, Dialogue] = {}
    for rows, report in zip(sources, reports):
        for d in rows:
            key = normalize_query(_conversation_text(d))
            if key in first_of:
                report.drop(
                    "exact duplicate (case and spacing ignored)", f"{d.where} (= {first_of[key].where})"
                )
                continue
            first_of[key] = d
            kept.append(d)
    if threshold >= 1.0 or len(kept) < 2:
        return kept
    from datasketch import MinHash, MinHashLSH  # maintained MinHash LSH; imported only when used

    shingles = [_shingles(_conversation_text(d)) for d in kept]
    hashes = MinHash.bulk([[s.encode() for s in sh] for sh in shingles], num_perm=128, seed=1)
    lsh = MinHashLSH(threshold=threshold, num_perm=128)
    report_of = {d.source: r for r, rows in zip(reports, sources) for d in rows[:1]}
    out = []
    for i, d in enumerate(progress(kept, "near duplicates")):
        similar = sorted(j for j in lsh.query(hashes[i]) if _jaccard(shingles[i], shingles[j]) >= threshold)
        if similar:
            report_of[d.source].drop(f"near duplicate (word-trigram similarity >= {threshold:g})",
                                     f"{d.where} (~ {kept[similar[0]].where})")  # fmt: skip
            continue
        lsh.insert(i, hashes[i])
        out.append(d)
    return out


def _conversation_text(d: Dialogue) -> str:
    return "\n".join([d.system] + [m["content"] for m in d.messages()])


def _shingles(text: str) -> set[str]:
    words = re.findall(r"\w+", text.lower())
    return {" ".join(words[i : i + 3]) for i in range(max(1, len(words) - 2))}


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def _weighted(rows: list[Dialogue], weights: dict[str, float], seed: int) -> list[Dialogue]:
    """Each source's rows repeated floor(w) times plus a seeded sample of the fraction left."""
    out = []
    for name, weight in weights.items():
        mine = [d for d in rows if d.source == name]
        whole, part = divmod(weight, 1.0)
        extra = random.Random(f"{seed}:{name}").sample(mine, round(len(mine) * part)) if part else []
        out += mine * int(whole) + extra
    return out


def _interleaved(rows: list[Dialogue], names: list[str]) -> list[Dialogue]:
    by_source = [[d for d in rows if d.source == name] for name in names]
    return [d for group in itertools.zip_longest(*by_source) for d in group if d is not None]


# ----------------------------------------------------------------------------- prompts and tokens


def format_prompt(query: str, template: str) -> str:
    """The single-turn prompt, as the config's template spells it; the answer follows after one space.

    The chat template below renders exactly this for one patient message (a test holds them equal).
    """
    return template.format(query=query.strip())


def template_parts(template: str) -> tuple[str, str, str]:
    """(header, patient prefix, doctor prefix) of a prompt template.

    The seed's template is a header line, the patient line and the doctor line:
    `### The following is ...:\n` + `### Patient query: ` + {query} + `\n### Doctor opinion:`.
    The header is everything before the line holding {query}; a conversation repeats the rest.
    """
    rendered = template.format(query="\x00")  # the template's own {{ }} escapes resolved
    before, after = rendered.split("\x00", 1)
    line_start = before.rfind("\n") + 1
    return before[:line_start], before[line_start:], after


def chat_template(
    template: str, bos_token: str | None = None, special_tokens: list[str] | None = None
) -> str:
    """The conversation template, as Jinja for the tokenizer's `chat_template`.

    One patient message renders exactly `format_prompt`. A conversation: the header once (or a
    system turn in its place, `### <system>`), then per exchange the patient line, the doctor line,
    one space, the answer and the end-of-turn token (EOS, which training teaches the model to emit
    after every answer), and a newline before the next patient line. `add_generation_prompt`
    ends with the doctor line, where the model continues. With `bos_token`, every conversation
    starts with it (for tokenizers that add a BOS to plain text: the prompt stays what training saw).

    Message text cannot forge the conversation: the template's marker run (`###`) inside a message
    becomes a single `#`, so no line of a message reads as a patient or doctor line, and each of
    `special_tokens` (EOS, `<|im_end|>`, ...) gets a zero-width space after its first character,
    so it tokenizes as text, never as the control token. The template does this itself, so every
    server that applies it (vLLM, transformers pipelines, llama.cpp with --jinja) is covered.
    """
    header, patient, doctor = template_parts(template)
    marker = re.match(r"[^\w]*", header or patient).group()  # "### ": how the header line starts

    def q(text: str) -> str:  # a JSON string is a valid Jinja string literal (escapes included)
        return json.dumps(text, ensure_ascii=False)

    run = marker.strip()
    cleans = [(run, run[0])] if len(run) > 1 else []
    cleans += [
        (t, t[0] + "\u200b" + t[1:])
        for t in sorted(set(special_tokens or []), key=len, reverse=True)
        if len(t) > 1
    ]
    clean = "".join(f" | replace({q(a)}, {q(b)})" for a, b in cleans)
    return (
        "{#- medbot conversation template, generated from the config's prompt_template -#}\n"
        + ("{{- bos_token -}}\n" if bos_token else "")
        + "{%- set ns = namespace(turns=0) -%}\n"
        "{%- if messages and messages[0]['role'] == 'system' -%}\n"
        f"{{{{- {q(marker)} + (messages[0]['content'] | trim{clean}) + {q(chr(10))} -}}}}\n"
        "{%- else -%}\n"
        f"{{{{- {q(header)} -}}}}\n"
        "{%- endif -%}\n"
        "{%- for message in messages -%}\n"
        "{%- if message['role'] == 'user' -%}\n"
        f"{{{{- ({q(chr(10))} if ns.turns > 0 else '') + {q(patient)} + (message['content'] | trim{clean}) -}}}}\n"
        "{%- set ns.turns = ns.turns + 1 -%}\n"
        "{%- elif message['role'] == 'assistant' -%}\n"
        f"{{{{- {q(doctor)} + ' ' + (message['content'] | trim{clean}) + eos_token -}}}}\n"
        "{%- elif message['role'] != 'system' or not loop.first -%}\n"
        "{{- raise_exception('roles are system (first only), user and assistant, not ' + message['role']) -}}\n"
        "{%- endif -%}\n"
        "{%- endfor -%}\n"
        f"{{%- if add_generation_prompt -%}}{{{{- {q(doctor)} -}}}}{{%- endif -%}}\n"
    )


def template_for(tokenizer: Any, template: str) -> str:
    """`chat_template` for this tokenizer: its BOS if it adds one to text, its special tokens neutralised.

    Kept on the tokenizer (tokenizing a dataset renders every conversation several times), keyed
    by what it depends on, so a token added later makes a new one.
    """
    key = (template, len(tokenizer), tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token)
    cached = getattr(tokenizer, "_medbot_template", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    specials = {
        *tokenizer.all_special_tokens,
        *(t.content for t in tokenizer.added_tokens_decoder.values() if t.special),
    }
    text = chat_template(template, tokenizer.bos_token if adds_bos(tokenizer) else None, sorted(specials))
    tokenizer._medbot_template = (key, text)
    return text


def adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts a BOS before plain text (Llama does; Falcon and SmolLM2 do not)."""
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return tokenizer.bos_token_id is not None and bool(ids) and ids[0] == tokenizer.bos_token_id


def install_chat_template(tokenizer: Any, template: str) -> Any:
    """Write the conversation template into the tokenizer (replacing the base model's), so that
    `save_pretrained` ships it and any server applying the tokenizer's chat template prompts the
    fine-tuned model as it was trained."""
    tokenizer.chat_template = template_for(tokenizer, template)
    return tokenizer


def render_chat(tokenizer: Any, template: str, messages: list[dict[str, str]], *, generation: bool) -> str:
    """The conversation as text through the chat template made from `template`; `generation`: end
    with the doctor line for the model to continue. Tokenize it with `add_special_tokens=False`."""
    return tokenizer.apply_chat_template(
        messages,
        chat_template=template_for(tokenizer, template),
        tokenize=False,
        add_generation_prompt=generation,
    )


def chat_messages(
    query: str, history: list[tuple[str, str]] | None = None, system: str = ""
) -> list[dict[str, str]]:
    """Chat messages for a new patient message after earlier (patient, doctor) exchanges."""
    out = [{"role": "system", "content": system}] if system else []
    for patient, doctor in history or []:
        out += [{"role": "user", "content": patient}, {"role": "assistant", "content": doctor}]
    return out + [{"role": "user", "content": query}]


def tokenize_conversation(
    tokenizer: Any, messages: list[dict[str, str]], template: str, max_length: int
) -> dict[str, Any]:
    """Token ids of a whole conversation, labels on every doctor answer (its leading space and the
    EOS after it), -100 on everything else.

    The conversation is rendered once and tokenized once (so its ids are the ids a server gets
    for the same text); each answer's characters are found by rendering the conversation up to
    it, and the tokens whose first character lies inside an answer are labelled.

    Returns:
        input_ids, attention_mask, labels, prompt_len (tokens before the first label),
        answer_len (labelled tokens) and total_len (both untruncated), truncated (bool).
    """
    text = render_chat(tokenizer, template, messages, generation=False)
    spans = []
    for k, message in enumerate(messages):
        if message["role"] == "assistant":
            start = len(render_chat(tokenizer, template, messages[:k], generation=True))
            end = len(render_chat(tokenizer, template, messages[: k + 1], generation=False))
            spans.append((start, end))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    inside = [any(a <= first < b for a, b in spans) for first, _ in enc["offset_mapping"]]
    labels = [t if keep else -100 for t, keep in zip(ids, inside)]
    if ids and ids[-1] != tokenizer.eos_token_id:
        raise ValueError("the chat template must end each answer with the EOS token")
    prompt_len = inside.index(True) if any(inside) else len(ids)
    truncated = len(ids) > max_length
    return {
        "input_ids": ids[:max_length],
        "attention_mask": [1] * min(len(ids), max_length),
        "labels": labels[:max_length],
        "prompt_len": prompt_len,
        "answer_len": sum(inside),
        "total_len": len(ids),
        "truncated": truncated,
    }


def tokenize_dialogues(
    dialogues: list[Dialogue], tokenizer: Any, cfg: Any, name: str = "train"
) -> tuple[list[dict[str, Any]], DataReport]:
    """Tokenize a split through the conversation template; over-long samples are truncated or dropped.

    A sample whose first answer starts beyond max_length leaves nothing to learn and is always
    dropped; every drop and truncation is in the returned report.
    """
    report = DataReport(source=f"{name} split", records=len(dialogues))
    samples = []
    for d in dialogues:
        s = tokenize_conversation(tokenizer, d.messages(), cfg.prompt_template, cfg.max_length)
        if s["prompt_len"] >= cfg.max_length:
            report.drop(f"prompt alone exceeds max_length={cfg.max_length}", d.where)
        elif s["truncated"] and cfg.overlong == "drop":
            report.drop(f"longer than max_length={cfg.max_length}", d.where)
        else:
            samples.append(s | {"source": d.source})
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


# ----------------------------------------------------------------------------- progress


def progress(items: Any, desc: str, total: int | None = None) -> Any:
    """A tqdm bar (count, rate, time left) over work that takes more than a few seconds.

    Shown on a terminal or in a notebook, hidden in logs (not a TTY: CI); MEDBOT_PROGRESS=0
    hides it everywhere (`--quiet` sets that), =1 shows it everywhere.
    """
    import os

    from tqdm.auto import tqdm

    setting = os.environ.get("MEDBOT_PROGRESS", "")
    disable = {"0": True, "1": False}.get(setting)  # None: tqdm decides (no bar when not a TTY)
    return tqdm(items, desc=desc, total=total, disable=disable, leave=False, dynamic_ncols=True)


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
    totals = [s["total_len"] for s in samples]
    stats = {"prompt": length_stats(prompts), "answer": length_stats(answers), "sample": length_stats(totals)}
    stats["sample"]["fraction_truncated"] = (
        sum(s["truncated"] for s in samples) / len(samples) if samples else 0.0
    )
    return stats


def split_token_stats(splits: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, dict[str, float]]]:
    """`token_stats` of each split, and of each source within it when the data mixes sources
    (keys `train`, `eval`, `train genmedgpt5k`, ...)."""
    out = {name: token_stats(samples) for name, samples in splits.items()}
    for name, samples in splits.items():
        sources = list(dict.fromkeys(s.get("source", "") for s in samples))
        if len(sources) > 1:
            out |= {
                f"{name} {src}": token_stats([s for s in samples if s.get("source", "") == src])
                for src in sources
            }
    return out


def write_token_stats(splits: dict[str, list[dict[str, Any]]], cfg: Any) -> tuple[dict, Path]:
    """The token-statistics stage: `<logs_dir>/token_stats.json` (per split, and per source of a
    mix) and the length histogram `<logs_dir>/token_lengths.png`. Returns the stats and the plot."""
    logs = Path(cfg.logs_dir)
    logs.mkdir(parents=True, exist_ok=True)
    stats = split_token_stats(splits)
    (logs / "token_stats.json").write_text(json.dumps(stats, indent=2))
    return stats, plot_length_histogram(splits, cfg.max_length, logs / "token_lengths.png")


def format_stats_table(stats_by_split: dict[str, dict[str, dict[str, float]]]) -> str:
    """A plain-text table: one row per split (or split and source) and part."""
    cols = ["count", "min", "mean", "median", "p90", "p99", "max"]
    width = max([6, *(len(k) for k in stats_by_split)])
    lines = [f"{'split':<{width}} {'part':<7} " + " ".join(f"{c:>7}" for c in cols) + "  truncated"]
    for split, stats in stats_by_split.items():
        for part, s in stats.items():
            cells = " ".join(f"{s.get(c, 0):>7.0f}" if c != "mean" else f"{s.get(c, 0):>7.1f}" for c in cols)
            trunc = f"  {s['fraction_truncated']:.1%}" if "fraction_truncated" in s else ""
            lines.append(f"{split:<{width}} {part:<7} {cells}{trunc}")
    return "\n".join(lines)


def plot_length_histogram(
    samples_by_split: dict[str, list[dict[str, Any]]], max_length: int, path: str | Path
) -> Path:
    """Histogram of whole-sample token lengths per split, with the truncation limit marked."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for split, samples in samples_by_split.items():
        lengths = [s["total_len"] for s in samples]
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
