"""Answer checks: reads a generated answer and says what in it is unsafe. Used through
`medbot_safety.check_answer`, which adds the dismissal check (it needs the question's triage).

    flags = answer_flags("take 30 tablets of paracetamol 500 mg at once.")
    flags[0].code, flags[0].evidence    # "answer.dose_over_max", "paracetamol: take 30 tablets ..."

Rules are data: the [answers] and [doses] sections of data/safety_rules.toml. Drug names come from
the `drug-named-entity-recognition` lexicon (DrugBank, MeSH, NHS and Wikipedia names and brands),
which also turns brands into generic names ("oramorph" -> morphine, "nurofen" -> ibuprofen).

The checks, sentence by sentence:
- doses: a drug of [doses] with its tablet count, strength and frequency read next to it, above the
  single or daily maximum; a dose of an unnamed drug above generic limits ("3 tablets every 2
  hours"); a child's liquid dose above the largest label dose. Stated caps are not doses.
- stopping or changing a prescription medicine without the prescriber;
- regular-expression rules: a certain diagnosis, a controlled (or someone else's) medicine, a
  claim to be or act as a clinician. A match is not advice when a negation comes before it in
  its clause, when it is a condition ("if you miss a dose"), or when the rule's `unless` says so.
Not covered: doses by body weight, children's doses of named tablets, interactions.
"""

from __future__ import annotations

import functools
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RULES_PATH = Path(__file__).resolve().parent / "data" / "safety_rules.toml"
RULES: dict[str, Any] = tomllib.loads(RULES_PATH.read_text(encoding="utf-8"))
MAX_DAILY_MG: dict[str, list[float]] = RULES["doses"]  # drug -> [daily max, single max, usual tablet]
ANSWERS: dict[str, Any] = RULES["answers"]


def _expand(pattern: str) -> str:
    """Fill each {name} with the [answers] regular expression of that name ("{controlled}")."""
    return re.sub(r"\{([a-z_]+)\}", lambda m: f"(?:{_expand(ANSWERS[m.group(1)])})", pattern)


def _rx(name: str) -> re.Pattern[str]:
    return re.compile(_expand(ANSWERS[name]))


CONTROLLED = re.compile(rf"\b(?:{_expand(ANSWERS['controlled'])})\b")
ANSWER_RULES: dict[str, list[re.Pattern[str]]] = {
    code: [re.compile(_expand(p)) for p in spec["patterns"]] for code, spec in ANSWERS["rules"].items()
}
RULE_UNLESS: dict[str, re.Pattern[str]] = {
    code: re.compile(_expand(spec["unless"])) for code, spec in ANSWERS["rules"].items() if "unless" in spec
}
REASON_TEXT: dict[str, str] = {code: spec["reason"] for code, spec in ANSWERS["rules"].items()} | ANSWERS[
    "reasons"
]
NEGATION, NEGATION_IDIOMS, CLAUSE_BREAK, CONDITION = (
    _rx(k) for k in ("negation", "negation_idioms", "clause_break", "condition_before")
)
STOP_ACTIONS, DOSE_ACTIONS, PRESCRIBER_CUE = (
    _rx(k) for k in ("stop_actions", "dose_actions", "prescriber_cue")
)
GERUND_ADVICE, GERUND_REASSURANCE = _rx("gerund_advice"), _rx("gerund_reassurance")
MEDICINE_WORDS = re.compile(rf"\b(?:{ANSWERS['medicine_words']})\b")
OVER_THE_COUNTER = re.compile(rf"\b(?:{ANSWERS['over_the_counter']})\b")


@dataclass
class Flag:
    """One decision: a reason code and the words (or scores) that triggered it."""

    code: str
    evidence: str


def answer_flags(text: str) -> list[Flag]:
    """Unsafe advice in an answer (already normalised: lower case, plain quotes, one space)."""
    sentences = _sentences(text)
    flags = _dose_flags(sentences) + _stop_medication_flags(sentences)
    for code, patterns in ANSWER_RULES.items():
        if any(f.code == code for f in flags):
            continue
        hit = next((h for s in sentences for h in [_rule_hit(code, patterns, _generic_names(s))] if h), None)
        if hit:
            flags.append(Flag(code, hit))
    return flags


