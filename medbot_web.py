"""The web app: a streaming chat page and an OpenAI-compatible API on one server.

    python medbot_web.py                                          # embedded default, http://127.0.0.1:7860
    python medbot_web.py --adapter falcon-patient-chatbot/adapter # your fine-tuned model
    python medbot_web.py --share                                  # public link (Colab); password required

    curl localhost:7860/v1/chat/completions -H 'content-type: application/json' \\
        -d '{"messages": [{"role": "user", "content": "I have a sore throat."}], "stream": true}'

Every answer comes from `respond_stream` (medbot_chat.py), the notebook's generation path with
the safety layer inside: emergency advice first, text released only after the answer check,
the disclaimer on every reply. The chat turn itself (what is shown, how history a client sends back
becomes the prompt's exchanges) lives in medbot_chat.py; this module only transports it: a
non-streaming response is exactly `Reply.text`, a stream is `ReplyStream.head`, its pieces and
`ReplyStream.tail`, and the page's final message is `Reply.text`. One model serves one request at
a time; `queue_size` more wait, the rest get 429. Message text is never logged unless
`--log-messages` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from typing import Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from medbot_chat import CURSOR, DISCLAIMER, ReplyStream, banner, parse_history, respond_stream
from medbot_config import MedbotConfig, add_config_arguments, config_overrides

log = logging.getLogger("medbot.web")

MAX_MESSAGE_CHARS = 4000  # schema bounds; `Limits` may set tighter ones
MAX_MESSAGES = 64
MIN_TEMPERATURE = 0.05  # below this (but above 0, greedy) sampling overflows
API_KEY_ENV = "MEDBOT_API_KEY"


@dataclass
class Limits:
    """What one server accepts; every limit answers with a clear 4xx, never a crash."""

    max_message_chars: int = 2000  # longest single message (422 above it)
    max_body_bytes: int = 64 * 1024  # largest request body on any route (413 above it, before parsing)
    body_timeout_s: float = 10.0  # a body not fully sent by then gets 408 (slow clients hold nothing)
    header_timeout_s: float = 10.0  # a connection whose request headers are not complete by then is closed
    max_connections: int = 200  # open connections beyond this get 503 (uvicorn's limit_concurrency)
    auth_failures: int = 10  # wrong keys or passwords per client per minute; more get 429
    queue_size: int = 8  # requests that may wait while one generates (429 beyond)
    queue_wait_s: float = 120.0  # a waiting request gives up with 429 after this
    gen_timeout_s: float = 60.0  # generation stops after this (finish_reason "length")
    max_new_tokens: int = 256  # upper bound of a request's max_tokens


class Gate:
    """One generation at a time (one model, one device); a bounded queue waits, the rest are refused."""

    def __init__(self, queue_size: int, wait_s: float) -> None:
        self.capacity, self.wait_s = 1 + queue_size, wait_s
        self._run = threading.Lock()
        self._count = threading.Lock()
        self.admitted = 0

    def enter(self) -> bool:
        """Blocks until it is this request's turn; False when the queue is full or the wait too long."""
        with self._count:
            if self.admitted >= self.capacity:
                return False
            self.admitted += 1
        if self._run.acquire(timeout=self.wait_s):
            return True
        with self._count:
            self.admitted -= 1
        return False

    async def enter_async(self) -> bool:
        """`enter` for the event loop: waits without holding a worker thread (a burst of waiting
        requests would otherwise take every thread, and the running one could not get one)."""
        with self._count:
            if self.admitted >= self.capacity:
                return False
            self.admitted += 1
        deadline = time.monotonic() + self.wait_s
        while not self._run.acquire(blocking=False):
            if time.monotonic() > deadline:
                with self._count:
                    self.admitted -= 1
                return False
            await asyncio.sleep(0.02)
        return True

    def leave(self) -> None:
        self._run.release()
        with self._count:
            self.admitted -= 1


# ----------------------------------------------------------------------------- OpenAI-compatible schema


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=MAX_MESSAGE_CHARS)


