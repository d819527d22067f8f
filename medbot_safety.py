"""The medical safety layer: triage of the patient's message before generation, checks of the answer after.

    t = triage("crushing chest pain spreading to my left arm and I'm sweating")
    t.emergency, t.flags[0].code, t.advice     # True, "emergency.cardiac", "Call your local emergency ..."
    c = check_answer("Take 2000 mg of paracetamol every 4 hours.")
    c.safe, c.flags[0].code, c.text           # False, "answer.dose_over_max", a safe replacement

`respond()` (medbot_chat.py) runs both on every message, so no surface can skip them.

Covered: red-flag emergencies in English — cardiac chest pain, stroke signs, severe breathing
difficulty, anaphylaxis, severe bleeding, loss of consciousness or seizure, sepsis signs,
pregnancy emergencies, fever in an infant under 3 months, poisoning or overdose, sudden worst
headache, suicidal thoughts or self-harm — with negation ("no chest pain"), resolved past events
("last week, now gone"), common misspellings and mixed case. Answers: doses above common maximum
daily limits for everyday drugs, advice to stop a prescribed medicine, a claimed certain
diagnosis, controlled substances, and claims to be a real or licensed doctor.

Not covered: languages other than English (such messages get a fallback asking for English and
naming emergency numbers), images, dosing by body weight or for children, drug interactions,
rare emergencies outside the list, sarcasm, and anything a keyword-and-rule layer cannot read.
It is a safety net for a research demo, not a clinical triage tool.
"""

from __future__ import annotations

import difflib
import functools
import re
import unicodedata
from dataclasses import dataclass, field

# ----------------------------------------------------------------------------- what is flagged

EMERGENCY_ADVICE = (
    "This may be a medical emergency. Call your local emergency number (911 in the US, 112 in Europe, "
    "999 in the UK) or go to the nearest emergency department now. Do not wait for an online answer."
)
CRISIS_ADVICE = (
    "If you are thinking about ending your life or harming yourself, please reach out now: call or text "
    "988 (US Suicide & Crisis Lifeline), call your local emergency number, or contact a crisis line "
    "where you live (findahelpline.com lists them). You do not have to face this alone."
)
NON_ENGLISH = (
    "This demo can only read English. If this is an emergency, call your local emergency number "
    "(112 in Europe, 911 in the US) now."
)

