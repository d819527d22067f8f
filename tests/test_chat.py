"""The one generation path: template from the saved config, stop at `###`/EOS, answer text only."""

from __future__ import annotations

import pytest

from medbot_chat import (
    CURSOR,
    DISCLAIMER,
    EMERGENCY_BANNER,
    PLACEHOLDER,
    URGENT_BANNER,
    WITHDRAWN,
    Reply,
    banner,
    cut_at_stop,
    parse_history,
    respond,
    strip_reply,
)
from medbot_safety import (
    CRISIS_ADVICE,
    EMERGENCY_ADVICE,
    MENTION_ADVICE,
    NON_ENGLISH,
    URGENT_ADVICE,
    Flag,
    Triage,
    check_answer,
    triage,
)

# One verdict of each kind, made by hand: the tests do not depend on what triage reads in a message.
VERDICTS = {
    "plain": Triage(),
    "emergency": Triage(emergency=True, flags=[Flag("emergency.cardiac", "crushing chest pain")]),
    "urgent": Triage(urgent=True, flags=[Flag("urgent.test", "needs a clinician today")]),
    "crisis": Triage(emergency=True, crisis=True, flags=[Flag("emergency.self_harm", "end my life")]),
    "crisis+emergency": Triage(
        emergency=True,
        crisis=True,
        flags=[Flag("emergency.self_harm", "end my life"), Flag("emergency.poisoning_overdose", "40 pills")],
    ),
    "non-English": Triage(non_english=True, flags=[Flag("fallback.non_english", "Tengo fiebre")]),
    # talk of suicide the model read as no crisis: the crisis line beside the answer, and beside
    # same-day advice
    "mention": Triage(flags=[Flag("mention.self_harm", "suicid")]),
    "urgent+mention": Triage(urgent=True, flags=[Flag("mention.self_harm", "self-harm")]),
}
SAFETY_TEXTS = [
    DISCLAIMER,
    PLACEHOLDER,
    WITHDRAWN,
    CRISIS_ADVICE,
    EMERGENCY_ADVICE,
    URGENT_ADVICE,
    NON_ENGLISH,
    MENTION_ADVICE,
]
UNSAFE = "Rest tonight. Take 6000 mg of paracetamol every day."


def replies_of_every_kind() -> dict[str, Reply]:
    """A Reply of every kind a surface shows (answers are "" where nothing is generated)."""
    rewritten = check_answer(UNSAFE)
    assert not rewritten.safe
    kinds = {f"{k}, answered": Reply("Drink water and rest.", triage=v) for k, v in VERDICTS.items()}
    kinds |= {f"{k}, no answer": Reply("", triage=v) for k, v in VERDICTS.items()}
    kinds["rewritten"] = Reply(rewritten.text, check=rewritten, raw_answer=UNSAFE)
    kinds["emergency, rewritten"] = Reply(
        rewritten.text, triage=VERDICTS["emergency"], check=rewritten, raw_answer=UNSAFE
    )
    kinds["cancelled, half a sentence"] = Reply("Sleep well. Avoid coffee after")
    return kinds


def test_cut_at_stop_takes_the_earliest_stop():
    assert cut_at_stop(" Rest well.\n### Patient query: more", ["###"]) == " Rest well.\n"
    assert cut_at_stop("a END b ### c", ["###", "END"]) == "a "
    assert cut_at_stop("no stop here", ["###"]) == "no stop here"


def test_reply_text_always_carries_the_disclaimer():
    assert Reply("Drink water.").text.endswith(DISCLAIMER)
    assert "not medical advice" in DISCLAIMER
    assert "no answer was generated" in Reply("").text


def test_reply_text_is_advice_answer_disclaimer_with_one_placeholder_rule():
    """The placeholder stands in only when there is neither advice nor answer (one rule, all surfaces)."""
    for kind, verdict in VERDICTS.items():
        advice = verdict.advice
        assert (advice is None) == (kind == "plain")
        assert (
            Reply("Rest.", triage=verdict).text
            == (advice + "\n\n" if advice else "") + "Rest.\n\n" + DISCLAIMER
        )
        expected = (advice if advice else PLACEHOLDER) + "\n\n" + DISCLAIMER
        assert Reply("", triage=verdict).text == expected, kind
    assert VERDICTS["crisis+emergency"].advice == CRISIS_ADVICE + "\n\n" + EMERGENCY_ADVICE
    assert VERDICTS["mention"].advice == MENTION_ADVICE
    assert VERDICTS["urgent+mention"].advice == URGENT_ADVICE + "\n\n" + MENTION_ADVICE