class ChatRequest(BaseModel):
    """The subset of OpenAI's chat-completions request that a local model can honour."""

    model_config = ConfigDict(extra="ignore")  # clients send many optional fields; unknown ones are ignored

    model: str | None = None
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    stream: bool = False
    temperature: float | None = Field(None, ge=0.0, le=1.5, description="0 = greedy, else at least 0.05")
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=1, le=200)
    max_tokens: int | None = Field(None, ge=1, le=4096)
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    n: int = Field(1, ge=1, le=1, description="one answer per request")

    @field_validator("temperature")
    @classmethod
    def _usable_temperature(cls, value: float | None) -> float | None:
        # found by fuzzing: logits / 1e-136 overflow to inf and sampling fails
        if value is not None and 0 < value < MIN_TEMPERATURE:
            raise ValueError(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE}")
        return value


def split_conversation(messages: list[Message], limit: int) -> tuple[str, list[tuple[str, str]]]:
    """(latest patient message, earlier (patient, answer) exchanges by `parse_history`); system
    messages are ignored because the prompt template is fixed by training."""
    turns = [m for m in messages if m.role != "system"]
    if not turns or turns[-1].role != "user":
        raise HTTPException(422, "the last message must have role 'user'")
    for m in turns:
        if len(m.content) > limit:
            raise HTTPException(422, f"a message is {len(m.content)} characters; the limit is {limit}")
    if not turns[-1].content.strip():
        raise HTTPException(422, "the last user message is empty")
    return turns[-1].content, parse_history([(m.role, m.content) for m in turns[:-1]])


FINISH = {
    "stop": "stop",
    "cancelled": "stop",
    "length": "length",
    "timeout": "length",
    "safety": "content_filter",
}


# ----------------------------------------------------------------------------- the server


KEYED_PATHS = ("/v1", "/openapi.json")  # with a key set, these answer only to it
# Gradio routes that answer without its login (the rest check it themselves, or serve static files):
# with a page password they answer only to a logged-in session; the login page needs none of them.
SESSION_PATHS = re.compile(
    r"^(?:/gradio_api)?/(?:user|token|app_id|heartbeat|reset|cancel|startup-events|stream|run-history"
    r"|monitoring|(?:undo-)?vibe-[\w-]+)(?:/|$)"
)


class Guard:
    """ASGI middleware in front of every route (API and chat page), before any parsing.

    - the API key on /v1 (and the schema), checked before the body is read;
    - with a page password, Gradio's own routes that skip its login (SESSION_PATHS) need a
      logged-in session (`session_ok`, set by `build_app`);
    - failed keys or page passwords per client limited (429 after `auth_failures` a minute);
    - every request body at most `max_body_bytes` (413) and sent within `body_timeout_s` (408);
    - a log line (request id, status, path, reason; never text) for every refused request.
    """

    def __init__(self, app: Any, server: Server, session_ok: Any = None) -> None:
        self.app, self.server, self.limits = app, server, server.limits
        self.failures: dict[str, list[float]] = {}
        self.session_ok = session_ok  # scope -> bool, when the page has a password

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        client = (scope.get("client") or ("?", 0))[0]
        path = scope["path"]
        if self._locked_out(client):
            return await self._refuse(send, scope, 429, "too many failed keys or passwords; wait a minute")
        if self.server.api_key and path.startswith(KEYED_PATHS) and not self._key_ok(scope):
            self._failed(client)
            return await self._refuse(
                send, scope, 401, "missing or wrong API key", [(b"www-authenticate", b"Bearer")]
            )
        if self.session_ok is not None and SESSION_PATHS.match(path) and not self.session_ok(scope):
            return await self._refuse(send, scope, 401, "log in to the chat page first")
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limits.max_body_bytes):
            return await self._refuse(
                send, scope, 413, f"request body over {self.limits.max_body_bytes} bytes"
            )
        body, more = b"", True
        try:
            while more:  # bodies are small (<= limit): read all of it, in time, refusing when too large
                message = await asyncio.wait_for(receive(), self.limits.body_timeout_s)
                if message["type"] != "http.request":
                    return
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > self.limits.max_body_bytes:
                    return await self._refuse(
                        send, scope, 413, f"request body over {self.limits.max_body_bytes} bytes"
                    )
        except TimeoutError:
            return await self._refuse(
                send, scope, 408, f"request body not sent within {self.limits.body_timeout_s:g} s"
            )
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: disconnect notices pass through
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def watch(message: dict) -> None:  # a wrong page password counts as a failure too
            if message["type"] == "http.response.start":
                status = message["status"]
                if path.rstrip("/").endswith("/login") and status in (400, 401, 403):
                    self._failed(client)
                if status >= 400 and path.startswith(KEYED_PATHS):
                    log.info("%s refused status=%d path=%s", _rid(scope), status, path)
            await send(message)

        await self.app(scope, replay, watch)

    def _key_ok(self, scope: dict) -> bool:
        headers = {k.decode().lower(): v.decode("latin-1") for k, v in scope["headers"]}
        given = headers.get("authorization", "").removeprefix("Bearer ").strip() or headers.get(
            "x-api-key", ""
        )
        return secrets.compare_digest(given.encode(), (self.server.api_key or "").encode())

    def _failed(self, client: str) -> None:
        now = time.monotonic()
        recent = [t for t in self.failures.get(client, []) if now - t < 60]
        self.failures[client] = recent + [now]
        if len(self.failures) > 10_000:  # forget the oldest clients: memory stays bounded
            self.failures = dict(list(self.failures.items())[-5_000:])

    def _locked_out(self, client: str) -> bool:
        now = time.monotonic()
        return sum(now - t < 60 for t in self.failures.get(client, [])) >= self.limits.auth_failures

    async def _refuse(
        self, send: Any, scope: dict, status: int, reason: str, headers: list | None = None
    ) -> None:
        log.info("%s refused status=%d path=%s reason=%s", _rid(scope), status, scope["path"], reason)
        body = json.dumps({"error": {"message": reason, "type": ERROR_TYPES.get(status, "refused")}}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), *(headers or [])]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})