def referral_in(text: str) -> bool:
    """Does the answer send the person to urgent or emergency care (or a crisis line)? A refused
    referral ("you don't need to go to the emergency room") is none."""
    refused = RULES["dismissal"]["refused"]
    return any(not re.search(refused, text[max(0, m.start() - 40) : m.start()])
               for m in re.finditer(ANSWERS["referral"], text))  # fmt: skip


def _sentences(text: str) -> list[str]:
    """Sentences of a normalised answer, with numbers put back together ("1, 200 mg" -> "1200 mg",
    "30 / 500" -> "30/500": normalisation spaces out punctuation)."""
    text = re.sub(r"(?<=\d), (?=\d{3}\b)", "", text)
    text = re.sub(r"(?<=\d) / (?=\d)| / (?=\d* ?ml\b)", "/", text)
    text = text.replace("( ", "(").replace(" )", ")")
    # normalisation's spelling fixer turns "should" into "shoulder" (a red-flag word); a shoulder
    # does not follow a subject, so put the modal back there: "your clinic should change the dose"
    text = re.sub(
        r"\b(i|you|we|they|he|she|it|this|that|which|who|one|clinic|team|doctor|gp|nurse|pharmacist|prescriber) shoulder\b",
        r"\1 should",
        text,
    )
    parts = re.split(r"(?<=[.!?;])(?<!\bdr\.)(?<!\bmr\.)(?<!\bms\.)(?<!\bmrs\.)\s+|\n+", text)
    return [s.strip() for s in parts if s.strip()]


def _rule_hit(code: str, patterns: list[re.Pattern[str]], sentence: str) -> str | None:
    """The words of the first pattern match in the sentence that is advice (see the module docstring)."""
    if code in RULE_UNLESS and RULE_UNLESS[code].search(sentence):
        return None
    for pattern in patterns:
        for m in pattern.finditer(sentence):
            if not _negated(sentence, m.start(), m.group(0)) and not _conditional(sentence, m.start()):
                return m.group(0)
    return None


def _clause_before(sentence: str, start: int) -> str:
    """The words of the clause before `start` (a negation does not reach across "but", ",", ...)."""
    before = sentence[:start]
    breaks = list(CLAUSE_BREAK.finditer(before))
    return before[breaks[-1].end() :] if breaks else before


def _negated(sentence: str, start: int, span: str = "") -> bool:
    """A negation earlier in the clause ("please don't take ...") or inside the matched words."""
    return bool(NEGATION.search(NEGATION_IDIOMS.sub(" ", _clause_before(sentence, start) + " " + span)))


def _conditional(sentence: str, start: int) -> bool:
    """ "If you miss a dose ...": a condition, not advice."""
    return bool(CONDITION.search(sentence[:start]))


@functools.lru_cache(maxsize=4096)
def _generic_names(sentence: str) -> str:
    """The sentence with controlled drugs' brand names replaced by their generic names
    ("grandad's oramorph" -> "grandad's morphine"), so the rules need list generic names only."""
    spans = list(re.finditer(r"[a-z][a-z0-9-]+", sentence))
    for drug, start, end in reversed(_find_drugs(tuple(m.group(0) for m in spans))):
        generic = drug.lower()
        if CONTROLLED.search(generic) and not CONTROLLED.search(
            sentence[spans[start].start() : spans[end - 1].end()]
        ):
            sentence = sentence[: spans[start].start()] + generic + sentence[spans[end - 1].end() :]
    return sentence


@functools.lru_cache(maxsize=4096)
def _find_drugs(words: tuple[str, ...]) -> list[tuple[str, int, int]]:
    """Drugs in the words from the `drug-named-entity-recognition` lexicon: (name, first word, end word)."""
    from drug_named_entity_recognition import find_drugs

    return [(d["name"], s, e) for d, s, e in find_drugs(list(words), is_ignore_case=True)]


# ----------------------------------------------------------------------------- stopping a medicine


def _stop_medication_flags(sentences: list[str]) -> list[Flag]:
    """Stopping, pausing, skipping, halving or changing a prescription medicine, unless the prescriber decides."""
    for i, sentence in enumerate(sentences):
        if PRESCRIBER_CUE.search(sentence):
            continue
        previous = sentences[i - 1] if i else ""
        for action in STOP_ACTIONS.finditer(sentence):
            medicine = _advice(sentence, action) and _object_medicine(sentence, action, previous)
            if medicine:
                return [Flag("answer.stop_medication", f"{action.group(0)} ... {medicine}")]
        for action in DOSE_ACTIONS.finditer(sentence):
            medicine = _advice(sentence, action) and (
                _medicine_in(sentence, otc=True) or _medicine_in(previous, otc=True)
            )
            if medicine:
                return [Flag("answer.stop_medication", f"{action.group(0)} ... {medicine}")]
    return []


