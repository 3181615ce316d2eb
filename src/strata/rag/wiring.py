"""Building a RagService: in the server (embeddings through the dispatcher, with
its fallbacks and circuit breakers) or in a command (the alias's first deployment,
called directly: no Redis needed)."""

from __future__ import annotations

from typing import Any

from strata.errors import ModelNotFound
from strata.providers.base import EmbedResult
from strata.rag.service import EmbedFn, RagService
from strata.routing.dispatch import Outcome
from strata.routing.router import Target


def embedding_aliases(settings: Any) -> set[str]:
    return {name for name, a in settings.models.items() if a.kind == "embedding"}


def server_embedder(dispatcher: Any) -> EmbedFn:
    async def embed(alias: str, texts: list[str]) -> EmbedResult:
        async def call(target: Target) -> EmbedResult:
            result: EmbedResult = await target.provider.embed(texts, target.model)
            return result

        result: EmbedResult = await dispatcher.run(alias, "embedding", call, Outcome())
        return result

    return embed


def direct_embedder(settings: Any, providers: dict[str, Any]) -> EmbedFn:
    async def embed(alias: str, texts: list[str]) -> EmbedResult:
        spec = settings.models.get(alias)
        if spec is None or spec.kind != "embedding" or not spec.deployments:
            raise ModelNotFound(f"'{alias}' is not an embedding model", param="embedding_model")
        dep = spec.deployments[0]
        result: EmbedResult = await providers[dep.provider].embed(texts, dep.model)
        return result

    return embed


def attach(rt: Any) -> RagService | None:
    """The server's RagService on ``rt.chat.rag`` (None when ``rag.enabled`` is off).
    Whether the tables exist (pgvector) is found out by the first request."""
    settings = rt.settings
    if not settings.rag.enabled:
        return None
    rag = RagService(
        rt.engine,
        rt.chat.cache.crypto,
        settings.rag,
        server_embedder(rt.dispatcher),
        lambda: embedding_aliases(settings),
    )
    rt.chat.rag = rag
    return rag
