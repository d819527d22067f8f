"""Streaming generation and the web server's API: same path as chat, limits, keys, concurrency."""

from __future__ import annotations

import json
import re
import statistics
import threading
import time

import pytest
import schemathesis
import torch
from conftest import ROOT
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from test_chat import SAFETY_TEXTS, VERDICTS

import medbot_chat
from medbot_chat import (
    CURSOR,
    DISCLAIMER,
    EMERGENCY_BANNER,
    URGENT_BANNER,
    WITHDRAWN,
    Reply,
    banner,
    respond,
    respond_stream,
    strip_reply,
)
from medbot_safety import EMERGENCY_ADVICE, check_answer, hold_sentence
from medbot_utils import chat_messages, render_chat


class ScriptedModel:
    """Stands in for a model whose words we choose: `generate` emits `text` token by token through
    the streamer and honours stopping criteria (used to test what the stream lets through)."""

    device = torch.device("cpu")

    def __init__(self, tokenizer, text: str, delay: float = 0.0) -> None:
        self.ids = tokenizer(text, return_tensors="pt")["input_ids"][0]
        self.delay, self.emitted = delay, 0
        self.tokenizer, self.prompts = tokenizer, []  # every prompt it was given, as text

    def parameters(self):
        return iter(())

    def generate(self, input_ids, streamer=None, stopping_criteria=(), max_new_tokens=None, **kwargs):
        self.prompts.append(self.tokenizer.decode(input_ids[0]))
        out = input_ids
        if streamer is not None:
            streamer.put(input_ids[0])  # as generate() does: the streamer skips the prompt it is given first
        for i, token in enumerate(self.ids[: max_new_tokens or len(self.ids)]):
            time.sleep(self.delay)
            out = torch.cat([out, token.view(1, 1)], dim=1)
            self.emitted = i + 1
            if streamer is not None:
                streamer.put(token.view(1))
            if any(bool(c(out, None).all()) for c in stopping_criteria):
                break
        if streamer is not None:
            streamer.end()
        return out


def test_stream_is_the_same_path_as_respond(tiny_chat):
    model, tok, cfg = tiny_chat
    for seed in (0, 5):
        stream = respond_stream(model, tok, cfg, "I have a sore throat.", seed=seed, max_new_tokens=40)
        pieces = list(stream)
        reply = respond(model, tok, cfg, "I have a sore throat.", seed=seed, max_new_tokens=40)
        assert stream.reply == reply  # same tokens, same safety verdicts
        if reply.check.safe:
            assert "".join(pieces) == reply.answer


def test_stream_releases_only_checked_sentences(tokenizer, tiny_chat):
    _, _, cfg = tiny_chat
    text = (
        "Rest and drink plenty of fluids tonight. Take 6000 mg of paracetamol every day. Then rest more. " * 3
    )
    model = ScriptedModel(tokenizer, text)
    stream = respond_stream(model, tokenizer, cfg, "I have a headache.", max_new_tokens=400)
    pieces = list(stream)
    shown = "".join(pieces)
    assert pieces[:3] == ["Rest", " and", " drink"]  # safe words stream as they arrive (one word behind)
    assert shown.startswith("Rest and drink plenty of fluids tonight.")
    assert "6000" not in shown  # the unsafe sentence never reaches the surface
    assert WITHDRAWN in shown and stream.reply.answer in shown  # withdrawn, replaced by the safe text
    assert stream.finish_reason == "safety"
    assert [f.code for f in stream.reply.check.flags] == ["answer.dose_over_max"]
    assert model.emitted < len(model.ids)  # generation was stopped, not run to the end


def test_no_unsafe_answer_is_ever_shown_while_streaming(tokenizer, tiny_chat):
    """Every unsafe answer of the safety set, streamed word by word: what a surface shows before
    the withdrawal always passes the answer check (the held sentence never leaks)."""
    _, _, cfg = tiny_chat
    rows = [json.loads(line) for line in (ROOT / "data" / "safety_answers.jsonl").read_text().splitlines()]
    unsafe = [r["text"] for r in rows if r["unsafe"]]
    assert len(unsafe) >= 30
    for text in unsafe:
        answer = "Thank you for asking about this. " + text + " I hope you feel better soon."
        long = cfg.replace(gen_max_length=2000)  # byte tokens: room for the whole answer
        stream = respond_stream(ScriptedModel(tokenizer, answer), tokenizer, long, "Q?", max_new_tokens=2000)
        before = "".join(stream).split(WITHDRAWN)[0]
        assert check_answer(before).safe, (text, before)
        assert not stream.reply.check.safe  # and the final answer was rewritten
        # of the unsafe sentence, at most harmless leading words ("This", "You") were shown:
        # nothing the hold rule names (numbers, drug names, stop/quit, certainty, "I am", ...)
        shown_of_unsafe = before.removeprefix("Thank you for asking about this.")
        assert not hold_sentence(shown_of_unsafe), (text, before)
        assert not re.search(r"\d", before), (text, before)  # no dose fragment ("Take 2000 mg of ...")


