"""Embeddings: route, embed, encode (float or base64), meter."""

from __future__ import annotations

import base64
from typing import Any

from strata.errors import InvalidRequest
from strata.gateway.meter import Meter
from strata.routing.router import Router


class EmbeddingService:
    def __init__(self, router: Router) -> None:
        self.router = router

    async def embed(self, body: dict[str, Any], meter: Meter) -> dict[str, Any]:
        target = self.router.pick(body["model"], "embedding")
        meter.target(target.alias, target.provider.name, target.model)
        raw = body["input"]
        inputs = [raw] if isinstance(raw, str) else raw
        if not all(isinstance(x, str) for x in inputs):
            # Token-array input only means something for the model that made the tokens.
            raise InvalidRequest(
                f"model '{target.alias}' takes text input; token arrays are not supported",
                param="input",
            )
        result = await target.provider.embed(inputs, target.model)
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
