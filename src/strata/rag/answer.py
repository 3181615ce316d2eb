"""Grounded answers: retrieve for the user's question, put numbered sources in a
system message within the model's context budget, return citations.

Used by the chat path (``extra_body={"rag": {"collection": "X", "top_k": 5}}``)
and by ``POST /v1/rag/collections/{id}/answer``; the answer itself goes through
the normal chat path (routing, caching, limits, accounting). Retrieved text is
part of the prompt, so the cache key changes when the documents do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from strata.errors import InvalidRequest, PermissionDenied
from strata.gateway.quota import max_tokens_of
from strata.providers.base import estimate_prompt_tokens
from strata.rag.retrieve import MODES, Hit, search
from strata.rag.service import RagService
from strata.security.keys import Principal

INSTRUCTIONS = (
    "Answer the question using only the numbered sources below. Cite every source you "
    "use by its number in square brackets, like [1] or [2][3]. If the sources do not "
    "contain the answer, say that the documents do not answer it."
)
NO_SOURCES = (
    "No document in the collection matched the question. Say that the documents do "
    "not answer it; do not answer from general knowledge."
)
# Tokens kept free for message framing and rounding in the 4-characters estimate.
MARGIN_TOKENS = 64
RAG_KEYS = {"collection", "top_k", "filters", "min_similarity", "mode"}


@dataclass(frozen=True)
class RagParams:
    collection: str
    top_k: int | None = None
    filters: Any = None
    min_similarity: float | None = None
    mode: str = "hybrid"


def parse_params(value: Any) -> RagParams:
    if not isinstance(value, dict):
        raise InvalidRequest('rag must be an object like {"collection": "docs"}', param="rag")
    unknown = set(value) - RAG_KEYS
    if unknown:
        raise InvalidRequest(f"rag: unknown field '{sorted(unknown)[0]}'", param="rag")
    col = value.get("collection")
    if not isinstance(col, str) or not col:
        raise InvalidRequest("rag.collection: a collection id or name", param="rag.collection")
    top_k = value.get("top_k")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool)):
        raise InvalidRequest("rag.top_k must be an integer", param="rag.top_k")
    floor = value.get("min_similarity")
    if floor is not None and (not isinstance(floor, int | float) or isinstance(floor, bool)):
        raise InvalidRequest("rag.min_similarity must be a number", param="rag.min_similarity")
    mode = value.get("mode", "hybrid")
    if mode not in MODES:
        raise InvalidRequest(f"rag.mode must be one of {', '.join(MODES)}", param="rag.mode")
    return RagParams(col, top_k, value.get("filters"), floor, mode)


def question(messages: list[Any]) -> str:
    """The text of the last user message (what retrieval searches for)."""
    for m in reversed(messages):
        if not isinstance(m, dict) or m.get("role") != "user":
            continue
        content = m.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return " ".join(
                p.get("text", "")
                for p in content
                if isinstance(p, dict)
                and p.get("type") == "text"
                and isinstance(p.get("text"), str)
            )
    raise InvalidRequest("rag needs a user message to search for", param="messages")


def _label(hit: Hit) -> str:
    where = [hit.source or hit.document_id, *hit.heading]
    return " > ".join(w for w in where if w)


def build_prompt(
    messages: list[Any], hits: list[Hit], budget_tokens: int
) -> tuple[list[Any], list[Hit]]:
    """Messages with a grounding system message (after any leading system messages)
    holding as many sources, best first, as fit in ``budget_tokens``."""
    used: list[Hit] = []
    blocks: list[str] = []
    spent = len(INSTRUCTIONS) // 4 + 1
    for hit in hits:
        block = f"[{len(used) + 1}] {_label(hit)}\n{hit.text}"
        cost = len(block) // 4 + 1
        if spent + cost > budget_tokens:
            break
        blocks.append(block)
        used.append(hit)
        spent += cost
    content = INSTRUCTIONS + "\n\nSources:\n\n" + "\n\n".join(blocks) if blocks else NO_SOURCES
    at = 0
    while (
        at < len(messages)
        and isinstance(messages[at], dict)
        and messages[at].get("role")
        in (
            "system",
            "developer",
        )
    ):
        at += 1
    return [*messages[:at], {"role": "system", "content": content}, *messages[at:]], used


def citation(n: int, hit: Hit) -> dict[str, Any]:
    return {
        "index": n,
        "document_id": hit.document_id,
        "chunk": hit.position,
        "chunk_id": hit.chunk_id,
        "score": round(hit.score, 6),
        "similarity": None if hit.similarity is None else round(hit.similarity, 6),
        "source": hit.source,
        "heading": hit.heading,
        "text": hit.text,
    }


async def ground(
    rag: RagService, body: dict[str, Any], principal: Principal, context_tokens: int | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The request to send (``rag`` removed, sources added) and the ``strata``
    extension for the answer: citations, the collection, embedding and retrieval ms."""
    if not principal.has_scope("rag"):
        raise PermissionDenied(
            "this API key does not have the 'rag' scope", code="insufficient_scope"
        )
    params = parse_params(body.get("rag"))
    col = await rag.collection(principal.tenant_id, params.collection)
    found = await search(
        rag,
        col,
        question(body.get("messages") or []),
        top_k=params.top_k,
        mode=params.mode,  # type: ignore[arg-type]
        filters=params.filters,
        min_similarity=params.min_similarity,
    )
    out = {k: v for k, v in body.items() if k != "rag"}
    window = context_tokens or rag.settings.default_context_tokens
    answer = max_tokens_of(body) or rag.settings.answer_tokens
    budget = window - estimate_prompt_tokens(body) - answer - MARGIN_TOKENS
    out["messages"], used = build_prompt(list(body["messages"]), found.hits, budget)
    ext = {
        "rag": {
            "collection": col.id,
            "retrieved": len(found.hits),
            "cited": len(used),
            "embed_ms": round(found.embed_ms, 3),
            "retrieval_ms": round(found.retrieval_ms, 3),
        },
        "citations": [citation(n, h) for n, h in enumerate(used, 1)],
    }
    return out, ext