def test_chat_reads_the_answers_doses_with_the_question(tokenizer, tiny_chat):
    """The tablet strength the patient named multiplies the answer's count on every surface:
    "take 3 tablets four times a day" is 4.8 g of ibuprofen with the question's 400 mg tablets,
    and a harmless count stays harmless."""
    _, _, cfg = tiny_chat
    long = cfg.replace(gen_max_length=2000)
    question = "I have 400 mg ibuprofen tablets for my back, how many can I take?"
    for answer, unsafe in (("Take 3 tablets four times a day with food.", True),
                           ("Take 1 tablet three times a day with food.", False)):  # fmt: skip
        assert check_answer(answer, model=False).safe  # alone, the count names no strength
        reply = respond(ScriptedModel(tokenizer, answer), tokenizer, long, question, max_new_tokens=2000)
        stream = respond_stream(
            ScriptedModel(tokenizer, answer), tokenizer, long, question, max_new_tokens=2000
        )
        shown = "".join(stream)
        # a stream reads the question too: the unsafe dose is never shown, a harmless one is
        assert ("3 tablets" not in shown) if unsafe else (answer in shown), shown
        for r in (reply, stream.reply):
            assert ("answer.dose_over_max" in {f.code for f in r.flags}) is unsafe, (answer, r.flags)
            assert (r.answer == answer) is not unsafe  # rewritten, or shown as generated


def test_stream_triage_and_history(tokenizer, tiny_chat):
    _, _, cfg = tiny_chat
    model = ScriptedModel(tokenizer, "Call an ambulance now.")
    stream = respond_stream(model, tokenizer, cfg, "I have crushing chest pain spreading to my left arm")
    list(stream)
    assert stream.triage.emergency and stream.reply.text.startswith(EMERGENCY_ADVICE)
    history = [("My knee hurts.", "Rest it."), ("Since yesterday.", "Use ice.")]
    one_turn = render_chat(
        tokenizer, cfg.prompt_template, chat_messages("And now?", history[1:]), generation=True
    )
    fits_one = cfg.replace(gen_max_length=2 * len(tokenizer(one_turn)["input_ids"]) + 2)
    stream = respond_stream(model, tokenizer, fits_one, "And now?", history=history)
    list(stream)
    assert stream.prompt_turns == 1  # the oldest exchange is left out when the prompt is too long
    stream = respond_stream(model, tokenizer, cfg.replace(gen_max_length=1000), "And now?", history=history)
    list(stream)
    assert stream.prompt_turns == 2


def test_stream_cancel_and_timeout(tokenizer, tiny_chat):
    _, _, cfg = tiny_chat
    model = ScriptedModel(tokenizer, "Sleep well. " * 40, delay=0.01)
    stream = respond_stream(model, tokenizer, cfg, "I cannot sleep.", max_new_tokens=400)
    first = next(iter(stream))
    stream.cancel()
    rest = list(stream)
    assert first == "Sleep well." and stream.finish_reason == "cancelled" and model.emitted < len(model.ids)
    assert stream.reply.answer.startswith(first + "".join(rest))
    model = ScriptedModel(tokenizer, "Sleep well. " * 40, delay=0.01)
    stream = respond_stream(model, tokenizer, cfg, "I cannot sleep.", max_new_tokens=400)
    reader = iter(stream)
    next(reader)
    errors = []

    def drain():  # a second reader, as the server's drain thread after a client disconnects
        try:
            list(stream)
        except Exception as e:  # e.g. "generator already executing" without the stream's lock
            errors.append(e)

    drainers = [threading.Thread(target=drain) for _ in range(3)]
    for d in drainers:
        d.start()
    list(reader)
    stream.cancel()
    for d in drainers:
        d.join(10)
    assert not errors and stream.reply is not None
    real, tok, _ = tiny_chat
    timed = respond_stream(
        real, tok, cfg.replace(stop_sequences=["\x00\x01"]), "Q", max_new_tokens=150, max_time=0.02
    )
    list(timed)
    assert timed.finish_reason == "timeout" and timed.reply.new_tokens < 150


# ----------------------------------------------------------------------------- the API


@pytest.fixture(scope="module")
def make_client(tiny_chat):
    from fastapi.testclient import TestClient

    from medbot_web import Limits, Server, build_app

    def make(**kw):
        limits = Limits(**{k: v for k, v in kw.items() if k in Limits.__dataclass_fields__})
        server = Server(*tiny_chat, limits=limits, api_key=kw.get("api_key"), model_id="tiny",
                        log_messages=kw.get("log_messages", False))  # fmt: skip
        return TestClient(build_app(server, page_password=kw.get("api_key")))

    return make


def chat_body(content="I have a sore throat.", **kw):
    return {"messages": [{"role": "user", "content": content}], "seed": 3, "max_tokens": 30} | kw