ERROR_TYPES = {401: "unauthorized", 408: "timeout", 413: "too_large", 429: "rate_limited"}


def _rid(scope: dict) -> str:
    """A request id for log lines (the client's address stays out of them)."""
    return scope.setdefault("medbot_rid", "req-" + uuid.uuid4().hex[:12])


class Server:
    """The model, its config, the limits and the gate shared by the chat page and the API."""

    def __init__(self, model: Any, tokenizer: Any, cfg: MedbotConfig, limits: Limits | None = None,
                 api_key: str | None = None, model_id: str = "medbot", log_messages: bool = False) -> None:  # fmt: skip
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg
        self.limits = limits or Limits()
        self.api_key = api_key
        self.model_id = model_id
        self.log_messages = log_messages
        self.gate = Gate(self.limits.queue_size, self.limits.queue_wait_s)

    def stream(self, query: str, history: list[tuple[str, str]], sampling: dict[str, Any],
               max_tokens: int | None, seed: int | None) -> ReplyStream:  # fmt: skip
        """The one generation path, with this server's bounds applied."""
        cfg = replace(self.cfg, **{k: v for k, v in sampling.items() if v is not None})
        cap = min(max_tokens or self.limits.max_new_tokens, self.limits.max_new_tokens)
        return respond_stream(self.model, self.tokenizer, cfg, query, history=history, seed=seed,
                              max_new_tokens=cap, max_time=self.limits.gen_timeout_s)  # fmt: skip

    def log(self, rid: str, query: str, stream: ReplyStream, seconds: float) -> None:
        flags = [f.code for f in stream.reply.flags] if stream.reply else []
        text = f" message={query!r}" if self.log_messages else ""
        log.info("%s chars=%d tokens=%d finish=%s flags=%s %.1fs%s", rid, len(query),
                 stream.reply.new_tokens if stream.reply else 0, stream.finish_reason, flags, seconds, text)  # fmt: skip