# Each category: groups of patterns; a message matches a category when ONE pattern of EVERY group
# matches (a symptom and its red-flag feature), unless the match is negated or resolved.
# Patterns are regular expressions over normalised, typo-corrected text.
EMERGENCIES: dict[str, list[list[str]]] = {
    "cardiac": [
        [r"\bchest\b|breastbone|sternum|heart attack"],
        [
            r"pain|pressure|tight|heav|crush|squeez|band\b|ache|hurt|clutch|discomfort|elephant|heart attack|sitting on|weight on|pressing"
        ],
        [
            r"\b(arm|jaw|neck|shoulder|back)\b",
            r"sweat|drench|clammy",
            r"short(ness)? of breath|breathless|can'?t breathe",
            r"nause|vomit|feel sick|dizz|faint|grey|gray|pale|elephant|crushing|squeez|radiat|spreading|heart attack",
            r"\d+ minutes|shovel|exert",
        ],
    ],
    "stroke": [
        [
            r"\b(face|mouth|smile|lips?|eyelid)\b.{0,30}(droop|fallen|fell|dropp|sag|lopsided|crooked|uneven|twist)",
            r"(droop|sagg|lopsided|crooked|uneven)\w*.{0,20}\b(face|mouth|smile)\b",
            r"slurr|garbl|jumbl",
            r"words.{0,25}(wrong|jumbled|mixed up|garbled|make no sense|don'?t make sense)",
            r"\b(arm|leg|hand)\b.{0,15}(went |gone |is )?(limp|dead|floppy)",
            r"speech.{0,30}(strange|weird|funny|nonsense|gone|stopped|suddenly)",
            r"(suddenly|sudden).{0,30}(can'?t|cannot|unable to) (speak|talk)",
            r"can'?t (speak|talk) (properly|clearly|right)",
            r"(can'?t|cannot) (get|find) (my|the|his|her) words",
            r"(can'?t|cannot|unable to|couldn'?t) (raise|lift|move|feel|use) (his|her|my|their)? ?(left|right|one)? ?(arm|leg|hand|side)",
            r"(weak|numb|paraly|dead|heavy)\w*.{0,25}(one side|left side|right side|left arm|right arm|left leg|right leg)",
            r"(one side|left side|right side|half) of (my|his|her|the) (face|body)",
            r"(having|is having|think .{0,20} having) a stroke",
        ],
    ],
    "breathing": [
        [
            r"(isn'?t|is not|not|stopped|has stopped|wasn'?t) breathing",
            r"turning blue|going blue|blue in the face",
            r"(can'?t|cannot|unable to|struggling to|struggle to|hard to|barely|hardly|trouble|difficulty|fighting to) "
            r"(breathe|breath|get (enough |any )?air|catch (my|his|her|their) breath)",
            r"gasping|fighting for (air|breath)",
            r"(severe|extreme|very bad) (short(ness)? of breath|breathlessness|difficulty breathing)",
            r"lips.{0,20}(blue|grey|gray)|(blue|grey|gray) lips",
            r"choking|chocking",
            r"stopped breathing",
            r"wheez\w* (badly|severely|and can'?t)",
            r"sucking in (under|between) (his|her|their|the) ribs",
            r"too breathless to (speak|talk)",
        ],
    ],
    "anaphylaxis": [
        [
            r"\b(throat|tongue|lips?|mouth)\b.{0,30}(swell|swoll|clos|tight)",
            r"face.{0,20}(swell|swoll).{0,60}(hives|sting|breath|faint)",
            r"(swell|swoll)\w*.{0,30}(throat|tongue|lips?)",
            r"anaphyla",
            r"(hives|rash|welts).{0,40}(breath|throat|wheez|faint|dizz)",
            r"epipen|epi-pen|adrenaline (pen|auto)",
        ],
    ],
    "bleeding": [
        [
            r"(won'?t|will not|doesn'?t|does not|can'?t) stop bleeding",
            r"bleeding.{0,40}(won'?t|will not|doesn'?t|can'?t) stop",
            r"bleeding for (\d{2,}|thirty|forty|fifty) minutes|bleeding for (\d+|an|two|three) hours?",
            r"bleeding (heavily|a lot|badly|profusely|everywhere)",
            r"heavy bleeding(?! from my period)",
            r"(spurting|pouring|gushing|squirting) (blood|out)",
            r"blood (is )?(spurting|pouring|gushing|everywhere|squirting)",
            r"(vomiting|throwing up|coughing up|spitting up) (a lot of |lots of )?blood",
            r"soaked through.{0,30}(bandage|towel|pad)",
            r"(deep|big|bad) (cut|wound|gash).{0,40}(bleed|blood)",
            r"lost a lot of blood",
        ],
    ],
    "unconscious_seizure": [
        [
            r"passed out",
            r"(lost|losing) consciousness",
            r"unconscious",
            r"unresponsive",
            r"(won'?t|can'?t|will not|cannot) wake",
            r"(having|had|has) (a )?(seizure|fit|convulsion)",
            r"seizing|convuls|fitting|(shaking|jerking) (all over|uncontrollab)",
            r"\b(i|he|she|they|suddenly|just|and|has|have) collapsed",
            r"collapsed (in|on|at) ",
            r"not (waking|responding)",
            r"fainted and",
            r"(fainted|blacked out).{0,30}(can'?t|won'?t|not) (wake|respond)",
        ],
    ],
    "sepsis": [
        [r"\bsepsis\b|\bseptic\b", r"fever|temperature|\btemp\b|feverish|shivering|rigors|chills|burning up"],
        [
            r"\bsepsis\b|\bseptic\b",
            r"confus|drowsy|hard to wake|disoriented|not making sense|delirious",
            r"mottled|blotchy|purple (skin|rash)|rash (that )?(doesn'?t|does not|won'?t) fade",
            r"(breathing|heart) (is )?(very )?(fast|racing)",
            r"(not|hasn'?t|haven'?t) (peed|urinated|passed urine)",
            r"very (unwell|ill|sick) (and|with)",
            r"chemo|after (my |his |her )?(surgery|operation)",
        ],
    ],
    "pregnancy": [
        [r"pregnan|weeks? along|expecting a baby|waters? (broke|broken|has broken|have broken)"],
        [
            r"(heavy|a lot of|lots of) (vaginal )?bleeding",
            r"bleeding (heavily|a lot)",
            r"(i'?m|i am|she'?s|she is|started) bleeding|vaginal bleeding|bleeding (from|down there)",
            r"(pain|cramps?).{0,20}(unbearable|excruciating|agonising|agonizing|really bad)",
            r"(a lot of|lots of|heavy) blood",
            r"(severe|really bad|extreme|terrible|very bad|unbearable) (stomach|abdominal|belly|tummy|pelvic) (pain|cramps?)",
            r"(stomach|abdominal|belly|tummy|pelvic) (pain|cramps?).{0,30}(severe|won'?t (ease|stop|go))",
            r"(severe|sudden) (headache|swelling).{0,40}(vision|blurr|face)",
            r"waters? (broke|broken)",
            r"baby (isn'?t|is not|stopped|hasn'?t been) moving",
            r"soaking (a )?pads?",
        ],
    ],
    "infant_fever": [
        [
            r"(newborn|new born|neonate)",
            r"\b\d{1,2} ?days?[ -]old",
            r"\b([1-9]|1[0-2]) ?(weeks?|wks?)[ -]old",
            r"\b(1|2|one|two) ?months?[ -]old",
            r"\b(a|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve) weeks? old",
        ],
        [
            r"fever|temperature|\btemp\b|feverish|burning up|\b3[89](\.\d)? ?(c|°c)|\b3[89]\.\d\b|\b10[0-5](\.\d)? ?(f|°f)|"
            r"hot to (the )?touch|feels? (very |really |so )?hot"
        ],
    ],
    "poisoning_overdose": [
        [
            r"overdos",
            r"took (too many|a lot of|a whole (bottle|pack|box)|an entire)",
            r"took \d{2,} (\w+ )?(pills|tablets|capsules)",
            r"took (a )?(handful|bottle|packet|box) of",
            r"swallowed.{0,30}(bleach|poison|battery|batteries|detergent|pods?|antifreeze|pills|tablets|chemicals?)",
            r"drank.{0,30}(bleach|antifreeze|poison|cleaner|chemical|detergent|drain)",
            r"(?<!food )\bpoison(ed|ing)?\b",
            r"(pills|tablets|medicine|medication|meds).{0,40}(by mistake|by accident)",
            r"(took|taken|swallowed|ate|drank).{0,40}(by mistake|by accident)",
            r"(ate|eaten|swallowed|got into).{0,40}(pills|tablets|medicine|meds|capsules)",
            r"accidentally (took|swallowed|ate|drank) .{0,30}(pills|tablets|medicine|meds|bleach|batter|chemical|cleaner|detergent)",
        ],
    ],
    "thunderclap_headache": [
        [
            r"worst headache",
            r"thunderclap|thunderbolt",
            r"(sudden|suddenly).{0,30}(severe|excruciating|explosive|terrible|blinding|splitting|agonising|agonizing) headache",
            r"(severe|excruciating|explosive|terrible|blinding|splitting) headache.{0,30}(sudden|came on|out of nowhere|like being hit)",
            r"headache.{0,40}(stiff neck|neck is stiff|can'?t look at (the )?light).{0,20}(fever|vomit|sudden)",
            r"(sudden|suddenly).{0,40}headache.{0,40}(stiff neck|neck is stiff)",
        ],
    ],
    "self_harm": [
        [
            r"suicid",
            r"kill (myself|my self)",
            r"end (my|it all|my own) (life|all)?",
            r"end it all",
            r"ending (it all|my life)",
            r"want to die",
            r"(don'?t|do not) want to (live|be alive|wake up)",
            r"better off dead",
            r"self[- ]?harm",
            r"(cutting|hurting|harming|burning) myself",
            r"(cut|hurt|harm|burn) myself(?! (shaving|while|when|on|with|by accident|accidentally|cooking|in the|at work|playing))",
            r"no (reason|point) (to|in) (live|living|go on|going on)",
            r"take my (own )?life",
            r"overdose on purpose",
            r"(thinking|thoughts) (about|of) (dying|death|not being here)",
            r"never wake up|disappear forever",
            r"(don'?t|do not) want to be here (anymore|any more)",
        ],
    ],
}
CRISIS_CATEGORIES = {"self_harm"}