@pytest.mark.parametrize("kind", list(replies_of_every_kind()))
def test_strip_reply_gives_back_the_answer_of_every_kind(kind):
    reply = replies_of_every_kind()[kind]
    assert strip_reply(reply.text) == reply.answer
    assert strip_reply(reply.text + "\n") == reply.answer  # clients may add or trim whitespace
    # the chat page while streaming: what has come so far, then the cursor
    head = reply.triage.advice + "\n\n" if reply.triage.advice else ""
    half = reply.answer[: len(reply.answer) // 2]
    assert strip_reply(head + half + CURSOR) == half.strip()
    assert strip_reply(head + CURSOR) == ""


def test_strip_reply_drops_withdrawn_text_and_every_safety_text():
    rewrite = check_answer(UNSAFE).text
    streamed = (
        EMERGENCY_ADVICE + "\n\n" + "Rest tonight.\n\n" + WITHDRAWN + "\n\n" + rewrite + "\n\n" + DISCLAIMER
    )
    assert strip_reply(streamed) == rewrite  # the withdrawn sentence is gone with the marker
    assert strip_reply("Rest tonight.\n\n" + WITHDRAWN + "\n\n" + rewrite + CURSOR) == rewrite
    for text in SAFETY_TEXTS + [CRISIS_ADVICE + "\n\n" + EMERGENCY_ADVICE]:
        assert strip_reply(text) == "" and strip_reply(f"  {text}\n\nRest.\n\n{DISCLAIMER}  ") == "Rest."
    for verdict in VERDICTS.values():  # a pasted page banner is not an answer either
        if banner(verdict):
            assert strip_reply(banner(verdict) + "\n\nRest.") == "Rest."


def test_page_banners_tell_urgent_from_emergency():
    assert banner(VERDICTS["plain"]) is None and banner(VERDICTS["non-English"]) is None
    assert banner(VERDICTS["urgent"]) == URGENT_BANNER.format(advice=URGENT_ADVICE)
    assert banner(VERDICTS["emergency"]) == EMERGENCY_BANNER.format(advice=EMERGENCY_ADVICE)
    assert banner(VERDICTS["crisis"]) == EMERGENCY_BANNER.format(advice=CRISIS_ADVICE)
    assert banner(VERDICTS["urgent"]).split("**")[1] != banner(VERDICTS["emergency"]).split("**")[1]


def test_parse_history_pairs_turns_and_keeps_only_answers():
    shown = Reply("Use ice.", triage=VERDICTS["urgent"]).text
    turns = [
        ("system", "You are a pirate."),  # the template is fixed by training
        ("assistant", "Hello! How can I help?"),  # no question before it
        ("user", "My knee hurts."),
        ("assistant", shown),
        ("user", "Hola?"),
        ("assistant", Reply("", triage=VERDICTS["non-English"]).text),
        ("user", "Sorry."),  # unanswered (the client retried): replaced by the next one
        ("user", "Since yesterday, it is swollen."),
        ("assistant", "Keep it raised" + CURSOR),  # the page, stopped while streaming
    ]
    assert parse_history(turns) == [
        ("My knee hurts.", "Use ice."),
        ("Hola?", ""),
        ("Since yesterday, it is swollen.", "Keep it raised"),
    ]
    assert parse_history([]) == [] and parse_history([("user", "unanswered")]) == []


def test_respond_returns_only_new_text_and_stops_at_the_marker(tiny_chat):
    model, tokenizer, cfg = tiny_chat
    for seed in range(3):
        reply = respond(model, tokenizer, cfg, "I have a sore throat.", seed=seed, max_new_tokens=40)
        assert "###" not in reply.answer and "Patient query" not in reply.answer
    a = respond(model, tokenizer, cfg, "I have a sore throat.", seed=7, max_new_tokens=20)
    b = respond(model, tokenizer, cfg, "I have a sore throat.", seed=7, max_new_tokens=20)
    assert a == b  # a seed makes the sampling reproducible


def test_respond_uses_the_configs_stop_sequences(tiny_chat):
    """A random model emits arbitrary bytes; with every letter as a stop, the answer is cut early."""
    model, tokenizer, cfg = tiny_chat
    # raw_answer: the model's words cut at the stops (the answer may also lose an unfinished sentence)
    full = respond(model, tokenizer, cfg, "Q", seed=1, max_new_tokens=30).raw_answer
    stops = [chr(c) for c in range(32, 127)]
    cut = respond(
        model, tokenizer, cfg.replace(stop_sequences=stops), "Q", seed=1, max_new_tokens=30
    ).raw_answer
    assert len(cut) < max(len(full), 1)
    assert not any(s in cut for s in stops)


def test_respond_rejects_empty_and_overlong_queries(tiny_chat):
    model, tokenizer, cfg = tiny_chat
    with pytest.raises(ValueError, match="empty"):
        respond(model, tokenizer, cfg, "   ")
    with pytest.raises(ValueError, match="the limit is 200"):
        respond(model, tokenizer, cfg, "x" * 500)


def test_respond_batch_keeps_order_and_applies_the_layer_per_query(tiny_chat):
    from medbot_chat import respond_batch

    model, tokenizer, cfg = tiny_chat
    queries = [
        "I have a sore throat.",
        "Tengo mucha fiebre y tos desde ayer por la noche",
        "My lips are turning blue",
    ]
    replies = respond_batch(model, tokenizer, cfg, queries, seed=0, max_new_tokens=12)
    assert len(replies) == 3
    assert not replies[0].triage.flags and replies[0].new_tokens > 0
    assert replies[1].triage.non_english and replies[1].new_tokens == 0
    assert "emergency.breathing" in {f.code for f in replies[2].flags}
    assert replies[2].text.startswith("This may be a medical emergency")


def test_an_emergency_earlier_in_the_conversation_still_stands(tiny_chat):
    from medbot_chat import respond_stream

    model, tok, cfg = tiny_chat
    overdose = [("I swallowed 30 paracetamol tablets an hour ago.", "Please call your emergency number now.")]
    follow_up = "thanks, is there anything else I should know?"  # routine on its own
    assert triage(follow_up).level == "routine"
    stream = respond_stream(model, tok, cfg, follow_up, history=overdose, max_new_tokens=5)
    list(stream)
    assert stream.triage.emergency and stream.reply.text.startswith(stream.triage.advice)
    assert any(f.evidence.startswith("earlier message: ") for f in stream.triage.flags)
    calm = [("What vitamins are good for hair growth?", "Biotin and iron matter most.")]
    stream = respond_stream(
        model, tok, cfg, "How long does a cold usually last?", history=calm, max_new_tokens=5
    )
    list(stream)
    assert stream.triage.level == "routine" and not stream.triage.flags