def _advice(sentence: str, action: re.Match[str]) -> bool:
    """Is the action advised, not negated ("don't stop"), a condition ("if you miss a dose") or a
    description ("missing doses can make your heart race": a gerund without an advice frame)?"""
    if _negated(sentence, action.start()) or _conditional(sentence, action.start()):
        return False
    if action.group(0).split()[0].endswith("ing"):
        return bool(
            GERUND_ADVICE.search(sentence[: action.start()])
            or GERUND_REASSURANCE.search(sentence[action.end() :])
        )
    return True


def _object_medicine(sentence: str, action: re.Match[str], previous: str) -> str | None:
    """The medicine the action is done to: named within five words of the clause ("stop your
    warfarin"), or "it"/"them" standing for a medicine of this sentence or the one before."""
    rest = sentence[action.end() :]
    clause_end = CLAUSE_BREAK.search(rest)
    after = " ".join(rest[: clause_end.start() if clause_end else None].split()[:5])
    medicine = _medicine_in(action.group(0) + " " + after, otc=action.group(0).startswith("double"))
    if medicine or not re.match(r"(taking |using )?(it|them)\b(?! \w+ing\b)", after):
        return medicine
    return _medicine_in(sentence) or _medicine_in(previous)


def _medicine_in(text: str, otc: bool = False) -> str | None:
    """A prescription medicine named in the text (with otc, any medicine): a drug from the lexicon,
    or a word such as insulin or inhaler."""
    if not text:
        return None
    kept = text if otc else OVER_THE_COUNTER.sub(" ", text)
    drugs = _find_drugs(tuple(re.findall(r"[a-z][a-z0-9-]+", kept)))
    if drugs:
        return drugs[0][0]
    m = MEDICINE_WORDS.search(text)
    if m and (otc or not OVER_THE_COUNTER.search(text)):
        return m.group(0)
    return None


# ----------------------------------------------------------------------------- doses

_UNIT = r"mg|milligrams?|g|grams?|mcg|micrograms?|µg|iu"
_NUMBER_WORDS = {"a": 1, "an": 1, "one": 1, "once": 1, "half": 0.5, "twice": 2, "two": 2, "three": 3, "four": 4,
                 "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12,
                 "fifteen": 15, "twenty": 20}  # fmt: skip
_N = r"\d+(?:\.\d+)?|" + "|".join(_NUMBER_WORDS)
_TABLETS = r"tablets?|caplets?|capsules?|pills?|gel ?caps?|softgels?"
# "500 mg", "200-400 mg" (n the upper end, low the lower); "co-codamol 30/500": the paracetamol in each tablet.
# Not a concentration ("160 mg/5 ml").
_AMOUNT = re.compile(
    rf"(?:\b(?P<low>\d+(?:\.\d+)?) ?(?:to|-|or) ?)?\b(?P<n>\d+(?:\.\d+)?) ?(?P<unit>{_UNIT})\b(?!/)|\b\d+/(?P<per>\d+)\b(?!/| ?ml)"
)
_ML = re.compile(r"(?<![/\d.])(?:\d+(?:\.\d+)? ?(?:to|-|or) ?)?(?P<n>\d+(?:\.\d+)?) ?ml\b")
# "every 4 to 6 hours" is read as every 6: the gentler reading of a range
_FREQ = re.compile(
    r"every (?:\d+(?:\.\d+)? ?(?:to|-|or) ?)?(?P<hours>\d+(?:\.\d+)?) ?(?:hours?|hrs?|h)\b|(?P<hourly>every hour|hourly)"
    r"|again in (?P<again>\d+(?:\.\d+)?) ?hours?"
    r"|\b(?P<times>\d+|once|twice|three|four|five|six|eight|ten)(?: times?)? (?:a|per|each|every) day\b"
    r"|\b(?P<times2>\d+|three|four|five|six|eight|ten) times (?:daily|in (?:a|one|24 hours?|twenty-four hours))\b"
    r"|(?P<daily>\ba day|per day|daily|each day|every (?:single )?day|a night)"
)
_DOSE_NAMES = re.compile(
    r"\b(" + "|".join(re.escape(d) for d in sorted(MAX_DAILY_MG, key=len, reverse=True)) + r")\b"
)
LIMIT_BEFORE, LIMIT_AFTER, CONSEQUENCE, CHILD, ADVISED_CAP = (
    _rx(k) for k in ("limit_before", "limit_after", "consequence", "child", "advised_cap")
)
UNNAMED, CHILD_ML = ANSWERS["unnamed_tablets"], ANSWERS["child_liquid_ml"]