def build_api(server: Server) -> FastAPI:
    """The FastAPI app with /v1/models and /v1/chat/completions (the chat page is mounted on it)."""
    app = FastAPI(
        title="medbot",
        description="Not for medical use. OpenAI-compatible chat API.",
        version="1",
        docs_url=None,
        redoc_url=None,
    )  # fmt: skip  (the schema stays, behind the key when set)

    def check_key(request: Request) -> None:
        if server.api_key is None:
            return
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        given = given or request.headers.get("x-api-key", "")
        if not secrets.compare_digest(given.encode(), server.api_key.encode()):
            raise HTTPException(401, "missing or wrong API key", headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        where = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        return JSONResponse({"error": {"message": where, "type": "invalid_request"}}, status_code=422)

    @app.exception_handler(StarletteHTTPException)  # FastAPI's and Starlette's own (404, 405, bad JSON)
    async def refused(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": {"message": exc.detail, "type": "refused"}}, exc.status_code, exc.headers
        )

    @app.get("/v1/models", dependencies=[Depends(check_key)])
    def models() -> dict:
        return {"object": "list", "data": [{"id": server.model_id, "object": "model", "owned_by": "medbot"}]}

    @app.post("/v1/chat/completions", dependencies=[Depends(check_key)], response_model=None)
    async def chat(body: ChatRequest, request: Request) -> dict | StreamingResponse:
        query, history = split_conversation(body.messages, server.limits.max_message_chars)
        sampling = {"temperature": body.temperature, "top_p": body.top_p, "top_k": body.top_k}
        if not await server.gate.enter_async():
            raise HTTPException(429, "busy: too many requests are waiting; retry later", {"Retry-After": "5"})
        rid, started = "chatcmpl-" + uuid.uuid4().hex[:16], time.monotonic()
        try:
            stream = await run_in_threadpool(
                server.stream, query, history, sampling, body.max_tokens, body.seed
            )
        except ValueError as e:  # e.g. the conversation does not fit the model's length
            server.gate.leave()
            raise HTTPException(422, str(e)) from None
        except BaseException:
            server.gate.leave()
            raise
        if body.stream:
            return StreamingResponse(
                _sse(server, stream, rid, query, started), media_type="text/event-stream"
            )
        try:  # generate (the pieces themselves are not sent); a client that leaves cancels it
            work = asyncio.ensure_future(run_in_threadpool(lambda: list(stream)))
            while not work.done():
                await asyncio.wait({work}, timeout=0.25)
                if not work.done() and await request.is_disconnected():
                    stream.cancel()
                    log.info("%s abandoned by the client: generation cancelled", rid)
            await work
        finally:
            server.gate.leave()
        server.log(rid, query, stream, time.monotonic() - started)
        return _completion(server, stream, rid)

    @app.api_route(
        "/v1/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False
    )
    def unknown(rest: str) -> None:  # before the page's catch-all: /v1 answers in the API's error shape
        raise HTTPException(404, f"no such endpoint: /v1/{rest}")

    return app


def _completion(server: Server, stream: ReplyStream, rid: str) -> dict:
    """A whole response: exactly `Reply.text`, so a withdrawn sentence never reaches this client."""
    reply = stream.reply
    assert reply is not None
    content = reply.text
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": server.model_id,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": FINISH[stream.finish_reason],
            }
        ],  # fmt: skip
        "usage": {"completion_tokens": reply.new_tokens},
        "medbot": {
            "emergency": reply.triage.emergency,
            "level": reply.triage.level,  # routine | urgent | emergency | crisis: urgent is not an emergency
            "flags": [f.code for f in reply.flags],
        },
    }


