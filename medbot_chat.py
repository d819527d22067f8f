"""The one generation path: every surface (notebook chat cell, evaluation, web app) calls `respond`.

    model, tokenizer, cfg = load_for_chat("falcon-patient-chatbot/adapter")
    reply = respond(model, tokenizer, cfg, "I have had a dry cough for two weeks.")
    print(reply.text)        # emergency advice (if any), the answer, the disclaimer
    reply.flags              # safety decisions: reason codes and the words that triggered them

The prompt comes from the config saved with the adapter, so chat formats exactly as training
did. The safety layer (medbot_safety.py) runs inside: triage of the message before generation,
checks of the answer after. Generation samples with the seed's settings and stops at EOS or at the next `###`
(Falcon rarely emits EOS); only the answer text is returned, never the prompt.

The whole chat turn lives here, so that every surface (notebook, API, chat page) shows the same
text and a surface only transports it:

- `Reply.text` is the one text shown for a reply: triage advice first (if any), the answer (the
  safe rewrite when the answer check failed), the disclaimer; `PLACEHOLDER` stands in for the
  answer only when there is neither advice nor answer.
- `ReplyStream` is the same reply as it is generated; `head`, the pieces and `tail` assemble to
  `Reply.text`, except after a withdrawal (see `ReplyStream`).
- `parse_history` and `strip_reply` turn what a client sends back (shown texts, streamed texts
  with a withdrawal, a half-streamed page message) into (patient, answer) exchanges: no advice,
  disclaimer, placeholder, marker or withdrawn sentence ever reaches a prompt.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from medbot_config import MedbotConfig
from medbot_safety import (
    CRISIS_ADVICE,
    EMERGENCY_ADVICE,
    LEVELS,
    MENTION_ADVICE,
    NON_ENGLISH,
    URGENT_ADVICE,
    AnswerCheck,
    Flag,
    Triage,
    check_answer,
    hold_sentence,
    reassures,
    triage,
    triage_many,
)
from medbot_utils import chat_messages, render_chat

DISCLAIMER = (
    "This is an AI research demo, not medical advice, and not a doctor. "
    "For a medical problem see a qualified clinician; in an emergency call your local emergency number."
)
PLACEHOLDER = "(no answer was generated; please rephrase)"  # only when there is neither advice nor answer
WITHDRAWN = "[The text above was withdrawn by the safety check.]"  # streams only: text had been shown
CURSOR = "…"  # the chat page's "still writing" mark at the end of a message being streamed
# The chat page's banners above the conversation (a banner is a page element, never part of a message;
# strip_reply removes their lead-ins anyway, in case a client pastes one back).
EMERGENCY_BANNER = "🚨 **Possible emergency.** {advice}"  # emergency and crisis verdicts
URGENT_BANNER = "⚠️ **See a clinician today.** {advice}"


@dataclass
class Reply:
    """An answer after the safety layer: what to show, and every decision with its evidence."""

    answer: str
    disclaimer: str = DISCLAIMER
    new_tokens: int = 0  # tokens generated (the stop sequence included), for speed accounting
    triage: Triage = field(default_factory=Triage)
    check: AnswerCheck | None = None
    raw_answer: str = ""  # the model's words before any rewrite (for evaluation; never displayed)

    @property
    def flags(self) -> list[Flag]:
        """Reason codes and evidence of every safety decision on this exchange."""
        return self.triage.flags + (self.check.flags if self.check else [])

    @property
    def text(self) -> str:
        """What every surface displays, the one rule for all of them: the triage advice first (if
        any), the answer (already the safe rewrite if the check failed), the disclaimer, separated by
        blank lines. `PLACEHOLDER` stands in for the answer only when there is no advice either
        (a non-English message or an emergency with no answer still shows its advice).
        `strip_reply(reply.text) == reply.answer`."""
        parts = [self.triage.advice] if self.triage.advice else []
        if self.answer or not parts:
            parts.append(self.answer or PLACEHOLDER)
        return "\n\n".join(parts + [self.disclaimer])


def banner(verdict: Triage) -> str | None:
    """The chat page's banner for a verdict: 🚨 for emergency and crisis, ⚠️ for urgent, else None."""
    if verdict.emergency and verdict.advice:
        return EMERGENCY_BANNER.format(advice=verdict.advice)
    if verdict.level == "urgent" and verdict.advice:
        return URGENT_BANNER.format(advice=verdict.advice)
    return None


