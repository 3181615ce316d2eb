"""Fire spend alerts: deduplicated across instances, delivered off the request
path with retries, every outcome recorded.

Deduplication has two layers:

1. Redis ``SET strata:alert:<dedupe_key> NX EX <period + margin>``: the first
   instance to claim an alert goes on; every other instance drops it after one
   round trip. This keeps PostgreSQL out of the burst when many requests on many
   instances cross the same threshold at once.
2. PostgreSQL ``INSERT ... ON CONFLICT (dedupe_key, channel) DO NOTHING``: the
   instance whose insert lands owns delivery to that channel. This is the
   authority: it holds after Redis keys expire or are flushed, and when Redis is
   unreachable it is the only layer used.

When PostgreSQL is unreachable an alert that won the Redis claim is still
delivered (and the failure to record it is logged); when both are unreachable an
instance delivers anyway, at most once per process: a duplicate alert is a
lesser harm than a silent overspend. An instance that dies mid-delivery leaves
its rows ``pending``; they are not retried by others.

Each instance also remembers the keys it has already seen, so a budget that
stays over a threshold costs one Redis call per threshold and period, not one
per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import aiohttp
from sqlalchemy.ext.asyncio import AsyncEngine

from strata.alerts.channels import DeliveryFailed, Sender, build_senders
from strata.alerts.config import AlertsSettings
from strata.alerts.events import Alert, Period, crossed, period_start
from strata.storage.repositories import alerts as repo

log = logging.getLogger("strata.alerts")

PREFIX = "strata:alert:"
# Claims outlive their period by a day, so a late fire near the boundary still dedupes.
PERIOD_TTL_S = {"day": 86_400, "month": 31 * 86_400}
MARGIN_S = 86_400
# Process-local memory of keys already handled; bounded so it cannot grow without end.
SEEN_MAX = 10_000
# How long aclose() lets in-flight deliveries finish before cancelling them.
CLOSE_GRACE_S = 5.0


class AlertDispatcher:
    """``await fire(alert)`` returns at once; delivery runs in a background task.

    ``redis`` is a redis.asyncio client, ``engine`` the async SQLAlchemy engine.
    Building one resolves channel secrets and raises ConfigError if one is missing.
    """

    def __init__(
        self,
        redis: Any,
        engine: AsyncEngine,
        settings: AlertsSettings,
        *,
        session: aiohttp.ClientSession | None = None,
        prefix: str = PREFIX,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.redis = redis
        self.engine = engine
        self.settings = settings
        self.prefix = prefix
        self.clock = clock  # UTC; tests inject one to cross period boundaries
        self._session = session
        self._own_session = session is None
        # Secrets resolve here (fail at start-up); the HTTP session opens on first use.
        self.senders: list[Sender] = build_senders(settings.channels, self._http)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._watch: asyncio.Task[None] | None = None
        self._closed = False

    def reconfigure(self, settings: AlertsSettings) -> None:
        """New channels and thresholds (a config reload). Secrets resolve first: a
        missing one raises ConfigError and leaves the old settings in place."""
        senders = build_senders(settings.channels, self._http)
        self.settings, self.senders = settings, senders

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def fire(self, alert: Alert) -> None:
        """Schedule delivery unless this instance has already handled the alert."""
        if not self.settings.enabled or not self.senders or self._closed:
            return
        if not self._remember(alert):
            return
        task = asyncio.create_task(self._background(alert), name="strata-alert")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def check_budget(
        self,
        *,
        scope: str,
        scope_id: str,
        period: Period,
        spent: Decimal,
        cap: Decimal,
        at: datetime | None = None,
    ) -> None:
        """Fire a ``budget_threshold`` alert for every configured threshold ``spent``
        has reached. Cheap enough to call after every settle: repeats are dropped
        in-process."""
        start = period_start(period, at or self.clock())
        for t in crossed(spent, cap, self.settings.thresholds):
            await self.fire(
                Alert(
                    kind="budget_threshold",
                    scope=scope,
                    scope_id=scope_id,
                    period=period,
                    period_start=start,
                    threshold=t,
                    spent=spent,
                    cap=cap,
                )
            )

    async def check_daily_spend(self, total_today: Decimal, at: datetime | None = None) -> None:
        """Fire once per UTC day when deployment-wide spend reaches ``daily_alert_usd``."""
        cap = self.settings.daily_alert_usd
        if cap is None or total_today < cap:
            return
        await self.fire(
            Alert(
                kind="daily_spend",
                scope="deployment",
                scope_id="*",
                period="day",
                period_start=period_start("day", at or self.clock()),
                threshold=1.0,
                spent=total_today,
                cap=cap,
            )
        )

    def start_daily_watch(self) -> None:
        """Every ``daily_check_interval_s``, sum today's spend from usage records and
        check it (no-op without ``daily_alert_usd``). Stopped by ``aclose``."""
        if self.settings.daily_alert_usd is None or self._watch is not None:
            return
        self._watch = asyncio.create_task(self._daily_watch(), name="strata-alert-daily")

    async def _daily_watch(self) -> None:
        while True:
            now = self.clock()
            try:
                spent = await repo.spend_since(self.engine, today_start(now))
                await self.check_daily_spend(spent, now)
            except Exception as exc:
                log.warning("daily spend check failed", extra={"error": type(exc).__name__})
            await asyncio.sleep(self.settings.daily_check_interval_s)

    async def _background(self, alert: Alert) -> None:
        try:
            await self._claim_and_deliver(alert)
        except Exception:
            # A bug here must not surface as an unretrieved task exception.
            log.exception("alert dispatch failed", extra={"dedupe_key": alert.dedupe_key})

    async def send(self, alert: Alert, channel: str | None = None) -> dict[str, str | None]:
        """Claim and deliver now, waiting for the outcome (``strata alerts test``).

        Returns {channel name: None if sent, else the (secret-free) error}; channels
        another instance already owns are left out.
        """
        senders = [s for s in self.senders if channel is None or s.name == channel]
        return await self._claim_and_deliver(alert, senders)

    async def _claim_and_deliver(
        self, alert: Alert, senders: list[Sender] | None = None
    ) -> dict[str, str | None]:
        senders = self.senders if senders is None else senders
        key = alert.dedupe_key
        claimed_in_redis = await self._redis_claim(alert)
        if claimed_in_redis is False:
            log.debug("alert already claimed", extra={"dedupe_key": key})
            return {}
        payload = alert.payload()
        rows: dict[str, int | None]
        try:
            claimed = await repo.claim(
                self.engine, payload=payload, channels=[(s.name, s.type) for s in senders]
            )
            rows = dict(claimed)
        except Exception as exc:
            # PostgreSQL down: Redis (if it answered) already made this instance the
            # only sender; if it did not either, deliver rather than stay silent.
            log.warning(
                "alert not recorded: PostgreSQL failed",
                extra={"dedupe_key": key, "error": type(exc).__name__},
            )
            rows = {s.name: None for s in senders}
        owned = [s for s in senders if s.name in rows]
        if not owned:
            log.debug("alert already delivered by another instance", extra={"dedupe_key": key})
            return {}
        results = await asyncio.gather(*(self._deliver(alert, s, rows[s.name]) for s in owned))
        return {s.name: err for s, err in zip(owned, results, strict=True)}

    async def _redis_claim(self, alert: Alert) -> bool | None:
        """True: claimed; False: another instance has it; None: Redis unavailable."""
        ttl = PERIOD_TTL_S[alert.period] + MARGIN_S
        try:
            ok = await self.redis.set(self.prefix + alert.dedupe_key, b"1", nx=True, ex=ttl)
        except Exception as exc:
            log.warning(
                "alert dedupe falls back to PostgreSQL: Redis unavailable",
                extra={"error": type(exc).__name__},
            )
            return None
        return bool(ok)

    async def _deliver(self, alert: Alert, sender: Sender, row_id: int | None) -> str | None:
        """Try up to ``retry.attempts`` times with exponential backoff; record each
        attempt. Returns None when sent, else the last error."""
        r = self.settings.retry
        error: str | None = None
        attempt = 0
        while attempt < r.attempts:
            attempt += 1
            try:
                await sender.send(alert)
            except DeliveryFailed as exc:
                error = str(exc)
                final = exc.permanent or attempt >= r.attempts
                await self._record(row_id, attempt, repo.FAILED if final else repo.PENDING, error)
                if final:
                    break
                await asyncio.sleep(min(r.backoff_s * 2 ** (attempt - 1), r.max_backoff_s))
                continue
            await self._record(row_id, attempt, repo.SENT, None)
            log.info(
                "alert delivered",
                extra={
                    "channel": sender.name,
                    "alert_kind": alert.kind,
                    "dedupe_key": alert.dedupe_key,
                    "attempts": attempt,
                },
            )
            return None
        log.error(
            "alert delivery failed",
            extra={
                "channel": sender.name,
                "alert_kind": alert.kind,
                "dedupe_key": alert.dedupe_key,
                "attempts": attempt,
                "error": error,
            },
        )
        return error

    async def _record(
        self, row_id: int | None, attempts: int, status: str, error: str | None
    ) -> None:
        if row_id is None:
            return
        try:
            await repo.record_attempt(
                self.engine, row_id, attempts=attempts, status=status, error=error
            )
        except Exception as exc:
            log.warning("alert attempt not recorded", extra={"error": type(exc).__name__})

    def _remember(self, alert: Alert) -> bool:
        """False if this process has already handled the alert."""
        now = time.monotonic()
        key = alert.dedupe_key
        expiry = self._seen.get(key)
        if expiry is not None and expiry > now:
            return False
        self._seen[key] = now + PERIOD_TTL_S[alert.period] + MARGIN_S
        self._seen.move_to_end(key)
        while len(self._seen) > SEEN_MAX:
            self._seen.popitem(last=False)
        return True

    async def wait_idle(self) -> None:
        """Wait for scheduled deliveries (tests; graceful shutdown)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def aclose(self, grace_s: float = CLOSE_GRACE_S) -> None:
        """Let in-flight deliveries finish for up to ``grace_s``, cancel the rest,
        close the HTTP session (if this dispatcher made it). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
        pending = set(self._tasks)
        if pending:
            _, late = await asyncio.wait(pending, timeout=grace_s)
            for t in late:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            if late:
                log.warning("alert deliveries cancelled at shutdown", extra={"count": len(late)})
        if self._own_session and self._session is not None:
            await self._session.close()


def today_start(now: datetime | None = None) -> datetime:
    now = (now or datetime.now(UTC)).astimezone(UTC)
    return now.replace(hour=0, minute=0, second=0, microsecond=0)
