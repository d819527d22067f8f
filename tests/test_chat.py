"""The one generation path: template from the saved config, stop at `###`/EOS, answer text only."""

from __future__ import annotations

import pytest

from medbot_chat import DISCLAIMER, Reply, cut_at_stop, respond


def test_cut_at_stop_takes_the_earliest_stop():
    assert cut_at_stop(" Rest well.\n### Patient query: more", ["###"]) == " Rest well.\n"
    assert cut_at_stop("a END b ### c", ["###", "END"]) == "a "
    assert cut_at_stop("no stop here", ["###"]) == "no stop here"


def test_reply_text_always_carries_the_disclaimer():
    assert Reply("Drink water.").text.endswith(DISCLAIMER)
    assert "not medical advice" in DISCLAIMER
    assert "no answer was generated" in Reply("").text


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
    full = respond(model, tokenizer, cfg, "Q", seed=1, max_new_tokens=30).answer
    stops = [chr(c) for c in range(32, 127)]
    cut = respond(model, tokenizer, cfg.replace(stop_sequences=stops), "Q", seed=1, max_new_tokens=30).answer
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