def test_models_and_completion(make_client):
    client = make_client()
    assert client.get("/v1/models").json()["data"][0]["id"] == "tiny"
    r = client.post("/v1/chat/completions", json=chat_body())
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["message"]["content"].endswith(DISCLAIMER)
    assert choice["finish_reason"] in ("stop", "length", "content_filter")
    emergency = client.post(
        "/v1/chat/completions", json=chat_body("I have crushing chest pain and can't breathe")
    )
    assert emergency.json()["choices"][0]["message"]["content"].startswith(EMERGENCY_ADVICE)
    assert emergency.json()["medbot"]["emergency"] is True


def test_streaming_matches_non_streaming(make_client):
    client = make_client()
    whole = client.post("/v1/chat/completions", json=chat_body()).json()["choices"][0]["message"]["content"]
    with client.stream("POST", "/v1/chat/completions", json=chat_body(stream=True)) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] is not None
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == whole


@pytest.mark.parametrize(
    "body, status",
    [
        (chat_body("x" * 2001), 422),  # over the message limit
        (chat_body(temperature=3.0), 422),  # outside the safe sampling bounds
        (chat_body(temperature=1.685e-136), 422),  # found by fuzzing: overflowed to a 500
        ({"messages": [{"role": "assistant", "content": "hi"}]}, 422),  # nothing to answer
        ({"messages": [{"role": "user", "content": "   "}]}, 422),
        ({"messages": []}, 422),
        ({"messages": [{"role": "robot", "content": "hi"}]}, 422),
        (chat_body("x " * 1500), 422),  # fits the characters, not the model's length: clear 422
    ],
)
def test_bad_requests_get_422(make_client, body, status):
    r = make_client().post("/v1/chat/completions", json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["message"]


def test_unpaired_surrogates_get_422_not_500(make_client):
    """JSON may escape half a surrogate pair; tokenizers raise on it, so it must be refused first."""
    raw = '{"messages": [{"role": "user", "content": "chest pain \\ud800 now"}], "max_tokens": 5}'
    r = make_client().post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422 and "content" in r.json()["error"]["message"]  # pydantic refuses it


def test_oversize_bodies_get_413(make_client):
    client = make_client(max_body_bytes=1000)
    big = json.dumps(chat_body("a" * 1500))
    assert (
        client.post(
            "/v1/chat/completions", content=big, headers={"content-type": "application/json"}
        ).status_code
        == 413
    )

    def chunked():  # no Content-Length: counted while reading
        yield big[:600].encode()
        yield big[600:].encode()

    r = client.post("/v1/chat/completions", content=chunked(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_key_guards_every_endpoint(make_client):
    client = make_client(api_key="s3cret")
    assert client.get("/v1/models").status_code == 401
    assert client.post("/v1/chat/completions", json=chat_body()).status_code == 401
    assert client.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = {"Authorization": "Bearer s3cret"}
    assert client.get("/v1/models", headers=ok).status_code == 200
    assert client.post("/v1/chat/completions", json=chat_body(), headers=ok).status_code == 200
    # the chat page's own endpoints (config, queue, info) need the password; its login opens them
    assert client.get("/config").status_code == 401
    assert client.post("/gradio_api/queue/join", json={}).status_code == 401
    assert client.get("/gradio_api/info").status_code == 401
    assert client.post("/login", data={"username": "medbot", "password": "wrong"}).status_code >= 400
    assert client.post("/login", data={"username": "medbot", "password": "s3cret"}).status_code == 200
    assert client.get("/config").status_code == 200
    assert make_client().get("/config").status_code == 200  # and without a key, they are open


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_openapi_fuzz_finds_no_server_error(make_client, mode):
    """Schema-generated requests (valid, then invalid) to every operation: never a 5xx."""
    client = make_client(max_new_tokens=8, max_body_bytes=20_000)
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    calls = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if mode == GenerationMode.NEGATIVE and operation.method.upper() == "GET":
            continue  # nothing to break: /v1/models takes no input

        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy(generation_mode=mode))
        def fuzz(case):
            case.call_and_validate(checks=[not_a_server_error])
            calls.append(case.operation.label)

        fuzz()
    expected = {"POST /v1/chat/completions"} | (
        {"GET /v1/models"} if mode == GenerationMode.POSITIVE else set()
    )
    assert expected <= set(calls) and len(calls) >= 20


@pytest.fixture
def live_server(tiny_chat):
    """The app on a real port (uvicorn in a thread), for concurrency."""
    import socket

    from medbot_web import Limits, launch

    def start(queue_size: int) -> str:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        url, _ = launch(
            *tiny_chat, port=port, limits=Limits(queue_size=queue_size, max_new_tokens=40), block=False
        )
        return url

    return start


@pytest.mark.parametrize("queue_size", [19, 3])
def test_twenty_concurrent_chats_finish_or_are_refused_cleanly(live_server, queue_size):
    import httpx

    url = live_server(queue_size)
    results: list[tuple[int, float]] = []

    def one(i: int) -> None:
        t = time.monotonic()
        r = httpx.post(f"{url}/v1/chat/completions", json=chat_body(seed=i, stream=i % 2 == 0), timeout=120)
        if r.status_code == 200 and i % 2 == 0:
            assert r.text.rstrip().endswith("data: [DONE]")
        results.append((r.status_code, time.monotonic() - t))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = [c for c, _ in results]
    ok = sorted(s for c, s in results if c == 200)
    print(f"\nqueue {queue_size}: {codes.count(200)} finished, {codes.count(429)} refused (429); "
          f"latency of finished p50 {statistics.median(ok):.2f}s max {ok[-1]:.2f}s")  # fmt: skip
    assert len(results) == 20 and set(codes) <= {200, 429}
    if queue_size >= 19:
        assert codes.count(200) == 20  # everyone fits in the queue: all finish
    else:
        assert 4 <= codes.count(200) < 20 and codes.count(429) > 0  # the rest are refused, never 5xx


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_public_server_requires_a_key_by_default(tiny_chat, capsys, monkeypatch):
    import httpx

    from medbot_web import launch

    monkeypatch.delenv("MEDBOT_API_KEY", raising=False)
    port = _free_port()
    launch(*tiny_chat, host="0.0.0.0", port=port, block=False)  # reachable from other machines: public
    key = re.search(r"\(user 'medbot'\) is (\S+)", capsys.readouterr().out).group(1)
    url = f"http://127.0.0.1:{port}/v1/models"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": f"Bearer {key}"}).status_code == 200


def test_a_local_server_takes_its_key_from_the_environment(tiny_chat, monkeypatch):
    import httpx

    from medbot_web import launch

    monkeypatch.setenv("MEDBOT_API_KEY", "from-the-env")
    url, _ = launch(*tiny_chat, port=_free_port(), block=False)
    assert httpx.get(f"{url}/v1/models").status_code == 401
    assert httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer from-the-env"}).status_code == 200
    monkeypatch.delenv("MEDBOT_API_KEY")
    url, _ = launch(*tiny_chat, port=_free_port(), block=False)
    assert httpx.get(f"{url}/v1/models").status_code == 200  # localhost without a key: open


def test_logs_hold_no_message_text_unless_asked(make_client, caplog):
    import logging

    body = chat_body("My private symptom is zyxwvut rash.")
    with caplog.at_level(logging.INFO, logger="medbot.web"):
        make_client().post("/v1/chat/completions", json=body)
    assert "chars=" in caplog.text and "zyxwvut" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="medbot.web"):
        make_client(log_messages=True).post("/v1/chat/completions", json=body)
    assert "zyxwvut" in caplog.text


# ----------------------------------------------------------------------------- one reply text on every surface

UNSAFE_STREAM = (
    "Rest and drink plenty of fluids tonight. Take 6000 mg of paracetamol every day. Then rest more."
)
WITHDRAWN_SENTENCE = "Rest and drink plenty of fluids tonight."
MAX_TOKENS = 120  # room for all of UNSAFE_STREAM (cut short, "Take 6000 mg of par" would pass the check)
# kind -> (what the model says: None for the tiny random Falcon, else scripted; the verdict; cancelled?)
REPLY_KINDS = {
    "plain": (None, "plain", False),
    "emergency": (None, "emergency", False),
    "urgent": (None, "urgent", False),
    "crisis": (None, "crisis", False),
    "crisis+emergency": (None, "crisis+emergency", False),
    "non-English": (None, "non-English", False),
    "mention": (None, "mention", False),  # the crisis line beside the answer
    "rewritten": (UNSAFE_STREAM, "plain", False),  # shown, then withdrawn by the answer check
    "emergency, rewritten": (UNSAFE_STREAM, "emergency", False),
    "no answer": ("", "plain", False),  # the placeholder
    "emergency, no answer": ("", "emergency", False),  # advice, no placeholder
    "cancelled": ("Sleep well. " * 40, "plain", True),
}


def _cancel_after_first_piece(stream) -> None:
    """As when a server stops a request mid-way: cancel() once the first piece has been read."""
    pieces = stream._pieces

    def cancelling():
        for i, piece in enumerate(pieces):
            if i == 0:
                stream.cancel()
            yield piece

    stream._pieces = cancelling()


@pytest.fixture
def kind_server(tiny_chat, tokenizer, monkeypatch):
    """make(kind, cfg=None) -> (TestClient of the real app, its Server, the ReplyStreams it made)."""
    from fastapi.testclient import TestClient

    from medbot_web import Server, build_app

    def make(kind: str, cfg=None):
        script, verdict, cancel = REPLY_KINDS[kind]
        model = tiny_chat[0] if script is None else ScriptedModel(tokenizer, script, delay=0.01 * cancel)
        monkeypatch.setattr(medbot_chat, "triage", lambda message: VERDICTS[verdict])
        roomy = tiny_chat[2].replace(gen_max_length=1000)  # byte tokens: room for a scripted answer
        server = Server(model, tokenizer, cfg or (tiny_chat[2] if script is None else roomy), model_id="tiny")
        streams, make_stream = [], server.stream

        def stream(*args):
            made = make_stream(*args)
            if cancel:
                _cancel_after_first_piece(made)
            streams.append(made)
            return made

        server.stream = stream
        return TestClient(build_app(server)), server, streams

    return make


def sse_text(client, body) -> tuple[str, str]:
    """(the text a streaming client assembles from the chunks, the last finish_reason)."""
    with client.stream("POST", "/v1/chat/completions", json=body | {"stream": True}) as r:
        assert r.status_code == 200, r.read()
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e)["choices"][0] for e in events[:-1]]
    return "".join(c["delta"].get("content", "") for c in chunks), chunks[-1]["finish_reason"]


