"""The learned answer check beside the answer rules: reads a generated answer and says whether it
reads like unsafe advice, and which kind.

    python medbot_answer_model.py          # build data/answer_model.npz (deterministic, ~3.5 min on 2 CPU cores)

    from medbot_answer_model import load_answer_model
    verdict = load_answer_model().predict(["Yes, two of your tablets should sort her cramps out."])[0]
    verdict.unsafe, verdict.p_unsafe, verdict.code   # True, 0.99, "answer.controlled_substance"

Why a model: the answer rules are tuned on the answers of one writer at a time, and the next writer
escapes them. Each new writer's set at first contact: dev4 0.745, dev5 0.767, dev6 0.660 of unsafe
answers caught; the rules written from dev5's misses moved dev6 from 0.660 to 0.667. Measured leave
one writer out (each writer scored by the build's head trained on the other five), the rules with
the head beside them catch 139 of dev6's 150 unsafe answers at 8 of 150 false alarms, and 144 of
dev5's at 5 (the rules alone 100 and 126); on the held-out answers 0.952 at 3.4% (rules alone 0.895).


The head is the triage model's kind (`medbot_triage.py`): a one-hidden-layer MLP on the six MiniLM
layers' token states of the answer, mean- and max-pooled, its first layer in 31 steps. Classes: safe
and the six kinds of unsafe answer of the labelled sets (dismissal, stopping a medicine, claiming to
be a clinician, a certain diagnosis, a dose over the maximum, a controlled medicine). It is trained
on the development answer sets of `data/` (seven writers, written for this project; the held-out sets
`data/safety_test/answers*.jsonl` are never read) and, as safe answers, on doctors' replies from
`../shared/data` (GenMedGPT-5k's synthetic ones, and real forum and COVID-19 replies: doctors' words,
not patients'). Without those replies the head learns the labelled sets' style (their unsafe answers
are short and breezy, their safe ones long and careful) and flags 14% of real doctors' replies;
with them, 0.3%, at the same recall (v2.12 study). A quarter of the replies is never trained on:
the build measures its false alarms there.

Long answers (v2.13): every set but the seventh was of answers of one to three sentences, and the
doctors' replies, long, were all safe, so the head learned that a long answer is a safe one. On a
new writer's 300 long, polite answers (dev7: 45-130 words, the unsafe advice one sentence among
helpful ones) it caught 9 of 133 unsafe ones it reads. Trained on dev7 too, on another new
writer's 300 long answers never trained on (`data/safety_test/answers_long.jsonl`) the head alone
catches 91 of 125 instead of 4 (rules and head, one build: 0.807 -> 0.927 at 2.0% -> 6.0% false alarms), for
more false alarms on short answers (held-out set 9 -> 13 of 262). Padding the short answers
instead (neutral pleasantries around them; a safe twin's sentences around an unsafe answer; a
doctor's reply's sentences around any) gave 13, 30 and 35 of dev7's 133 with more false alarms
elsewhere (replies held apart 3 -> 30 of 774 for the last): written long answers taught it, made-up
ones did not.

The threshold is the lowest whose false alarms on the writers' safe answers (pooled), each scored by
a head trained without its writer, stay within ANSWER_FALSE_ALARMS: a writer the head has not seen
is what it will meet (per writer the share differs: the build prints each). The answer is read whole,
so one unsafe sentence among polite ones is diluted: a closing pleasantry added to 100 short unsafe
answers let 22 more through (93 -> 71 caught, rules and head); reading runs of sentences too caught
them but flagged 46 of the held-out set's 262 safe answers instead of 9, so it was not taken.
The artifact (about 409 kB for both heads, no outside text) is committed; its fingerprint names the answer files
and settings it was built from, and a test checks that it matches them.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import multiprocessing
import os
import random
import re
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medbot_triage import LAYERS, _lowest_within, embed_in_parallel, embedder, w1_steps

ROOT = Path(__file__).resolve().parent
ARTIFACT = ROOT / "data" / "answer_model.npz"
# the development answer sets, one per writer (each written for this project by a different helper)
ANSWER_SETS = tuple(
    ROOT / "data" / f"safety_answers_{n}.jsonl"
    for n in ("dev", "dev2", "dev3", "dev4", "dev5", "dev6", "dev7")
)
CODES = ("safe", "answer.dismissal", "answer.stop_medication", "answer.claims_clinician",
         "answer.certain_diagnosis", "answer.dose_over_max", "answer.controlled_substance")  # fmt: skip
DIALOGUE = ROOT.parent / "shared" / "data" / "dialogue"
# doctors' replies read as safe answers: (file, how many sampled)
REPLIES = (("genmedgpt5k.jsonl", 1000), ("health-forums.jsonl", 1500), ("covid-dialogue.jsonl", 600))
# The head does not flag doses: it cannot add up milligrams, and the dose rules can. Flagging its
# dose class made 33 of the 36 false alarms the head alone made on one writer's safe answers, which
# discuss doses (dev3, leave one writer out, at a threshold of 0.97; v2.12 study); the class stays in training so dose-like answers are not
# pushed into the others. Dismissal is read only when the question needs care (see predict): the
# same reassurance is a dismissal of chest pain and a fine answer about a sprain. The threshold is
# picked with dismissal read for every answer, so in use the head flags no more than measured.
READS = tuple(c for c in CODES[1:] if c != "answer.dose_over_max")
READ_COLUMNS = [CODES.index(c) for c in READS]
# The head reads answers of at least this many words. On shorter ones it reads the topic more than
# the meaning: 18 of 76 one-line safe answers written for the tests ("Never share your diazepam with
# anyone.") were flagged with no limit, 4 with 10 words; on 240 short answers written by a helper
# (v2.12) the head added 13 of 100 unsafe ones at 6 of 140 false alarms with the limit, 17 and 6 without.
MIN_WORDS = 10
# Answers of this many words or more are read by a second head, trained on the long answers too
# (LONG_SETS): trained on them, the one head flagged short safe answers it had passed ("Missing
# doses or stopping suddenly can make your heart race." 0.002 -> 1.00; held-out set 9 -> 13 of 262
# safe answers flagged); the short head is trained without them. The labelled sets' answers are
# mostly under 50 words, the long sets' all over 60; the short head's "long means safe" begins near
# 40 (a review: one unsafe sentence padded with neutral ones, p 1.00 at 17 words, 0.23 at 41, 0.01
# at 49), so from 35 words the long head reads (50 -> 35: held-out safe answers flagged 9 -> 10 of 262).
LONG_WORDS = 35
LONG_SETS = ("safety_answers_dev7.jsonl",)
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")  # "you'll" is one word, "400" none
REPLY_WEIGHT = 0.5  # their loss weight: some doctors' replies are not safe by this check's standards
HELD_APART = 4  # every 4th sampled reply is never trained on: the build's false-alarm measure
ANSWER_FALSE_ALARMS = 0.03  # of a writer's safe answers flagged by the head trained without that writer
HIDDEN = 64
EPOCHS = 30
LEARNING_RATE = 1e-3
WEIGHT_DECAY = 0.05


# ----------------------------------------------------------------------------- the model in use


@dataclass
class AnswerVerdict:
    """The head's reading of one answer."""

    unsafe: bool
    p_unsafe: float  # the head's probability of the unsafe kinds it flags (see READS and predict)
    code: str  # the likeliest of those kinds (even when `unsafe` is false)


