"""Complexity scoring for capability-based routing: cheap tier or strong tier.

A chat request's score in [0, 1] is one logistic model over two signals:
``features(body)``, pure-Python cues (length, code, math, multi-step
instructions, requested structure, tools, reasoning verbs, and easy-task cues
such as translate or summarise), tens of microseconds; and similarity of the last
user message to labelled exemplars (``exemplars.jsonl``). Scores are
uncalibrated: ``strata.routing.calibrate`` turns a target strong share into a
threshold, and ``route(score, threshold)`` decides.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from strata.routing.cues import Tier, features, last_user_text, route

__all__ = [
    "ComplexityScorer",
    "Embed",
    "Exemplar",
    "Tier",
    "features",
    "last_user_text",
    "load_exemplars",
    "route",
    "static_token_embed",
]

log = logging.getLogger("strata.routing.complexity")

Embed = Callable[[list[str]], Awaitable[list[list[float]]]]

EXEMPLARS_PATH = Path(__file__).with_name("exemplars.jsonl")
# MiniLM truncates at 256 word pieces anyway; ~1000 characters is about that, and
# the task is almost always stated in the first paragraph.
EMBED_MAX_CHARS = 1000
# Exemplar neighbours averaged per class: one neighbour is noisy, many dilute.
TOP_K = 3
# A request waits at most this long for its embedding, then goes on features.
EMBED_TIMEOUT_S = 0.25
# After the exemplars fail to embed, features only for this long: requests must
# not queue behind an embedder that is down.
EMBED_RETRY_S = 10.0

# Hand-set weights on ``features`` (logit units), from the labelling rule in
# bench/routing/README.md, not fitted to the dataset: a fit on ~350 prompts one
# person wrote would learn that person. Positive: strong-tier work; negative:
# easy-task and brevity cues.
WEIGHTS: dict[str, float] = {
    "bias": -3.2,
    "instruction_tokens": 0.55,  # log1p of the instruction, quoted material removed
    "total_tokens": 0.1,
    "turns": 0.2,
    "code": 0.6,
    "code_task": 1.3,
    "math": 0.9,
    "proof": 1.4,
    "multi_step": 0.7,
    "structured": 0.2,
    "long_output": 1.0,
    "tools": 0.4,
    "reasoning": 0.8,
    "constraints": 0.45,
    "simple_task": -1.4,
    "brevity": -1.0,
}
# Logit per unit of (mean top-k similarity to strong exemplars minus the same for
# cheap ones); margins on MiniLM sit within about +-0.3.
SIMILARITY_WEIGHT = 12.0


@dataclass(frozen=True, slots=True)
class Exemplar:
    prompt: str
    label: Tier


def load_exemplars(path: Path | None = None) -> list[Exemplar]:
    """The labelled example prompts shipped with the package (or another JSONL file)."""
    lines = (path or EXEMPLARS_PATH).read_text().splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    return [Exemplar(r["prompt"], r["label"]) for r in rows]


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x > -60 else 0.0


class ComplexityScorer:
    """Scores chat request bodies in [0, 1]; higher means send to the strong tier.

    ``embed`` (optional, async: texts to vectors) adds the exemplar-similarity
    signal; without it only ``features`` count. Exemplars (default: the shipped
    set) are embedded once, by ``prepare()`` (call it at start-up) or the first
    ``score()``. A request whose embedding fails or takes over ``embed_timeout_s``
    is scored on features alone: routing never fails a request for its helper.
    """

    def __init__(
        self,
        embed: Embed | None = None,
        exemplars: Sequence[Exemplar] | None = None,
        *,
        weights: Mapping[str, float] | None = None,
        similarity_weight: float = SIMILARITY_WEIGHT,
        top_k: int = TOP_K,
        embed_timeout_s: float | None = EMBED_TIMEOUT_S,
    ) -> None:
        self.embed = embed
        self.exemplars = list(exemplars) if exemplars is not None else load_exemplars()
        self.weights = dict(weights or WEIGHTS)
        self.similarity_weight = similarity_weight
        self.top_k = top_k
        self.embed_timeout_s = embed_timeout_s
        self.embed_errors = 0
        self._strong: np.ndarray | None = None
        self._cheap: np.ndarray | None = None
        self._retry_at = 0.0
        self._lock = asyncio.Lock()

    async def prepare(self) -> None:
        """Embed the exemplars (once; concurrent callers share the work)."""
        if self.embed is None or self._strong is not None:
            return
        async with self._lock:
            if self._strong is not None:
                return
            labels = np.array([e.label == "strong" for e in self.exemplars])
            if labels.all() or not labels.any():
                raise ValueError("exemplars need both 'strong' and 'cheap' prompts")
            try:
                vecs = await self.embed([e.prompt[:EMBED_MAX_CHARS] for e in self.exemplars])
            except Exception:
                self._retry_at = time.monotonic() + EMBED_RETRY_S
                raise
            unit = _unit(np.asarray(vecs, dtype=np.float32))
            self._strong, self._cheap = unit[labels], unit[~labels]

    def logit_features(self, body: Mapping[str, Any]) -> float:
        w = self.weights
        return w.get("bias", 0.0) + sum(w.get(k, 0.0) * v for k, v in features(body).items())

    def score_features(self, body: Mapping[str, Any]) -> float:
        """The score from features alone (synchronous, tens of microseconds)."""
        return _sigmoid(self.logit_features(body))

    async def similarity_margin(self, text: str) -> float:
        """Mean top-k cosine similarity to strong exemplars minus that to cheap ones."""
        await self.prepare()
        if self.embed is None or self._strong is None or self._cheap is None:
            raise RuntimeError("similarity needs an embedding function and prepared exemplars")
        vec = _unit(np.asarray(await self.embed([text[:EMBED_MAX_CHARS]]), dtype=np.float32))[0]
        return _top_mean(self._strong @ vec, self.top_k) - _top_mean(self._cheap @ vec, self.top_k)

    async def score(self, body: Mapping[str, Any]) -> float:
        logit = self.logit_features(body)
        text = last_user_text(body).strip()
        if self.embed is None or not text or time.monotonic() < self._retry_at:
            return _sigmoid(logit)
        try:
            await self.prepare()
            async with asyncio.timeout(self.embed_timeout_s):
                logit += self.similarity_weight * await self.similarity_margin(text)
        except Exception as exc:  # TimeoutError included
            self.embed_errors += 1
            log.warning("complexity: scored on features only (%s: %s)", type(exc).__name__, exc)
        return _sigmoid(logit)


def _unit(m: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return m / np.where(norms == 0, 1, norms)


def _top_mean(sims: np.ndarray, k: int) -> float:
    k = min(k, len(sims))
    return float(np.partition(sims, -k)[-k:].mean())


def static_token_embed(model: Any) -> Embed:
    """``Embed`` from a loaded ``SentenceTransformer``'s input word-piece vectors, mean-pooled.

    No transformer layers: ~0.2 ms inline instead of ~20 ms a forward pass on a
    small CPU, and as good for this exemplar vote (bench/routing/README.md).
    """
    table = model[0].auto_model.embeddings.word_embeddings.weight.detach().cpu().numpy()
    # Our own copy: a fast tokenizer shared with the model's worker thread can fail
    # with "Already borrowed" when both set truncation at once.
    tokenizer = copy.deepcopy(model.tokenizer)

    async def embed(texts: list[str]) -> list[list[float]]:
        ids = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=256)
        return [
            table[i].mean(axis=0).tolist() if i else [0.0] * table.shape[1]
            for i in ids["input_ids"]
        ]

    return embed