@pytest.mark.parametrize("kind", list(REPLY_KINDS))
def test_every_kind_of_reply_is_reply_text_on_the_api(kind_server, kind):
    """Non-streaming API content == Reply.text of the same request; stripping it gives the answer;
    the same request through respond_stream()/respond() (same seed) shows the same text; a
    streaming client assembles Reply.text, or after a withdrawal the documented marked text."""
    client, server, streams = kind_server(kind)
    body = chat_body("I have a sore throat.", max_tokens=MAX_TOKENS)
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    content = r.json()["choices"][0]["message"]["content"]
    stream = streams[-1]
    reply = stream.reply
    assert content == reply.text
    assert strip_reply(content) == reply.answer
    assert r.json()["medbot"]["emergency"] == reply.triage.emergency
    assert r.json()["medbot"]["level"] == reply.triage.level
    assert WITHDRAWN not in content and WITHDRAWN_SENTENCE not in content  # never to a non-streaming client
    assert ("no answer was generated" in content) == (not reply.answer and not reply.triage.advice)
    if kind == "cancelled":
        assert stream.finish_reason == "cancelled" and server.model.emitted < len(server.model.ids)
    else:  # the chat path itself, outside the server, with the same seed
        again = server.stream(body["messages"][0]["content"], [], {}, MAX_TOKENS, body["seed"])
        list(again)
        assert again.reply.text == content
        if "rewritten" not in kind:  # (the stream stops at the unsafe sentence, respond() does not)
            model, tok, cfg = server.model, server.tokenizer, server.cfg
            assert (
                respond(model, tok, cfg, "I have a sore throat.", seed=3, max_new_tokens=MAX_TOKENS).text
                == content
            )
    if "rewritten" in kind:
        assert not reply.check.safe and r.json()["choices"][0]["finish_reason"] == "content_filter"

    text, finish = sse_text(client, body)
    stream = streams[-1]
    assert text == stream.assembled and strip_reply(text) == stream.reply.answer
    if "rewritten" in kind:  # shown text cannot be unsaid: it is withdrawn, then the safe text follows
        shown = stream.streamed.split("\n\n" + WITHDRAWN)[0]
        assert shown.startswith(WITHDRAWN_SENTENCE) and check_answer(shown).safe
        assert (
            text == stream.head + shown + "\n\n" + WITHDRAWN + "\n\n" + stream.reply.text[len(stream.head) :]
        )
        assert finish == "content_filter"
    else:
        assert text == stream.reply.text
        if kind != "cancelled":
            assert text == content