# Everything the safety layer and the surfaces add around an answer. Crisis advice followed by
# emergency advice is two of these; the longest go first so that none is cut by a shorter one.
_SHOWN_TEXTS = sorted(
    {
        DISCLAIMER,
        PLACEHOLDER,
        CRISIS_ADVICE,
        EMERGENCY_ADVICE,
        URGENT_ADVICE,
        NON_ENGLISH,
        MENTION_ADVICE,
        EMERGENCY_BANNER.format(advice="").strip(),
        URGENT_BANNER.format(advice="").strip(),
    },
    key=len,
    reverse=True,
)


def strip_reply(shown: str) -> str:
    """A reply as a surface showed it -> the answer alone, for the history of the next prompt.

    Removes the cursor of a half-streamed page message, everything up to and including a
    WITHDRAWN marker (the withdrawn sentence the stream had shown), the advice texts (all five, also
    combined: crisis + emergency, the crisis line beside other advice), the disclaimer, the
    placeholder, banner lead-ins and the surrounding whitespace. `strip_reply(reply.text) == reply.answer` for every reply, and the same
    holds for the text a streaming client assembles (`ReplyStream.assembled`).
    """
    text = shown.rstrip().removesuffix(CURSOR)
    # a withdrawal comes after the withdrawn text and before the safe text: only the latter remains
    text = text.rpartition(WITHDRAWN)[2]
    for fixed in _SHOWN_TEXTS:
        text = text.replace(fixed, "")
    return text.strip()


