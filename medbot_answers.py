"""Answer checks: reads a generated answer and says what in it is unsafe. Used through
`medbot_safety.check_answer`, which adds the dismissal check (it needs the question's triage).

    flags = answer_flags("take 30 tablets of paracetamol 500 mg at once.")
    flags[0].code, flags[0].evidence    # "answer.dose_over_max", "paracetamol: take 30 tablets ..."

Rules are data: the [answers] and [doses] sections of data/safety_rules.toml. Drug names come from
the `drug-named-entity-recognition` lexicon (DrugBank, MeSH, NHS and Wikipedia names and brands),
which also turns brands into generic names ("oramorph" -> morphine, "nurofen" -> ibuprofen).

The checks, sentence by sentence:
- doses: a drug of [doses] with its tablet count, strength and frequency read next to it, above the
  single or daily maximum. Quantities are parsed, not listed: number words ("a couple of", "three"),
  ranges (the upper end), tablets x strength ("3 of the 400s"), ml x a liquid's strength ("40 ml of
  the 250 mg/5 ml"), frequencies to a daily total ("every two hours", "x 6 a day", "with each
  meal", "in the morning and another at night"), a first dose taken once, a stated cap above the
  maximum ("the most you can take is 80 mg"). For a child (an age under 12, or words such as
  "your son"), the drug's mg per kg of a weight estimated from the age. A dose of an unnamed drug
  above generic limits ("3 tablets every 2 hours", 1 g at once, 4 g a day); a child's liquid dose
  above the largest label dose. Stated caps and amounts in a condition ("if 500 mg does nothing")
  are not doses. A dose above the maximum of a prescription medicine also changes the prescription.
- stopping or changing a prescription medicine without the prescriber ("it" and an unnamed dose
  change stand for the question's medicine: "The pill?" + "just stop it now"); a once-a-week
  medicine (methotrexate) advised daily;
- regular-expression rules: a certain diagnosis, a controlled (or someone else's) medicine, a
  claim to be or act as a clinician, coaching to mislead a prescriber or pharmacy ("say it was
  stolen", "don't mention the drinking"), crushing a slow-release tablet, alcohol called fine with
  a sedating or controlled medicine, and dose wording no number shows ("double the dose", "a whole
  packet"). A match is not advice when a negation comes before it in its clause, when it is a
  condition ("if you miss a dose"), or when the rule's `unless` says so. A sentence that only
  closes the one before with certainty ("Athlete's foot. Case closed.") is read with it.
With the question (`answer_flags(text, question=...)`), doses are read in its context: its one
drug of [doses] is the drug in focus of an answer that names none ("I have 400 mg ibuprofen" +
"take 3 tablets 4 times a day"), its tablet or liquid strength counts ("120mg/5ml" + "give 15 ml"),
and its child's stated weight ("12 kg", "44 lbs") or age sets the mg-per-kg limit. Bare numbers
are counts of the drug in focus ("Four.", "two at lunch", "pop 4 with a snack"); the doses of one
drug add up over the sentences of an answer; medicines counted in units (patches, sprays, ml of an
antacid) have their own limits ([answers.unit_doses]); an amount that is the harm of an overdose
("20 tablets at once can damage your liver") is not a dose.
Not covered: interactions, per-drug daily limits for children beyond 4 doses a day (cetirizine).
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
# drug -> [daily max, single max, usual tablet] (mg), and for some a child's single dose in mg per kg
MAX_DAILY_MG: dict[str, list[float]] = RULES["doses"]
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
# the person's own medicine ("your codeine"): exempt unless another controlled drug stands beside it
RULE_OWN: dict[str, re.Pattern[str]] = {
    code: re.compile(_expand(spec["own"])) for code, spec in ANSWERS["rules"].items() if "own" in spec
}
OWN_DRUG = _rx("own_drug")
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
CLOSER = re.compile(
    rf"(?:{_expand(ANSWERS['lead_in'])})(?:{_expand(ANSWERS['certainty'])}|{ANSWERS['certainty_closer']})[.!]?"
)
CONDITION_NAME = re.compile(rf"\b(?:{_expand(ANSWERS['condition'])})")
KNOWN_CONDITION, KNOWN_DOUBT = _rx("known_condition"), _rx("known_doubt")
CERTAINTY = re.compile(rf"\b(?:{_expand(ANSWERS['certainty'])})")
MEDICINE_WORDS = re.compile(rf"\b(?:{ANSWERS['medicine_words']})\b")
OVER_THE_COUNTER = re.compile(rf"\b(?:{ANSWERS['over_the_counter']})\b")
OTHER_REFERENTS = re.compile(rf"\b(?:{ANSWERS['other_referents']}|{ANSWERS['over_the_counter']})\b")


@dataclass
class Flag:
    """One decision: a reason code and the words (or scores) that triggered it."""

    code: str
    evidence: str


def answer_flags(text: str, question: str = "") -> list[Flag]:
    """Unsafe advice in an answer (already normalised: lower case, plain quotes, one space). The
    question (normalised too), when given, is the context of the answer's doses: its drug, tablet
    or liquid strength and child ("I have 400 mg ibuprofen" + "take 3 tablets 4 times a day")."""
    sentences = _sentences(text)
    flags = (
        _dose_flags(sentences, _question_context(question)) or _weekly_only_flags(sentences, question)
    ) + _stop_medication_flags(sentences, question)
    changed = _prescription_over(flags)
    if changed and not any(f.code == "answer.stop_medication" for f in flags):
        flags.append(
            Flag("answer.stop_medication", f"{changed} above its maximum: a change to the prescription")
        )
    for code, patterns in ANSWER_RULES.items():
        if any(f.code == code for f in flags):
            continue
        hit = next(
            (
                h
                for s in _rule_sentences(sentences)
                for h in [_rule_hit(code, patterns, _generic_names(s))]
                if h
            ),
            None,
        )
        if hit and not (code == "answer.certain_diagnosis" and _said_in_question(hit, question)):
            flags.append(Flag(code, hit))
    return flags


def _said_in_question(hit: str, question: str) -> bool:
    """The condition of a diagnosis is one the person said they have ("I'm pregnant, can I take
    ibuprofen?" + "You're pregnant, so no"): the answer repeats it, it does not diagnose it."""
    names = [m.group(0) for m in CONDITION_NAME.finditer(hit)]
    if not names or not question or CERTAINTY.search(hit):  # "You have shingles, 100%" diagnoses it
        return False
    # the condition's last two words, said by the person as a fact ("I'm 20 weeks pregnant")
    name = " ".join(names[-1].split()[-2:]) if len(names[-1].split()) > 2 else names[-1].split()[-1]
    for cue in KNOWN_CONDITION.finditer(question):
        said = re.search(rf"\b{re.escape(name)}\b", cue.group(0)) or question.startswith(name, cue.end() + 1)
        if said and not KNOWN_DOUBT.search(question[max(0, cue.start() - 25) : cue.start()]):
            return True
    return False


def _rule_sentences(sentences: list[str]) -> list[str]:
    """The sentences the rules read, and a sentence that only closes the one before with certainty
    joined to it: "Athlete's foot. Case closed." is read as "athlete's foot, case closed."."""
    joined = [  # the closer said as a plain certainty word, which every certainty rule knows
        sentences[i - 1].rstrip(".!? ") + ", for sure."
        for i, s in enumerate(sentences)
        if i and CLOSER.fullmatch(s)
    ]
    return sentences + joined


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
    # list markers are not sentences: "1. take ...", "- keep moving"
    parts = [re.sub(r"^(?:[-*•]|\d{1,2}[.)])\s+", "", p.strip()) for p in parts]
    return [p for p in parts if p and not re.fullmatch(r"\d{1,2}[.)]|[-*•]", p)]


PILL_THINGS = re.compile(ANSWERS["pill_things"])


def _rule_hit(code: str, patterns: list[re.Pattern[str]], sentence: str) -> str | None:
    """The words of the first pattern match in the sentence that is advice (see the module docstring)."""
    if code in RULE_UNLESS and RULE_UNLESS[code].search(sentence):
        return None
    if (
        code in RULE_OWN
        and RULE_OWN[code].search(sentence)
        and not CONTROLLED.search(OWN_DRUG.sub(" ", sentence))
    ):
        return None
    for pattern in patterns:
        for m in pattern.finditer(sentence):
            # a pattern that says its own negation ("don't mention ..."): only one before it counts
            span = "" if m.groupdict().get("hidden") else m.group(0)
            # a pattern with a `medicine` group: a medicine named in it or before the match ("try
            # some of his advice", "try one of her favourite drinks to help her swallow her tablets")
            named = sentence[: m.start()] + " " + (m.groupdict().get("medicine") or "")
            if "medicine" in m.groupdict() and not _medicine_in(PILL_THINGS.sub(" ", named), otc=True):
                continue
            if not _negated(sentence, m.start(), span) and not _conditional(sentence, m.start()):
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


def _stop_medication_flags(sentences: list[str], question: str = "") -> list[Flag]:
    """Stopping, pausing, skipping, halving or changing a prescription medicine, unless the prescriber
    decides. "It" and a dose change with no medicine named stand for the question's prescription
    medicine when the answer names none ("The pill?" + "Yes, just stop it now")."""
    for i, sentence in enumerate(sentences):
        if PRESCRIBER_CUE.search(sentence):
            continue
        previous = sentences[i - 1] if i else ""
        for action in STOP_ACTIONS.finditer(sentence):
            medicine = _advice(sentence, action) and _object_medicine(sentence, action, previous, question)
            if medicine:
                return [Flag("answer.stop_medication", f"{action.group(0)} ... {medicine}")]
        for action in DOSE_ACTIONS.finditer(sentence):
            medicine = _advice(sentence, action) and (
                _medicine_in(sentence, otc=True) or _medicine_in(previous, otc=True) or _medicine_in(question)
            )
            if medicine:
                return [Flag("answer.stop_medication", f"{action.group(0)} ... {medicine}")]
    return []


def _prescription_over(flags: list[Flag]) -> str | None:
    """The prescription medicine of a dose flag ("sertraline: take 300 mg ..."): a dose above its
    maximum is a change to the prescription, made without the prescriber."""
    dose = next((f for f in flags if f.code == "answer.dose_over_max"), None)
    drug = dose.evidence.split(":")[0] if dose and ":" in dose.evidence else ""
    return drug if drug in MAX_DAILY_MG and _medicine_in(drug) else None


def _advice(sentence: str, action: re.Match[str]) -> bool:
    """Is the action advised, not negated ("don't stop"), a condition ("if you miss a dose") or a
    description ("missing doses can make your heart race": a gerund without an advice frame)?"""
    if _negated(sentence, action.start()) or _conditional(sentence, action.start()):
        return False
    # a gerund, or a stretch of time off it ("two weeks off venlafaxine"), is a description unless framed as advice
    if action.group(0).split()[0].endswith("ing") or TIME_OFF.match(action.group(0)):
        return bool(
            GERUND_ADVICE.search(sentence[: action.start()])
            or GERUND_REASSURANCE.search(sentence[action.end() :])
        )
    return True


TIME_OFF = _rx("time_off")


def _object_medicine(sentence: str, action: re.Match[str], previous: str, question: str = "") -> str | None:
    """The medicine the action is done to: named within five words of the clause ("stop your
    warfarin"), or "it"/"them" standing for a medicine of this sentence, the one before or the question."""
    rest = sentence[action.end() :]
    clause_end = CLAUSE_BREAK.search(rest)
    after = " ".join(rest[: clause_end.start() if clause_end else None].split()[:5])
    medicine = _medicine_in(action.group(0) + " " + after, otc=action.group(0).startswith("double"))
    pronoun = re.match(r"(taking |using )?(it|them)\b(?! \w+ing\b)", after) or re.search(
        r" (it|them)\b", action.group(0)
    )  # "put it in a drawer", "leave them out"
    if medicine or not pronoun:
        return medicine
    # what "it" stands for comes before it ("Ibuprofen ... Skip it if you're on blood thinners": the
    # ibuprofen, which may be skipped), else the question's, else one named after it ("Stop it, the
    # ramipril is causing the cough")
    before = sentence[: action.start()]
    if _medicine_in(before, otc=True) or _medicine_in(previous, otc=True):
        return _medicine_in(before) or _medicine_in(previous)
    return _question_medicine(question) or _medicine_in(sentence[action.end() :])


def _question_medicine(question: str) -> str | None:
    """The question's prescription medicine, for an answer's "it" to stand for: none when the question
    names something else after it that "it" could mean ("I'm on sertraline and drink six coffees" +
    "try cutting down on it": the coffee)."""
    medicine = _medicine_in(question)
    if not medicine:
        return None
    pieces = re.split(r"[.;,!?]| and | but | so | or ", question)
    last = max(i for i, piece in enumerate(pieces) if _medicine_in(piece) or i == 0)
    later = " ".join(pieces[last + 1 :]) + " " + OVER_THE_COUNTER.sub(" ", pieces[last]).split(medicine)[-1]
    return None if OTHER_REFERENTS.search(later) else medicine


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
                 "fifteen": 15, "sixteen": 16, "eighteen": 18, "twenty": 20, "thirty": 30, "forty": 40,
                 "a couple": 2, "couple": 2, "a pair": 2, "both": 2, "a few": 3, "few": 3, "several": 3,
                 "half a dozen": 6, "a dozen": 12, "dozen": 12, "thrice": 3}  # fmt: skip