def test_history_sent_back_puts_no_safety_text_into_the_prompt(kind_server, tokenizer, tiny_chat):
    """What clients send back (a streamed text with emergency advice and a withdrawal, every other
    kind of shown reply, a page message stopped mid-stream) becomes answers only in the prompt."""
    from medbot_web import page_turn

    roomy = tiny_chat[2].replace(gen_max_length=20_000)  # byte tokens: room for the whole conversation
    client, _, _ = kind_server("emergency, rewritten", roomy)
    streamed, _ = sse_text(client, chat_body("I have crushing chest pain.", max_tokens=400))
    assert streamed.startswith(EMERGENCY_ADVICE) and WITHDRAWN in streamed and WITHDRAWN_SENTENCE in streamed
    rewrite = check_answer(UNSAFE_STREAM, verdict=VERDICTS["emergency"]).text  # as the final check read it
    history = [
        ("I have crushing chest pain.", streamed, rewrite),
        ("Tengo fiebre y tos.", Reply("", triage=VERDICTS["non-English"]).text, ""),
        (
            "I took 40 pills.",
            Reply("Please call now.", triage=VERDICTS["crisis+emergency"]).text,
            "Please call now.",
        ),
        (
            "I want to end it.",
            Reply("You are not alone.", triage=VERDICTS["crisis"]).text,
            "You are not alone.",
        ),
        ("My knee is swollen.", Reply("Keep it raised.", triage=VERDICTS["urgent"]).text, "Keep it raised."),
        ("Hmm?", Reply("").text, ""),  # the placeholder
        ("I cannot sleep.", EMERGENCY_ADVICE + "\n\nAvoid coffee" + CURSOR, "Avoid coffee"),  # page, stopped
    ]
    messages = [{"role": role, "content": text} for q, shown, _ in history for role, text in (("user", q), ("assistant", shown))]  # fmt: skip
    client, server, _ = kind_server("no answer", roomy)  # a scripted model that records its prompts
    r = client.post(
        "/v1/chat/completions", json={"messages": messages + [{"role": "user", "content": "And now?"}]}
    )
    assert r.status_code == 200, r.text
    list(page_turn(server, "And now?", messages, 0.7, 0.95, 5))  # the chat page's history, as Gradio sends it
    api_prompt, page_prompt = server.model.prompts
    expected = render_chat(
        server.tokenizer,
        roomy.prompt_template,
        chat_messages("And now?", [(q, answer) for q, _, answer in history]),
        generation=True,
    )
    assert api_prompt == page_prompt == expected
    banners = [EMERGENCY_BANNER.split("{")[0].strip(), URGENT_BANNER.split("{")[0].strip()]
    for text in SAFETY_TEXTS + banners + [CURSOR, WITHDRAWN_SENTENCE, "no answer was generated"]:
        assert text not in api_prompt, text


