"""Grounded answers: the chat path with extra_body rag (plain and streamed), the
answer endpoint, prompt building within the context budget."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import openai
import pytest

from strata.rag.answer import INSTRUCTIONS, NO_SOURCES, build_prompt, parse_params, question
from strata.rag.retrieve import Hit
from strata.storage.repositories.keys import NewKey
from tests.conftest import ServerThread
from tests.rag.conftest import BASE, add, call

DOCS = [
    {"text": "# Kettle\n\n## Descaling\n\nDescale the kettle monthly with citric acid.",
     "format": "markdown", "source": "kettle.md"},
    {"text": "# Bicycle\n\n## Tyres\n\nInflate road tyres to six bar before each ride.",
     "format": "markdown", "source": "bike.md"},
]  # fmt: skip
ASK = [{"role": "user", "content": "How often should I descale my kettle?"}]


@pytest.fixture
def grounded(
    server: ServerThread, tenant_key: NewKey, collection: dict[str, Any]
) -> dict[str, Any]:
    add(server, tenant_key, collection, *DOCS)
    return collection


def test_chat_with_rag_returns_citations(
    server: ServerThread,
    tenant_key: NewKey,
    grounded: dict[str, Any],
    sdk: Callable[[ServerThread, str], openai.OpenAI],
) -> None:
    client = sdk(server, tenant_key.key)
    plain = client.chat.completions.create(model="fake", messages=ASK, temperature=0)
    r = client.chat.completions.create(
        model="fake",
        messages=ASK,
        temperature=0,
        extra_body={"rag": {"collection": grounded["name"], "top_k": 2}},
    )
    ext = r.model_extra["strata"]
    cites = ext["citations"]
    assert cites[0]["index"] == 1 and cites[0]["source"] == "kettle.md"
    assert cites[0]["heading"] == ["Kettle", "Descaling"] and "citric acid" in cites[0]["text"]
    assert {"document_id", "chunk", "chunk_id", "score", "similarity"} <= set(cites[0])
    assert ext["rag"]["collection"] == grounded["id"] and ext["rag"]["embed_ms"] > 0
    assert ext["rag"]["retrieval_ms"] > 0
    assert r.usage is not None and plain.usage is not None
    # The sources went into the prompt (the fake model counts prompt words).
    assert r.usage.prompt_tokens > plain.usage.prompt_tokens + 20
    assert r.usage.model_extra["rag_retrieval_ms"] == ext["rag"]["retrieval_ms"]


def test_streamed_answer_ends_with_the_citations(
    server: ServerThread,
    tenant_key: NewKey,
    grounded: dict[str, Any],
    sdk: Callable[[ServerThread, str], openai.OpenAI],
) -> None:
    client = sdk(server, tenant_key.key)
    chunks = list(
        client.chat.completions.create(
            model="fake",
            messages=ASK,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"rag": {"collection": grounded["id"]}},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("This is a scripted reply")
    last = chunks[-1]
    assert last.choices == [] and last.model_extra["strata"]["citations"][0]["source"] == (
        "kettle.md"
    )
    assert any(c.usage is not None for c in chunks[:-1])  # the usage chunk still comes


def test_answer_endpoint(
    server: ServerThread, tenant_key: NewKey, grounded: dict[str, Any]
) -> None:
    r = call(
        server,
        tenant_key,
        "POST",
        f"{BASE}/{grounded['id']}/answer",
        json={"model": "fake", "query": "tyre pressure for a road bike?", "top_k": 1},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    assert [c["source"] for c in body["strata"]["citations"]] == ["bike.md"]
    assert r.headers["x-strata-model"] == "fake/fake-1"


def test_rag_errors_are_openai_shaped(
    server: ServerThread,
    tenant_key: NewKey,
    grounded: dict[str, Any],
    sdk: Callable[[ServerThread, str], openai.OpenAI],
) -> None:
    client = sdk(server, tenant_key.key)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="fake",
            messages=ASK,
            extra_body={"rag": {"collection": "nope-" + uuid.uuid4().hex}},
        )
    for bad, param in [
        ("docs", "rag"),
        ({"top_k": 2}, "rag.collection"),
        ({"collection": grounded["id"], "top_k": "5"}, "rag.top_k"),
        ({"collection": grounded["id"], "shape": 1}, "rag"),
        ({"collection": grounded["id"], "top_k": 500}, "top_k"),
    ]:
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model="fake", messages=ASK, extra_body={"rag": bad})
        assert info.value.body["param"] == param, info.value.body  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="fake",
            messages=[{"role": "system", "content": "only a system message"}],
            extra_body={"rag": {"collection": grounded["id"]}},
        )


def _hit(n: int, text: str) -> Hit:
    return Hit(n, f"doc_{n}", 0, 1.0 / n, 0.5, text, ["H"], f"s{n}.md", {})


def test_build_prompt_fits_the_budget_and_keeps_system_messages_first() -> None:
    hits = [_hit(i, "word " * 100) for i in range(1, 6)]  # ~130 tokens each as estimated
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "q?"}]
    out, used = build_prompt(msgs, hits, budget_tokens=400)
    assert [m["role"] for m in out] == ["system", "system", "user"]
    assert out[0]["content"] == "Be brief." and out[1]["content"].startswith(INSTRUCTIONS)
    assert 1 <= len(used) < 5 and len(out[1]["content"]) // 4 <= 400
    assert "[1] s1.md > H" in out[1]["content"] and f"\n[{len(used) + 1}] " not in out[1]["content"]
    none, used = build_prompt(msgs, hits, budget_tokens=10)
    assert used == [] and none[1]["content"] == NO_SOURCES


def test_question_and_params() -> None:
    parts = [{"type": "text", "text": "first"}, {"type": "image_url", "image_url": {}}]
    assert question([{"role": "user", "content": parts}]) == "first"
    assert (
        question([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]) == "a"
    )
    assert parse_params({"collection": "x", "mode": "vector"}).mode == "vector"