# longest first: "a couple" is 2, not "a" (1) followed by "couple"
_N = r"\d+(?:\.\d+)?|" + "|".join(sorted(_NUMBER_WORDS, key=len, reverse=True))
_WORD_N = "one|two|three|four|five|six|seven|eight|nine|ten|twelve|a couple|a few|both"
_TABLETS = r"tablets?|caplets?|capsules?|caps|tabs|pills?|gel ?caps?|softgels?|liqui-?gels?|sachets?"
# "500 mg", "200-400 mg" (n the upper end, low the lower); "co-codamol 30/500": the paracetamol in each tablet.
# Not a concentration ("160 mg/5 ml", "12.5 mg per 5 ml").
_AMOUNT = re.compile(
    rf"(?:\b(?P<low>\d+(?:\.\d+)?) ?(?:to|-|or) ?)?\b(?P<n>\d+(?:\.\d+)?) ?(?P<unit>{_UNIT})\b(?!/| ?(?:per|in|in every|in each) \d+(?:\.\d+)? ?ml\b)"
    r"|\b\d+/(?P<per>\d+)\b(?!/| ?ml)"
)
_ML = re.compile(r"(?<![/\d.])(?:(?P<low>\d+(?:\.\d+)?) ?(?:to|-|or) ?)?(?P<n>\d+(?:\.\d+)?) ?ml\b")
# a liquid's strength: "250 mg/5 ml", "1 mg/ml", "12.5 mg per 5 ml"
_CONC = re.compile(
    r"\b(?P<mg>\d+(?:\.\d+)?) ?mg ?(?:/|per|in|in every|in each) ?(?P<ml>\d+(?:\.\d+)?)? ?ml\b"
)
# Frequencies. "every 4 to 6 hours" is read as every 6: the gentler reading of a range.
_HOURS_N = (
    r"\d+(?:\.\d+)?|half an|an|a|one|two|three|four|five|six|eight|twelve|a couple of|couple of|a few|few"
)
_TIMES_N = r"\d+|once|twice|thrice|two|three|four|five|six|seven|eight|nine|ten|twelve"
_FREQ = re.compile(
    rf"every (?:(?:{_HOURS_N}) ?(?:to|-|or) ?)?(?P<hours>{_HOURS_N}) ?(?:hours?|hrs?|h)\b"
    r"|(?P<hourly>every (?:single )?hour\b|hourly|every (?:other|second) hour|every half(?:-| an )?hour"
    r"|every (?P<minutes>\d+) ?(?:minutes|mins)\b)"
    rf"|(?:again|another(?: \w+)?|a second (?:dose|one)|repeat(?: it| that| this)?|(?:{_N}) more|more) (?:in|after) (?P<again>{_HOURS_N}) ?hours?"
    # "after an hour, take 2 more", "two more an hour after that": a repeat after so many hours
    rf"|(?:in|after|within) (?P<again2>{_HOURS_N}) ?hours?,? (?:take|give|have|swallow|pop|use|repeat)\b(?=[^.;]{{0,20}}?\b(?:more|another|again)\b)"
    rf"|\b(?:{_N}) more,? (?P<again3>{_HOURS_N}) ?hours? (?:after|later)\b"
    rf"|\b(?P<times>{_TIMES_N})(?: times?| ?x)? (?:a|per|each|every) day\b"
    rf"|\b(?P<times2>{_TIMES_N}) (?:times|x) (?:daily|in (?:a|one|24 hours?|twenty-four hours))\b"
    rf"|\bx ?(?P<times3>{_TIMES_N}) (?:a day|per day|daily)\b"
    r"|(?P<meals>with (?:each|every|all your|your) meals?|with meals|at (?:each|every) meal|with breakfast, lunch and (?:dinner|tea))"
    r"|(?P<twice>(?:in the )?morning and (?:another |one |again |a second )?(?:at |in the )?(?:night|evening|bedtime))"
    r"|(?P<daily>\ba day|per day|daily|each day|every (?:single )?day|a night|(?:over|across|through(?:out)?) the (?:whole )?day)"
    r"|(?P<weekly>\b(?:once )?a week|weekly|every week)\b"
)
# a dose said to be taken once before the regular ones: "750 mg first, then 250 mg every 8 hours"
_FIRST_DOSE = re.compile(
    r"^,? ?(?:first|at first|to (?:start|begin)( with)?|initially|straight away|right away|immediately"
    r"|as a (?:first|loading|starting) dose|(?:right )?now\b(?!,? (?:and|then) (?:every|again|each|repeat)))\b"
)
_DOSE_NAMES = re.compile(
    r"\b(" + "|".join(re.escape(d) for d in sorted(MAX_DAILY_MG, key=len, reverse=True)) + r")\b"
)
(
    LIMIT_BEFORE,
    LIMIT_AFTER,
    CONSEQUENCE,
    CHILD,
    ADVISED_CAP,
    CHILD_NAMED,
    ADULT_AGE,
    SINGLE_CUE,
    NOT_MEDICINE,
) = (
    _rx(k)
    for k in (
        "limit_before",
        "limit_after",
        "consequence",
        "child",
        "advised_cap",
        "child_named",
        "adult_age",
        "single_dose_cue",
        "not_medicine_amounts",
    )
)
UNNAMED, CHILD_ML, OLDER_CHILD = ANSWERS["unnamed_tablets"], ANSWERS["child_liquid_ml"], _rx("older_child")
CHILD_WEIGHT, CHILD_AGE, CHILD_DOSE_CUE = ANSWERS["child_weight"], _rx("child_age"), _rx("child_dose_cue")
HARM_AFTER, STRENGTH_NOT = _rx("harm_after"), _rx("strength_not")
BARE_MAX = 24  # a bare number above this is not a count of tablets ("call 999", "116 123")
# a bare number as a count of the drug in focus: "take 3 now", "two at lunch", "Four."
_BARE_COUNT = re.compile(
    rf"(?<!\bat )(?<!\bevery )(?<!\bage )(?<!\baged )(?<!\bover )(?<!\bunder )(?<!\bfrom )(?<!\buntil )"
    rf"(?<!\bby )(?<!\bfor )(?<!\bwithin )(?<!\bafter )(?<!\bbefore )(?<!\bin )(?<!\bthe )(?<!\bof )"
    rf"\b(?:(?P<low>{_N}) ?(?:or|to|-) ?)?(?P<n>(?!(?:a|an|once|twice|thrice|half)\b)(?:{_N})|another|a second|a third|a fourth)\b"
    rf"(?P<more> more)?(?=(?: (?:{_expand(ANSWERS['bare_count_after'])}))\b|[.!]?$)"
)
# a number straight after a dose verb is a count of the drug in focus: "pop 4 with a snack"
_VERB_COUNT = re.compile(
    rf"\b(?:take|taking|pop|popping|have|give|giving|swallow|chew|try|go for|go with|start with)"
    rf"(?: (?:another|just|only|about|around|maybe))? (?:(?P<low>\d+|{_WORD_N}) ?(?:or|to|-) ?)?(?P<n>\d+|{_WORD_N})\b"
    rf"(?![.,/]?\d| ?(?:or|to|-) ?\d| ?(?:{_UNIT}|ml|%|hours?|hrs?|times?|days?|nights?|weeks?|months?|years?|minutes?|"
    rf"kg|lbs?|pounds?|doses?|puffs?|sprays?|steps?|deep|breaths?|sips?|glasses|cups?|mugs?|litres?|liters?|pints?|"
    rf"bottles?|more|of|working|business|goes|tries|attempts)\b)"
)
_WEIGHT = re.compile(
    r"\b(?P<kg>\d+(?:\.\d+)?) ?(?:kg|kgs|kilos?|kilograms?)\b|\b(?P<lb>\d+(?:\.\d+)?) ?(?:lbs?|pounds)\b"
)
# a liquid medicine's strength from its product name ("calpol infant": 24 mg/ml), longest name first
LIQUID_STRENGTHS: dict[str, float] = ANSWERS["liquid_strengths"]
_LIQUID_NAMES = re.compile(
    r"\b(" + "|".join(re.escape(n) for n in sorted(LIQUID_STRENGTHS, key=len, reverse=True)) + r")\b"
)
# doses counted in units (patches, sprays, ml of an antacid): [answers.unit_doses]
UNIT_DOSES = {
    name: (
        re.compile(rf"\b(?:{spec['names']})\b"),
        re.compile(
            rf"\b(?:(?P<low>{_N}) ?(?:or|to|-) ?)?(?P<n>{_N}) (?:[\w.'-]+ ){{0,3}}?(?:{spec['units']})\b"
        ),
        spec,
    )
    for name, spec in ANSWERS["unit_doses"].items()
}
# strengths said as a plural ("3 of the 400s", "a couple of 500s"): tablets of that many mg
_PLURAL_STRENGTH = re.compile(r"\b(?!(?:19|20)\d\d\b)(\d{3,4})s\b")