@pytest.mark.parametrize(
    "kind, shown",
    [
        ("plain", None),
        ("non-English", None),
        ("urgent", "urgent"),
        ("emergency", "emergency"),
        ("crisis", "emergency"),
        ("crisis+emergency", "emergency"),
        ("emergency, rewritten", "emergency"),
    ],
)
def test_page_ends_on_reply_text_and_shows_urgent_apart_from_emergency(kind_server, kind, shown):
    from medbot_web import page_turn

    client, server, streams = kind_server(kind)
    config = client.get("/config").json()
    ids = [c.get("props", {}).get("elem_id") for c in config["components"]]
    assert "emergency-banner" in ids and "urgent-banner" in ids  # two elements, styled apart
    assert "#urgent-banner" in config["css"] and "#emergency-banner" in config["css"]
    updates = list(page_turn(server, "I have a sore throat.", [], 0.7, 0.95, MAX_TOKENS))
    assert all(text.endswith(CURSOR) for text, _, _ in updates[:-1])  # streaming...
    assert updates[-1][0] == streams[-1].reply.text  # ...and the final message is Reply.text
    for _, emergency, urgent in updates:
        assert emergency["visible"] == (shown == "emergency") and urgent["visible"] == (shown == "urgent")
        if shown:
            update = emergency if shown == "emergency" else urgent
            assert update["value"] == banner(VERDICTS[REPLY_KINDS[kind][1]])
            assert update["value"].startswith("🚨" if shown == "emergency" else "⚠️")


def test_urgent_verdicts_come_first_and_reach_the_api(kind_server):
    """An urgent verdict (made by hand until the learned triage lands) is advice, not an emergency."""
    client, _, _ = kind_server("urgent")
    r = client.post("/v1/chat/completions", json=chat_body(max_tokens=20)).json()
    assert r["choices"][0]["message"]["content"].startswith(VERDICTS["urgent"].advice)
    assert r["medbot"]["emergency"] is False and r["medbot"]["level"] == "urgent"
    assert r["medbot"]["flags"][0] == "urgent.test"


# ----------------------------------------------------------------------------- slow and hostile clients


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def slow_server(tiny_chat, tokenizer):
    """launch() on a real port with a scripted model that takes `delay` seconds a token."""
    from medbot_web import Limits, launch

    def start(delay: float = 0.0, **limits) -> tuple[str, ScriptedModel]:
        model = ScriptedModel(tokenizer, "Rest and drink plenty of water. " * 8, delay=delay)
        cfg = tiny_chat[2].replace(gen_max_length=2000)
        url, _ = launch(model, tokenizer, cfg, port=_free_port(), limits=Limits(**limits), block=False)
        return url, model

    return start


def test_slowloris_connections_are_closed_and_real_requests_still_served(slow_server):
    import socket

    import httpx

    url, _ = slow_server(header_timeout_s=1.0)
    port = int(url.rsplit(":", 1)[1])
    idle = []
    for _ in range(60):  # half-open requests: headers begun, never finished
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        idle.append(s)
    assert httpx.get(f"{url}/v1/models", timeout=5).status_code == 200  # served meanwhile
    time.sleep(2.0)
    for s in idle:
        s.settimeout(2)
        assert s.recv(100) == b""  # closed by the server
        s.close()