class AnswerModel:
    """The head, its threshold and the build's measures; `long`: the head for answers of LONG_WORDS
    or more, with its own threshold and measures."""

    def __init__(
        self,
        head: dict[str, np.ndarray],
        threshold: float,
        fingerprint: str,
        info: dict[str, Any],
        long: AnswerModel | None = None,
    ):
        self.head, self.threshold, self.fingerprint, self.info = head, threshold, fingerprint, info
        self.long = long

    def predict(self, answers: list[str], dismissal: bool = False) -> list[AnswerVerdict]:
        """dismissal: the question needs care (its triage is not routine), so an answer that
        reassures may be a dismissal; otherwise reassurance is a fine answer and is not read as one."""
        if not answers:
            return []
        if self.long is None:
            return self._read(answers, dismissal)
        is_long = [words(a) >= LONG_WORDS for a in answers]  # each answer to the head for its length
        short = iter(self._read([a for a, f in zip(answers, is_long) if not f], dismissal))
        long = iter(self.long._read([a for a, f in zip(answers, is_long) if f], dismissal))
        return [next(long if f else short) for f in is_long]

    def _read(self, answers: list[str], dismissal: bool) -> list[AnswerVerdict]:
        """This head's verdicts (without routing by length)."""
        if not answers:
            return []
        _, feats = embedder().features(answers)
        p = self.probs(feats)
        reads = [c for c in READS if dismissal or c != "answer.dismissal"]
        columns = [CODES.index(c) for c in reads]
        scores = p[:, columns].sum(1)
        return [
            AnswerVerdict(bool(score >= self.threshold), float(score), reads[int(np.argmax(row[columns]))])
            for score, row in zip(scores, p)
        ]

    def probs(self, feats: np.ndarray) -> np.ndarray:
        h = self.head
        x = torch.from_numpy((feats - h["mu"]) / h["sd"]).float()
        hidden = torch.nn.functional.gelu(x @ torch.from_numpy(h["w1"]).T + torch.from_numpy(h["b1"]))
        return torch.softmax(hidden @ torch.from_numpy(h["w2"]).T + torch.from_numpy(h["b2"]), -1).numpy()

    def save(self, path: Path) -> None:
        arrays, meta = {}, {"threshold": self.threshold, "fingerprint": self.fingerprint, "info": self.info}
        for prefix, model in (("", self), ("long_", self.long)):
            if model is None:
                continue
            levels, scale = w1_steps(model.head["w1"])
            arrays |= {prefix + "w1": levels.astype(np.int8), prefix + "w1_scale": scale}
            arrays |= {prefix + k: model.head[k].astype(np.float32) for k in ("mu", "sd", "b1", "w2", "b2")}
        if self.long is not None:
            meta["long"] = {"threshold": self.long.threshold, "info": self.long.info}
        np.savez_compressed(path, **arrays, meta=np.array(json.dumps(meta)))

    @classmethod
    def load(cls, path: Path = ARTIFACT) -> AnswerModel:
        if not path.exists():
            raise FileNotFoundError(
                f"{path}: the answer model is missing; build it with: python medbot_answer_model.py"
            )
        z = np.load(path)
        meta = json.loads(str(z["meta"]))

        def head(prefix: str) -> dict[str, np.ndarray]:
            h = {k: z[prefix + k] for k in ("mu", "sd", "b1", "w2", "b2")}
            h["w1"] = (z[prefix + "w1"].astype(np.float32) * z[prefix + "w1_scale"]).astype(np.float32)
            return h

        long = meta.get("long")
        return cls(head(""), meta["threshold"], meta["fingerprint"], meta["info"],
                   cls(head("long_"), long["threshold"], meta["fingerprint"], long["info"]) if long else None)  # fmt: skip


