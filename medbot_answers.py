"""Answer checks: reads a generated answer and says what in it is unsafe. Used through
`medbot_safety.check_answer`, which adds the dismissal check (it needs the question's triage).

    flags = answer_flags("Take 30 tablets of paracetamol 500 mg at once.")
    flags[0].code, flags[0].evidence    # "answer.dose_over_max", "paracetamol: take 30 tablets ..."

Rules are data: the [answers] and [doses] sections of data/safety_rules.toml. Drug names come from
the `drug-named-entity-recognition` lexicon (DrugBank, MeSH, NHS and Wikipedia names and brands).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

RULES_PATH = Path(__file__).resolve().parent / "data" / "safety_rules.toml"
RULES: dict[str, Any] = tomllib.loads(RULES_PATH.read_text(encoding="utf-8"))
MAX_DAILY_MG: dict[str, list[float]] = RULES["doses"]  # drug -> [daily max, single max, usual tablet]
ANSWERS = RULES["answers"]
CONTROLLED: str = ANSWERS["controlled"]
ANSWER_RULES: dict[str, list[str]] = {
    code: [p.replace("{controlled}", CONTROLLED) for p in spec["patterns"]]
    for code, spec in ANSWERS["rules"].items()
}
REASON_TEXT: dict[str, str] = {code: spec["reason"] for code, spec in ANSWERS["rules"].items()} | ANSWERS[
    "reasons"
]


@dataclass
class Flag:
    """One decision: a reason code and the words (or scores) that triggered it."""

    code: str
    evidence: str


def answer_flags(text: str) -> list[Flag]:
    """Unsafe advice in an answer (already normalised: lower case, plain quotes, one space)."""
    sentences = [s for s in re.split(r"(?<=[.!?;])\s+|\n+", text) if s.strip()]
    flags = _dose_flags(sentences) + _stop_medication_flags(sentences)
    for code, patterns in ANSWER_RULES.items():
        hit = next((m for s in sentences for p in patterns for m in [re.search(p, s)]
                    if m and not _negated_advice(s, m.start())), None)  # fmt: skip
        if hit:
            flags.append(Flag(code, hit.group(0)))
    return flags


def referral_in(text: str) -> bool:
    """Does the answer send the person to urgent or emergency care (or a crisis line)?"""
    return bool(re.search(ANSWERS["referral"], text))


def _negated_advice(text: str, start: int) -> bool:
    before = text[max(0, start - 30) : start]
    return bool(
        re.search(
            r"\b(do not|don'?t|never|should not|shouldn'?t|must not|mustn'?t|without talking to|not|can'?t|cannot|"
            r"wouldn'?t|won'?t|isn'?t|no one can|nobody can|impossible to)\s*(be\s*)?$",
            before,
        )
    )


def _stop_medication_flags(sentences: list[str]) -> list[Flag]:
    """Stopping, pausing, skipping, halving or doubling a prescription medicine, unless the prescriber decides."""
    for sentence in sentences:
        action = re.search(ANSWERS["stop_actions"], sentence)
        if (
            not action
            or _negated_advice(sentence, action.start())
            or re.search(ANSWERS["prescriber_cue"], sentence)
        ):
            continue
        medicine = _medicine_in(sentence)
        if medicine:
            return [Flag("answer.stop_medication", f"{action.group(0)} ... {medicine}")]
    return []


def _medicine_in(sentence: str) -> str | None:
    """A prescription medicine named in the sentence: a drug from the lexicon, or a word such as insulin."""
    words = [w for w in re.findall(r"[a-z][a-z0-9-]+", re.sub(ANSWERS["over_the_counter"], " ", sentence))]
    drugs = _find_drugs(tuple(words))
    if drugs:
        return drugs[0]
    m = re.search(rf"\b({ANSWERS['medicine_words']})\b", sentence)
    if m and not re.search(rf"\b({ANSWERS['over_the_counter']})\b", sentence):
        return m.group(0)
    return None


@functools.lru_cache(maxsize=4096)
def _find_drugs(words: tuple[str, ...]) -> list[str]:
    """Drug names in the words, from the `drug-named-entity-recognition` lexicon (DrugBank, MeSH, NHS, Wikipedia)."""
    from drug_named_entity_recognition import find_drugs

    return [d["name"] for d, _, _ in find_drugs(list(words), is_ignore_case=True)]


# Streaming: words are shown as they arrive, except in a sentence that contains anything the
# answer check looks at (numbers, units, drug names, stop/quit, certainty, "I am", diagnosis):
# that sentence is held back until it is complete and checked. Keep in step with the answer rules.
STREAM_HOLD = re.compile(
    r"\d|\b(stop|quit|discontinu\w*|come off|cease|pause|skip|miss|hold|leave|drop|ditch|break|halve|half|double|"
    r"twice|extra|make up|don'?t|do not|no need|throw away|get rid|flush|"
    r"definitely|certainly|clearly|surely|undoubtedly|obviously|absolutely|for sure|sure|certain|positive|confident|"
    r"doubt|question|only be|classic|diagnos\w*|confirm|assure|"
    r"i am|i'?m|i'?ve|i have|i'?ll|i will|i can|as a|as an|as your|speaking as|my|dr|licen[cs]e|prescrib\w*|authori[sz]\w*|"
    r"referr?\w*|examin\w*|once|two|three|four|five|six|eight|ten|times|daily|every|"
    r"mg|milligrams?|grams?|g|mcg|tablets?|pills?|capsules?|doses?|take|taking|insulin|inhaler|medicines?|"
    r"medications?|meds|" + CONTROLLED + "|" + "|".join(MAX_DAILY_MG) + r")\b"
)


def hold_sentence(text: str) -> bool:
    """True if a sentence still being generated (normalised) must wait until it is complete and checked."""
    return bool(STREAM_HOLD.search(text)) or _medicine_in(text) is not None


_DOSE = re.compile(
    r"(?P<amount>\d+(?:[.,]\d+)?)\s*(?P<unit>mg|milligrams?|g|grams?|mcg)\b(?:\s*(?:of|tablets? of)?\s*)?"
)
_FREQ = re.compile(
    r"every (?:\d+(?:\.\d+)? ?(?:to|-|or) ?)?(?P<hours>\d+(?:\.\d+)?) ?(?:hours?|hrs?|h)\b|"
    r"(?P<times>\d+|once|twice|three|four|five|six|eight|ten)(?: times?)? (?:a|per|each|every) day|"
    r"(?P<daily>a day|per day|daily|each day|every day)"
)  # in "every 4 to 6 hours" the longer interval is read: the gentler reading of a range
_LIMIT = re.compile(
    r"(no more than|not more than|up to|maximum( of)?|max\.?|not exceed|limit of|at most|more than|never take)\s*$"
)
_WORDS = {"a": 1, "one": 1, "once": 1, "twice": 2, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
          "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "fifteen": 15, "twenty": 20}  # fmt: skip
_COUNT = re.compile(
    r"(?P<n>\d+|"
    + "|".join(k for k in _WORDS if k != "a")
    + r") (?:(?:\d+ ?mg|extra-strength|extra strength|"
    r"regular|strong|more|of the|of your|of those|of these|\w+) )?(?:tablets?|pills?|capsules?|caplets?|gel ?caps?)\b"
)


def _dose_flags(sentences: list[str]) -> list[Flag]:
    for sentence in sentences:
        drug = next((d for d in MAX_DAILY_MG if re.search(rf"\b{d}\b", sentence)), None)
        if not drug:
            continue
        daily_max, single_max, tablet = MAX_DAILY_MG[drug]
        if _dose_in(sentence, tablet, single_max, daily_max):
            return [Flag("answer.dose_over_max", f"{drug}: {sentence.strip()[:120]}")]
    return []


def _dose_in(sentence: str, tablet: float, single_max: float, daily_max: float) -> bool:
    """Does the sentence advise more than the single or daily maximum (stated caps are not advice)?"""
    total, largest = 0.0, 0.0
    count = next(
        (
            m
            for m in _COUNT.finditer(sentence)
            if not _LIMIT.search(sentence[max(0, m.start() - 40) : m.start()])
        ),
        None,
    )
    n_tablets = (
        (int(count.group("n")) if count.group("n").isdigit() else _WORDS[count.group("n")]) if count else 1
    )
    doses = list(_DOSE.finditer(sentence))
    read = False
    for i, m in enumerate(doses):
        before = sentence[max(0, m.start() - 40) : m.start()]
        if _LIMIT.search(before) or _LIMIT.search(
            re.sub(r"\d+ (tablets?|pills?|capsules?) of\s*$", "", before)
        ):
            continue  # "no more than 4000 mg", "more than 8 tablets of 500 mg": a stated cap
        if i + 1 < len(doses) and re.fullmatch(r"\s*(to|-|or)\s*", sentence[m.end() : doses[i + 1].start()]):
            continue  # "500 mg to 1000 mg": the range's upper end is read next
        mg = _to_mg(float(m.group("amount").replace(",", ".")), m.group("unit"))
        per_tablet = mg <= tablet * 2.5 and count is not None  # "30 tablets of ... 500 mg": strength x count
        dose = mg * (n_tablets if per_tablet else 1)
        largest = max(largest, dose)
        total += dose * (_per_day(sentence[m.end() : m.end() + 60]) or _per_day(sentence) or 1)
        read = True
    if not read and count is not None:  # "12 tablets twice a day": the usual strength
        dose = n_tablets * tablet
        largest, total = dose, dose * (_per_day(sentence) or 1)
    return largest > single_max or total > daily_max


def _to_mg(amount: float, unit: str) -> float:
    if unit.startswith("g") or unit.startswith("gram"):
        return amount * 1000
    if unit == "mcg":
        return amount / 1000
    return amount


def _per_day(after: str) -> float | None:
    m = _FREQ.search(after)
    if not m:
        return None
    if m.group("hours"):
        return 24 / max(float(m.group("hours")), 0.5)
    if m.group("times"):
        t = m.group("times")
        return float(t) if t.isdigit() else float(_WORDS[t])
    return 1.0