# Negation cues before a symptom in the same clause, and phrases that say it is over.
NEGATIONS = (
    r"\b(no(?!,)|not|never|without|denies|deny|don'?t|do not|doesn'?t|didn'?t|isn'?t|wasn'?t|aren'?t|"
    r"haven'?t had|hasn'?t had|free of|none|nor|neither)\b"
)
RESOLVED = (
    r"(years? ago|months? ago|a while ago|in the past|used to|history of|(is|was|it'?s|has|have) (now )?"
    r"(gone|resolved|better|fine|over)|went away|now gone|no longer|now (i'?m|i am|he'?s|she'?s|it'?s|they'?re) "
    r"(fine|ok|okay|better|well)|\bin (19|20)\d\d\b|seizure-free|\d+ years|(years?|months?|weeks?) back|"
    r"(fine|ok|okay|well) since|since then)"
)
# Questions about a condition, not reports of it: "what are the signs of a stroke?"
INFO_CUES = (
    r"(difference between|what (are|is) the (signs|symptoms|warning signs)|signs of (a |an )?|symptoms of|read about|learn(ing)? about|"
    r"talk to .{0,25} about|recogni[sz]e|first aid|how (do|can|would) (i|you) (know|tell|spot)|worried about (her|his|their) friends)"
)

# Everyday drugs: common maximum total daily dose for adults, in mg (label / BNF / FDA figures),
# and a maximum single dose. Doses above these are flagged.
MAX_DAILY_MG: dict[str, tuple[float, float]] = {
    "paracetamol": (4000, 1000),
    "acetaminophen": (4000, 1000),
    "tylenol": (4000, 1000),
    "ibuprofen": (3200, 800),
    "advil": (3200, 800),
    "motrin": (3200, 800),
    "aspirin": (4000, 1000),
    "naproxen": (1500, 1000),
    "aleve": (1500, 1000),
    "diphenhydramine": (300, 100),
    "benadryl": (300, 100),
    "loperamide": (16, 4),
    "imodium": (16, 4),
    "cetirizine": (20, 20),
    "loratadine": (20, 20),
    "omeprazole": (80, 80),
}
CONTROLLED = (r"oxycodone|oxycontin|fentanyl|morphine|hydrocodone|vicodin|codeine|tramadol|methadone|heroin|"
              r"alprazolam|xanax|diazepam|valium|lorazepam|ativan|clonazepam|klonopin|zolpidem|ambien|"
              r"adderall|amphetamine|methylphenidate|ritalin|ketamine|buprenorphine|cocaine")  # fmt: skip
