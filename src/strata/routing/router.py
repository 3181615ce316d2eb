"""Resolve a client's model name (an alias) to a deployment and its provider.

Aliases map to ordered deployments. This version dispatches to the first one;
fallbacks, retries and circuit breaking build on ``candidates``.
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


class Router:
    def __init__(self, settings: Settings, providers: dict[str, Provider]) -> None:
        self.aliases: dict[str, Alias] = dict(settings.models)
        self._candidates: dict[str, list[Target]] = {
            name: [Target(name, providers[d.provider], d.model) for d in alias.deployments]
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

    def pick(self, alias: str, kind: str) -> Target:
        return self.candidates(alias, kind)[0]
