"""Fast training: packed rows with per-dialogue attention, and multi-query attention without the fallback.

    rows = pack_samples(samples, pack_tokens=4096, pad_token_id=tok.pad_token_id, seed=42)
    enable_packing(model)                      # "falcon" (our attention) or "generic"; idempotent
    batch = PackedCollator()(rows[:2])         # input_ids, labels, position_ids; no attention_mask

Why: dialogue rows average ~120 tokens, so padded batches of 4 give the GPU tiny matrix products
and fixed per-step costs dominate. Packing puts many dialogues into one long row; the position
ids restart at 0 for every dialogue, and attention uses them to stay inside each dialogue (a
dialogue never attends to another, and the loss never crosses a boundary because every
dialogue starts with prompt tokens, whose labels are -100).

Attention: transformers hands Falcon's 71 query heads and 1 key/value head to SDPA as-is,
which takes the slow math kernel. Here, on CUDA, packed rows go to flash varlen attention
(`torch.nn.attention.varlen`, grouped-query aware); elsewhere (CPU tests) SDPA runs with the
key/value head expanded and a block-diagonal causal mask. Generation with a KV cache keeps the
original code path.

Every other architecture takes transformers' own packed-sequence support: with no attention mask
and no cache, its mask builder reads the position-id restarts and makes the mask block-diagonal
(SDPA, eager), and flash-attention implementations run varlen over the same boundaries. The one
trap is the cache: with `use_cache=True` (the default outside training) a cache object exists and
the packed-sequence check is skipped, so dialogues leak into each other. `enable_packing` turns
the cache off for packed batches.
"""

from __future__ import annotations

import inspect
import logging
import random
import types
from typing import Any

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- packing


def pack_samples(
    samples: list[dict[str, Any]], pack_tokens: int, pad_token_id: int, seed: int
) -> list[dict[str, list[int]]]:
    """Pack tokenized samples into rows of exactly `pack_tokens` tokens (next-fit, shuffled).

    Every sample lands in exactly one row, whole; the tail of a row is padding with labels -100.
    """
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    rows: list[dict[str, list[int]]] = []
    row: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": []}
    for i in order:
        s = samples[i]
        n = len(s["input_ids"])
        if n > pack_tokens:
            raise ValueError(f"a sample of {n} tokens does not fit pack_tokens={pack_tokens}")
        if len(row["input_ids"]) + n > pack_tokens:
            rows.append(_pad_row(row, pack_tokens, pad_token_id))
            row = {"input_ids": [], "labels": [], "position_ids": []}
        row["input_ids"] += s["input_ids"]
        row["labels"] += s["labels"]
        row["position_ids"] += list(range(n))
    if row["input_ids"]:
        rows.append(_pad_row(row, pack_tokens, pad_token_id))
    return rows


def _pad_row(row: dict[str, list[int]], pack_tokens: int, pad_token_id: int) -> dict[str, list[int]]:
    pad = pack_tokens - len(row["input_ids"])
    return {
        "input_ids": row["input_ids"] + [pad_token_id] * pad,
        "labels": row["labels"] + [-100] * pad,
        "position_ids": row["position_ids"] + list(range(pad)),  # the padding is its own "dialogue"
    }


def packing_efficiency(rows: list[dict[str, list[int]]]) -> float:
    """Share of row tokens that belong to a dialogue (not padding)."""
    total = sum(len(r["input_ids"]) for r in rows)
    pad = sum(_tail_padding(r) for r in rows)
    return 1.0 - pad / total if total else 0.0


def _tail_padding(row: dict[str, list[int]]) -> int:
    starts = [i for i, p in enumerate(row["position_ids"]) if p == 0]
    last = starts[-1]
    return len(row["input_ids"]) - last if all(lab == -100 for lab in row["labels"][last:]) else 0


class PackedCollator:
    """Stacks packed rows; no attention_mask, so position_ids carry the dialogue boundaries."""

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        return {
            k: torch.tensor([r[k] for r in rows], dtype=torch.long)
            for k in ("input_ids", "labels", "position_ids")
        }


# ----------------------------------------------------------------------------- attention


def enable_packing(model: torch.nn.Module) -> str:
    """Make packed rows attend within their own dialogue only, for any causal LM.

    Returns:
        "falcon" when Falcon's attention was routed to the fast path below, else "generic"
        (transformers' packed-sequence masks, with the cache off for packed batches).
    """
    if patch_falcon_attention(model):
        return "falcon"
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(inner, "_medbot_packing_hook", False):
        inner.register_forward_pre_hook(_no_cache_when_packed, with_kwargs=True)
        inner._medbot_packing_hook = True
    return "generic"


