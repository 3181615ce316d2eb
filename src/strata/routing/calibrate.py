"""Turn complexity scores into a routing threshold, and judge the result.

``calibrate`` picks the threshold that sends a target share of traffic to the
strong tier (an empirical quantile of observed scores: shares are what budgets
are planned in). ``evaluate`` measures a threshold on a labelled sample: how
much goes strong, how often the answer is acceptable, and what it costs compared
with sending everything to one tier.

Costs are estimates from the reference's price table: input tokens ~ prompt
characters / 4, output tokens from the dataset (default 200).
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from strata.routing.cues import Tier, route

T = TypeVar("T")

# The labelled benchmark lives beside the other benchmarks, in the source tree.
DEFAULT_DATASET = Path(__file__).resolve().parents[3] / "bench" / "routing" / "prompts.jsonl"
DEFAULT_OUTPUT_TOKENS = 200
CHARS_PER_TOKEN = 4
MILLION = 1_000_000


@dataclass(frozen=True, slots=True)
class TierPrice:
    """USD per million tokens."""

    input_per_1m: float
    output_per_1m: float

    def cost(self, input_tokens: float, output_tokens: float) -> float:
        return (input_tokens * self.input_per_1m + output_tokens * self.output_per_1m) / MILLION


@dataclass(frozen=True, slots=True)
class Prices:
    cheap: TierPrice
    strong: TierPrice


# The reference's Model and API Layer: Together AI Llama 3.1 70B as the primary
# (cheap) tier, GPT-3.5 Turbo for "complex requests routed through capability
# detection". Note the "strong" tier is the cheaper one per input token there.
DEFAULT_PRICES = Prices(cheap=TierPrice(0.88, 1.06), strong=TierPrice(0.50, 1.50))


@dataclass(frozen=True, slots=True)
class LabelledPrompt:
    prompt: str
    label: Tier
    output_tokens: int = DEFAULT_OUTPUT_TOKENS
    tools: tuple[str, ...] = ()
    category: str = ""

    def body(self) -> dict[str, Any]:
        """The chat request this prompt stands for (tools as bare function stubs)."""
        body: dict[str, Any] = {"messages": [{"role": "user", "content": self.prompt}]}
        if self.tools:
            body["tools"] = [
                {"type": "function", "function": {"name": t, "parameters": {"type": "object"}}}
                for t in self.tools
            ]
        return body


@dataclass(frozen=True, slots=True)
class ScoredPrompt:
    prompt: str
    label: Tier
    score: float
    output_tokens: int = DEFAULT_OUTPUT_TOKENS

    @property
    def input_tokens(self) -> float:
        return len(self.prompt) / CHARS_PER_TOKEN


@dataclass(frozen=True, slots=True)
class Evaluation:
    n: int
    threshold: float
    strong_share: float  # share of requests routed strong
    accuracy: float  # acceptable answers: routed strong, or cheap and labelled cheap
    agreement: float  # route == label (over-routing to strong counts as a miss)
    strong_recall: float  # strong-labelled requests routed strong
    cheap_only_accuracy: float  # accuracy of sending everything cheap
    cost_routed: float  # USD for the sample
    cost_always_strong: float
    cost_always_cheap: float
    labels: dict[str, int] = field(default_factory=dict)


def load_dataset(path: Path | None = None) -> list[LabelledPrompt]:
    """Read ``{"prompt", "label", "output_tokens"?, "tools"?, "category"?}`` lines."""
    path = path or DEFAULT_DATASET
    if not path.is_file():
        raise FileNotFoundError(f"no routing dataset at {path}")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if row.get("label") not in ("strong", "cheap") or not row.get("prompt"):
            raise ValueError(f"{path}:{n}: needs a prompt and a label of 'strong' or 'cheap'")
        out.append(
            LabelledPrompt(
                prompt=row["prompt"],
                label=row["label"],
                output_tokens=int(row.get("output_tokens", DEFAULT_OUTPUT_TOKENS)),
                tools=tuple(row.get("tools", ())),
                category=row.get("category", ""),
            )
        )
    return out


def load_bodies(path: Path) -> list[dict[str, Any]]:
    """Chat request bodies to calibrate on: lines that are bodies (``messages``) or
    dataset rows (``prompt``, optional ``tools``); labels are not needed."""
    out: list[dict[str, Any]] = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if isinstance(row.get("messages"), list):
            out.append(row)
        elif row.get("prompt"):  # the label is a placeholder: only the body is used
            out.append(
                LabelledPrompt(row["prompt"], "cheap", tools=tuple(row.get("tools", ()))).body()
            )
        else:
            raise ValueError(f"{path}:{n}: needs 'messages' or 'prompt'")
    return out


def _position(key: str) -> float:
    """Where a prompt falls in [0, 1), by content hash: stable across runs and file order."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def is_holdout(prompt: str, holdout_share: float = 0.5) -> bool:
    return _position(prompt) < holdout_share


