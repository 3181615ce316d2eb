"""Secret refresh: every resolved reference is re-resolved on a schedule.

``secrets.refresh_s`` (default 300 s; 0 turns refreshing off) sets the period. A
changed value replaces the old one in its holder, so the next upstream request (or
alert) uses it without a restart. A failed refresh keeps the last good value and
logs a warning naming the reference, never the value. Blocking work (file reads,
Vault over HTTP) runs in a worker thread, off the event loop.

This module is imported by ``strata.settings`` (for ``SecretsSettings``), so it
imports the resolver lazily.
"""

from __future__ import annotations

import asyncio
import logging

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger("strata.secrets")


class SecretsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Seconds between re-resolutions of every secret reference; 0: resolve at start-up only.
    refresh_s: float = Field(default=300.0, ge=0)


async def refresh_secrets() -> int:
    """Re-resolve every live reference once; returns how many values changed."""
    from strata.errors import ConfigError
    from strata.security.credentials import live_refs

    changed = 0
    for secret in live_refs():
        try:
            if await asyncio.to_thread(secret.refresh):
                changed += 1
                log.info("secret %s (%s) changed; used from now on", secret.where, secret.ref)
        except ConfigError as exc:  # messages name the reference, never the value
            log.warning("secret refresh failed, keeping the last value: %s", exc.message)
        except Exception as exc:
            log.warning(
                "secret refresh failed for %s (%s), keeping the last value: %s",
                secret.where,
                secret.ref,
                type(exc).__name__,
            )
    return changed


async def refresh_forever(settings: SecretsSettings) -> None:
    """The runtime's background task; cancelled on shutdown."""
    while True:
        await asyncio.sleep(settings.refresh_s)
        await refresh_secrets()