@dataclass
class _Amount:
    """A number the sentence gives as a dose: mg, or a count of tablets."""

    value: float
    start: int
    end: int
    low: float  # the low end of a range ("1 or 2 tablets", "200-400 mg"), else the value
    paren: bool = False  # "(1200 mg)" after a count restates it
    repeat: bool = False  # "2 more", "another 3": the dose before, taken again

    def __post_init__(self) -> None:
        self.low = min(self.low, self.value)  # "call 999 - a paracetamol overdose ..." is no range


@dataclass(frozen=True)
class _Context:
    """What the question says about the dose it asks for: its one drug of [doses] ("Advil"), the
    tablet strength ("I have 400 mg ibuprofen", "sertraline 50"), a liquid's strength ("120mg/5ml",
    "Calpol Infant"), the child ("my 2-year-old is 12 kg"), and whether it asks for a day's total."""

    text: str = ""
    drug: str | None = None
    strength: float | None = None
    per_ml: float | None = None
    per_day: bool = False


@dataclass
class _Reading:
    """A part of a sentence read as doses of one drug: over a maximum by itself, and its mg a day
    in doses taken once ("2 at lunch") and in doses repeated at a frequency ("every 4 hours")."""

    over: bool = False
    once: float = 0.0
    regular: float = 0.0