ANSWER_RULES: dict[str, list[str]] = {
    "answer.stop_medication": [
        r"(stop|quit|discontinue|come off|cease) (taking |using )?(your|the|all|any of your)? ?"
        r"(prescribed |prescription )?(medicines?|medications?|meds|tablets|pills|insulin|inhaler|antidepressants?|"
        r"blood pressure (tablets|pills|medicine|medication)|blood thinners?|warfarin|statins?|antibiotics?|"
        r"steroids?|metformin|levothyroxine|chemotherapy|treatment)",
        r"(don'?t|do not|no need to) (take|continue|keep taking|use|keep using) (your|the) (prescribed )?"
        r"(medicines?|medications?|meds|tablets|pills|insulin|inhaler|antidepressants?|blood thinners?|warfarin|"
        r"statins?|antibiotics?|steroids?|metformin|levothyroxine|treatment)",
        r"(throw away|get rid of|flush) (your|the) (medicines?|medications?|pills|tablets)",
    ],
    "answer.certain_diagnosis": [
        r"you (definitely|certainly|clearly|surely|undoubtedly|100%) (have|are suffering from|suffer from)",
        r"(this|it) (is|'s) (definitely|certainly|clearly|undoubtedly|100%|for sure) (?!worth|a good idea|important|best|"
        r"recommended|advisable|not|safe|fine|normal|common|possible|wise|sensible|better)(a |an )?[a-z]",
        r"i am (sure|certain|positive|100% sure) (that )?(you|it|this) (have|has|is)",
        r"(without (a )?doubt|there is no doubt),? (you|it|this)",
        r"my diagnosis is",
        r"(the|your) diagnosis is (definitely|certainly|clearly)",
        r"i (can )?(confirm|diagnose) (that )?you (have|with)",
    ],
    "answer.controlled_substance": [
        rf"(take|start|try|use|prescribe|recommend|get some|i'?ll give you|you need|you should have) .{{0,40}}\b({CONTROLLED})\b",
        rf"\b({CONTROLLED})\b.{{0,30}}(will help|would help|is what you need|every \d+ hours|\d+ ?mg)",
    ],
    "answer.claims_doctor": [
        r"\bi am (a|an|your) (real |licensed |qualified |board[- ]certified |registered |practicing |practising )*"
        r"(doctor|physician|gp|surgeon|md|psychiatrist|dermatologist|cardiologist|pediatrician|nurse practitioner)\b",
        r"\bi'?m (a|an|your) (real |licensed |qualified |board[- ]certified |registered )*(doctor|physician|gp|surgeon|md)\b",
        r"\bas (a|your) (licensed |real |qualified )?(doctor|physician|gp)\b,? i",
        r"\bi am dr\.? [a-z]+",
        r"\bi'?m dr\.? [a-z]+",
        r"\bmy medical licen[cs]e",
    ],
}
ANSWER_REWRITE = (
    "I can't give that advice safely here ({reasons}). Please ask a pharmacist or your own doctor, and "
    "follow the dose on the package or your prescription. If you feel very unwell, call your local "
    "emergency number."
)
REASON_TEXT = {
    "answer.dose_over_max": "a dose above the usual daily maximum",
    "answer.stop_medication": "advice to stop a prescribed medicine",
    "answer.certain_diagnosis": "a diagnosis that cannot be certain without an examination",
    "answer.controlled_substance": "a controlled medicine that needs a prescriber",
    "answer.claims_doctor": "a claim to be a real doctor",
}