async def _sse(
    server: Server, stream: ReplyStream, rid: str, query: str, started: float
) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format; the gate is released however the stream ends.

    The first chunk carries `stream.head` (the triage advice), then one chunk per piece, and the
    last `stream.tail` (the disclaimer) with the finish reason: the client assembles
    `ReplyStream.assembled`, which is `Reply.text` unless shown text was withdrawn (then the
    WITHDRAWN marker and the safe text follow it, finish_reason "content_filter").
    """

    def chunk(delta: dict, finish: str | None = None) -> str:
        body = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()),
                "model": server.model_id, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip
        return f"data: {json.dumps(body)}\n\n"

    done = False
    try:
        yield chunk({"role": "assistant", "content": stream.head})
        async for piece in iterate_in_threadpool(iter(stream)):
            yield chunk({"content": piece})
        yield chunk({"content": stream.tail}, FINISH[stream.finish_reason])
        yield "data: [DONE]\n\n"
        done = True
    finally:
        if done:
            server.gate.leave()
            server.log(rid, query, stream, time.monotonic() - started)
        else:  # client went away: stop generating, then free the model (off the event loop)
            stream.cancel()
            threading.Thread(target=_drain_and_leave, args=(server, stream), daemon=True).start()


def _drain_and_leave(server: Server, stream: ReplyStream) -> None:
    try:
        for _ in stream:
            pass
    finally:
        server.gate.leave()


# ----------------------------------------------------------------------------- the chat page

HEADER = "# medbot: doctor–patient chatbot (research demo)\n**Not for medical use.** " + DISCLAIMER
# Red for call-now (emergency, crisis), amber for same-day care (urgent): told apart at a glance.
PAGE_CSS = """
#emergency-banner { border-left: 6px solid #c62828; background: #fdecea; color: #1a1a1a; padding: 0.4em 1em; }
#urgent-banner { border-left: 6px solid #ef6c00; background: #fff4e5; color: #1a1a1a; padding: 0.4em 1em; }
"""


def page_turn(server: Server, message: str, history: list[dict], temperature: float, top_p: float,
              max_tokens: int) -> Iterator[tuple[str, Any, Any]]:  # fmt: skip
    """One turn of the chat page: (message so far, emergency banner, urgent banner) updates.

    The message streams as `head` + pieces + CURSOR and ends as `Reply.text`; the history the page
    sends back goes through `parse_history`. Emergency and crisis verdicts show the 🚨 banner, an
    urgent one the ⚠️ banner (a separate element, styled apart); banners never enter the history.
    """
    import gradio as gr

    if not message or not message.strip():
        raise gr.Error("Please type a question.")
    if len(message) > server.limits.max_message_chars:
        raise gr.Error(f"Please keep messages under {server.limits.max_message_chars} characters.")
    pairs = parse_history(
        [(m["role"], m["content"] if isinstance(m["content"], str) else "") for m in history]
    )
    if not server.gate.enter():
        raise gr.Error("The model is busy; please try again in a moment.")
    started = time.monotonic()
    stream = None
    try:
        try:
            stream = server.stream(
                message, pairs, {"temperature": temperature, "top_p": top_p}, max_tokens, None
            )
        except ValueError as e:  # e.g. the conversation no longer fits the model's length
            raise gr.Error(str(e)) from None
        text = banner(stream.triage)  # None, or the 🚨 (emergency, crisis) or ⚠️ (urgent) banner
        hidden = gr.update(visible=False)
        emergency = gr.update(value=text, visible=True) if text and stream.triage.emergency else hidden
        urgent = gr.update(value=text, visible=True) if text and not stream.triage.emergency else hidden
        yield stream.head + CURSOR, emergency, urgent
        for _ in stream:
            yield stream.head + stream.streamed + CURSOR, emergency, urgent
        assert stream.reply is not None
        yield stream.reply.text, emergency, urgent
    finally:
        if stream is not None and stream.reply is None:
            stream.cancel()  # the user pressed stop or left: finish generate() before freeing the model
            for _ in stream:
                pass
        server.gate.leave()
        if stream is not None:
            server.log("page", message, stream, time.monotonic() - started)


def chat_page(server: Server) -> Any:
    """Gradio chat: streams each answer, keeps the conversation, shows an emergency or urgent banner."""
    import gradio as gr

    def answer(message: str, history: list[dict], temperature: float, top_p: float, max_tokens: int
               ) -> Iterator[tuple[str, Any, Any]]:  # fmt: skip
        yield from page_turn(server, message, history, temperature, top_p, max_tokens)

    with gr.Blocks(title="medbot (not for medical use)", analytics_enabled=False) as page:
        gr.Markdown(HEADER, elem_id="disclaimer")
        emergency = gr.Markdown(visible=False, elem_id="emergency-banner")
        urgent = gr.Markdown(visible=False, elem_id="urgent-banner")
        gr.ChatInterface(
            answer,
            additional_inputs=[
                gr.Slider(
                    0.0, 1.0, value=server.cfg.temperature, step=0.05, label="temperature (0 = greedy)"
                ),
                gr.Slider(0.5, 1.0, value=server.cfg.top_p, step=0.01, label="top_p"),
                gr.Slider(
                    1,
                    max(2, server.limits.max_new_tokens),
                    value=min(192, server.limits.max_new_tokens),
                    step=1,
                    label="max new tokens",
                ),  # fmt: skip
            ],
            additional_inputs_accordion="Sampling (bounded)",
            additional_outputs=[emergency, urgent],
            examples=[["I have had a dry cough and a mild fever for three days. What should I do?"]],
            run_examples_on_click=False,
            flagging_mode="never",
            api_visibility="private",  # the page's own endpoints; programs use /v1
        )
    page.queue(default_concurrency_limit=1, max_size=server.limits.queue_size)
    return page


def build_app(
    server: Server, page_password: str | None = None, allowed_hosts: list[str] | None = None
) -> FastAPI:
    """One ASGI app: the API, the chat page at /, and the Guard in front of both.

    `allowed_hosts`: Host headers accepted (others get 400); the localhost default allows only
    loopback names, so a web page on another site cannot reach it through DNS rebinding.
    """
    import gradio as gr
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    api = build_api(server)
    auth = ("medbot", page_password) if page_password else None
    app = gr.mount_gradio_app(api, chat_page(server), path="/", auth=auth, footer_links=[], css=PAGE_CSS)
    session_ok = _session_check(app) if page_password else None
    app.add_middleware(Guard, server=server, session_ok=session_ok)
    if allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    return app


def _session_check(app: FastAPI) -> Any:
    """scope -> whether the request carries the cookie of a live Gradio login (the page's own check)."""
    from http.cookies import SimpleCookie

    page_app = next(r.app for r in app.routes if hasattr(getattr(r, "app", None), "tokens"))

    def session_ok(scope: dict) -> bool:
        cookies = SimpleCookie(dict(scope["headers"]).get(b"cookie", b"").decode("latin-1"))
        return any(
            name.startswith("access-token") and c.value in page_app.tokens for name, c in cookies.items()
        )

    return session_ok


# ----------------------------------------------------------------------------- launching


def header_timeout_protocol(seconds: float) -> type:
    """uvicorn's h11 protocol, closing a connection whose request headers are not complete within
    `seconds` of its first byte or of the previous response (slowloris: idle half-open connections
    otherwise stay open for ever and, by the thousand, exhaust the server's file descriptors)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutProtocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            super().connection_lost(exc)

        def _waiting_for_headers(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            if self._waiting_for_headers():
                if self._header_timer is None:
                    self._header_timer = self.loop.call_later(seconds, self._expire)
            elif self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expire(self) -> None:
            self._header_timer = None
            if self._waiting_for_headers() and not self.transport.is_closing():
                log.info("connection closed: request headers not complete within %g s", seconds)
                self.transport.close()

    return HeaderTimeoutProtocol


class OncePerMinute(logging.Filter):
    """Log-flood protection: the same message at most `limit` times a minute, then a count.

    "The same" ignores request ids: a client refused a thousand times is one message, not a
    thousand (each refused request still gets its line until the limit)."""

    def __init__(self, limit: int = 5) -> None:
        super().__init__()
        self.limit, self.seen = limit, {}

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        key = (record.name, re.sub(r"(req|chatcmpl)-[0-9a-f]+", "", record.getMessage())[:200])
        start, count = self.seen.get(key, (now, 0))
        if now - start > 60:
            if count > self.limit:
                record.msg = f"{record.msg} [repeated {count - self.limit} more times in the last minute]"
            start, count = now, 0
        self.seen[key] = (start, count + 1)
        if len(self.seen) > 1000:
            self.seen.clear()
        return count < self.limit


def load_model(adapter: str | None) -> tuple[Any, Any, MedbotConfig, str]:
    """The saved adapter (its config decides the prompt), or the embedded default untrained."""
    from medbot_model import load_base_model, load_for_chat, load_tokenizer

    if adapter:
        model, tokenizer, cfg = load_for_chat(adapter)
        return model.eval(), tokenizer, cfg, cfg.model_name.rsplit("/", 1)[-1] + "-medbot"
    from medbot_config import embedded

    cfg = embedded()
    return load_base_model(cfg).eval(), load_tokenizer(cfg), cfg, "smollm2-135m-instruct"


TRUSTED_PROXIES = "127.0.0.1,::1"  # peers whose X-Forwarded-For names the client (see launch)


def launch(model: Any, tokenizer: Any, cfg: MedbotConfig, *, share: bool = False, host: str = "127.0.0.1",
           port: int = 7860, limits: Limits | None = None, model_id: str = "medbot",
           log_messages: bool = False, block: bool = True,
           forwarded_allow_ips: str = TRUSTED_PROXIES) -> tuple[str, str | None]:  # fmt: skip
    """Serve the chat page and the API; returns (local URL, public URL or None).

    The API key comes from $MEDBOT_API_KEY. Off by default on localhost; when sharing publicly a
    key is required, and one is generated (and printed) if the variable is unset. The chat page
    then asks for user `medbot` with the key as password.

    Per-client limits (failed keys and passwords) key on the client's address. Behind a reverse
    proxy, or Gradio's share tunnel, every request arrives from the proxy's address; uvicorn's proxy
    headers middleware then takes the client from X-Forwarded-For, but only from the peers listed
    in `forwarded_allow_ips` (the loopback addresses by default: a proxy on this machine, or the
    tunnel's local client). Name a proxy on another machine there; never "*" on a public port,
    where any client could then claim any address.
    """
    import uvicorn

    key = os.environ.get(API_KEY_ENV) or None
    public = share or host not in ("127.0.0.1", "localhost", "::1")
    if public and key is None:
        key = secrets.token_urlsafe(18)
        print(
            f"Public server: API key / chat password (user 'medbot') is {key}\n(set ${API_KEY_ENV} to choose one)"
        )
    server = Server(model, tokenizer, cfg, limits, api_key=key, model_id=model_id, log_messages=log_messages)
    loopback = ["127.0.0.1", "localhost", "::1"]
    app = build_app(server, page_password=key, allowed_hosts=None if public else loopback)
    for name in ("uvicorn", "uvicorn.error", "asyncio", "medbot.web"):  # e.g. "Too many open files"
        logger = logging.getLogger(name)
        if not any(isinstance(f, OncePerMinute) for f in logger.filters):
            logger.addFilter(OncePerMinute())
    _raise_open_file_limit()
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5, timeout_keep_alive=5,
        limit_concurrency=server.limits.max_connections, http=header_timeout_protocol(server.limits.header_timeout_s),
        proxy_headers=True, forwarded_allow_ips=forwarded_allow_ips,
    )  # fmt: skip
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    while not uv.started:
        if not thread.is_alive():
            raise RuntimeError(f"the server did not start on {host}:{port} (port in use?)")
        time.sleep(0.1)
    local = f"http://{host}:{port}"
    public_url = None
    if share:
        from gradio import networking

        public_url = networking.setup_tunnel("127.0.0.1", port, secrets.token_urlsafe(32), None, None)
    print(f"medbot chat page: {public_url or local}  (API: {(public_url or local)}/v1/chat/completions)")
    print("Not for medical use.")
    if block:
        try:
            thread.join()
        except KeyboardInterrupt:
            uv.should_exit = True
    return local, public_url


def _raise_open_file_limit() -> None:
    """Soft open-file limit up to the hard one: the connection cap, not the OS, decides."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or soft < hard:
            resource.setrlimit(
                resource.RLIMIT_NOFILE, (min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536, hard)
            )
    except (ImportError, ValueError, OSError):  # not on this platform, or not allowed: keep the default
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description="medbot web app: chat page + OpenAI-compatible API")
    ap.add_argument("--adapter", default=None, help="saved adapter folder (default: the embedded model)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=7860)
    ap.add_argument("--share", action="store_true", help="public Gradio link (requires a key/password)")
    ap.add_argument("--queue-size", type=int, default=Limits.queue_size)
    ap.add_argument("--timeout", type=float, default=Limits.gen_timeout_s, help="generation timeout, seconds")
    ap.add_argument("--max-new-tokens", type=int, default=Limits.max_new_tokens)
    ap.add_argument("--log-messages", action="store_true", help="log message text (off by default)")
    ap.add_argument("--forwarded-allow-ips", default=TRUSTED_PROXIES,
                    help="proxies whose X-Forwarded-For names the client (comma-separated addresses)")  # fmt: skip
    add_config_arguments(ap)  # e.g. --temperature 0.3 over the adapter's saved config
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    model, tokenizer, cfg, model_id = load_model(args.adapter)
    cfg = cfg.replace(**config_overrides(args))
    limits = Limits(
        queue_size=args.queue_size, gen_timeout_s=args.timeout, max_new_tokens=args.max_new_tokens
    )
    launch(model, tokenizer, cfg, share=args.share, host=args.host, port=args.port, limits=limits,
           model_id=model_id, log_messages=args.log_messages, forwarded_allow_ips=args.forwarded_allow_ips)  # fmt: skip


if __name__ == "__main__":
    main()