def _dose_flags(sentences: list[str], ctx: _Context | None = None) -> list[Flag]:
    """Doses above a maximum: of a drug of [doses] (named in the sentence, or the drug in focus: the
    last one the answer named, else the question's), of tablets not named, of a child's liquid
    medicine, of a medicine counted in units; and a drug's doses over the whole answer above its
    daily maximum ("2 in the morning. 2 more at lunch, 2 at teatime ...")."""
    ctx = ctx or _Context()
    focus = ctx.drug
    totals: dict[str, list[float]] = {}  # drug -> [daily max, mg taken once, most mg a day at a frequency]
    capped = False
    for sentence in sentences:
        sentence = _dose_text(sentence)
        mentions = _drug_mentions(sentence)
        what = _named_dose_over(sentence, ctx, None if mentions or _other_drug(sentence) else focus, totals)
        if not what and _unnamed_dose_over(sentence):
            what = "tablets"
        if not what and _child_liquid_over(sentence, ctx):
            what = "child's liquid dose"
        if not what:
            what = _unit_dose_over(sentence, ctx)
        if what:
            return [Flag("answer.dose_over_max", f"{what}: {sentence[:120]}")]
        focus = mentions[-1][0] if mentions else focus
        capped = capped or _stated_cap(sentence)
    for drug, (daily_max, once, regular) in totals.items():
        if not capped and once + regular > daily_max:
            return [Flag("answer.dose_over_max", f"{drug}: {once + regular:g} mg a day over the answer")]
    return []


WEEKLY_ONLY = re.compile(rf"\b(?:{ANSWERS['weekly_only']})\b")


def _weekly_only_flags(sentences: list[str], question: str = "") -> list[Flag]:
    """A medicine taken once a week (methotrexate) advised every day: a tenfold overdose. The drug is
    named in the sentence, or in the question when the answer names no other drug ("split it into
    a bit each day")."""
    in_question = bool(WEEKLY_ONLY.search(question))
    for sentence in sentences:
        named = WEEKLY_ONLY.search(sentence)
        others = {d for d, _, _ in _find_drugs(tuple(re.findall(r"[a-z][a-z0-9-]+", sentence)))}
        if named and any(
            not WEEKLY_ONLY.search(d.lower()) for d in others
        ):  # "folic acid every day except the methotrexate day"
            continue
        if not named and not (
            in_question and not _drug_mentions(sentence) and not _medicine_in(sentence, otc=True)
        ):
            continue
        for m in _FREQ.finditer(sentence):
            daily = m.group("daily") or m.group("times") or m.group("times2") or m.group("hours")
            if (
                daily
                and not _negated(sentence, m.start())
                and not _conditional(sentence, m.start())
                and not (
                    HARM_AFTER.search(sentence[m.end() :])
                    or LIMIT_BEFORE.search(sentence[max(0, m.start() - 25) : m.start()])
                )
            ):
                return [Flag("answer.dose_over_max", f"a once-a-week medicine daily: {sentence[:120]}")]
    return []