# ----------------------------------------------------------------------------- results


@dataclass
class Flag:
    """One decision: a reason code and the words that triggered it."""

    code: str
    evidence: str


@dataclass
class Triage:
    """The verdict on a patient's message, made before any generation."""

    emergency: bool = False
    crisis: bool = False
    non_english: bool = False
    flags: list[Flag] = field(default_factory=list)

    @property
    def advice(self) -> str | None:
        """Text every surface shows first: crisis line, emergency number, or the English fallback."""
        if self.crisis:
            return CRISIS_ADVICE + (
                "\n\n" + EMERGENCY_ADVICE if self.emergency and len(self.flags) > 1 else ""
            )
        if self.emergency:
            return EMERGENCY_ADVICE
        if self.non_english:
            return NON_ENGLISH
        return None


@dataclass
class AnswerCheck:
    """The verdict on a generated answer; `text` is what may be shown (rewritten when unsafe)."""

    text: str
    flags: list[Flag] = field(default_factory=list)

    @property
    def safe(self) -> bool:
        return not self.flags


# ----------------------------------------------------------------------------- triage


def triage(message: str) -> Triage:
    """Flag emergencies in a patient's message. Pure Python, tens of microseconds."""
    result = Triage()
    if not message or not message.strip():
        return result
    text = normalize(message)
    clauses = _clauses(text)
    for category, groups in EMERGENCIES.items():
        evidence = _match_category(groups, clauses)
        if evidence:
            result.emergency = True
            result.crisis |= category in CRISIS_CATEGORIES
            result.flags.append(Flag(f"emergency.{category}", evidence))
    if not result.emergency and _looks_non_english(message, text):
        result.non_english = True
        result.flags.append(Flag("fallback.non_english", message.strip()[:60]))
    return result


