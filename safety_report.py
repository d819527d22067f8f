"""How well the safety layer works: recall, precision and false alarms with Wilson 95% intervals.

    python safety_report.py                       # labelled sets in data/, and the forum questions
    python safety_report.py --forums ../shared/data/dialogue/health-forums.jsonl --show 20

Reads data/safety_messages.jsonl (patient messages labelled with their emergency category or
"none") and data/safety_answers.jsonl (answers labelled with their unsafe reason codes), and,
when present, real forum questions, for how often an ordinary question is escalated.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from medbot_safety import EMERGENCIES, check_answer, triage

ROOT = Path(__file__).resolve().parent


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
    return f"{k / n if n else 0:.2f} [{lo:.2f}, {hi:.2f}] ({k}/{n})"


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def message_table(rows: list[dict]) -> dict:
    """Per category: recall on its emergencies, precision of its flags, false alarms on non-emergencies."""
    english = [r for r in rows if r["kind"] != "non_english"]
    predicted = [{f.code.split(".", 1)[1] for f in triage(r["text"]).flags if f.code.startswith("emergency.")}
                 for r in english]  # fmt: skip
    table = {}
    for cat in EMERGENCIES:
        pos = [i for i, r in enumerate(english) if r["label"] == cat]
        neg = [i for i, r in enumerate(english) if r["label"] == "none"]
        flagged = [i for i, p in enumerate(predicted) if cat in p]
        tp = sum(1 for i in pos if cat in predicted[i])
        table[cat] = {
            "recall": (tp, len(pos)),
            "precision": (sum(1 for i in flagged if english[i]["label"] != "none"), len(flagged)),
            "false_alarm": (sum(1 for i in neg if cat in predicted[i]), len(neg)),
        }
    pos = [i for i, r in enumerate(english) if r["label"] != "none"]
    neg = [i for i, r in enumerate(english) if r["label"] == "none"]
    table["ALL"] = {
        "recall": (sum(1 for i in pos if english[i]["label"] in predicted[i]), len(pos)),
        "precision": (
            sum(1 for i, p in enumerate(predicted) if p and english[i]["label"] != "none"),
            sum(1 for p in predicted if p),
        ),  # fmt: skip
        "false_alarm": (sum(1 for i in neg if predicted[i]), len(neg)),
    }
    for kind in ("lookalike", "negation", "routine", "admin"):
        idx = [i for i, r in enumerate(english) if r["kind"] == kind]
        table[f"none: {kind}"] = {"false_alarm": (sum(1 for i in idx if predicted[i]), len(idx))}
    foreign = [r for r in rows if r["kind"] == "non_english"]
    table["non-English fallback"] = {
        "recall": (sum(triage(r["text"]).non_english for r in foreign), len(foreign))
    }
    return table


def answer_table(rows: list[dict]) -> dict:
    checks = [check_answer(r["text"]) for r in rows]
    codes = sorted({c for r in rows for c in r["unsafe"]})
    table = {}
    for code in codes:
        pos = [i for i, r in enumerate(rows) if code in r["unsafe"]]
        flagged = [i for i, c in enumerate(checks) if any(f.code == code for f in c.flags)]
        table[code] = {
            "recall": (sum(1 for i in pos if i in flagged), len(pos)),
            "precision": (sum(1 for i in flagged if code in rows[i]["unsafe"]), len(flagged)),
        }
    unsafe = [i for i, r in enumerate(rows) if r["unsafe"]]
    safe = [i for i, r in enumerate(rows) if not r["unsafe"]]
    table["ALL unsafe answers"] = {
        "recall": (sum(1 for i in unsafe if not checks[i].safe), len(unsafe)),
        "false_alarm": (sum(1 for i in safe if not checks[i].safe), len(safe)),
    }
    return table


def print_table(title: str, table: dict) -> None:
    print(f"\n{title}")
    print(f"{'category':<28} {'recall [95% CI]':<26} {'precision [95% CI]':<26} {'false alarm [95% CI]':<26}")
    for name, cols in table.items():
        cells = [rate(*cols[c]) if c in cols else "" for c in ("recall", "precision", "false_alarm")]
        print(f"{name:<28} {cells[0]:<26} {cells[1]:<26} {cells[2]:<26}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", default=str(ROOT / "data" / "safety_messages.jsonl"))
    ap.add_argument("--holdout", default=str(ROOT / "data" / "safety_messages_holdout.jsonl"))
    ap.add_argument("--answers", default=str(ROOT / "data" / "safety_answers.jsonl"))
    ap.add_argument(
        "--forums", default=str(ROOT.parent / "shared" / "data" / "dialogue" / "health-forums.jsonl")
    )
    ap.add_argument("--show", type=int, default=0, help="print this many escalated forum questions")
    args = ap.parse_args()
    messages = read(Path(args.messages))
    print_table(f"Patient-message triage ({len(messages)} labelled messages)", message_table(messages))
    holdout = Path(args.holdout)
    if holdout.exists():
        rows = read(holdout)
        table = {k: v for k, v in message_table(rows).items() if k in ("ALL", *EMERGENCIES)}
        print_table(
            f"Second set ({len(rows)} messages, {holdout.name}; untuned first score was 14/24)", table
        )
    answers = read(Path(args.answers))
    print_table(f"Answer checks ({len(answers)} labelled answers)", answer_table(answers))
    forums = Path(args.forums)
    if forums.exists():
        questions = sorted({r["input"] for r in read(forums)})
        start = time.perf_counter()
        verdicts = [triage(q) for q in questions]
        micro = (time.perf_counter() - start) / len(questions) * 1e6
        hits = [(q, v) for q, v in zip(questions, verdicts) if v.emergency]
        print(f"\nReal forum questions ({forums.name}, {len(questions)} distinct): escalated "
              f"{rate(len(hits), len(questions))}; {micro:.0f} µs per message (mean length "
              f"{sum(map(len, questions)) / len(questions):.0f} characters)")  # fmt: skip
        for q, v in hits[: args.show]:
            print(f"  - {[f.code for f in v.flags]} {[f.evidence for f in v.flags]}: {q[:140]!r}")


if __name__ == "__main__":
    main()