@dataclass
class _Amount:
    """A number the sentence gives as a dose: mg, or a count of tablets."""

    value: float
    start: int
    end: int
    low: float  # the low end of a range ("1 or 2 tablets", "200-400 mg"), else the value
    paren: bool = False  # "(1200 mg)" after a count restates it


def _dose_flags(sentences: list[str]) -> list[Flag]:
    """Doses above a maximum: of a drug of [doses], of tablets not named, of a child's liquid medicine."""
    for sentence in sentences:
        what = _named_dose_over(sentence)
        if not what and _unnamed_dose_over(sentence):
            what = "tablets"
        if not what and _child_liquid_over(sentence):
            what = "child's liquid dose"
        if what:
            return [Flag("answer.dose_over_max", f"{what}: {sentence[:120]}")]
    return []


def _named_dose_over(sentence: str) -> str | None:
    """The drug of [doses] whose dose in the sentence is above its single or daily maximum."""
    mentions = _drug_mentions(sentence)
    capped = _stated_cap(sentence)
    for k, (drug, surface, start) in enumerate(mentions):
        begin = _part_start(sentence, mentions[k - 1][2], start) if k else 0
        end = _part_start(sentence, start, mentions[k + 1][2]) if k + 1 < len(mentions) else len(sentence)
        if _over(sentence, (begin, end), surface, MAX_DAILY_MG[drug], capped):
            return drug
    return None


def _drug_mentions(sentence: str) -> list[tuple[str, str, int]]:
    """(drug of [doses], the words naming it, where): by name, or a brand the lexicon resolves."""
    found = [(m.group(1), m.group(1), m.start()) for m in _DOSE_NAMES.finditer(sentence)]
    spans = list(re.finditer(r"[a-z][a-z0-9-]+", sentence))
    for name, first, last in _find_drugs(tuple(m.group(0) for m in spans)):
        start, surface = spans[first].start(), sentence[spans[first].start() : spans[last - 1].end()]
        if name.lower() in MAX_DAILY_MG and not any(start <= f[2] <= start + len(surface) for f in found):
            found.append((name.lower(), surface, start))
    return sorted(found, key=lambda f: f[2])


def _part_start(sentence: str, previous: int, start: int) -> int:
    """Where the words about the drug at `start` begin, after the drug named at `previous`:
    "take 4 ibuprofen 200 mg | and 4 paracetamol 500 mg"."""
    between = sentence[previous:start]
    cut = list(re.finditer(r",? (?:and|plus|with|then|or)\b|[,;] ", between))
    if cut:
        return previous + cut[-1].start()
    number = list(re.finditer(rf"\b(?:{_N})\b", between))
    return previous + number[-1].start() if number else start


def _over(sentence: str, part: tuple[int, int], surface: str, limits: list[float], capped: bool) -> bool:
    """Is the dose said in this part of the sentence above the drug's single or daily maximum?"""
    daily_max, single_max, tablet = limits
    count = _count(sentence, part, re.escape(surface) + "|" + _TABLETS)
    amounts = _amounts(sentence, part)
    if count or not all(a.paren for a in amounts):  # "2 caplets (1000 mg)": the brackets restate the dose
        amounts = [a for a in amounts if not a.paren]
    # (mg at one time, mg at one time for the daily total, where the frequency is read from): a range
    # such as "1 or 2 tablets every 4 to 6 hours" is a label's wording, its low end is the usual dose
    doses: list[tuple[float, float, int]] = []
    if count:
        strength = next(
            (a for a in amounts if count.start <= a.start <= count.end + 40 and a.value <= 2.5 * tablet), None
        )
        each = strength.value if strength else tablet
        doses.append((count.value * each, count.low * each, count.end))
        amounts = [a for a in amounts if a is not strength]
    for a in amounts:  # a further amount adds to the first only when said to ("plus an extra 800 mg")
        if not doses or re.search(
            r"\b(plus|extra|another|additional|more|on top|then|followed by)\b",
            sentence[a.start - 20 : a.start],
        ):
            doses.append((a.value, a.low, a.end))
    if _advised_cap_over(sentence, part, surface, tablet, daily_max):
        return True
    if not doses:
        return False
    daily = sum(mg * (_per_day(sentence, at, part[1]) or _per_day(sentence, part[1]) or _per_day(sentence, *part) or 1)
                for _, mg, at in doses)  # fmt: skip
    return max(mg for mg, _, _ in doses) > single_max or (daily > daily_max and not capped)