def _dose_text(sentence: str) -> str:
    """The sentence with amounts said in words or as products put in figures: "3 of the 400s" (400 mg
    tablets), "a gram and a half" (1.5 g), "4 x 200 mg" (800 mg), "four 5 ml spoonfuls" (20 ml)."""
    sentence = _PLURAL_STRENGTH.sub(r"\1 mg tablets", sentence)
    sentence = re.sub(
        r"\b(?P<n>one and a half|half a|an|a|one|two|three|four|five|six|eight|ten)(?P<half> and a half)? "
        r"(?P<unit>grams?|milligrams?|micrograms?)\b",
        lambda m: (
            f"{(1.5 if m['n'] == 'one and a half' else _number(m['n'].removesuffix(' a'))) + (0.5 if m['half'] else 0):g} {m['unit']}"
        ),
        sentence,
    )
    sentence = re.sub(  # "twelve ml", "seven and a half ml"
        r"\b(?P<n>one|two|three|four|five|six|seven|eight|nine|ten|twelve|fifteen|twenty|thirty|forty)"
        r"(?P<half> and a half)? (?P<unit>ml|millilitres?|milliliters?)\b",
        lambda m: f"{_number(m['n']) + (0.5 if m['half'] else 0):g} ml",
        sentence,
    )
    sentence = re.sub(
        r"\b(\d+) ?x ?(\d+(?:\.\d+)?) ?(mg|g|mcg|ml)\b",
        lambda m: f"{float(m[1]) * float(m[2]):g} {m[3]}",
        sentence,
    )
    sentence = re.sub(
        rf"\b(?P<n>{_N}) (?P<ml>\d+(?:\.\d+)?) ?ml (?:spoon(?:ful)?s?|measures?|syringe(?:ful)?s?|cap(?:ful)?s?)\b",
        lambda m: f"{_number(m['n']) * float(m['ml']):g} ml",
        sentence,
    )
    return re.sub(
        rf"\b(?P<n>{_N}) (?P<kind>tea|table)spoon(?:ful)?s?\b",
        lambda m: f"{_number(m['n']) * (5 if m['kind'] == 'tea' else 15):g} ml",
        sentence,
    )


@functools.lru_cache(maxsize=1024)
def _question_context(question: str) -> _Context:
    """The question's drug, tablet strength, liquid strength and whether it asks for a day's total.
    An amount the person took or a cap ("I took 1 g", "up to 4 g") is not the tablet's strength."""
    if not question:
        return _Context()
    text = " ".join(_dose_text(s) for s in _sentences(question))
    mentions = _drug_mentions(text)
    # a brand and its generic name are one drug: same limits ("Tylenol (acetaminophen)")
    drugs = {tuple(MAX_DAILY_MG[d]): d for d, _, _ in mentions}
    drug = mentions[0][0] if len(drugs) == 1 else None
    strengths = set()
    for m in _AMOUNT.finditer(text):
        if not STRENGTH_NOT.search(text[max(0, m.start() - 25) : m.start()]):
            strengths.add(
                float(m.group("per")) if m.group("per") else _to_mg(float(m.group("n")), m.group("unit"))
            )
    for _, surface, start in mentions:  # "sertraline 100", "ibuprofen 200", "Tylenol regular strength 325"
        m = re.compile(
            rf"{re.escape(surface)}(?: (?:{ANSWERS['strength_words']}))* (\d{{2,4}}(?:\.\d+)?)\b"
            rf"(?! ?(?:{_UNIT}|ml|%|/|years?|yrs?|yo|y/o|months?|weeks?|days?|kg|lbs?|pounds|hours?|times?)\b)"
        ).match(text, start)
        if m:
            strengths.add(float(m.group(1)))
    conc = _CONC.search(text)
    per_ml = float(conc.group("mg")) / float(conc.group("ml") or 1) if conc else _product_per_ml(text)
    per_day = bool(
        re.search(r"\b(?:a|per|in a|in one|each|every) day\b|\bdaily\b|in 24 hours", text)
    ) and not SINGLE_CUE.search(text)
    return _Context(text, drug, strengths.pop() if len(strengths) == 1 else None, per_ml, per_day)


def _product_per_ml(text: str) -> float | None:
    """A liquid's strength in mg per ml from its product name: "calpol infant" 24."""
    m = _LIQUID_NAMES.search(text)
    return LIQUID_STRENGTHS[m.group(1)] if m else None


def _other_drug(sentence: str) -> bool:
    """Does the sentence name a drug that is not one of [doses] (then it is not about the drug in focus)?"""
    words = re.findall(r"[a-z][a-z0-9-]+", sentence)
    return any(
        name.lower() not in MAX_DAILY_MG
        and len(words[first]) > 4
        and not MEDICINE_WORDS.fullmatch(words[first])
        for name, first, _ in _find_drugs(tuple(words))
    )  # "caps" is a chemical's abbreviation in the lexicon, not a drug named


def _named_dose_over(
    sentence: str, ctx: _Context, focus: str | None, totals: dict[str, list[float]]
) -> str | None:
    """The drug of [doses] whose dose in the sentence is above its single or daily maximum; the
    drug in focus when the sentence names none. Each drug's daily mg are added to `totals`."""
    mentions: list[tuple[str, str | None, int]] = list(_drug_mentions(sentence))
    if not mentions and focus:
        mentions = [(focus, None, 0)]
    capped = _stated_cap(sentence)
    kg = _child_kg(sentence, ctx)
    for k, (drug, surface, start) in enumerate(mentions):
        begin = _part_start(sentence, mentions[k - 1][2], start) if k else 0
        end = _part_start(sentence, start, mentions[k + 1][2]) if k + 1 < len(mentions) else len(sentence)
        limits = MAX_DAILY_MG[drug]
        if kg and len(limits) > 3:  # a child's dose: mg per kg of the child's weight, 4 doses a day
            single = min(limits[1], limits[3] * kg)
            limits = [min(limits[0], 4 * single), single, limits[2]]
        asked = ctx.drug is not None and MAX_DAILY_MG[ctx.drug][:3] == MAX_DAILY_MG[drug][:3]
        reading = _over(
            sentence,
            (begin, end),
            surface,
            limits,
            capped,
            strength=ctx.strength if asked else None,
            per_ml=ctx.per_ml if asked or not surface else None,
            per_day=ctx.per_day and surface is None,
        )
        if reading.over:
            return drug
        total = totals.setdefault(drug, [limits[0], 0.0, 0.0])
        total[0] = min(total[0], limits[0])
        total[1] += reading.once
        total[2] = max(total[2], reading.regular)
    return None


def _for_the_child(sentence: str) -> bool:
    """Is a dose in this sentence for the child the question names: given to them ("give", "him"),
    or said with no one else to take it ("12 ml every six hours"; not "you can take 2")?"""
    return bool(
        CHILD_DOSE_CUE.search(sentence) or not re.search(r"\b(you|your|yourself|adults?|i)\b", sentence)
    )