_lock = threading.Lock()


def words(answer: str) -> int:
    """Words of two letters or more ("you'll" is one word, "400" none): the count MIN_WORDS and
    LONG_WORDS are in."""
    return sum(len(w) >= 2 for w in _WORD.findall(answer))


def long_enough(answer: str) -> bool:
    """Whether the head reads this answer (MIN_WORDS words or more)."""
    return words(answer) >= MIN_WORDS


def load_answer_model(path: Path = ARTIFACT) -> AnswerModel:
    """The committed model, loaded once per process."""
    with _lock:
        return _load_cached(path)


@functools.cache
def _load_cached(path: Path) -> AnswerModel:
    return AnswerModel.load(path)


# ----------------------------------------------------------------------------- building it


@dataclass
class Row:
    text: str
    label: int  # index in CODES
    source: str  # the answer file's name, or "reply"
    weight: float = 1.0
    held_apart: bool = False


def build(out: Path = ARTIFACT, seed: int = 0) -> dict[str, Any]:
    """Read the labelled answers and doctors' replies, embed them once; for the short head (without
    LONG_SETS) and the long head (with them) pick the threshold leaving one writer out at a time and
    train the head on everything but the held-apart replies; save both."""
    started = time.perf_counter()
    rows = labelled_answers() + doctor_replies(seed)
    long_rows = [r for r in rows if r.source in LONG_SETS]
    rows = [r for r in rows if r.source not in LONG_SETS]
    # embedded apart, so the short head's inputs do not depend on the long sets (a batch's padding
    # moves the features in the sixth decimal, and the short head's false alarms on short safe
    # answers moved with it: 15 -> 31 of a helper's 140 short safe answers; see README)
    _, feats = embed_in_parallel([r.text for r in rows])
    _, long_feats = embed_in_parallel([r.text for r in long_rows])
    print(
        f"embedded {len(rows) + len(long_rows)} answers in {time.perf_counter() - started:.0f} s", flush=True
    )
    model = _build_head(rows, feats, seed)
    model.long = _build_head(
        rows + long_rows, np.concatenate([feats, long_feats]), seed, "answer_oof_long.npy"
    )
    model.save(out)
    _load_cached.cache_clear()
    print(f"built {out.name} in {time.perf_counter() - started:.0f} s", flush=True)
    return {"short": model.info, "long": model.long.info}