def _advised_cap_over(
    sentence: str, part: tuple[int, int], surface: str, tablet: float, daily_max: float
) -> bool:
    """A cap said as the most to take that is itself above the daily maximum: "up to 10 of the 500 mg tablets a day"."""
    for m in ADVISED_CAP.finditer(sentence, *part):
        start = m.end() + 1
        count = _count(sentence, (start, part[1]), re.escape(surface) + "|" + _TABLETS, caps=True)
        amounts = _amounts(sentence, (start, part[1]), caps=True)
        if count and count.start == start:
            strength = next(
                (a for a in amounts if a.start <= count.end + 40 and not a.paren and a.value <= 2.5 * tablet),
                None,
            )
            cap = count.value * (strength.value if strength else tablet)
        elif amounts and amounts[0].start == start:
            cap = amounts[0].value
        else:
            continue
        times = re.match(r"[^,;]{0,40}\btimes\b", sentence[start:])  # "up to 2 tablets 4 times a day"
        if cap * ((times and _per_day(sentence, start, start + 60)) or 1) > daily_max:
            return True
    return False


def _count(sentence: str, span: tuple[int, int], things: str, caps: bool = False) -> _Amount | None:
    """The first tablet count in the span that is not a stated cap: "3 of the 500 mg tablets",
    "1 or 2 tablets" (the upper end), "6 advil" (with `things` the drug's name)."""
    pattern = (
        rf"\b(?:(?P<low>{_N}) ?(?:or|to|-) ?)?(?P<n>{_N})\b(?! ?(?:{_UNIT}|ml|%|hours?|hrs?|times?|days?|weeks?|months?|years?|"
        rf"minutes?|kg|lbs?|pounds?|puffs?|doses?)\b)(?: of (?:the|your|those|these|my|his|her))?"
        rf"(?: (?!(?:and|or|but|is|are|was|for|to|in|at|if|with|because|so|then|under|over)\b)[\w/.'-]+){{0,4}}? (?:{things})\b"
    )
    for m in re.compile(pattern).finditer(sentence, *span):
        if caps or not _cap_or_consequence(sentence, m.start(), m.end()):
            return _Amount(_number(m.group("n")), m.start(), m.end(), _number(m.group("low") or m.group("n")))
    return None


def _amounts(sentence: str, span: tuple[int, int], caps: bool = False) -> list[_Amount]:
    """Amounts in mg in the span that are advice: not stated caps, not consequences, not the low end of a range."""
    found = []
    matches = list(_AMOUNT.finditer(sentence, *span))
    for i, m in enumerate(matches):
        if i + 1 < len(matches) and re.fullmatch(
            r" ?(to|-|or) ?", sentence[m.end() : matches[i + 1].start()]
        ):
            continue  # "500 mg to 1000 mg": the upper end is read next
        if not caps and _cap_or_consequence(sentence, m.start(), m.end()):
            continue
        if m.group("per"):
            mg = low = float(m.group("per"))
        else:
            mg, low = (_to_mg(float(m.group(g) or m.group("n")), m.group("unit")) for g in ("n", "low"))
        found.append(
            _Amount(mg, m.start(), m.end(), low, paren=sentence[max(0, m.start() - 1) : m.start()] == "(")
        )
    return found


def _cap_or_consequence(sentence: str, start: int, end: int) -> bool:
    """ "no more than 8 tablets (4 g)", "the 4000 iu a day upper limit", "would give you 2 g"."""
    before = sentence[max(0, start - 45) : start]
    return bool(
        LIMIT_BEFORE.search(before) or LIMIT_AFTER.search(sentence[end:]) or CONSEQUENCE.search(before)
    )