def test_a_body_sent_too_slowly_gets_408_and_frees_the_connection(slow_server):
    import socket

    url, _ = slow_server(body_timeout_s=1.0)
    port = int(url.rsplit(":", 1)[1])
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              b"Content-Length: 200\r\n\r\n{\"messages\"")  # fmt: skip
    s.settimeout(5)
    started = time.monotonic()
    answer = s.recv(1000)
    first = time.monotonic() - started
    while b'"timeout"' not in answer:  # the body may come in a later packet than the headers
        more = s.recv(1000)
        if not more:
            break
        answer += more
    assert answer.startswith(b"HTTP/1.1 408") and b'"timeout"' in answer and first < 4
    s.close()


def test_an_abandoned_non_streaming_request_stops_generating(slow_server):
    import socket

    import httpx

    url, model = slow_server(delay=0.05, max_new_tokens=200)
    port = int(url.rsplit(":", 1)[1])
    body = json.dumps(chat_body(max_tokens=200)).encode()
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)  # fmt: skip
    time.sleep(1.0)
    s.close()  # the client gives up
    started = time.monotonic()
    r = httpx.post(f"{url}/v1/chat/completions", json=chat_body(max_tokens=5), timeout=30)
    assert r.status_code == 200
    assert time.monotonic() - started < 5  # the abandoned one (200 tokens: 10 s) was cancelled
    assert model.emitted == 5  # and the second ran to its own end