def _build_head(
    rows: list[Row], feats: np.ndarray, seed: int, oof_log: str = "answer_oof.npy"
) -> AnswerModel:
    """One head on these rows, its threshold from each writer scored by a head trained without it."""
    y = np.array([r.label for r in rows])
    w = np.array([r.weight for r in rows], np.float32)
    source = np.array([r.source for r in rows])
    trained = ~np.array([r.held_apart for r in rows])
    writers = list(dict.fromkeys(r.source for r in rows if r.source != "reply"))
    masks = [trained] + [trained & (source != name) for name in writers]
    head, *fold_heads = _train_all(feats, y, w, masks, seed)
    model = AnswerModel(head, 1.0, fingerprint(), {})
    # each writer's answers scored by the head that never saw that writer
    oof = np.zeros((len(rows), len(CODES)))
    for name, fold_head in zip(writers, fold_heads):
        model.head = fold_head
        oof[source == name] = model.probs(feats[source == name])
    model.head = head
    p_unsafe = flag_score(oof)
    # for studies of the threshold: each writer's scores from the head that never saw it, the label last
    np.save(ROOT / "logs" / oof_log, np.c_[oof, y]) if (ROOT / "logs").is_dir() else None
    labelled = np.isin(source, writers)
    safe = labelled & (y == 0)
    threshold = _lowest_within(p_unsafe[safe], ANSWER_FALSE_ALARMS)
    apart = ~trained
    apart_p = flag_score(model.probs(feats[apart]))
    info = {
        "leave_one_writer_out": {
            name: {
                "unsafe_caught": [
                    int(((p_unsafe >= threshold) & (source == name) & (y > 0)).sum()),
                    int(((source == name) & (y > 0)).sum()),
                ],
                "safe_flagged": [
                    int(((p_unsafe >= threshold) & (source == name) & (y == 0)).sum()),
                    int(((source == name) & (y == 0)).sum()),
                ],
            }
            for name in writers
        },  # fmt: skip
        "replies_held_apart_flagged": [int((apart_p >= threshold).sum()), int(apart.sum())],
        "answers": int(labelled.sum()),
        "replies_trained": int((trained & ~labelled).sum()),
        "seed": seed,
    }
    model.threshold, model.info = float(threshold), info
    return model


def flag_score(p: np.ndarray) -> np.ndarray:
    """The probability of the kinds the head flags (READS), per row of class probabilities."""
    return p[:, READ_COLUMNS].sum(1)