def _match_category(groups: list[list[str]], clauses: list[str]) -> str | None:
    """Every group must match somewhere in one clause window (a clause and its neighbours)."""
    for i in range(len(clauses)):
        window = " ".join(clauses[max(0, i - 1) : i + 2])
        first = _live_match(groups[0], clauses[i])
        if not first or re.search(INFO_CUES, clauses[i]):
            continue
        rest = [_live_match(g, window) for g in groups[1:]]
        if all(rest):
            return " | ".join([first] + [r for r in rest if r])
    return None


def _live_match(patterns: list[str], clause: str) -> str | None:
    """The first pattern match in the clause that is neither negated nor resolved."""
    for pattern in patterns:
        for m in re.finditer(pattern, clause):
            before = clause[max(0, m.start() - 40) : m.start()]
            after = clause[m.end() : m.end() + 60]
            if re.search(NEGATIONS + r"(?:(?!\band\b)[^.;,]){0,25}$", before):  # "and" ends a negation
                continue
            if re.search(RESOLVED, before + " " + after) and not re.search(
                r"\b(now|again|still|today|right now)\b", after[:30]
            ):
                continue
            return m.group(0)
    return None


def _clauses(text: str) -> list[str]:
    # "but" and "however" start a new clause: "no chest pain but my arm is numb"
    return [c.strip() for c in re.split(r"[.!?;\n]+|\bbut\b|\bhowever\b", text) if c.strip()]


# ----------------------------------------------------------------------------- text normalisation

# Words the patterns rely on; a misspelt word within edit distance of one of these is corrected.
LEXICON = sorted(
    set(
        """
chest pain pressure tightness crushing sweating breathe breathing breath shortness breathless arm jaw neck shoulder
nausea vomiting dizzy faint face drooping droop slurred speech speak talk weakness numb numbness stroke swelling swollen
throat tongue lips closing anaphylaxis hives bleeding blood spurting pouring gushing unconscious unresponsive seizure
convulsing collapsed sepsis septic fever temperature confused confusion drowsy mottled pregnant pregnancy abdominal
stomach cramps heavy newborn weeks months old overdose overdosed swallowed bleach poison poisoning antifreeze pills
tablets worst headache sudden severe suicidal suicide myself kill die harm cutting wake choking terrible excruciating
heart attack radiating spreading squeezing shivering
""".split()
    )
)
_TYPO = {"cant": "can't", "dont": "don't", "wont": "won't", "doesnt": "doesn't", "im": "i'm", "isnt": "isn't",
         "didnt": "didn't", "havent": "haven't", "hasnt": "hasn't", "brething": "breathing", "breth": "breath",
         "chset": "chest", "hart": "heart", "siezure": "seizure", "seizur": "seizure", "unconcious": "unconscious",
         "preggo": "pregnant", "preggers": "pregnant", "od": "overdose", "od'd": "overdosed", "kms": "kill myself",
         "suicidle": "suicidal", "sucidal": "suicidal", "anaphalaxis": "anaphylaxis", "bleading": "bleeding",
         "numbb": "numb"}  # fmt: skip


