"""Evaluation metrics on hand-made inputs with known answers, and option scoring on a tiny model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from medbot_eval import (
    Embedder,
    answer_metrics,
    answer_perplexity,
    bleu,
    knowledge_accuracy,
    load_mcq,
    option_logprobs,
    paired_bootstrap,
    rouge_l,
)
from medbot_utils import Dialogue


def test_rouge_l_known_values():
    assert rouge_l("rest and drink water", "rest and drink water") == pytest.approx(1.0)
    assert rouge_l("completely different words", "rest and drink water") == 0.0
    # LCS "rest water" = 2 of 4 and 2 of 2 -> P=1, R=0.5, F=2/3
    assert rouge_l("rest water", "rest and drink water") == pytest.approx(2 / 3)


def test_bleu_known_values():
    assert bleu(
        "the patient should rest and drink plenty of water",
        "the patient should rest and drink plenty of water",
    ) == pytest.approx(100.0)
    assert bleu("xyz", "the patient should rest") < 1.0


def test_semantic_similarity_orders_paraphrases_above_unrelated():
    emb = Embedder()
    s = answer_metrics(
        ["Drink fluids and rest until the fever settles.", "The stock market fell sharply today."],
        [
            "Rest and drink plenty of water while you have a fever.",
            "Rest and drink plenty of water while you have a fever.",
        ],
        emb,
    )
    assert s["similarity"][0] > 0.6 > 0.2 > s["similarity"][1]
    assert s["words"] == [8.0, 6.0]


def test_paired_bootstrap_interval():
    a, b = [1.0] * 50, [0.0] * 50
    r = paired_bootstrap(a, b)
    assert r == {"diff": 1.0, "low": 1.0, "high": 1.0}
    noisy = paired_bootstrap([0.1 * (i % 3) for i in range(90)], [0.1] * 90)
    assert noisy["diff"] == pytest.approx(0.0, abs=1e-12)
    assert noisy["low"] < 0.0 < noisy["high"]
    with pytest.raises(ValueError):
        paired_bootstrap([1.0], [])


@pytest.fixture(scope="module")
def tiny(tiny_falcon_dir):
    from medbot_config import reference
    from medbot_model import load_base_model, load_tokenizer

    cfg = reference().replace(model_name=str(tiny_falcon_dir), load_in_4bit=False, compute_dtype="fp32")
    return load_base_model(cfg).eval(), load_tokenizer(cfg), cfg


def test_answer_perplexity_matches_a_direct_computation(tiny):
    model, tok, cfg = tiny
    d = [
        Dialogue("I have a cough.", "Rest well.", "t:1"),
        Dialogue("My knee hurts after running.", "Ice it.", "t:2"),
    ]
    ppl = answer_perplexity(model, tok, cfg, d, batch=2)
    from medbot_utils import tokenize_conversation

    total, n = 0.0, 0
    for x in d:
        s = tokenize_conversation(tok, x.messages(), cfg.prompt_template, cfg.max_length)
        ids = torch.tensor([s["input_ids"]])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1], -1)
        for pos in range(s["prompt_len"], len(s["input_ids"])):
            total -= float(logp[pos - 1, s["input_ids"][pos]])
            n += 1
    assert ppl == pytest.approx(math.exp(total / n), rel=1e-4)


def test_option_scoring_equals_scoring_each_option_whole(tiny):
    """The shared-question cache gives the log-probabilities of question + option run one at a time."""
    model, tok, _ = tiny
    options = {"A": "rest at home", "B": "no", "C": "see a doctor today", "D": ""}  # D: a one-token option
    got = option_logprobs(model, tok, "My throat hurts. What should I do?", options)
    p_ids = tok("Question: My throat hurts. What should I do?\nAnswer:")["input_ids"]
    for k, text in options.items():
        o_ids = tok(" " + text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([p_ids + o_ids])).logits[0], -1)
        want = sum(float(logp[len(p_ids) + i - 1, t]) for i, t in enumerate(o_ids)) / len(o_ids)
        assert got[k] == pytest.approx(want, abs=1e-4)


def test_option_scoring_prefers_what_the_model_finds_likely(tiny):
    model, tok, _ = tiny
    scores = option_logprobs(model, tok, "Which is right?", {"A": "yes", "B": "no", "C": "maybe"})
    assert set(scores) == {"A", "B", "C"} and all(s < 0 for s in scores.values())
    best = max(scores, key=scores.get)
    q = [
        {"question": "Which is right?", "options": {"A": "yes", "B": "no", "C": "maybe"}, "answer_idx": best}
    ]
    assert knowledge_accuracy(model, tok, q)["accuracy"] == 1.0
    q[0]["answer_idx"] = "A" if best != "A" else "B"
    assert knowledge_accuracy(model, tok, q)["accuracy"] == 0.0


def test_load_mcq_validates(tmp_path):
    f = tmp_path / "q.jsonl"
    f.write_text(json.dumps({"question": "q", "options": {"A": "x"}, "answer_idx": "B"}) + "\n")
    with pytest.raises(ValueError, match=r"q\.jsonl:1"):
        load_mcq(f)


def test_long_loops_show_a_progress_bar_unless_quiet(tiny, capsys, monkeypatch):
    from medbot_eval import knowledge_accuracy

    model, tok, _ = tiny
    questions = [
        {"question": f"Q{i}?", "options": {"A": "yes", "B": "no"}, "answer_idx": "A"} for i in range(3)
    ]
    monkeypatch.setenv("MEDBOT_PROGRESS", "1")
    knowledge_accuracy(model, tok, questions)
    bar = capsys.readouterr().err
    assert "knowledge questions" in bar and "/3 [" in bar  # count of the total, and a rate
    monkeypatch.setenv("MEDBOT_PROGRESS", "0")  # what --quiet sets
    knowledge_accuracy(model, tok, questions)
    assert "knowledge questions" not in capsys.readouterr().err


def test_prompts_that_leave_no_room_to_answer_are_skipped_and_counted(tiny):
    """A long forum post can exceed the generation budget: it is left out of the generated
    evaluation (and counted), instead of stopping the whole evaluation with an error."""
    from medbot_eval import fits_for_generation

    _, tok, cfg = tiny
    cfg = cfg.replace(gen_max_length=200)  # the byte tokenizer: one token a character
    rows = [Dialogue("I have a cough.", "Rest.", "t:1"), Dialogue("x" * 300, "Too long.", "t:2"),
            Dialogue("Short again.", "Fine.", "t:3", history=[("y" * 150, "An earlier long turn.")])]  # fmt: skip
    kept, skipped = fits_for_generation(tok, cfg, rows)
    assert [d.where for d in kept] == ["t:1"] and skipped == 2  # the history counts too
    assert fits_for_generation(tok, cfg.replace(gen_max_length=2000), rows) == (rows, 0)
