"""The one generation path: every surface (notebook chat cell, evaluation, web app) calls `respond`.

    model, tokenizer, cfg = load_for_chat("falcon-patient-chatbot/adapter")
    reply = respond(model, tokenizer, cfg, "I have had a dry cough for two weeks.")
    print(reply.text)        # emergency advice (if any), the answer, the disclaimer
    reply.flags              # safety decisions: reason codes and the words that triggered them

The prompt comes from the config saved with the adapter, so chat formats exactly as training
did. The safety layer (medbot_safety.py) runs inside: triage of the message before generation,
checks of the answer after. Generation samples with the seed's settings and stops at EOS or at the next `###`
(Falcon rarely emits EOS); only the answer text is returned, never the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from medbot_config import MedbotConfig
from medbot_safety import AnswerCheck, Flag, Triage, check_answer, triage
from medbot_utils import format_prompt

DISCLAIMER = (
    "This is an AI research demo, not medical advice, and not a doctor. "
    "For a medical problem see a qualified clinician; in an emergency call your local emergency number."
)


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
        """What a surface displays: emergency advice first (if any), the answer, the disclaimer."""
        parts = [self.triage.advice] if self.triage.advice else []
        if self.answer or not parts:
            parts.append(self.answer or "(no answer was generated; please rephrase)")
        return "\n\n".join(parts + [self.disclaimer])


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
    seed: int | None = None,
    max_new_tokens: int | None = None,
) -> list[Reply]:
    """Answer several queries in one batched generation (left padding); same path as `respond`.

    Each query is triaged before generation and each answer checked after; messages that are
    not English get the fallback and are not generated for.
    """
    if any(not q or not q.strip() for q in queries):
        raise ValueError("the patient query is empty")
    verdicts = [triage(q) for q in queries]  # before generation: emergency advice comes first
    replies = [Reply(answer="", triage=v) for v in verdicts]
    todo = [i for i, v in enumerate(verdicts) if not v.non_english]
    if not todo:
        return replies
    prompts = [format_prompt(queries[i], cfg.prompt_template) for i in todo]
    tokenizer.padding_side = "left"  # generation continues from the right edge of every row
    enc = tokenizer(prompts, return_tensors="pt", padding=True).to(model.device)
    width = enc["input_ids"].shape[1]
    longest = int(enc["attention_mask"].sum(1).max())
    budget = cfg.gen_max_length - longest
    if budget < 1:
        raise ValueError(f"the query is {longest} tokens with the prompt; the limit is {cfg.gen_max_length}")
    # A fixed total length keeps the static KV cache one size, so it compiles once for all queries.
    length = (
        {"max_length": cfg.gen_max_length}
        if max_new_tokens is None
        else {"max_new_tokens": min(budget, max_new_tokens)}
    )
    # Static cache + compile only for a plain 16-bit model (load_for_chat merges on big GPUs);
    # 4-bit bitsandbytes layers are not compiled by transformers.
    fast = {}
    if (
        cfg.chat_compile
        and enc["input_ids"].is_cuda
        and not any(type(p).__name__ == "Params4bit" for p in model.parameters())
    ):
        fast = {"cache_implementation": "static"}
    if seed is not None:
        torch.manual_seed(seed)
    out = model.generate(
        **enc,
        **length,
        **fast,
        do_sample=True,
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        top_p=cfg.top_p,
        stop_strings=cfg.stop_sequences,
        tokenizer=tokenizer,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    for row, i in enumerate(todo):
        new = out[row, width:]
        new_text = tokenizer.decode(new, skip_special_tokens=True)
        raw = cut_at_stop(new_text, cfg.stop_sequences).strip()
        check = check_answer(raw)  # after generation: unsafe advice is replaced, with its reason codes
        n_new = int((new != tokenizer.pad_token_id).sum()) if tokenizer.pad_token_id is not None else len(new)
        replies[i] = Reply(
            answer=check.text, new_tokens=n_new, triage=verdicts[i], check=check, raw_answer=raw
        )
    return replies