def test_connections_beyond_the_cap_get_503_at_once_and_the_server_recovers(slow_server):
    """The connection cap (uvicorn's limit_concurrency) under load: while the cap is held by open
    streaming requests, every further request is refused with 503 at once (no hang, no crash), and
    once those clients go away the server answers again."""
    import socket

    import httpx

    cap = 6
    url, _ = slow_server(delay=0.05, max_connections=cap, queue_size=20, max_new_tokens=200)
    port = int(url.rsplit(":", 1)[1])
    body = json.dumps(chat_body(max_tokens=200, stream=True)).encode()
    held = []
    for _ in range(cap - 1):  # the connection that asks next is the cap-th: refused
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)  # fmt: skip
        held.append(s)
    time.sleep(0.5)
    codes: list[int] = []

    def one() -> None:
        codes.append(httpx.get(f"{url}/v1/models", timeout=10).status_code)

    started = time.monotonic()
    threads = [threading.Thread(target=one) for _ in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [503] * 30 and time.monotonic() - started < 5
    for s in held:  # the streaming clients go away: their generations stop, their slots free
        s.close()
    deadline = time.monotonic() + 10
    while httpx.get(f"{url}/v1/models", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "the server did not recover after the clients left"
        time.sleep(0.2)
    r = httpx.post(f"{url}/v1/chat/completions", json=chat_body(max_tokens=5), timeout=30)
    assert r.status_code == 200


def test_a_burst_of_waiting_requests_does_not_stall_the_server(slow_server):
    import httpx

    url, _ = slow_server(delay=0.01, queue_size=60, max_new_tokens=5)
    codes: list[int] = []

    def one() -> None:
        codes.append(
            httpx.post(f"{url}/v1/chat/completions", json=chat_body(max_tokens=5), timeout=120).status_code
        )

    threads = [threading.Thread(target=one) for _ in range(55)]  # more than the 40 worker threads
    for t in threads:
        t.start()
    time.sleep(1.0)
    started = time.monotonic()
    assert httpx.get(f"{url}/v1/models", timeout=10).status_code == 200
    assert time.monotonic() - started < 2  # waiting requests hold no worker thread
    for t in threads:
        t.join()
    assert codes.count(200) == 55


def test_guard_key_before_body_limits_everywhere_rate_limit_and_one_error_shape(make_client, caplog):
    client = make_client(api_key="k3y", max_body_bytes=2000)
    big = {"content-length": str(10 * 2**20), "content-type": "application/json"}
    r = client.post("/gradio_api/queue/join", content=b"{}", headers=big)  # a page route, no login
    assert r.status_code == 413 and r.json()["error"]["type"] == "too_large"
    r = client.post("/v1/chat/completions", content=b"{not json", headers={"authorization": "Bearer nope"})
    assert r.status_code == 401  # the key is checked before the body is read or parsed
    r = client.post("/v1/chat/completions", content=b"{not json", headers={"authorization": "Bearer k3y"})
    assert r.status_code == 422 and "error" in r.json()  # not FastAPI's {"detail": ...}
    assert (
        client.get("/v1/nope", headers={"authorization": "Bearer k3y"}).json()["error"]["type"] == "refused"
    )
    for path in ("/docs", "/redoc"):
        assert client.get(path).status_code == 404
    assert client.get("/openapi.json").status_code == 401
    assert client.get("/openapi.json", headers={"x-api-key": "k3y"}).json()["info"]["title"] == "medbot"
    with caplog.at_level("INFO", logger="medbot.web"):
        for _ in range(9):  # 1 + 1 + 9 wrong keys from this client this minute
            client.get("/v1/models", headers={"authorization": "Bearer guess"})
        r = client.get("/v1/models", headers={"authorization": "Bearer k3y"})
    assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limited"  # even the right key, for now
    lines = [m for m in caplog.messages if "refused" in m]
    assert any("status=401" in m for m in lines) and any("status=429" in m for m in lines)
    assert not any("guess" in m or "k3y" in m for m in caplog.messages)  # no keys or text in logs


def test_localhost_default_refuses_other_host_headers_and_page_analytics_are_off(tiny_chat):
    from fastapi.testclient import TestClient

    from medbot_web import Server, build_app

    app = build_app(Server(*tiny_chat), allowed_hosts=["127.0.0.1", "localhost", "::1"])
    client = TestClient(app, base_url="http://localhost:7860")
    assert client.get("/v1/models").status_code == 200
    assert client.get("/v1/models", headers={"host": "attacker.example"}).status_code == 400  # DNS rebinding
    assert client.get("/config").json()["analytics_enabled"] is False


def test_one_log_message_floods_no_more_than_a_few_times_a_minute():
    import logging

    from medbot_web import OncePerMinute

    flood = OncePerMinute(limit=5)
    record = logging.LogRecord("uvicorn.error", logging.ERROR, __file__, 1, "Too many open files", None, None)
    assert sum(flood.filter(record) for _ in range(100_000)) == 5
    refusals = [logging.LogRecord("medbot.web", logging.INFO, __file__, 1, "%s refused status=%d", (f"req-{i:012x}", 429), None)
                for i in range(50)]  # fmt: skip
    assert sum(flood.filter(r) for r in refusals) == 5  # request ids differ; the message is the same
    other = logging.LogRecord(
        "medbot.web", logging.INFO, __file__, 1, "%s refused status=%d", ("req-1", 401), None
    )
    assert flood.filter(other)


def test_wrong_page_passwords_lock_the_client_out_for_a_minute(make_client):
    client = make_client(api_key="pw")
    codes = [
        client.post("/login", data={"username": "medbot", "password": "guess"}).status_code for _ in range(11)
    ]
    assert codes[:10] == [400] * 10 and codes[10] == 429
    assert client.post("/login", data={"username": "medbot", "password": "pw"}).status_code == 429


def test_gradio_routes_that_skip_its_login_need_a_logged_in_session(make_client):
    client = make_client(api_key="pw")
    private = ["/gradio_api/token", "/gradio_api/app_id", "/gradio_api/user", "/gradio_api/startup-events",
               "/gradio_api/heartbeat/abc", "/gradio_api/run-history/buckets"]  # fmt: skip
    for path in private:
        r = client.get(path)
        assert r.status_code == 401 and r.json()["error"]["type"] == "unauthorized", path
    assert client.post("/gradio_api/reset", json={}).status_code == 401
    assert client.get("/config").status_code == 401  # Gradio's own check, still there
    assert client.get("/").status_code == 200  # the login page itself
    client.cookies.set("access-token-unsecure-x", "forged")
    assert client.get("/gradio_api/token").status_code == 401  # a cookie must name a live session
    assert client.post("/login", data={"username": "medbot", "password": "pw"}).status_code == 200
    assert client.get("/gradio_api/app_id").status_code == 200
    assert client.get("/config").status_code == 200
    open_client = make_client()  # no password on localhost: nothing changes
    assert open_client.get("/gradio_api/app_id").status_code == 200


def test_lockouts_key_on_the_forwarded_client_behind_a_trusted_proxy(tiny_chat, monkeypatch):
    """Behind a proxy on this machine (or Gradio's share tunnel) every request comes from loopback:
    the lockout must follow X-Forwarded-For, so one client's guesses do not lock out the others;
    from a peer not in forwarded_allow_ips the header is ignored (no one can pick an address)."""
    import httpx

    from medbot_web import launch

    monkeypatch.setenv("MEDBOT_API_KEY", "k3y")
    url, _ = launch(*tiny_chat, port=_free_port(), block=False)
    models = f"{url}/v1/models"
    guesser = {"x-forwarded-for": "203.0.113.5", "authorization": "Bearer guess"}
    codes = [httpx.get(models, headers=guesser).status_code for _ in range(11)]
    assert codes[:10] == [401] * 10 and codes[10] == 429
    assert httpx.get(models, headers={**guesser, "authorization": "Bearer k3y"}).status_code == 429
    other = {"x-forwarded-for": "203.0.113.6", "authorization": "Bearer k3y"}
    assert httpx.get(models, headers=other).status_code == 200  # another client behind the proxy
    assert httpx.get(models, headers={"authorization": "Bearer k3y"}).status_code == 200  # the proxy itself

    url, _ = launch(*tiny_chat, port=_free_port(), block=False, forwarded_allow_ips="192.0.2.1")
    models = f"{url}/v1/models"  # loopback is not a trusted proxy here: the header is ignored
    codes = [httpx.get(models, headers={**guesser, "x-forwarded-for": f"198.51.100.{i}"}).status_code
             for i in range(11)]  # fmt: skip
    assert codes[10] == 429  # a new claimed address each time did not escape the lockout
