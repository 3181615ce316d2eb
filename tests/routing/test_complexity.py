"""Complexity scoring: request cues, the combined score, and the exemplar signal
with the real embedded model (all-MiniLM-L6-v2, loaded once for this module)."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterator
from typing import Any

import pytest

from strata.routing.calibrate import load_dataset
from strata.routing.complexity import (
    ComplexityScorer,
    Embed,
    Exemplar,
    features,
    last_user_text,
    load_exemplars,
    route,
    static_token_embed,
)


def body(text: str, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], **extra}


def tool(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}


CODE = "Why does this hang?\n```python\nimport threading\nlock = threading.Lock()\n```"


@pytest.mark.parametrize(
    ("cue", "present", "absent"),
    [
        ("code", CODE, "Why is the sky blue?"),
        ("code", "What does `self.items.pop(0)` return when the list is empty?", "Hello there"),
        ("code_task", "Implement a lock-free queue in C.", "Write a poem about the sea."),
        ("math", "Compute the integral of x^2 from 0 to 3.", "Name three rivers in Europe."),
        ("proof", "Prove that there are infinitely many primes.", "List three primes."),
        ("multi_step", "Do this:\n1. read the file\n2. parse it\n3. report errors", "Hi"),
        ("multi_step", "Think step by step, then answer.", "Answer."),
        ("structured", "Return the result as YAML.", "Return the result."),
        ("reasoning", "Compare Kafka and RabbitMQ and analyze the trade-offs.", "Hi!"),
        ("simple_task", "Translate 'good morning' into German.", "Design a schema."),
        ("brevity", "Explain DNS in one sentence.", "Explain DNS."),
        ("long_output", "Write a detailed design document.", "Write a note."),
    ],
)
def test_features_detect_cues(cue: str, present: str, absent: str) -> None:
    assert features(body(present))[cue] > 0
    assert features(body(absent))[cue] == 0


def test_features_read_request_structure() -> None:
    plain = features(body("Summarise this."))
    assert plain["tools"] == 0 and plain["structured"] == 0 and plain["turns"] == 0
    rich = features(
        body(
            "Summarise this.",
            tools=[tool("a"), tool("b"), tool("c")],
            response_format={"type": "json_object"},
        )
    )
    assert rich["tools"] == 1.0 and rich["structured"] == 1.0
    chat = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": [{"type": "text", "text": "Prove it."}]},
        ]
    }
    assert last_user_text(chat) == "Prove it."
    assert features(chat)["turns"] > 0 and features(chat)["proof"] == 1.0
    assert features(chat)["total_tokens"] > features(body("Prove it."))["total_tokens"]


def test_quoted_material_counts_as_length_not_instruction() -> None:
    quoted = "Translate into French: '" + "The shop opens at nine every day. " * 30 + "'"
    f = features(body(quoted))
    assert f["total_tokens"] > 5  # ~260 tokens of context
    assert f["instruction_tokens"] < 3  # "translate into french:" is the task


def test_features_are_bounded_on_odd_and_huge_input() -> None:
    odd: list[dict[str, Any]] = [
        {},
        {"messages": []},
        {"messages": [{"role": "user", "content": None}]},
        {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
        {"messages": [{"role": "user", "content": 42}, "not a message"]},
        {"messages": "not a list"},
        body("x" * 200_000),
        body("1+1=2 " * 5000),
    ]
    for b in odd:
        for name, value in features(b).items():
            assert value >= 0, name
            if not name.endswith(("tokens", "turns")):
                assert value <= 1, name


# (cheap-tier request, strong-tier request), none of them in the dataset or exemplars.
PAIRS = [
    ("What's the capital of Peru?", "Prove that the product of two odd integers is odd."),
    (
        "Translate 'see you tomorrow' into Italian.",
        "Design a sharded rate limiter for 1M requests per second and analyze its failure modes.",
    ),
    (
        "Write a Python function that returns the maximum of a list.",
        "Implement a thread-safe bounded blocking queue in Java and explain how it avoids "
        "lost wake-ups.",
    ),
    (
        "Give me a synonym for 'happy'.",
        "Compare event sourcing and CRUD for an accounting ledger, evaluate the trade-offs "
        "for audits and migrations, and recommend one.",
    ),
    (
        "Summarize: 'The store will be closed on Sunday for inventory.'",
        "Plan a three-phase migration of 200 services from VMs to Kubernetes with rollback "
        "criteria for each phase.",
    ),
]


async def test_scores_order_sensible_pairs_without_embeddings() -> None:
    scorer = ComplexityScorer(None)
    for cheap, strong in PAIRS:
        s_cheap, s_strong = await scorer.score(body(cheap)), await scorer.score(body(strong))
        assert 0 <= s_cheap < s_strong <= 1, (cheap, strong)
        assert s_cheap == scorer.score_features(body(cheap))
    assert route(0.7, 0.7) == "strong" and route(0.69, 0.7) == "cheap"


def counting_embed(calls: list[int], fail: bool = False, delay_s: float = 0.0) -> Embed:
    """A fake embedder: one axis per label word, so exemplars and requests line up."""

    async def embed(texts: list[str]) -> list[list[float]]:
        calls.append(len(texts))
        if fail:
            raise ConnectionError("embedder down")
        if len(texts) == 1 and delay_s:
            await asyncio.sleep(delay_s)
        return [[float("hard" in t), float("easy" in t), 0.1] for t in texts]

    return embed


TOY = [Exemplar("hard one", "strong"), Exemplar("hard two", "strong"), Exemplar("easy", "cheap")]


async def test_exemplar_similarity_moves_the_score_and_embeds_exemplars_once() -> None:
    calls: list[int] = []
    scorer = ComplexityScorer(counting_embed(calls), TOY, top_k=1)
    plain = ComplexityScorer(None)
    results = await asyncio.gather(*(scorer.score(body("a hard task")) for _ in range(5)))
    assert calls.count(3) == 1  # the exemplars, once, despite five concurrent requests
    assert all(r > plain.score_features(body("a hard task")) for r in results)
    assert await scorer.score(body("an easy task")) < plain.score_features(body("an easy task"))


async def test_embedding_failure_falls_back_to_features_and_backs_off() -> None:
    calls: list[int] = []
    scorer = ComplexityScorer(counting_embed(calls, fail=True), TOY)
    b = body("a hard task")
    assert await scorer.score(b) == scorer.score_features(b)
    assert await scorer.score(b) == scorer.score_features(b)
    assert calls == [3] and scorer.embed_errors == 1  # no retry storm while it is down


async def test_slow_embedding_times_out_to_features() -> None:
    calls: list[int] = []
    scorer = ComplexityScorer(counting_embed(calls, delay_s=5), TOY, embed_timeout_s=0.01)
    b = body("a hard task")
    assert await scorer.score(b) == scorer.score_features(b)
    assert scorer.embed_errors == 1


async def test_exemplars_need_both_labels() -> None:
    scorer = ComplexityScorer(counting_embed([]), [Exemplar("hard", "strong")])
    with pytest.raises(ValueError, match="both"):
        await scorer.prepare()


def normalise(text: str) -> str:
    return re.sub(r"\W+", " ", text.lower()).strip()


def test_shipped_exemplars_are_balanced_and_not_in_the_dataset() -> None:
    exemplars = load_exemplars()
    assert 40 <= len(exemplars) <= 80
    labels = [e.label for e in exemplars]
    assert {"strong", "cheap"} == set(labels)
    assert abs(labels.count("strong") - labels.count("cheap")) <= 4
    dataset = {normalise(d.prompt) for d in load_dataset()}
    assert not {normalise(e.prompt) for e in exemplars} & dataset


@pytest.fixture(scope="module")
def minilm() -> Iterator[Any]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    from strata.providers.local_embed import default_model_dir

    yield SentenceTransformer(str(default_model_dir()), device="cpu", local_files_only=True)


def full_model_embed(model: Any) -> Embed:
    async def embed(texts: list[str]) -> list[list[float]]:
        vecs = model.encode(texts, convert_to_numpy=True, normalize_embeddings=True)
        return vecs.tolist()

    return embed


def auc(pos: list[float], neg: list[float]) -> float:
    return sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))


@pytest.mark.parametrize("adapter", ["static", "full"])
async def test_real_model_similarity_points_the_right_way(minilm: Any, adapter: str) -> None:
    embed = static_token_embed(minilm) if adapter == "static" else full_model_embed(minilm)
    scorer = ComplexityScorer(embed, embed_timeout_s=None)
    cheap_margins = []
    for cheap, strong in PAIRS:
        m_cheap, m_strong = (
            await scorer.similarity_margin(cheap),
            await scorer.similarity_margin(strong),
        )
        assert m_strong > 0 and m_strong > m_cheap, (cheap, strong)
        assert await scorer.score(body(strong)) > await scorer.score(body(cheap))
        cheap_margins.append(m_cheap)
    # Mostly negative for cheap requests; simple code sits near the hard-code exemplars.
    assert sum(cheap_margins) < 0 and sum(m < 0 for m in cheap_margins) >= 4
    # Over the labelled dataset (every 3rd prompt keeps the full model quick), the
    # similarity alone separates the tiers well, and adds to the features.
    sample = load_dataset()[::3]
    margins = {d.prompt: await scorer.similarity_margin(d.prompt) for d in sample}
    hard = [d.prompt for d in sample if d.label == "strong"]
    easy = [d.prompt for d in sample if d.label == "cheap"]
    assert auc([margins[p] for p in hard], [margins[p] for p in easy]) > 0.9
    both = {d.prompt: await scorer.score(d.body()) for d in sample}
    feats = {d.prompt: scorer.score_features(d.body()) for d in sample}
    assert auc([both[p] for p in hard], [both[p] for p in easy]) >= auc(
        [feats[p] for p in hard], [feats[p] for p in easy]
    )