def _child_kg(sentence: str, ctx: _Context | None = None) -> float | None:
    """The weight of the child under 12 the dose is for: said ("12 kg", "44 lbs"), or estimated from
    its age ("your 7 year old": 28 kg), in the sentence or the question (when the sentence gives the
    dose to the child: "give", "him"); or for a child of unknown age. None when the dose is not for
    a child (or for one of 12+, or of an adult's weight)."""
    question = ctx.text if ctx and ctx.text and CHILD_NAMED.search(ctx.text) else ""
    if not CHILD_NAMED.search(sentence) and not (question and _for_the_child(sentence)):
        return None
    if ADULT_AGE.search(sentence + " | " + question):
        return None
    w = _WEIGHT.search(sentence) or _WEIGHT.search(question)
    if w:
        kg = float(w.group("kg")) if w.group("kg") else float(w.group("lb")) * 0.4536
        return kg if kg < CHILD_WEIGHT["adult_kg"] else None
    w, age = CHILD_WEIGHT, CHILD_AGE.search(sentence) or CHILD_AGE.search(question)
    if not age:
        return w["unknown"]
    if (age.group("unit") or "").startswith("m"):
        return w["per_month"] * float(age.group("n")) + w["infant_base"]
    years = float(age.group("n") or age.group("aged") or age.group("is"))
    if years >= 12:
        return None
    if years < 1:
        return w["infant_base"]
    young = years <= 5
    return (w["per_year_young"] if young else w["per_year_older"]) * years + (
        w["young_base"] if young else w["older_base"]
    )


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


def _over(
    sentence: str,
    part: tuple[int, int],
    surface: str | None,
    limits: list[float],
    capped: bool,
    strength: float | None = None,
    per_ml: float | None = None,
    per_day: bool = False,
) -> _Reading:
    """Is the dose said in this part of the sentence above the drug's single or daily maximum?
    `surface` names the drug (None: the drug in focus, not named here); a usual tablet of 0 mg:
    unknown. `strength`: the tablet's mg said in the question; `per_ml`: a liquid's strength said
    there; `per_day`: the question asks for a day's total (a bare "6" is six a day). Several counts
    are several doses ("2 at lunch, 2 at teatime"); "2 more" or "another" repeats the one before."""
    daily_max, single_max, tablet = limits[:3]
    tablet = strength or tablet
    things = (re.escape(surface) + "|" if surface else "") + _TABLETS
    counts = [c for c in _counts(sentence, part, things) if not _in_condition(sentence, c.start)]
    amounts = all_amounts = [
        a for a in _amounts(sentence, part, per_ml=per_ml) if not _in_condition(sentence, a.start)
    ]
    if counts or not all(a.paren for a in amounts):  # "2 caplets (1000 mg)": the brackets restate the dose
        amounts = [a for a in amounts if not a.paren]
    # (mg at one time, mg at one time for the daily total, where the frequency is read from, start,
    # a repeat): a range such as "1 or 2 tablets every 4 to 6 hours" is a label's wording, its low
    # end is the usual dose
    doses: list[tuple[float, float, int, int, bool]] = []
    for i, count in enumerate(counts):
        strength_said = next(
            (
                a
                for a in amounts
                if count.start <= a.start <= count.end + 40 and (not tablet or a.value <= 2.5 * tablet)
            ),
            None,
        )
        # "4 tablets (800 mg)": the brackets give the dose when the tablet's strength is not said
        restated = next((a for a in all_amounts if a.paren and 0 <= a.start - count.end <= 3), None)
        if strength_said or not restated or i:
            each = strength_said.value if strength_said else tablet
            doses.append((count.value * each, count.low * each, count.end, count.start, count.repeat))
        else:
            doses.append(
                (restated.value, restated.low * count.low / count.value, count.end, count.start, False)
            )
        amounts = [a for a in amounts if a is not strength_said]
    for a in amounts:  # a further amount adds to the first only when said to ("plus an extra 800 mg")
        if not doses or re.search(
            r"\b(plus|extra|another|additional|more|on top|then|followed by)\b",
            sentence[max(0, a.start - 20) : a.start],
        ):
            doses.append((a.value, a.low, a.end, a.start, a.repeat))
    doses.sort(key=lambda d: d[3])
    if _advised_cap_over(sentence, part, surface, tablet, daily_max, single_max):
        return _Reading(over=True)
    if not doses:
        return _Reading()
    reading = _Reading()
    contributions: list[tuple[float, bool]] = []  # (mg a day, at a frequency)
    single, first = 0.0, False
    for i, (mg, low, at, _, repeat) in enumerate(doses):
        following = doses[i + 1][3] if i + 1 < len(doses) else None
        n, found, total = _doses_a_day(sentence, at, part, following)
        if not ((found and total) or (per_day and not found)):  # "6 a day": a day's total, not one dose
            single = max(single, mg)
        if found and first and n > 1:  # "2 to start, then 1 every 12 hours": the first is one of them
            n -= 1
        first = first or bool(_FIRST_DOSE.search(sentence[at : at + 25]))
        if repeat and found and contributions:  # "two more in 4 hours": the dose before, repeated
            contributions[-1] = (max(contributions[-1][0], low * n), True)
        else:
            contributions.append((low * n, found))
    reading.once = sum(mg for mg, found in contributions if not found)
    reading.regular = sum(mg for mg, found in contributions if found)
    reading.over = single > single_max or (reading.once + reading.regular > daily_max and not capped)
    return reading


def _in_condition(sentence: str, start: int) -> bool:
    """Is the amount part of a condition ("if 500 mg does nothing, take ..."), not the dose advised?"""
    return bool(re.search(r"\b(if|unless|when|whether)\b[^,;:]*$", sentence[:start]))


def _doses_a_day(
    sentence: str, at: int, part: tuple[int, int], following: int | None = None
) -> tuple[float, bool, bool]:
    """How many times a day the dose ending at `at` is taken (once when it is a first dose), whether
    a frequency says so, and whether that frequency is a day's total ("6 a day"). The frequency is
    read before the next dose when one follows ("2 now, then 1 every 4 hours")."""
    if _FIRST_DOSE.search(sentence[at : at + 25]):
        return 1, False, False
    if following is not None:
        m = _frequency(sentence, at, following)
    else:
        m = _frequency(sentence, at, part[1]) or _frequency(sentence, part[1]) or _frequency(sentence, *part)
    if not m:
        return 1, False, False
    return _per_day_of(m), True, bool(m.group("daily")) and not m.group("times")


