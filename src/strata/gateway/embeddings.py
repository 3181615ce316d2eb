"""Embeddings: route, embed, encode (float or base64), meter."""

from __future__ import annotations

import base64
from typing import Any

from strata.errors import InvalidRequest
from strata.gateway.meter import Meter
from strata.gateway.quota import Quota
from strata.providers.base import EmbedResult
from strata.routing.dispatch import Dispatcher
from strata.routing.router import Target


class EmbeddingService:
    def __init__(self, dispatcher: Dispatcher, quota: Quota | None = None) -> None:
        self.dispatcher = dispatcher
        self.quota = quota

    async def embed(self, body: dict[str, Any], meter: Meter) -> dict[str, Any]:
        alias = body["model"]
        meter.event.alias = alias  # named on the record (and metrics) even if refused
        meter.event.end_user = body.get("user")
        raw = body["input"]
        inputs = [raw] if isinstance(raw, str) else raw
        if not all(isinstance(x, str) for x in inputs):
            self.dispatcher.router.candidates(alias, "embedding")  # unknown model: 404 first
            # Token-array input only means something for the model that made the tokens.
            raise InvalidRequest(
                f"model '{alias}' takes text input; token arrays are not supported",
                param="input",
            )

        if self.quota is not None:
            await self.quota.admit(
                meter,
                requested=alias,
                alias=alias,
                kind="embedding",
                # About four characters per token: corrected after the call.
                prompt_tokens=sum(len(x) for x in inputs) // 4 + len(inputs),
            )

        async def call(target: Target) -> EmbedResult:
            return await target.provider.embed(inputs, target.model)

        result = await self.dispatcher.run(
            alias, "embedding", call, meter.outcome, on_target=meter.on_target
        )
        target = meter.outcome.target
        if target is None:  # run() returns only after an attempt on a target
            raise InvalidRequest("no deployment answered", param="model")
        meter.tokens(result.prompt_tokens, 0)
        vectors = result.vectors
        dims = body.get("dimensions")
        if dims is not None:
            have = len(vectors[0]) if vectors else 0
            if dims != have:
                raise InvalidRequest(
                    f"model '{target.alias}' produces {have}-dimensional vectors; "
                    f"'dimensions' must be {have} or omitted",
                    param="dimensions",
                )
        b64 = body.get("encoding_format") == "base64"
        data = [
            {"object": "embedding", "index": i, "embedding": _b64(v) if b64 else v}
            for i, v in enumerate(vectors)
        ]
        return {
            "object": "list",
            "data": data,
            "model": target.model,
            "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
        }


def _b64(vector: list[float]) -> str:
    # OpenAI's base64 format: little-endian float32, as its SDK decodes it.
    import numpy as np  # here, not at import: a chat-only server need not load it

    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