def normalize(text: str) -> str:
    """Lower case, plain quotes, one space, and common misspellings of the key words corrected."""
    text = unicodedata.normalize("NFKC", text).lower().replace("’", "'").replace("‘", "'")
    words = re.findall(r"[a-z0-9'°.%-]+|[^\sa-z0-9]", text)
    fixed = " ".join(_fix_word(w) for w in words)
    return re.sub(r" ([,.;:!?])", r"\1", re.sub(r"\s+", " ", fixed)).strip()


@functools.lru_cache(maxsize=50_000)
def _fix_word(word: str) -> str:
    core = word.strip(".-'")
    if core in _TYPO:
        return word.replace(core, _TYPO[core])
    if len(core) < 5 or core in _LEXICON_SET or core in _KEEP or not core.isalpha():
        return word
    # same first letter, close spelling: "brething" -> "breathing", but "cooking" stays (see _KEEP)
    candidates = [w for w in LEXICON if w[0] == core[0] and abs(len(w) - len(core)) <= 2]
    close = difflib.get_close_matches(core, candidates, n=1, cutoff=0.84)
    return word.replace(core, close[0]) if close else word


_LEXICON_SET = set(LEXICON)
# Real words one letter away from a key word, never "corrected".
_KEEP = set(
    "cooking looking booking blurred blurry cheese chess sweeping sweeter sheet breed bleeping bleaching "
    "feeder never fewer severed pressed numbers sudden suddenly harmless".split()
)
_ENGLISH = set(
    """the a an i my me is are was am have has it and or to of in on with for not no do does can this that
what you your he she his her we they be been at but so if how when why feel hurts pain since after""".split()
)


def _looks_non_english(raw: str, text: str) -> bool:
    letters = [c for c in raw if c.isalpha()]
    if len(letters) < 4:
        return False
    if sum(c.isascii() for c in letters) / len(letters) < 0.6:  # mostly non-Latin script
        return True
    words = re.findall(r"[a-z']+", text)
    return len(words) >= 4 and sum(w in _ENGLISH for w in words) / len(words) < 0.12


# ----------------------------------------------------------------------------- answer checks


def check_answer(answer: str) -> AnswerCheck:
    """Flag unsafe advice in a generated answer; an unsafe answer is replaced by a safe one."""
    text = normalize(answer) if answer else ""
    flags = _dose_flags(text)
    for code, patterns in ANSWER_RULES.items():
        for pattern in patterns:
            m = re.search(pattern, text)
            if m and not _negated_advice(text, m.start()):
                flags.append(Flag(code, m.group(0)))
                break
    if not flags:
        return AnswerCheck(answer, [])
    reasons = "; ".join(dict.fromkeys(REASON_TEXT[f.code] for f in flags))
    return AnswerCheck(ANSWER_REWRITE.format(reasons=reasons), flags)


def _negated_advice(text: str, start: int) -> bool:
    before = text[max(0, start - 30) : start]
    return bool(
        re.search(
            r"\b(do not|don'?t|never|should not|shouldn'?t|must not|without talking to|not)\s*$", before
        )
    )


