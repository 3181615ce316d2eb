"""Find provider classes through entry points and build the configured instances."""

from __future__ import annotations

from importlib.metadata import entry_points

from strata.errors import ConfigError
from strata.providers.base import Provider
from strata.settings import Settings

GROUP = "strata.providers"


def provider_types() -> dict[str, type[Provider]]:
    found: dict[str, type[Provider]] = {}
    for ep in entry_points(group=GROUP):
        found[ep.name] = ep.load()
    return found


def build_providers(settings: Settings) -> dict[str, Provider]:
    types = provider_types()
    providers: dict[str, Provider] = {}
    for name, cfg in settings.providers.items():
        cls = types.get(cfg.type)
        if cls is None:
            known = ", ".join(sorted(types)) or "none installed"
            raise ConfigError(
                f"providers.{name}.type: unknown provider type {cfg.type!r} (installed: {known})"
            )
        providers[name] = cls(name, cfg, settings)
    for alias_name, alias in settings.models.items():
        for i, dep in enumerate(alias.deployments):
            p = providers[dep.provider]
            ok = p.supports_embeddings if alias.kind == "embedding" else p.supports_chat
            if not ok:
                raise ConfigError(
                    f"models.{alias_name}.deployments.{i}: provider {dep.provider!r} "
                    f"({settings.providers[dep.provider].type}) cannot serve {alias.kind} models"
                )
    return providers
