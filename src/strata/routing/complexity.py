"""Complexity scoring for capability-based routing ("auto" aliases).

Each chat request gets a score in [0, 1]: how much it looks like work the strong
tier should do. Two signals are combined in one logistic model:

- ``features(body)``: cheap, pure-Python cues (length, code, math, multi-step
  instructions, requested structure, tools, reasoning verbs, and cues of easy
  tasks such as translate or summarise), a few microseconds per request;
- similarity to labelled exemplars (``exemplars.jsonl``): the last user message
  is embedded once and compared with "strong" and "cheap" example prompts.

The score is uncalibrated; ``strata.routing.calibrate`` turns a target share of
strong traffic into a threshold, and ``route(score, threshold)`` decides.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

log = logging.getLogger("strata.routing.complexity")

Tier = Literal["strong", "cheap"]
Embed = Callable[[list[str]], Awaitable[list[list[float]]]]

EXEMPLARS_PATH = Path(__file__).with_name("exemplars.jsonl")
# MiniLM truncates at 256 word pieces anyway; ~1000 characters is about that, and
# the task is almost always stated in the first paragraph.
EMBED_MAX_CHARS = 1000
# Cue regexes scan at most this much of the last message (head and tail), so a
# pasted 100 kB document costs the same as a short prompt.
SCAN_HEAD, SCAN_TAIL = 3000, 1000
# Exemplar neighbours averaged per class: one neighbour is noisy, many dilute.
TOP_K = 3

# Hand-set weights on the features below (logit units), chosen from the
# labelling rule in bench/routing/README.md and checked on the calibration half
# of the dataset only. Positive: strong-tier work; negative: easy-task cues.
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

_FENCE = re.compile(r"```")
_INLINE_CODE = re.compile(r"`[^`\n]{2,80}`")
_SYNTAX = re.compile(
    r"\bdef \w+\(|\bclass \w+\s*[:({]|\bfunc \w+\(|\bfunction\s*\w*\s*\(|=>|#include"
    r"|\bself\.\w|\w+\.\w+\(.*\)\s*$|[{};]\s*$|^\s*(?:import|from|package|using) \w"
    r"|\b(?:const|let|var) \w+\s*=|\bselect\b.+\bfrom\b",
    re.M,
)
_CODE_TASK = re.compile(
    r"\b(?:implement\w*|refactor\w*|debug\w*|deadlock\w*|race condition|memory leak|leaks memory"
    r"|thread-safe|lock-free|concurren\w*|algorithm\w*|optimi[sz]e|parser|interpreter|compiler"
    r"|asyncio|goroutines?|o\(n[^)]*\)|time complexity of \w+ operation|reconcile|migration"
    r"|schema|idempoten\w*|write an? (?:\w+ ){0,3}(?:program|script|service|library|operator"
    r"|decorator|server|query that))"
)
_MATH = re.compile(
    r"\\(?:frac|int|sum|sqrt)|\d\s*[-+*/^=<>]\s*\d|\^\s*[\d(n]|\b[xyn]\^|\b(?:integral"
    r"|derivative|probability|expected (?:value|number)|theorem|equation|matri(?:x|ces)|eigen\w*"
    r"|recurrence|variance|converge\w*|lagrange|polynomial|combinatori\w*|lemma|how many ways)\b"
)
_PROOF = re.compile(r"\b(?:prove|proof|derive|derivation|show that|by induction)\b")
_NUMBERED = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+\S", re.M)
_STEPS = re.compile(
    r"\bstep[- ]by[- ]step\b|\bfirst\b.{0,200}\bthen\b|\bthen\b|\bafter that\b|\bfinally\b"
    r"|\bfor (?:each|every)\b|\bif no\b|\botherwise\b|\bbreak (?:it )?down\b",
    re.S,
)
_STRUCTURED = re.compile(r"\b(?:json|yaml|table|schema|csv|xml|markdown|openapi)\b")
_LONG_OUTPUT = re.compile(
    r"\b(?:detailed|comprehensive|complete|full|thorough|in[- ]depth|runbook|roadmap"
    r"|itinerary|day-by-day|week-by-week|month-by-month|document|report|proposal|review"
    r"|at least \d+|\d[\d,]{2,} ?-?words?)\b"
)
_REASONING = re.compile(
    r"\b(?:why|explain\w*|compare\w*|comparison|analy[sz]\w*|design\w*|trade-?offs?|evaluate\w*"
    r"|justify|pros and cons|recommend\w*|strategy|architecture|plan\b|critically|assess\w*"
    r"|reason(?:ing)? through|estimate|root cause|investigat\w*|implications|mechanisms?"
    r"|break-even|risks?|minimi[sz]e|maximi[sz]e|optimal)\b"
)
_CONSTRAINTS = re.compile(
    r"\b(?:must|without|at most|no more than|under \$?\d|within|budget|ensure|handl\w+"
    r"|constraints?|only|while|respecting)\b|\b\d+(?:\.\d+)?\s?(?:k|m|gb|tb|ms|%)(?!\w)"
    r"|\bper (?:second|month|day|week|year)\b"
)
_SIMPLE = re.compile(
    r"\b(?:translat\w+|summari[sz]\w*|tl;dr|sum up|condense|rewrite|rephrase|paraphrase"
    r"|proofread|fix the (?:grammar|spelling|typos?|syntax)|correct the|classify|categori[sz]e"
    r"|label each|sentiment|extract|pull out|convert|title case|capitali[sz]e|sort these"
    r"|haiku|poem|limerick|slogan|joke|caption|rhyme|name ideas|suggest (?:a|three|a few) "
    r"|is this|what does|what is|what's|who (?:is|was|wrote|painted|invented)|how do i"
    r"|how many|define)\b|^(?:hi|hello|hey|thanks|thank you|ok|lol|good morning)\b"
)
_BREVITY = re.compile(
    r"\b(?:in (?:one|two|a) (?:sentence|line|paragraph)s?|one-line|one sentence|keep it short"
    r"|short list|in simple (?:terms|words)|for a beginner|for a \d+-year-old|under 280"
    r"|\d+ words or less|briefly)\b"
)
# Quoted or pasted material: it adds length, not difficulty.
_QUOTED = re.compile(r"```.*?```|'[^'\n]{12,}'|\"[^\"\n]{12,}\"|:\s*\n\n.*", re.S)


@dataclass(frozen=True, slots=True)
class Exemplar:
    prompt: str
    label: Tier


def load_exemplars(path: Path | None = None) -> list[Exemplar]:
    """The labelled example prompts shipped with the package (or another JSONL file)."""
    rows = (json.loads(line) for line in (path or EXEMPLARS_PATH).read_text().splitlines())
    return [Exemplar(r["prompt"], r["label"]) for r in rows if r]


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep the text ones
        return "\n".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def last_user_text(body: Mapping[str, Any]) -> str:
    """The text of the last user message (of the last message if no user one)."""
    messages = body.get("messages") or []
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            return _text(m.get("content"))
    return _text(messages[-1].get("content")) if messages and isinstance(messages[-1], dict) else ""


def _log_tokens(chars: int) -> float:
    return math.log1p(chars / 4)  # ~4 characters per token for English


def _count(pattern: re.Pattern[str], text: str, cap: int) -> float:
    return min(len(pattern.findall(text)), cap) / cap


def features(body: Mapping[str, Any]) -> dict[str, float]:
    """Cheap cues of a chat request body; every value is in [0, 1] or a log length."""
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    last = last_user_text(body)
    scan = last if len(last) <= SCAN_HEAD + SCAN_TAIL else last[:SCAN_HEAD] + last[-SCAN_TAIL:]
    low = scan.lower()
    instruction = _QUOTED.sub(" ", low)
    fmt = body.get("response_format")
    fmt_type = fmt.get("type") if isinstance(fmt, dict) else None
    tools = body.get("tools") or body.get("functions") or []
    fences = len(_FENCE.findall(scan)) // 2
    return {
        "instruction_tokens": _log_tokens(len(instruction)),
        "total_tokens": _log_tokens(sum(len(_text(m.get("content"))) for m in messages)),
        "turns": math.log1p(max(sum(1 for m in messages if m.get("role") == "user") - 1, 0)),
        "code": min(fences + len(_SYNTAX.findall(scan)) / 3 + len(_INLINE_CODE.findall(scan)) / 4, 1),
        "code_task": _count(_CODE_TASK, instruction, 2),
        "math": _count(_MATH, low, 3),
        "proof": _count(_PROOF, instruction, 1),
        "multi_step": min(_count(_NUMBERED, scan, 4) + _count(_STEPS, instruction, 2), 1),
        "structured": 1.0 if fmt_type in ("json_object", "json_schema") else _count(
            _STRUCTURED, instruction, 1
        ),
        "long_output": _count(_LONG_OUTPUT, instruction, 2),
        "tools": min(len(tools) / 3, 1) if isinstance(tools, list) else 0.0,
        "reasoning": _count(_REASONING, instruction, 3),
        "constraints": _count(_CONSTRAINTS, instruction, 4),
        "simple_task": _count(_SIMPLE, instruction, 1),
        "brevity": _count(_BREVITY, instruction, 1),
    }


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x > -60 else 0.0


def route(score: float, threshold: float) -> Tier:
    """Strong at or above the threshold, cheap below."""
    return "strong" if score >= threshold else "cheap"


class ComplexityScorer:
    """Scores chat request bodies in [0, 1]; higher means send to the strong tier.

    ``embed`` (optional, async, a list of texts to unit or raw vectors) adds the
    exemplar-similarity signal; without it only ``features`` are used. Exemplars
    (default: the shipped set) are embedded once, on ``prepare()`` or the first
    ``score()``. If embedding a request fails, that request is scored on features
    alone: routing must never fail a request because its helper model did.
    """

    def __init__(
        self,
        embed: Embed | None = None,
        exemplars: Sequence[Exemplar] | None = None,
        *,
        weights: Mapping[str, float] | None = None,
        similarity_weight: float = SIMILARITY_WEIGHT,
        top_k: int = TOP_K,
    ) -> None:
        self.embed = embed
        self.exemplars = list(exemplars) if exemplars is not None else load_exemplars()
        self.weights = dict(weights or WEIGHTS)
        self.similarity_weight = similarity_weight
        self.top_k = top_k
        self.embed_errors = 0
        self._strong: np.ndarray | None = None
        self._cheap: np.ndarray | None = None
        self._lock = asyncio.Lock()

    @property
    def uses_embeddings(self) -> bool:
        return self.embed is not None

    async def prepare(self) -> None:
        """Embed the exemplars (once; concurrent callers share the work)."""
        if self.embed is None or self._strong is not None:
            return
        async with self._lock:
            if self._strong is not None:
                return
            texts = [e.prompt[:EMBED_MAX_CHARS] for e in self.exemplars]
            vecs = _unit(np.asarray(await self.embed(texts), dtype=np.float32))
            labels = np.array([e.label == "strong" for e in self.exemplars])
            if labels.all() or not labels.any():
                raise ValueError("exemplars need both 'strong' and 'cheap' prompts")
            self._cheap = vecs[~labels]
            self._strong = vecs[labels]

    def logit_features(self, body: Mapping[str, Any]) -> float:
        w = self.weights
        return w.get("bias", 0.0) + sum(w.get(k, 0.0) * v for k, v in features(body).items())

    def score_features(self, body: Mapping[str, Any]) -> float:
        """The score from features alone (synchronous, microseconds)."""
        return _sigmoid(self.logit_features(body))

    async def similarity_margin(self, text: str) -> float:
        """Mean top-k cosine similarity to strong exemplars minus that to cheap ones."""
        await self.prepare()
        assert self.embed is not None and self._strong is not None and self._cheap is not None
        vec = _unit(np.asarray(await self.embed([text[:EMBED_MAX_CHARS]]), dtype=np.float32))[0]
        return _top_mean(self._strong @ vec, self.top_k) - _top_mean(self._cheap @ vec, self.top_k)

    async def score(self, body: Mapping[str, Any]) -> float:
        logit = self.logit_features(body)
        if self.embed is not None:
            text = last_user_text(body).strip()
            if text:
                try:
                    logit += self.similarity_weight * await self.similarity_margin(text)
                except Exception:
                    self.embed_errors += 1
                    log.warning("complexity: embedding failed; scored on features only", exc_info=True)
        return _sigmoid(logit)


def _unit(m: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return m / np.where(norms == 0, 1, norms)


def _top_mean(sims: np.ndarray, k: int) -> float:
    k = min(k, len(sims))
    return float(np.partition(sims, -k)[-k:].mean())


def sentence_transformer_embed(model: Any) -> Embed:
    """Adapt a loaded ``SentenceTransformer`` to ``Embed``; encodes on the caller's thread.

    For the CLI and tests. A server should pass the embedding provider instead, so
    the model runs on its own thread behind its queue.
    """

    async def embed(texts: list[str]) -> list[list[float]]:
        vecs = model.encode(texts, convert_to_numpy=True, normalize_embeddings=True)
        return vecs.tolist()  # type: ignore[no-any-return]

    return embed