def parse_history(turns: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """(role, text) turns as a client sends them -> (patient message, answer) exchanges, oldest first.

    Each assistant text goes through `strip_reply`, so only the model's own answers enter the next
    prompt. A user turn is paired with the assistant turn after it; a user turn without an answer
    (the client retried) is replaced by the next one, an assistant turn without a question is
    dropped, and other roles ("system": the template is fixed by training) are ignored.
    """
    pairs, pending = [], None
    for role, text in turns:
        if role == "user":
            pending = text
        elif role == "assistant" and pending is not None:
            pairs.append((pending, strip_reply(text)))
            pending = None
    return pairs


def cut_at_stop(text: str, stops: list[str]) -> str:
    """Text before the first stop sequence."""
    cut = min([i for i in (text.find(s) for s in stops) if i >= 0], default=len(text))
    return text[:cut]


def respond(
    model: Any,
    tokenizer: Any,
    cfg: MedbotConfig,
    query: str,
    *,
    seed: int | None = None,
    max_new_tokens: int | None = None,
) -> Reply:
    """Answer one patient query with the saved template and sampling settings.

    Args:
        model: base model or PeftModel, in eval mode.
        tokenizer: the model's tokenizer.
        cfg: the config saved with the adapter (template, sampling, stop sequences).
        query: the patient's message.
        seed: fixes the sampling for reproducible answers.
        max_new_tokens: cap on answer tokens (default: up to cfg.gen_max_length in total).
    """
    return respond_batch(model, tokenizer, cfg, [query], seed=seed, max_new_tokens=max_new_tokens)[0]


@torch.inference_mode()
def respond_batch(
    model: Any,
    tokenizer: Any,
    cfg: MedbotConfig,
    queries: list[str],
    *,
    histories: list[list[tuple[str, str]]] | None = None,
    seed: int | None = None,
    max_new_tokens: int | None = None,
) -> list[Reply]:
    """Answer several queries in one batched generation (left padding); same path as `respond`.

    Each query is triaged before generation and each answer checked after; messages that are
    not English get the fallback and are not generated for. `histories`: earlier (patient,
    doctor) exchanges per query (evaluation of multi-turn conversations), as in `respond_stream`.
    """
    if any(not q or not q.strip() for q in queries):
        raise ValueError("the patient query is empty")
    histories = histories or [[] for _ in queries]
    # before generation: emergency advice comes first
    verdicts = [conversation_triage(q, [p for p, _ in h]) for q, h in zip(queries, histories)]
    replies = [Reply(answer="", triage=v) for v in verdicts]
    todo = [i for i, v in enumerate(verdicts) if not v.non_english]
    if not todo:
        return replies
    prompts = [render_chat(tokenizer, cfg.prompt_template, chat_messages(queries[i], histories[i]), generation=True)
               for i in todo]  # fmt: skip
    tokenizer.padding_side = "left"  # generation continues from the right edge of every row
    # the template holds any BOS itself: the ids are those training saw for the same text
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    kwargs = generate_kwargs(model, tokenizer, cfg, enc, max_new_tokens)
    if seed is not None:
        torch.manual_seed(seed)
    out = model.generate(**enc, **kwargs)
    width = enc["input_ids"].shape[1]
    for row, i in enumerate(todo):
        replies[i] = finish(tokenizer, cfg, out[row, width:], verdicts[i], question=queries[i])
    return replies


def generate_kwargs(
    model: Any, tokenizer: Any, cfg: MedbotConfig, enc: Any, max_new_tokens: int | None
) -> dict:
    """Sampling, length and stop settings shared by the batched and the streaming path."""
    longest = int(enc["attention_mask"].sum(1).max())
    budget = cfg.gen_max_length - longest
    if budget < 1:
        raise ValueError(f"the query is {longest} tokens with the prompt; the limit is {cfg.gen_max_length}")
    # A fixed total length keeps the static KV cache one size, so it compiles once for all queries.
    if max_new_tokens is None:
        kwargs: dict[str, Any] = {"max_length": cfg.gen_max_length}
    else:
        kwargs = {"max_new_tokens": min(budget, max_new_tokens)}
    # Static cache + compile only for a plain 16-bit model (load_for_chat merges on big GPUs);
    # 4-bit bitsandbytes layers are not compiled by transformers.
    if (
        cfg.chat_compile
        and enc["input_ids"].is_cuda
        and not any(type(p).__name__ == "Params4bit" for p in model.parameters())
    ):
        kwargs["cache_implementation"] = "static"
    sampling = {"do_sample": True, "temperature": cfg.temperature, "top_k": cfg.top_k, "top_p": cfg.top_p}
    return (
        kwargs
        | (sampling if cfg.temperature > 0 else {"do_sample": False})
        | {
            "stop_strings": cfg.stop_sequences,
            "tokenizer": tokenizer,
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        }
    )


def answer_check(answer: str, verdict: Triage, question: str = "", *, final: bool = True) -> AnswerCheck:
    """The one place the safety layer's answer check is called (final answers in `finish`, the text
    released while streaming). A final answer is checked with the message's triage, so an
    emergency or urgent message whose answer sends the person nowhere is rewritten (dismissal),
    and with the message itself, so "take 3 four times a day" is read with the "400 mg ibuprofen"
    the patient named; a partial one is not (its referral may still be coming)."""
    if final or reassures(answer, verdict):  # reassurance to an emergency stops a stream at once
        return check_answer(answer, question=question or None, verdict=verdict, model=final)
    # the learned check reads whole answers: on the first sentence of a stream it would judge a
    # fragment, so a stream's released text is held to the rules and the final answer to both
    return check_answer(answer, question=question or None, model=False, dismissal=False)


def finish(
    tokenizer: Any, cfg: MedbotConfig, new: torch.Tensor, verdict: Triage, shown: str = "", question: str = ""
) -> Reply:
    """Generated ids -> the Reply a user sees: answer text only, checked by the safety layer.
    `shown`: what a stream already showed (checked); the answer never ends before it.
    `question`: the patient's message, read by the answer check (doses with the question's drug)."""
    text = tokenizer.decode(new, skip_special_tokens=True)
    raw = cut_at_stop(text, cfg.stop_sequences).strip()
    answer = raw
    if (
        len(raw) == len(text.strip()) and tokenizer.eos_token_id not in new.tolist()
    ):  # cut by the length limit
        dropped = drop_unfinished_sentence(raw)
        answer = dropped if len(dropped) >= len(shown.strip()) else shown.strip()
    check = answer_check(
        answer, verdict, question
    )  # after generation: unsafe advice is replaced, with its reason codes
    n_new = int((new != tokenizer.pad_token_id).sum()) if tokenizer.pad_token_id is not None else len(new)
    return Reply(answer=check.text, new_tokens=n_new, triage=verdict, check=check, raw_answer=raw)


def drop_unfinished_sentence(answer: str) -> str:
    """Leave out a last sentence cut off mid-way (by the token limit) if it touches what the answer
    check reads: "Take 6000 mg of par" hides the drug the dose rule needs, so it is never shown."""
    ends = [m.end() for m in _SENTENCE_END.finditer(answer + " ") if not _abbreviation(answer[: m.end()])]
    complete = answer[: ends[-1]].rstrip() if ends else ""
    tail = answer[len(complete) :].strip()
    return complete if tail and hold_sentence(tail) else answer


# ----------------------------------------------------------------------------- streaming

_SENTENCE_END = re.compile(r"[.!?:;](?=\s)|\n")


class _Cancel(StoppingCriteria):
    """Stops generation when a surface cancels (client gone, unsafe text, stop marker seen)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.full(
            (input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device
        )


@dataclass
class ReplyStream:
    """A reply as it is generated. Iterate for the answer's text pieces; `reply` is set when
    iteration ends.

    Text is released word by word once the safety check has passed on everything so far; a
    sentence that touches what the check looks at (numbers, drug names, stop/quit, certainty,
    "I am", diagnosis) is held until it is complete and checked by the rules, so no surface shows a
    sentence the rules flag. The learned answer check reads only the final answer (on a fragment it
    would judge too few words), as the dismissal check does: if the final check rewrites the
    answer, the last piece withdraws what was shown and gives the safe text.

    What a streaming client shows is `head` (before generation), the pieces, then `tail` (once
    iteration has ended); together they are `assembled`, which is exactly `reply.text`, with one
    exception: when the check rewrote an answer after some of it had been shown, that text cannot
    be unsaid, so the pieces are `shown + "\n\n" + WITHDRAWN + "\n\n" + reply.answer` (the
    rewrite). `strip_reply(assembled) == reply.answer` in both cases. A surface that can replace
    what it showed (the chat page, a non-streaming response) shows `reply.text` at the end.
    """

    triage: Triage
    question: str = ""  # the patient's message: the answer check reads doses with its drug and strength
    prompt_turns: int = 0  # earlier exchanges that fitted into the prompt (oldest are left out first)
    reply: Reply | None = None
    finish_reason: str = "stop"  # stop | length | timeout | cancelled | safety
    streamed: str = ""  # the pieces yielded so far, joined
    _pieces: Iterator[str] = field(default_factory=lambda: iter(()))
    _stop: threading.Event = field(default_factory=threading.Event)
    _turn: threading.Lock = field(default_factory=threading.Lock)

    def __iter__(self) -> Iterator[str]:
        # one reader at a time: a server may hand a half-read stream to another thread to drain it
        while True:
            with self._turn:
                piece = next(self._pieces, None)
                if piece is not None:
                    self.streamed += piece
            if piece is None:
                return
            yield piece

    @property
    def head(self) -> str:
        """What is shown before the first piece: the triage advice and a blank line, or nothing."""
        return self.triage.advice + "\n\n" if self.triage.advice else ""

    @property
    def tail(self) -> str:
        """What is shown after the last piece, so that head + pieces + tail == reply.text: the
        disclaimer, after a blank line or (with neither advice nor answer) after the placeholder."""
        if self.streamed:
            return "\n\n" + DISCLAIMER
        return DISCLAIMER if self.triage.advice else PLACEHOLDER + "\n\n" + DISCLAIMER

    @property
    def assembled(self) -> str:
        """The whole text a streaming client shows once the stream has ended (see the class docstring)."""
        return self.head + self.streamed + self.tail

    def cancel(self) -> None:
        """Stop generating (e.g. the client went away); the reply keeps what was generated."""
        self._stop.set()
        if self.finish_reason == "stop":
            self.finish_reason = "cancelled"


def respond_stream(
    model: Any,
    tokenizer: Any,
    cfg: MedbotConfig,
    query: str,
    *,
    history: list[tuple[str, str]] | None = None,
    seed: int | None = None,
    max_new_tokens: int | None = None,
    max_time: float | None = None,
) -> ReplyStream:
    """Stream the answer to `query`: the same prompt, sampling and safety layer as `respond`.

    Args:
        history: earlier (patient, doctor answer) exchanges of this conversation, oldest first
            (`parse_history` makes them from what a client sends back; each answer is passed
            through `strip_reply` again here); they go into the prompt through the conversation
            template training used (`medbot_utils.chat_template`), oldest dropped first if too long.
        max_time: seconds after which generation stops (finish_reason "timeout").
        Other arguments as in `respond`; with the same seed and no history the final reply
        equals `respond`'s.
    """
    if not query or not query.strip():
        raise ValueError("the patient query is empty")
    stream = ReplyStream(
        triage=conversation_triage(query, [patient for patient, _ in history or []]), question=query
    )
    if stream.triage.non_english:
        stream.reply = Reply(answer="", triage=stream.triage)
        return stream
    # answers only: whatever a caller passes, no safety text, marker or placeholder enters the prompt
    turns = [(patient, strip_reply(answer)) for patient, answer in history or []]
    while True:  # the newest exchanges that fit in half the generation budget
        prompt = render_chat(tokenizer, cfg.prompt_template, chat_messages(query, turns), generation=True)
        if (
            not turns
            or len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) <= cfg.gen_max_length // 2
        ):
            break
        turns = turns[1:]
    stream.prompt_turns = len(turns)
    enc = tokenizer([prompt], return_tensors="pt", add_special_tokens=False).to(model.device)
    kwargs = generate_kwargs(model, tokenizer, cfg, enc, max_new_tokens)
    stream._pieces = _pieces(stream, model, tokenizer, cfg, enc, kwargs, seed, max_time)
    return stream


EARLIER_TURNS = 3  # earlier patient messages whose emergency still stands for a follow-up


def conversation_triage(query: str, earlier: list[str]) -> Triage:
    """Triage of the newest message, raised to an emergency or crisis in the last few patient
    messages: "is it ok to sleep it off?" after "I swallowed 30 paracetamol" is still an overdose."""
    verdict = triage(query)
    if verdict.non_english or not earlier:
        return verdict
    for past in triage_many(earlier[-EARLIER_TURNS:]):
        if past.emergency and LEVELS.index(past.level) > LEVELS.index(verdict.level):
            verdict.crisis, verdict.emergency, verdict.urgent = past.crisis, True, False
            verdict.flags += [Flag(f.code, "earlier message: " + f.evidence) for f in past.flags]
    return verdict


_ABBREVIATIONS = {
    "dr.",
    "mr.",
    "mrs.",
    "ms.",
    "prof.",
    "st.",
    "e.g.",
    "i.e.",
    "etc.",
    "vs.",
    "approx.",
    "no.",
}


def _abbreviation(text: str) -> bool:
    """Does the text end in an abbreviation ("Dr.") rather than a sentence?"""
    words = text.split()
    return bool(words) and words[-1].lower() in _ABBREVIATIONS


def _releasable(visible: str, stops: list[str]) -> str:
    """The prefix of the text that may be shown: complete sentences, then the words of the sentence
    in progress unless it touches what the answer check looks at (then it waits to be complete)."""
    ends = [m.end() for m in _SENTENCE_END.finditer(visible) if not _abbreviation(visible[: m.end()])]
    complete = visible[: ends[-1]] if ends else ""
    partial = visible[len(complete) :]
    # whole words only, one word behind: the last word may still be growing, and a hold phrase
    # of two words ("throw away") must be seen whole before its first word is shown
    spaces = [i for i, ch in enumerate(partial.rstrip()) if ch == " "]
    if len(spaces) < 2 or hold_sentence(partial) or any(s[:1] in partial for s in stops):
        return complete
    return complete + partial[: spaces[-2]]


def _pieces(
    stream: ReplyStream, model: Any, tokenizer: Any, cfg: MedbotConfig, enc: Any, kwargs: dict,
    seed: int | None, max_time: float | None,
) -> Iterator[str]:  # fmt: skip
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    out: dict[str, torch.Tensor] = {}
    extra = {"max_time": max_time} if max_time else {}

    def run() -> None:
        if seed is not None:
            torch.manual_seed(seed)
        try:
            with torch.inference_mode():
                out["ids"] = model.generate(**enc, **kwargs, **extra, streamer=streamer,
                                            stopping_criteria=StoppingCriteriaList([_Cancel(stream._stop)]))  # fmt: skip
        except BaseException as e:  # surfaced in the consumer's thread below
            out["error"] = e  # type: ignore[assignment]
            streamer.end()

    started = time.monotonic()
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    text, shown, completed = "", "", False
    try:
        for piece in streamer:
            text += piece
            visible = cut_at_stop(text, cfg.stop_sequences).lstrip()
            # trailing whitespace waits for the next word: the final answer is stripped, so what was
            # shown stays a prefix of it and the last piece completes it without a stray newline
            ready = _releasable(visible, cfg.stop_sequences).rstrip()
            if len(ready) > len(shown):
                if not answer_check(ready, stream.triage, stream.question, final=False).safe:
                    stream._stop.set()  # stop generating: the final check below rewrites it
                    stream.finish_reason = "safety"
                    break
                yield ready[len(shown) :]
                shown = ready
            if len(visible) < len(text.lstrip()):
                break  # the stop marker arrived; generate() ends at it too
        completed = True
    finally:
        if not completed:  # the consumer abandoned the stream: never leave generate() running
            stream._stop.set()
        worker.join()
    if "error" in out:
        raise out["error"]
    new = out["ids"][0, enc["input_ids"].shape[1] :]
    reply = finish(tokenizer, cfg, new, stream.triage, shown, question=stream.question)
    stream.reply = reply
    if stream.finish_reason == "stop":
        if max_time and time.monotonic() - started >= max_time:
            stream.finish_reason = "timeout"
        elif len(new) >= kwargs.get("max_new_tokens", cfg.gen_max_length - enc["input_ids"].shape[1]):
            stream.finish_reason = "length"
    if reply.check and not reply.check.safe:
        stream.finish_reason = "safety"
        yield ("\n\n" + WITHDRAWN + "\n\n" if shown else "") + reply.answer
    elif len(reply.answer) > len(shown):
        yield reply.answer[len(shown) :]