def _no_cache_when_packed(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """A packed batch (position ids, no attention mask, no cache) runs with use_cache=False, the
    condition under which transformers builds per-dialogue masks from the position ids."""
    packed = kwargs.get("position_ids") is not None and kwargs.get("attention_mask") is None
    if not packed or kwargs.get("past_key_values") is not None:
        return None
    return args, {**kwargs, "use_cache": False}


def cu_seqlens(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Cumulative dialogue lengths over the flattened batch (int32) and the longest dialogue.

    Memoised on the tensor, which every layer of one forward pass shares, so the device sync
    of `nonzero` happens once per forward, not once per layer.
    """
    cached = getattr(position_ids, "_medbot_cu", None)
    if cached is not None:
        return cached
    flat = position_ids.reshape(-1)
    starts = torch.nonzero(flat == 0).flatten()
    if starts.numel() == 0 or starts[0] != 0:
        starts = torch.cat([starts.new_zeros(1), starts])
    # a new row always starts a new dialogue, even if its position ids do not restart
    row_starts = torch.arange(0, flat.numel(), position_ids.shape[-1], device=flat.device)
    starts = torch.unique(torch.cat([starts, row_starts]))
    cu = torch.cat([starts, starts.new_tensor([flat.numel()])]).to(torch.int32)
    result = (cu, int((cu[1:] - cu[:-1]).max()))
    position_ids._medbot_cu = result
    return result


def _varlen() -> tuple[Any, bool]:
    """torch's flash varlen attention if it can do causal, and whether it takes grouped KV heads."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None, False
    params = inspect.signature(varlen_attn).parameters
    if "window_size" not in params:
        return None, False
    return varlen_attn, "enable_gqa" in params


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """Causal attention within each dialogue. q: (B, H, L, D); k, v: (B, Hkv, L, D) -> (B, L, H*D)."""
    b, h, n, d = q.shape
    cu, longest = cu_seqlens(position_ids)
    flash_ok = q.is_cuda and torch.cuda.get_device_capability(q.device)[0] >= 8  # no flash on a T4 (sm75)
    varlen_attn, gqa = _varlen() if flash_ok else (None, False)
    if varlen_attn is not None:
        if q.dtype not in (torch.float16, torch.bfloat16):  # flash kernels take 16-bit only
            dt = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else torch.bfloat16
            q, k, v = q.to(dt), k.to(dt), v.to(dt)
        if not gqa:  # torch 2.11: no grouped heads, so the one KV head is copied to all 71
            k, v = k.expand(b, h, n, d), v.expand(b, h, n, d)
        extra = {"enable_gqa": True} if gqa and k.shape[1] != h else {}
        out = varlen_attn(
            q.transpose(1, 2).reshape(b * n, h, d),
            k.transpose(1, 2).reshape(b * n, k.shape[1], d),
            v.transpose(1, 2).reshape(b * n, v.shape[1], d),
            cu,
            cu,
            longest,
            longest,
            window_size=(-1, 0),  # causal
            **extra,
        )
        return out.reshape(b, n, h * d)
    doc = torch.searchsorted(cu[1:], torch.arange(b * n, device=q.device), right=True).view(b, n)
    causal = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    mask = (doc[:, :, None] == doc[:, None, :]) & causal  # (B, L, L) block-diagonal causal
    k = k.expand(b, h, n, d)
    v = v.expand(b, h, n, d)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])
    return out.transpose(1, 2).reshape(b, n, h * d)


def _fast_forward(
    self: Any,
    hidden_states: torch.Tensor,
    alibi: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    position_ids: torch.LongTensor | None = None,
    layer_past: Any = None,
    use_cache: bool = False,
    output_attentions: bool = False,
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    # Packed rows (marked by `_mark_packed`) take the fast path; padded batches, the KV cache of
    # generation and alibi keep the original code.
    packed = getattr(position_ids, "_medbot_packed", False)
    if layer_past is not None or output_attentions or alibi is not None or not packed:
        return self._medbot_original_forward(
            hidden_states, alibi, attention_mask, position_ids, layer_past, use_cache, output_attentions,
            position_embeddings, **kwargs,
        )  # fmt: skip
    from transformers.models.falcon.modeling_falcon import apply_rotary_pos_emb

    q, k, v = self._split_heads(self.query_key_value(hidden_states))  # (B, L, H|Hkv, D)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    cos, sin = position_embeddings
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    return self.dense(_attention(q, k, v, position_ids)), None


def patch_falcon_attention(model: torch.nn.Module) -> int:
    """Route every Falcon attention layer's training forward through `_fast_forward`.

    Returns:
        The number of Falcon attention layers now on the fast path (0 for other models).
    """
    from transformers.models.falcon.modeling_falcon import FalconAttention, FalconModel

    n = 0
    for module in model.modules():
        if isinstance(module, FalconAttention):
            if not hasattr(module, "_medbot_original_forward"):
                module._medbot_original_forward = module.forward
                module.forward = types.MethodType(_fast_forward, module)
            n += 1
        if isinstance(module, FalconModel) and not hasattr(module, "_medbot_hooked"):
            module.register_forward_pre_hook(_mark_packed, with_kwargs=True)
            module._medbot_hooked = True
    return n


def _mark_packed(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """A batch with position ids, no attention mask and no cache is a packed batch (PackedCollator's).

    A KV cache means nothing for packed rows, so none is built (transformers would otherwise
    create one in eval mode).
    """
    pos = kwargs.get("position_ids")
    no_cache = kwargs.get("cache") is None and kwargs.get("past_key_values") is None
    if pos is None or kwargs.get("attention_mask") is not None or not no_cache:
        return None
    pos._medbot_packed = True
    return args, {**kwargs, "use_cache": False}