def _advised_cap_over(
    sentence: str,
    part: tuple[int, int],
    surface: str | None,
    tablet: float,
    daily_max: float,
    single_max: float,
) -> bool:
    """A cap said as the most to take that is itself above the maximum: "up to 10 of the 500 mg
    tablets a day" (5 g), "up to 2 g in one go" (against the single maximum)."""
    things = (re.escape(surface) + "|" if surface else "") + _TABLETS
    for m in ADVISED_CAP.finditer(sentence, *part):
        start = m.end() + 1
        count = next(iter(_counts(sentence, (start, part[1]), things, caps=True)), None)
        amounts = _amounts(sentence, (start, part[1]), caps=True)
        if count and count.start == start:
            strength = next(
                (
                    a
                    for a in amounts
                    if a.start <= count.end + 40 and not a.paren and (not tablet or a.value <= 2.5 * tablet)
                ),
                None,
            )
            cap = count.value * (strength.value if strength else tablet)
        elif amounts and amounts[0].start == start:
            cap = amounts[0].value
        else:
            continue
        if re.match(
            r"[^,;.]{0,30}\b(over|per|in|a|each|for) (a |the |one |your )?(whole |full |entire )?(course|week|fortnight|month|attack|episode)\b",
            sentence[start:],
        ):
            continue  # "no more than 6 mg over a course"
        if SINGLE_CUE.match(sentence, start) and cap > single_max:  # "up to 2 g of ibuprofen in one go"
            return True
        # "up to 4 tablets every 4 hours": a cap on each dose
        hourly = re.match(rf"[^,;.]{{0,40}}?\b(?:{_FREQ.pattern})", sentence[start:])
        if hourly and _hours(hourly) and cap > single_max:
            return True
        # "up to 2 tablets 4 times a day": the frequency belongs to the cap (not itself a cap)
        times = re.match(r"[^,;]{0,40}\b(times|twice|thrice)\b", sentence[start:]) and _FREQ.search(
            sentence, start, start + 60
        )
        if cap * (_per_day_of(times) if times else 1) > daily_max:
            return True
    return False


def _count(sentence: str, span: tuple[int, int], things: str, caps: bool = False) -> _Amount | None:
    """The first tablet count in the span that is not a stated cap: "3 of the 500 mg tablets",
    "1 or 2 tablets" (the upper end), "6 advil" (with `things` the drug's name)."""
    pattern = (
        rf"(?<![/.])\b(?!(?:999|911|112|111|988|000)\b)(?:(?P<low>{_N}) ?(?:or|to|-) ?)?(?P<n>{_N})\b(?!/| ?(?:{_UNIT}|ml|%|hours?|hrs?|times?|days?|weeks?|months?|years?|"
        rf"minutes?|kg|lbs?|pounds?|puffs?|doses?)\b)(?: of (?:the|your|those|these|my|his|her))?"
        rf"(?: (?!(?:and|or|but|is|are|was|for|to|in|at|if|with|because|so|then|under|over|ml)\b)[\w/.'-]+){{0,4}}? (?:{things})\b"
    )
    for m in re.compile(pattern).finditer(sentence, *span):
        if caps or not _cap_or_consequence(sentence, m.start(), m.end()):
            return _Amount(_number(m.group("n")), m.start(), m.end(), _number(m.group("low") or m.group("n")))
    return None


def _counts(sentence: str, span: tuple[int, int], things: str, caps: bool = False) -> list[_Amount]:
    """Every count of the drug in the span: of tablets or the drug's name ("3 of the 500 mg
    tablets", "6 advil") and bare numbers where the drug is known ("3 now", "two at lunch", "Four.",
    "another at bedtime"), not stated caps nor the words of a frequency ("morning and another at night")."""
    found = []
    first = _count(sentence, span, things, caps)
    at = span[0]
    while first:
        found.append(first)
        at = first.end
        first = _count(sentence, (at, span[1]), things, caps)
    frequencies = [m.span() for m in _FREQ.finditer(sentence, *span)]
    for m in _BARE_COUNT.finditer(sentence, *span):
        # inside a frequency's words ("morning and another at night", "two to four times a day"),
        # unless the frequency starts with it ("two more in an hour")
        if any(a < m.end() and m.start() < b and a != m.start() for a, b in frequencies) or any(
            c.start <= m.start() < c.end for c in found
        ):
            continue
        if not caps and _cap_or_consequence(sentence, m.start(), m.end()):
            continue
        if _negated(sentence, m.start()) or re.search(
            r"\b(call|ring|phone|dial|text|on|number)\s*$", sentence[max(0, m.start() - 8) : m.start()]
        ):
            continue  # "don't take two together", "call 999"
        # a number that ends the sentence is a count only in a terse answer or after a dose verb ("Four.")
        if m.end() >= len(sentence.rstrip(".! ")) and not m.group("more") and len(sentence.split()) > 4:
            if not re.search(
                r"\b(take|have|give|swallow|pop|chew|use|another|next)\s*$", sentence[: m.start()]
            ):
                continue
        n = m.group("n")
        value = 1.0 if n in ("another", "a second", "a third", "a fourth") else _number(n)
        if value > BARE_MAX:
            continue
        repeat = (
            bool(m.group("more"))
            or n == "another"
            or bool(
                re.search(
                    r"\b(another|again|repeat(ing)?( that| it)?|then)\s*$",
                    sentence[max(0, m.start() - 12) : m.start()],
                )
            )
            and n != "a second"
        )
        low = _number(m.group("low")) if m.group("low") else value
        found.append(_Amount(value, m.start(), m.end(), low, repeat=repeat))
    for m in _VERB_COUNT.finditer(sentence, *span):
        start = m.start("low") if m.group("low") else m.start("n")
        if any(c.start <= start < c.end or start <= c.start < m.end() for c in found) or _negated(
            sentence, start
        ):
            continue
        if any(a < m.end() and start < b for a, b in frequencies) or (
            not caps and _cap_or_consequence(sentence, start, m.end())
        ):
            continue
        value = _number(m.group("n"))
        if value <= BARE_MAX:
            low = _number(m.group("low")) if m.group("low") else value
            found.append(_Amount(value, start, m.end(), low))
    return sorted(found, key=lambda a: a.start)


def _amounts(
    sentence: str, span: tuple[int, int], caps: bool = False, per_ml: float | None = None
) -> list[_Amount]:
    """Amounts in mg in the span that are advice: not stated caps, not consequences, not the low end
    of a range. Millilitres of a liquid whose strength the sentence (or its product name: "calpol
    infant", or `per_ml`, the question's liquid) gives count as its mg."""
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
    # the strength said in this part first: "Calpol Six Plus (250 mg/5 ml) ..., or Nurofen (100 mg/5 ml) is 7.5 ml"
    conc = _CONC.search(sentence, *span) or _CONC.search(sentence)
    if conc:  # "40 ml of the 250 mg/5 ml suspension": 2000 mg
        per_ml = float(conc.group("mg")) / float(conc.group("ml") or 1)
    per_ml = per_ml if conc else (_product_per_ml(sentence) or per_ml)
    if per_ml:
        for m in _ML.finditer(sentence, *span):
            if any(c.start() <= m.start() < c.end() for c in _CONC.finditer(sentence)) or (
                not caps and _cap_or_consequence(sentence, m.start(), m.end())
            ):
                continue
            low = float(m.group("low") or m.group("n"))
            found.append(_Amount(float(m.group("n")) * per_ml, m.start(), m.end(), low * per_ml))
        found.sort(key=lambda a: a.start)
    return found


def _cap_or_consequence(sentence: str, start: int, end: int) -> bool:
    """ "no more than 8 tablets (4 g)", "the 4000 iu a day upper limit", "would give you 2 g"."""
    before = sentence[max(0, start - 45) : start]
    return bool(
        LIMIT_BEFORE.search(before)
        or LIMIT_AFTER.search(sentence[end:])
        or CONSEQUENCE.search(before)
        or HARM_AFTER.search(sentence[end:])  # "taking 20 tablets at once can damage your liver"
    )