def split(
    items: Iterable[T], prompt_of: Callable[[T], str] | None = None, holdout_share: float = 0.5
) -> tuple[list[T], list[T]]:
    """(calibration part, held-out part); ``prompt_of`` defaults to ``item.prompt``."""
    key: Callable[[T], str] = prompt_of or operator.attrgetter("prompt")
    calib: list[T] = []
    held: list[T] = []
    for item in items:
        (held if is_holdout(key(item), holdout_share) else calib).append(item)
    return calib, held


def cross_calibrated_share(
    keys: Sequence[str], scores: Sequence[float], strong_share: float, folds: int = 10
) -> float:
    """The share routed strong when every score meets a threshold calibrated without it.

    Each of ``folds`` hash-assigned parts is routed by the threshold fitted on the
    others; the pooled share covers the whole sample, all of it held out. A single
    50/50 split of a few hundred prompts moves by about +-4 points from sampling
    alone, too coarse to check a +-3 point target.
    """
    fold = [int(_position(k) * folds) for k in keys]
    strong = 0
    for f in set(fold):
        held = [s for s, g in zip(scores, fold, strict=True) if g == f]
        # A sample that hashes into one fold has nothing else to fit on.
        fit = [s for s, g in zip(scores, fold, strict=True) if g != f] or list(scores)
        t = calibrate(fit, strong_share)
        strong += sum(1 for s in held if route(s, t) == "strong")
    return strong / len(scores)


def calibrate(scores: Sequence[float], strong_share: float) -> float:
    """The threshold routing ``strong_share`` of these scores strong (``score >= t``).

    Between the last score in and the first one out it takes the midpoint, so new
    scores near the boundary split evenly. Ties across the cut go to whichever
    side lands closer to the target.
    """
    if not 0.0 <= strong_share <= 1.0:
        raise ValueError("strong_share must be within [0, 1]")
    if not scores:
        raise ValueError("calibrate needs at least one score")
    ranked = sorted(scores, reverse=True)
    k = round(strong_share * len(ranked))
    if k == 0:
        return math.nextafter(ranked[0], math.inf)
    if k == len(ranked):
        return ranked[-1]
    hi, lo = ranked[k - 1], ranked[k]
    if hi > lo:
        mid = (hi + lo) / 2
        return mid if mid > lo else hi  # adjacent floats: the midpoint rounds onto lo
    at_or_above = sum(1 for s in ranked if s >= hi)
    above = sum(1 for s in ranked if s > hi)
    return hi if at_or_above - k <= k - above else math.nextafter(hi, math.inf)


def share_routed_strong(scores: Sequence[float], threshold: float) -> float:
    return sum(1 for s in scores if route(s, threshold) == "strong") / len(scores)


def best_threshold(records: Sequence[ScoredPrompt]) -> float:
    """The threshold with the best agreement with the labels (fewer strong on ties).

    Not "best accuracy": accuracy never falls as more goes strong, so its optimum
    is sending everything strong.
    """
    ranked = sorted(records, key=lambda r: r.score, reverse=True)
    # Start with nothing strong; move the cut down one distinct score at a time.
    correct = sum(1 for r in ranked if r.label == "cheap")
    best = (correct, math.nextafter(ranked[0].score, math.inf))
    i = 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j].score == ranked[i].score:
            correct += 1 if ranked[j].label == "strong" else -1
            j += 1
        lower = ranked[j].score if j < len(ranked) else -math.inf
        if correct > best[0]:
            t = ranked[i].score if lower == -math.inf else (ranked[i].score + lower) / 2
            best = (correct, t if t > lower else ranked[i].score)
        i = j
    return best[1]


def evaluate(
    records: Sequence[ScoredPrompt], threshold: float, prices: Prices = DEFAULT_PRICES
) -> Evaluation:
    """Routing quality and estimated cost of ``threshold`` on a labelled sample."""
    if not records:
        raise ValueError("evaluate needs at least one record")
    n = len(records)
    strong = acceptable = agree = strong_labels = strong_hits = 0
    cost = cost_strong = cost_cheap = 0.0
    for r in records:
        tier = route(r.score, threshold)
        on_strong = prices.strong.cost(r.input_tokens, r.output_tokens)
        on_cheap = prices.cheap.cost(r.input_tokens, r.output_tokens)
        cost_strong += on_strong
        cost_cheap += on_cheap
        cost += on_strong if tier == "strong" else on_cheap
        strong += tier == "strong"
        # Acceptable: the strong tier handles anything, the cheap tier only cheap work.
        acceptable += tier == "strong" or r.label == "cheap"
        agree += tier == r.label
        strong_labels += r.label == "strong"
        strong_hits += tier == "strong" and r.label == "strong"
    return Evaluation(
        n=n,
        threshold=threshold,
        strong_share=strong / n,
        accuracy=acceptable / n,
        agreement=agree / n,
        strong_recall=strong_hits / strong_labels if strong_labels else 1.0,
        cheap_only_accuracy=(n - strong_labels) / n,
        cost_routed=cost,
        cost_always_strong=cost_strong,
        cost_always_cheap=cost_cheap,
        labels={"strong": strong_labels, "cheap": n - strong_labels},
    )
