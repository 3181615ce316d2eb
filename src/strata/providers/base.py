"""The one provider interface.

A provider turns an OpenAI-shaped request into a result. Capabilities are
attributes, never try/except probes. Built-in providers register through the
``strata.providers`` entry-point group exactly as a third-party one would.

``chat`` returns a complete ``chat.completion`` object. ``stream`` yields
``chat.completion.chunk`` dicts and always ends with one usage chunk (empty
``choices``, a ``usage`` object), whether or not the client asked for it: the
gateway needs it for accounting and drops it when the client did not ask.
The gateway consumes ``stream_batches``, which groups chunks that arrive
together (by default, one chunk per group).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from strata.errors import ConfigError, InvalidRequest
from strata.settings import ProviderConfig, Settings, format_validation_error


@dataclass(slots=True)
class ChatResult:
    body: dict[str, Any]
    prompt_tokens: int
    completion_tokens: int


@dataclass(slots=True)
class EmbedResult:
    vectors: list[list[float]]
    prompt_tokens: int


class ProviderOptions(BaseModel):
    """Base for each provider's own options; unknown keys are configuration errors."""

    model_config = ConfigDict(extra="forbid")


class Provider:
    """Base class; subclasses set the capability flags and override what they support."""

    Options: ClassVar[type[ProviderOptions]] = ProviderOptions

    supports_chat: ClassVar[bool] = False
    supports_streaming: ClassVar[bool] = False
    supports_tools: ClassVar[bool] = False
    supports_embeddings: ClassVar[bool] = False
    # True for providers that run on this machine's CPU (their queue is ours).
    is_local: ClassVar[bool] = False
    max_context: int | None = None

    def __init__(self, name: str, config: ProviderConfig, settings: Settings) -> None:
        self.name = name
        self.settings = settings
        try:
            self.options = self.Options(**config.options())
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, f"providers.{name}")) from None

    async def start(self) -> None:
        """Open sessions and load models. Slow loads may continue in the background."""

    async def close(self) -> None:
        """Release everything ``start`` acquired."""

    def ready(self) -> bool:
        return True

    async def chat(self, body: dict[str, Any], model: str) -> ChatResult:
        raise InvalidRequest(
            f"provider {self.name!r} does not serve chat completions", param="model"
        )

    def stream(self, body: dict[str, Any], model: str) -> AsyncIterator[dict[str, Any]]:
        raise InvalidRequest(f"provider {self.name!r} does not stream", param="stream")

    async def stream_batches(
        self, body: dict[str, Any], model: str
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """``stream`` grouped into what is available at once; the gateway writes each
        group to the client in one go. Override when chunks arrive in bursts."""
        async for chunk in self.stream(body, model):
            yield [chunk]

    async def embed(self, inputs: list[str], model: str) -> EmbedResult:
        raise InvalidRequest(f"provider {self.name!r} does not serve embeddings", param="model")


def chunk_factory(chunk_id: str, created: int, model: str) -> Any:
    """Build ``chat.completion.chunk`` dicts for one stream: ``chunk(delta, finish)``."""

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": chunk_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    return chunk


def usage_chunk(
    chunk_id: str, created: int, model: str, prompt: int, completion: int
) -> dict[str, Any]:
    return {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    """Rough prompt tokens (4 characters a token), for when nobody counted them."""
    messages = body.get("messages") or []
    chars = sum(
        len(m["content"])
        for m in messages
        if isinstance(m, dict) and isinstance(m.get("content"), str)
    )
    return chars // 4 + 1
