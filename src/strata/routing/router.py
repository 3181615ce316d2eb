"""Resolve a client's model name (an alias) to its deployments (``Target``s).

Balancing, retries, fallbacks and circuit breaking live in ``dispatch``.
"""

from __future__ import annotations

from dataclasses import dataclass

from strata.errors import InvalidRequest, ModelNotFound
from strata.providers.base import Provider
from strata.settings import Alias, Settings


@dataclass(frozen=True, slots=True)
class Target:
    alias: str
    provider: Provider
    model: str
    rank: int = 0
    weight: float = 1.0
    ttft_timeout_s: float | None = None
    timeout_s: float | None = None
    max_context: int | None = None
    # Identifies the deployment: breaker state, latency, in-flight counts.
    key: str = ""

    @property
    def label(self) -> str:
        return f"{self.provider.name}/{self.model}"


class Router:
    def __init__(self, settings: Settings, providers: dict[str, Provider]) -> None:
        self.aliases: dict[str, Alias] = dict(settings.models)
        self._candidates: dict[str, list[Target]] = {
            name: [
                Target(
                    name,
                    providers[d.provider],
                    d.model,
                    rank=d.rank if d.rank is not None else i,
                    weight=d.weight,
                    ttft_timeout_s=d.ttft_timeout_s,
                    timeout_s=d.timeout_s,
                    max_context=d.max_context or providers[d.provider].max_context,
                    key=f"{name}|{d.provider}|{d.model}",
                )
                for i, d in enumerate(alias.deployments)
            ]
            for name, alias in self.aliases.items()
        }

    def candidates(self, alias: str, kind: str) -> list[Target]:
        found = self._candidates.get(alias)
        if found is None:
            raise ModelNotFound(
                f"The model '{alias}' does not exist or you do not have access to it.",
                param="model",
            )
        if self.aliases[alias].kind != kind:
            other = "/v1/embeddings" if kind == "chat" else "/v1/chat/completions"
            raise InvalidRequest(
                f"'{alias}' is an {self.aliases[alias].kind} model; use it with {other}",
                param="model",
                code="model_not_supported",
            )
        return found