# Streaming: words are shown as they arrive, except in a sentence that contains anything the
# answer check looks at (numbers, units, drug names, stop/quit, certainty, "I am", diagnosis):
# that sentence is held back until it is complete and checked. Keep in step with ANSWER_RULES.
STREAM_HOLD = re.compile(
    r"\d|\b(stop|quit|discontinu\w*|come off|cease|don'?t|do not|no need|throw away|get rid|flush|"
    r"definitely|certainly|clearly|surely|undoubtedly|for sure|sure|certain|positive|doubt|diagnos\w*|confirm|"
    r"i am|i'?m|as a|as your|dr|licen[cs]e|once|twice|two|three|four|five|six|eight|ten|times|daily|every|"
    r"mg|milligrams?|grams?|g|mcg|tablets?|pills?|doses?|take|taking|"
    + CONTROLLED
    + "|"
    + "|".join(MAX_DAILY_MG)
    + r")\b"
)


def hold_sentence(partial: str) -> bool:
    """True if a sentence still being generated must wait until it is complete and checked."""
    return bool(STREAM_HOLD.search(normalize(partial)))


_DOSE = re.compile(
    r"(?P<amount>\d+(?:[.,]\d+)?)\s*(?P<unit>mg|milligrams?|g|grams?|mcg)\b(?:\s*(?:of|tablets? of)?\s*)?"
)
_FREQ = re.compile(
    r"every (?:\d+(?:\.\d+)? ?(?:to|-|or) ?)?(?P<hours>\d+(?:\.\d+)?) ?(?:hours?|hrs?|h)\b|"
    r"(?P<times>\d+|once|twice|three|four|five|six|eight|ten)(?: times?)? (?:a|per|each) day|"
    r"(?P<daily>a day|per day|daily|each day)"
)  # in "every 4 to 6 hours" the longer interval is read: the gentler reading of a range
_LIMIT = re.compile(
    r"(no more than|not more than|up to|maximum( of)?|max\.?|not exceed|limit of|at most|more than)\s*$"
)
_WORDS = {"once": 1, "twice": 2, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "eight": 8, "ten": 10}


def _dose_flags(text: str) -> list[Flag]:
    flags = []
    for sentence in re.split(r"(?<=[.!?;])\s+", text):
        drug = next((d for d in MAX_DAILY_MG if re.search(rf"\b{d}\b", sentence)), None)
        if not drug:
            continue
        daily_max, single_max = MAX_DAILY_MG[drug]
        total, largest = 0.0, 0.0
        doses = list(_DOSE.finditer(sentence))
        for i, m in enumerate(doses):
            before = sentence[max(0, m.start() - 40) : m.start()]
            if _LIMIT.search(before) or _LIMIT.search(
                re.sub(r"\d+ (tablets?|pills?|capsules?) of\s*$", "", before)
            ):
                continue  # "no more than 4000 mg", "more than 8 tablets of 500 mg": a stated cap
            if i + 1 < len(doses) and re.fullmatch(
                r"\s*(to|-|or)\s*", sentence[m.end() : doses[i + 1].start()]
            ):
                continue  # "500 mg to 1000 mg": the range's upper end is read next
            mg = _to_mg(float(m.group("amount").replace(",", ".")), m.group("unit"))
            dose = mg * _tablets_before(sentence, m.start())
            largest = max(largest, dose)
            total += dose * (_per_day(sentence[m.end() : m.end() + 60]) or 1)
        if largest > single_max or total > daily_max:
            flags.append(Flag("answer.dose_over_max", f"{drug}: {sentence.strip()[:120]}"))
    return flags[:1]


def _to_mg(amount: float, unit: str) -> float:
    if unit.startswith("g") or unit.startswith("gram"):
        return amount * 1000
    if unit == "mcg":
        return amount / 1000
    return amount


def _tablets_before(sentence: str, pos: int) -> int:
    m = re.search(
        r"(\d+|two|three|four|five|six) (tablets?|pills?|capsules?|caplets?) (of )?$",
        sentence[max(0, pos - 30) : pos],
    )
    if not m:
        return 1
    n = m.group(1)
    return int(n) if n.isdigit() else _WORDS.get(n, 1)


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