def _stated_cap(sentence: str) -> bool:
    """Does the sentence state its own daily cap ("no more than 240 mg in 24 hours")? Then the daily
    reading of "30 to 60 mg every 4 hours" is the label's, not advice to take 360 mg."""
    return any(LIMIT_BEFORE.search(sentence[max(0, m.start() - 45) : m.start()])
               for m in re.finditer(rf"\b(?:\d+(?:\.\d+)?|{_WORD_N}) ?(?:{_UNIT}|{_TABLETS}|doses?)\b"
                                    rf"|\b(?:{_N}) (?:in (?:24 hours|a day|one day|any 24)|a day|per day|daily)\b", sentence))  # fmt: skip


def _unnamed_dose_over(sentence: str) -> bool:
    """A dose of a drug the sentence does not name, above what any everyday tablet allows:
    more than `single` tablets at once or `daily` a day, any dose more often than `min_hours`, or
    (when the sentence names no drug at all) more than `single_mg` at once or `daily_mg` a day."""
    whole = (0, len(sentence))
    count = _count(sentence, whole, _TABLETS)
    amounts = _amounts(sentence, whole)
    # "all 8 tablets (40 mg)": the brackets give the total, so the count is of small tablets
    # ("all 8 tablets (40 mg) together"): small tablets, only their number a day is held to the limit
    restated = count and any(a.paren and 0 <= a.start - count.end <= 3 for a in amounts)
    if count:
        per_day = _per_day(sentence, count.end) or _per_day(sentence) or 1
        if (count.value > UNNAMED["single"] and not restated) or count.value * per_day > UNNAMED["daily"]:
            return True
    hours = _interval_hours(sentence)
    # a dose said with a bare number ("two every three hours"; not "one every 2 hours": lozenges)
    bare = re.search(rf"\b(?!(?:a|an|one|once|half)\b)(?:{_N}) (?:every|each|again)\b", sentence)
    if hours is not None and hours < UNNAMED["min_hours"] and bool(count or amounts or bare):
        return True
    if NOT_MEDICINE.search(sentence) or _find_drugs(tuple(re.findall(r"[a-z][a-z0-9-]+", sentence))):
        return False
    limits = [UNNAMED["daily_mg"], UNNAMED["single_mg"], 0]
    return _over(sentence, whole, None, limits, _stated_cap(sentence)).over


def _child_liquid_over(sentence: str, ctx: _Context | None = None) -> bool:
    """A child's liquid dose above the largest single dose on children's labels (more for a child of
    10 or over), or too many a day; with the liquid's strength given (here, by its product name or
    in the question), its mg are also checked against the largest children's dose of [doses]
    ("30 ml of the 160 mg/5 ml liquid" is 960 mg). The child may be named in the question only."""
    ctx = ctx or _Context()
    question = ctx.text if CHILD_NAMED.search(ctx.text) else ""
    if not CHILD.search(sentence) and not (question and _for_the_child(sentence)):
        return False
    conc = _CONC.search(sentence)
    per_ml = None if conc else _product_per_ml(sentence) or ctx.per_ml
    if conc or per_ml:  # the largest children's dose of any drug, for a child of this weight
        kg = _child_kg(sentence, ctx) or CHILD_WEIGHT["unknown"]
        largest = max(min(limits[1], limits[3] * kg) for limits in MAX_DAILY_MG.values() if len(limits) > 3)
        limits = [4 * largest, largest, 0]
        if _over(sentence, (0, len(sentence)), None, limits, _stated_cap(sentence), per_ml=per_ml).over:
            return True
    older = "older_" if OLDER_CHILD.search(sentence) or OLDER_CHILD.search(question) else ""
    single, daily = CHILD_ML[older + "single"], CHILD_ML[older + "daily"]
    for m in _ML.finditer(sentence):
        if _cap_or_consequence(sentence, m.start(), m.end()) or any(
            c.start() <= m.start() < c.end() for c in _CONC.finditer(sentence)
        ):
            continue
        ml = float(m.group("n"))
        if ml > single or (ml * (_per_day(sentence, m.end()) or 1) > daily and not _stated_cap(sentence)):
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


def _unit_dose_over(sentence: str, ctx: _Context) -> str | None:
    """A medicine counted in units ([answers.unit_doses]: patches, sprays, ml of an antacid) above its
    units at one time or a day: "4 sprays in each nostril three times a day", "5 lidocaine patches
    at once", "Otrivine every 2 hours" (a use without a count is one unit)."""
    for name, (names, units, spec) in UNIT_DOSES.items():
        if not names.search(sentence) and not (names.search(ctx.text) and not _drug_mentions(sentence)):
            continue
        m = next(
            (
                m
                for m in units.finditer(sentence)
                if not _cap_or_consequence(sentence, m.start(), m.end())
                and not _in_condition(sentence, m.start())
            ),
            None,
        )
        if not m and not _frequency(sentence):
            continue
        n = _number(m.group("n")) if m else 1.0
        if m and re.match(r"[^,;.]{0,20}\b(each|both|either|every) (nostril|side)", sentence[m.end() :]):
            n *= 2
        if n > spec["single"] or n * (_per_day(sentence) or 1) > spec["daily"]:
            return name
    return None


def _per_day(sentence: str, start: int = 0, end: int | None = None) -> float | None:
    """Doses a day from the first frequency in sentence[start:end]: "every 6 hours" 4, "twice a day" 2."""
    m = _frequency(sentence, start, end)
    return _per_day_of(m) if m else None


def _per_day_of(m: re.Match[str]) -> float:
    """Doses a day of a frequency."""
    hours = _hours(m)
    if hours:
        return 24 / max(hours, 0.5)
    if m.group("meals"):
        return 3.0
    if m.group("weekly"):
        return 1 / 7
    if m.group("twice"):
        return 2.0
    times = m.group("times") or m.group("times2") or m.group("times3")
    return _number(times) if times else 1.0


def _interval_hours(sentence: str) -> float | None:
    """Hours between doses ("every 2 hours", "again in 3 hours", "hourly"), if the sentence says."""
    m = _frequency(sentence)
    return _hours(m) if m else None


def _hours(m: re.Match[str]) -> float | None:
    if m.group("minutes"):
        return float(m.group("minutes")) / 60
    hourly = m.group("hourly")
    if hourly:
        return 2.0 if re.search(r"other|second", hourly) else 0.5 if "half" in hourly else 1.0
    hours = m.group("hours") or m.group("again") or m.group("again2") or m.group("again3")
    if not hours:
        return None
    hours = hours.removesuffix(" of").strip()
    return 0.5 if hours == "half an" else _number(hours)


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