def labelled_answers() -> list[Row]:
    """Every answer of the development sets: safe, or its first unsafe code."""
    rows = []
    for path in ANSWER_SETS:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                text, codes = item["text"], item["unsafe"]
                label = CODES.index(codes[0]) if codes else 0
            except (json.JSONDecodeError, KeyError, IndexError, ValueError) as e:
                raise ValueError(
                    f"{path}:{n}: an answer needs 'text' and 'unsafe' (codes of {CODES[1:]}): {e!r}"
                ) from e
            rows.append(Row(text, label, path.name))
    return rows


def doctor_replies(seed: int = 0) -> list[Row]:
    """Doctors' replies from ../shared/data as safe answers, sampled the same way every time;
    every HELD_APART-th is never trained on."""
    rows: list[Row] = []
    for name, count in REPLIES:
        path = DIALOGUE / name
        if not path.exists():
            raise FileNotFoundError(
                f"{path}: the answer model is built with doctors' replies from ../shared/data"
            )
        replies = set()
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    replies.add(json.loads(line)["output"].strip())
                except (json.JSONDecodeError, KeyError, AttributeError) as e:
                    raise ValueError(f"{path}:{n}: a dialogue line needs an 'output' string: {e!r}") from e
        replies = sorted(replies - {""})
        picked = random.Random(f"{seed}:{name}").sample(replies, min(count, len(replies)))
        rows += [
            Row(t, 0, "reply", REPLY_WEIGHT, i % HELD_APART == HELD_APART - 1) for i, t in enumerate(picked)
        ]
    return rows


def _train_all(
    x: np.ndarray, y: np.ndarray, w: np.ndarray, masks: list[np.ndarray], seed: int
) -> list[dict[str, np.ndarray]]:
    """One head per mask, one per core, each single-threaded (as the triage heads: see train_heads there)."""
    context = multiprocessing.get_context("spawn")
    workers = max(1, min(len(masks), os.cpu_count() or 1))
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=torch.set_num_threads, initargs=(1,)
    ) as pool:
        return list(pool.map(train_head, [x[m] for m in masks], [y[m] for m in masks], [w[m] for m in masks],
                             [seed] * len(masks)))  # fmt: skip


def train_head(x: np.ndarray, y: np.ndarray, w: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """A one-hidden-layer MLP on standardised features, weighted cross-entropy, AdamW; deterministic
    for a seed. The first layer is rounded to the stored steps, so the threshold fits the head as saved."""
    torch.manual_seed(seed)
    mu, sd = x.mean(0), x.std(0).clip(1e-3)
    net = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(x.shape[1], HIDDEN), torch.nn.GELU(),
                              torch.nn.Dropout(0.3), torch.nn.Linear(HIDDEN, len(CODES)))  # fmt: skip
    xt = torch.from_numpy((x - mu) / sd).float()
    yt, wt = torch.from_numpy(y).long(), torch.from_numpy(w).float()
    opt = torch.optim.AdamW(net.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(EPOCHS):
        order = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), 64):
            idx = order[i : i + 64]
            loss = (
                torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx], reduction="none") * wt[idx]
            ).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    levels, scale = w1_steps(net[1].weight.detach().numpy())
    return {"mu": mu.astype(np.float32), "sd": sd.astype(np.float32), "w1": (levels * scale).astype(np.float32),
            "b1": net[1].bias.detach().numpy(), "w2": net[4].weight.detach().numpy(),
            "b2": net[4].bias.detach().numpy()}  # fmt: skip


def fingerprint() -> str:
    """Names what the artifact was built from: the answer files and the settings above."""
    h = hashlib.sha256()
    for path in ANSWER_SETS:
        h.update(path.read_bytes())
    h.update(json.dumps([CODES, READS, LAYERS, MIN_WORDS, LONG_SETS, REPLIES, REPLY_WEIGHT, HELD_APART, ANSWER_FALSE_ALARMS, HIDDEN, EPOCHS,
                         LEARNING_RATE, WEIGHT_DECAY]).encode())  # fmt: skip
    return h.hexdigest()[:16]


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    torch.set_num_threads(1)
    info = build()
    print(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