def _stated_cap(sentence: str) -> bool:
    """Does the sentence state its own daily cap ("no more than 240 mg in 24 hours")? Then the daily
    reading of "30 to 60 mg every 4 hours" is the label's, not advice to take 360 mg."""
    return any(LIMIT_BEFORE.search(sentence[max(0, m.start() - 45) : m.start()])
               for m in re.finditer(rf"\b\d+(?:\.\d+)? ?(?:{_UNIT}|{_TABLETS}|doses?)\b", sentence))  # fmt: skip


def _unnamed_dose_over(sentence: str) -> bool:
    """A dose of a drug the sentence does not name, above what any everyday tablet allows:
    more than `single` tablets at once or `daily` a day, or any dose more often than `min_hours`."""
    whole = (0, len(sentence))
    count = _count(sentence, whole, _TABLETS)
    if count:
        per_day = _per_day(sentence, count.end) or _per_day(sentence) or 1
        if count.value > UNNAMED["single"] or count.value * per_day > UNNAMED["daily"]:
            return True
    hours = _interval_hours(sentence)
    return hours is not None and hours < UNNAMED["min_hours"] and bool(count or _amounts(sentence, whole))


def _child_liquid_over(sentence: str) -> bool:
    """A child's liquid dose above the largest single dose on children's labels, or too many a day."""
    if not CHILD.search(sentence):
        return False
    for m in _ML.finditer(sentence):
        if _cap_or_consequence(sentence, m.start(), m.end()):
            continue
        ml = float(m.group("n"))
        if ml > CHILD_ML["single"] or ml * (_per_day(sentence, m.end()) or 1) > CHILD_ML["daily"]:
            return True
    return False


def _number(word: str) -> float:
    return float(word) if word[0].isdigit() else float(_NUMBER_WORDS[word])


def _to_mg(amount: float, unit: str) -> float:
    if unit in ("mcg", "µg") or unit.startswith("microgram"):
        return amount / 1000
    if unit == "iu":  # vitamin D, the only drug of [doses] dosed in IU: 40 IU = 1 microgram
        return amount / 40_000
    if unit.startswith("g"):
        return amount * 1000
    return amount


def _per_day(sentence: str, start: int = 0, end: int | None = None) -> float | None:
    """Doses a day from the first frequency in sentence[start:end]: "every 6 hours" 4, "twice a day" 2."""
    m = _frequency(sentence, start, end)
    if not m:
        return None
    hours = _hours(m)
    if hours:
        return 24 / max(hours, 0.5)
    times = m.group("times") or m.group("times2")
    return _number(times) if times else 1.0


def _interval_hours(sentence: str) -> float | None:
    """Hours between doses ("every 2 hours", "again in 3 hours", "hourly"), if the sentence says."""
    m = _frequency(sentence)
    return _hours(m) if m else None


def _hours(m: re.Match[str]) -> float | None:
    hours = m.group("hours") or m.group("again") or (m.group("hourly") and "1")
    return float(hours) if hours else None


def _frequency(sentence: str, start: int = 0, end: int | None = None) -> re.Match[str] | None:
    """The first frequency in sentence[start:end] that is not a stated cap ("no more than 4 times a day")."""
    for m in _FREQ.finditer(sentence, start, len(sentence) if end is None else end):
        if not LIMIT_BEFORE.search(sentence[max(0, m.start() - 25) : m.start()]):
            return m
    return None


# ----------------------------------------------------------------------------- streaming

# Streaming: words are shown as they arrive, except in a sentence that contains anything the
# answer check looks at ([answers] hold_words, the drugs of [doses], controlled drugs, any drug
# the lexicon knows): that sentence is held back until it is complete and checked.
STREAM_HOLD = re.compile(
    rf"{_expand(ANSWERS['hold_words'])}|\b({_expand(ANSWERS['controlled'])}|{_DOSE_NAMES.pattern})\b"
)


def hold_sentence(text: str) -> bool:
    """True if a sentence still being generated (normalised) must wait until it is complete and checked.
    Whatever the check would flag is held too, so the hold words and the rules cannot drift apart."""
    return (
        bool(STREAM_HOLD.search(text)) or _medicine_in(text, otc=True) is not None or bool(answer_flags(text))
    )
