"""Spend caps per key, user and tenant: reserve the worst case, settle the actual.

Periods: calendar days and months in UTC. A day resets at 00:00:00 UTC, a month
at 00:00:00 UTC on its first day. A reservation belongs to the period it was made
in: a call that starts at 23:59:59 is settled against that day.

Redis: one hash per subject and period, ``strata:budget:{scope}:{subject}:d:YYYYMMDD``
(or ``:m:YYYYMM``), fields ``spent`` and ``reserved`` as integers of 1e-10 USD
(the precision of usage records), expiring a day after the period ends.

Reserve (one Lua script, one round trip): every cap that applies (key, user,
tenant x day, month) is checked against ``spent + reserved + worst_case``; only
if all fit is ``worst_case`` added to ``reserved`` of each, so concurrent calls can
never reserve beyond a cap, and settled spend exceeds a cap by at most what calls
cost beyond their own worst case. Spend is tracked for every subject, capped or
not (``strata budgets show``, and a cap set mid-period counts what was spent); a
request none of whose subjects has a cap reserves nothing and is only charged
when it settles.

Settle (one script): releases the reservation and adds the actual cost, once. The
reservation's record (``strata:budget:res:{id}``) is deleted by the first settle;
a second settle finds nothing and does nothing. A reservation whose instance died
is released by later reserves once ``reservation_ttl_s`` has passed (its record
becomes a tombstone, so a late settle still charges exactly once).

Soft limit: ``soft_pct`` of a cap; a reservation beyond it passes and reports
``soft_exceeded``. Alerts: each settle reports the ``alert_thresholds`` of each cap
(and the deployment-wide ``daily_alert_usd``; both set under ``alerts:``) that this
settle's spend crossed; an increment crosses a value at most once, so each crossing is reported by
exactly one settle in the whole deployment.

Failure policy: each call waits at most ``redis_timeout_s``; on an error Redis is
skipped for ``down_backoff_s``, logged once per outage, counted in ``errors``.
While down, caps are enforced in this instance from the last spend it saw in
Redis (updated by every reserve and settle; a subject it never saw starts at 0)
plus what it reserved and spent since. Settles made while down are queued and
applied when Redis answers again, each exactly once (a reservation made in Redis
by its record; one made in memory by a marker ``strata:budget:replayed:{id}``).
Crossings found while replaying go to ``on_crossing``. A reserve that got no reply
(a timeout: it may have reached Redis) is enforced in memory like any other, and
its possible copy in Redis is released first when Redis answers again, so it does
not hold the cap for ``reservation_ttl_s``.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal
from typing import Any

from redis.exceptions import RedisError

from strata.limits.budget_types import BudgetExceeded, Crossing, Reservation, Slot, Subject
from strata.limits.config import BudgetCaps, BudgetsSettings
from strata.limits.crossings import crossings
from strata.limits.outage import RedisBackoff
from strata.limits.overrides import Overrides, merged, user_subject
from strata.limits.scripts import RESERVE_SCRIPT, SETTLE_SCRIPT, evalsha
from strata.limits.units import (
    Period,
    from_units,
    period_end,
    period_start,
    to_units,
)

log = logging.getLogger("strata.limits")

PREFIX = "strata:budget"
# Period hashes outlive their period by this much (``budgets show`` of yesterday).
PERIOD_MARGIN = timedelta(days=1)
# A reservation's record outlives its deadline this long (a late settle still finds it).
RECORD_MARGIN_MS = 86_400_000
# Markers of settles replayed after an outage: long enough for any outage and replay.
REPLAY_MARKER_TTL_S = 7 * 86_400
# Stale reservations released per reserve call (bounded work on the hot path).
SWEEP_BATCH = 20
REPLAY_TIMEOUT_S = 2.0
# In-memory caches and views are bounded (entries).
MAX_CACHED = 100_000


class Budgets(RedisBackoff):
    """Reserve before a call, settle after it (see the module docstring)."""

    def __init__(
        self,
        redis: Any,
        settings: BudgetsSettings,
        *,
        overrides: Overrides | None = None,
        clock: Callable[[], datetime] | None = None,
        prefix: str = PREFIX,
        on_crossing: Callable[[list[Crossing]], Any] | None = None,
        alert_thresholds: Sequence[float] = (0.5, 0.8, 1.0),
        daily_alert_usd: Decimal | None = None,
    ) -> None:
        # Alert settings live under ``alerts:`` (thresholds, daily_alert_usd).
        self.alert_thresholds = sorted(set(alert_thresholds))
        self.daily_alert_usd = daily_alert_usd
        self.redis = redis
        self.s = settings
        self.overrides = overrides or Overrides()
        self.clock = clock or (lambda: datetime.now(UTC))
        self.prefix = prefix
        self.on_crossing = on_crossing
        self._init_backoff(settings.down_backoff_s)
        # key -> [spent, reserved] units as last seen in Redis, plus local changes.
        self._view: dict[str, list[int]] = {}
        # Settles made while Redis was unreachable, by reservation id, in order.
        self._queued: dict[str, tuple[Reservation, int]] = {}
        # Reserves sent that got no reply (timeout, dropped connection): each may
        # hold a reservation in Redis, released (settled at 0) when Redis answers.
        self._abandoned: dict[str, Reservation] = {}
        self._replay_task: asyncio.Task[None] | None = None
        # Per-request work done once: merged override caps, and slots per subject and day.
        self._merged: dict[tuple[str, str], BudgetCaps] = {}
        self._merged_version = -1
        self._slot_cache: dict[tuple[str, str, date], tuple[BudgetCaps, tuple[Slot, Slot]]] = {}

    def reconfigure(
        self,
        settings: BudgetsSettings,
        alert_thresholds: Sequence[float],
        daily_alert_usd: Decimal | None,
    ) -> None:
        """New default caps and alert settings (a config reload); caches rebuilt."""
        self.s = settings
        self.alert_thresholds = sorted(set(alert_thresholds))
        self.daily_alert_usd = daily_alert_usd
        self._merged.clear()
        self._merged_version = -1
        self._slot_cache.clear()

    def subjects(self, *, tenant: str, user: str | None, key: str | None) -> list[Subject]:
        """The budget subjects of a request: defaults merged with overrides."""
        if self._merged_version != self.overrides.version or len(self._merged) > MAX_CACHED:
            self._merged.clear()
            self._merged_version = self.overrides.version
        out = []
        for scope, sid in (
            ("key", key),
            ("user", user_subject(tenant, user) if user is not None else None),
            ("tenant", tenant),
        ):
            if sid is None:
                continue
            caps = getattr(self.s, scope)
            fields = self.overrides.caps(scope, sid)
            if fields:
                caps = self._merged.get((scope, sid))
                if caps is None:
                    caps = self._merged[(scope, sid)] = merged(getattr(self.s, scope), fields)
            out.append(Subject(scope, sid, caps))
        return out

    def _slots(self, subjects: Sequence[Subject], now: datetime) -> list[Slot]:
        day = now.astimezone(UTC).date()
        if len(self._slot_cache) > MAX_CACHED:
            self._slot_cache.clear()
        out: list[Slot] = []
        for sub in subjects:
            cached = self._slot_cache.get((sub.scope, sub.id, day))
            if cached is None or cached[0] is not sub.caps:
                caps, soft = sub.caps, sub.caps.soft_pct
                pair = (
                    self._slot(sub.scope, sub.id, "day", now, caps.daily_usd, soft),
                    self._slot(sub.scope, sub.id, "month", now, caps.monthly_usd, soft),
                )
                cached = self._slot_cache[(sub.scope, sub.id, day)] = (caps, pair)
            out += cached[1]
        return out

    def _slot(
        self,
        scope: str,
        sid: str,
        period: Period,
        now: datetime,
        cap_usd: Decimal | None,
        soft_pct: float | None = None,
    ) -> Slot:
        start = period_start(period, now)
        stamp = start.strftime("%Y%m%d") if period == "day" else start.strftime("%Y%m")
        cap = to_units(cap_usd, ROUND_HALF_UP) if cap_usd is not None else None
        soft = None
        if cap is not None and soft_pct is not None:
            soft = to_units(cap_usd * Decimal(str(soft_pct)) / 100)  # type: ignore[operator]
        return Slot(
            scope,
            sid,
            period,
            start,
            f"{self.prefix}:{scope}:{sid}:{period[0]}:{stamp}",
            cap,
            soft,
            int((period_end(period, start) + PERIOD_MARGIN).timestamp()),
        )

    async def reserve(self, subjects: Sequence[Subject], worst_case_usd: Decimal) -> Reservation:
        """Reserve ``worst_case_usd`` against every cap, or raise ``BudgetExceeded``."""
        res = self.new_reservation(subjects, worst_case_usd)
        if not res.slots:
            return res  # no cap applies: nothing to hold
        if self.redis_usable():
            keys, args = self.reserve_args(res)
            try:
                async with asyncio.timeout(self.s.redis_timeout_s):
                    reply = await evalsha(self.redis, RESERVE_SCRIPT, keys, args)
            except (RedisError, OSError, TimeoutError) as exc:
                self.failed(exc)
                self.abandon(res)
            else:
                exceeded = self.reserve_reply(res, reply)
                if exceeded is not None:
                    raise exceeded
                return res
        exceeded = self.reserve_local(res)
        if exceeded is not None:
            raise exceeded
        return res

    # The steps of reserve and settle, for callers that send the scripts themselves
    # (``Gate`` pipelines them with the rate-limit scripts): build a call, read its
    # reply, or do without Redis.

    def new_reservation(self, subjects: Sequence[Subject], worst_case_usd: Decimal) -> Reservation:
        """A reservation of ``worst_case_usd`` against ``subjects``, not yet made."""
        now = self.clock()
        worst = max(0, to_units(worst_case_usd, ROUND_CEILING))
        slots = self._slots(subjects, now)
        # Only capped slots hold a reservation; the others are just charged after
        # the call (their spend is still tracked), so an uncapped request costs no
        # reserve at all.
        capped = tuple(s for s in slots if s.cap is not None)
        charged = tuple(s for s in slots if s.cap is None) + self._charge_only(now)
        return Reservation(uuid.uuid4().hex, worst, capped, charged, made_at=now)

    def reserve_args(self, res: Reservation) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of ``RESERVE_SCRIPT``."""
        now = res.made_at
        now_ms = int(now.timestamp() * 1000)
        now_s = now_ms // 1000
        deadline = now_ms + int(self.s.reservation_ttl_s * 1000)
        args: list[Any] = [
            now_ms,
            res.id,
            res.worst_units,
            deadline,
            RECORD_MARGIN_MS,
            f"{self.prefix}:res:",
            SWEEP_BATCH,
            " ".join([f"{-1 if s.cap is None else s.cap} {s.ttl_s(now_s)}" for s in res.slots]),
        ]
        keys = [self._pending_key, self._record_key(res.id), *(s.key for s in res.slots)]
        return keys, args

    def reserve_reply(self, res: Reservation, reply: Any) -> BudgetExceeded | None:
        """Read the script's reply: the error to raise if a cap denied, else None (and
        ``res`` is held in Redis, its ``soft_exceeded`` filled in)."""
        self.recovered()
        raw = reply.split()
        worst = res.worst_units
        if not int(raw[0]):
            slot = res.slots[int(raw[1]) - 1]
            self._view[slot.key] = [int(raw[2]), int(raw[3])]
            res.settled = True  # nothing was reserved: nothing to settle
            return self._exceeded(slot, res.made_at)
        for i, s in enumerate(res.slots):
            spent, reserved = int(raw[2 + 2 * i]), int(raw[3 + 2 * i])
            self._view[s.key] = [spent, reserved + worst]
            if s.soft is not None and spent + reserved + worst > s.soft:
                res.soft_exceeded.append((s.scope, s.id, s.period))
        return None

    def abandon(self, res: Reservation) -> None:
        """A reserve of ``res`` was sent but got no reply: Redis may hold it. Released
        when Redis answers again (before ``reserve_local`` takes ``res`` over; that
        one is charged by its own settle)."""
        twin = Reservation(res.id, res.worst_units, res.slots, res.charge_only, made_at=res.made_at)
        twin.settled = True
        self._abandoned[res.id] = twin
        if len(self._abandoned) > MAX_CACHED:  # the oldest are released by their TTL
            self._abandoned.pop(next(iter(self._abandoned)))

    def reserve_local(self, res: Reservation) -> BudgetExceeded | None:
        """Redis unreachable: enforce from the last spend seen, in memory."""
        res.local = True
        worst = res.worst_units
        for s in res.slots:
            spent, reserved = self._view.get(s.key, (0, 0))
            if s.cap is not None and spent + reserved + worst > s.cap:
                res.settled = True
                return self._exceeded(s, res.made_at)
        for s in res.slots:
            v = self._view.setdefault(s.key, [0, 0])
            if s.soft is not None and v[0] + v[1] + worst > s.soft:
                res.soft_exceeded.append((s.scope, s.id, s.period))
            v[1] += worst
        self._trim_view()
        return None

    async def settle(self, reservation: Reservation, actual_usd: Decimal) -> list[Crossing]:
        """Replace the reservation by the actual cost (once; later calls do nothing).

        Returns the alert thresholds this settle crossed (empty while Redis is down:
        those are reported to ``on_crossing`` when the settle is replayed)."""
        actual = self.begin_settle(reservation, actual_usd)
        if actual is None or (actual == 0 and not reservation.slots):
            return []
        if self.redis_usable():
            try:
                async with asyncio.timeout(self.s.redis_timeout_s):
                    crossings = await self._settle_in_redis(reservation, actual)
            except (RedisError, OSError, TimeoutError) as exc:
                self.failed(exc)
            else:
                self.recovered()
                return crossings
        self.settle_local(reservation, actual)
        return []

    def begin_settle(self, res: Reservation, actual_usd: Decimal) -> int | None:
        """Mark ``res`` settled; the actual cost in units, or None if it was settled before."""
        if res.settled:
            return None
        res.settled = True
        return max(0, to_units(actual_usd))

    def settle_args(self, res: Reservation, actual: int) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of ``SETTLE_SCRIPT`` (``actual`` in units)."""
        slots = res.slots + res.charge_only
        keys = [
            self._pending_key,
            self._record_key(res.id),
            f"{self.prefix}:replayed:{res.id}",
            *(s.key for s in slots),
        ]
        now_s = int(self.clock().timestamp())
        ttls = " ".join([str(s.ttl_s(now_s)) for s in slots])
        # r: release the record, then charge (exactly once: the record goes); l: made
        # in memory, charge once (a marker); c: nothing was reserved, just charge
        # (an uncapped request; a settle whose reply was lost and is replayed may
        # then count twice, which no cap depends on).
        mode = "l" if res.local else "r" if res.slots else "c"
        return keys, [res.id, actual, mode, REPLAY_MARKER_TTL_S, ttls]

    def settle_reply(self, res: Reservation, actual: int, reply: Any) -> list[Crossing]:
        """The alert thresholds crossed, from the script's reply."""
        raw = reply.split()
        if not int(raw[0]):
            return []  # settled before (a replay whose first attempt did reach Redis)
        out: list[Crossing] = []
        for i, s in enumerate(res.slots + res.charge_only):
            spent, reserved = int(raw[1 + 2 * i]), int(raw[2 + 2 * i])
            self._view[s.key] = [spent, reserved]
            out += crossings(s, spent - actual, spent, self.alert_thresholds)
        return out

    def settle_local(self, res: Reservation, actual: int) -> None:
        """Redis unreachable: count the spend in memory, queue the settle for replay
        (a reservation made in memory and settled at 0 leaves Redis nothing to do)."""
        if res.local and actual == 0:
            for s in res.slots:
                v = self._view.setdefault(s.key, [0, 0])
                v[1] = max(0, v[1] - res.worst_units)
            return
        for s in res.slots + res.charge_only:
            v = self._view.setdefault(s.key, [0, 0])
            v[0] += actual
            if s in res.slots:
                v[1] = max(0, v[1] - res.worst_units)
        self._queued[res.id] = (res, actual)

    async def _settle_in_redis(self, res: Reservation, actual: int) -> list[Crossing]:
        keys, args = self.settle_args(res, actual)
        return self.settle_reply(res, actual, await evalsha(self.redis, SETTLE_SCRIPT, keys, args))

    def _charge_only(self, now: datetime) -> tuple[Slot, ...]:
        if self.daily_alert_usd is None:
            return ()
        return (self._slot("deployment", "all", "day", now, self.daily_alert_usd),)

    async def spend(self, scope: str, subject: str) -> dict[str, Decimal]:
        """Spend this day and month (UTC) of one subject; from memory if Redis is down."""
        now = self.clock()
        day = self._slot(scope, subject, "day", now, None)
        month = self._slot(scope, subject, "month", now, None)
        try:
            async with asyncio.timeout(max(self.s.redis_timeout_s, 1.0)):
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.hget(day.key, "spent")
                    pipe.hget(month.key, "spent")
                    d, m = await pipe.execute()
            values = [int(d or 0), int(m or 0)]
        except (RedisError, OSError, TimeoutError) as exc:
            self.failed(exc)
            values = [self._view.get(k, [0, 0])[0] for k in (day.key, month.key)]
        return {"day": from_units(values[0]), "month": from_units(values[1])}

    async def replay(self) -> int:
        """Apply the settles queued while Redis was down; returns how many were applied.

        Safe to repeat or to run on several instances: each applies at most once."""
        done = 0
        for rid, twin in list(self._abandoned.items()):
            async with asyncio.timeout(REPLAY_TIMEOUT_S):
                await self._settle_in_redis(twin, 0)
            self._abandoned.pop(rid, None)
        for rid, (res, actual) in list(self._queued.items()):
            async with asyncio.timeout(REPLAY_TIMEOUT_S):
                crossings = await self._settle_in_redis(res, actual)
            self._queued.pop(rid, None)
            done += 1
            if crossings and self.on_crossing is not None:
                self.on_crossing(crossings)
        return done

    @property
    def queued(self) -> int:
        return len(self._queued)

    async def aclose(self) -> None:
        """Finish a replay in progress (the Redis client is the caller's)."""
        if self._replay_task is not None:
            await asyncio.gather(self._replay_task, return_exceptions=True)

    def _exceeded(self, s: Slot, now: datetime) -> BudgetExceeded:
        return BudgetExceeded(
            s.scope,
            s.id,
            s.period,
            from_units(s.cap or 0),
            period_end(s.period, s.start),
            status=self.s.over_budget_status,
            now=now,
        )

    @property
    def _pending_key(self) -> str:
        return f"{self.prefix}:pending"

    def _record_key(self, rid: str) -> str:
        return f"{self.prefix}:res:{rid}"

    def _went_down(self, exc: BaseException) -> None:
        log.warning(
            "budgets: Redis unreachable (%s); enforcing from last known spend",
            type(exc).__name__,
        )

    def _came_back(self) -> None:
        log.warning("budgets: Redis reachable again; replaying %d settles", self.queued)

    def recovered(self) -> None:
        """Redis answered: end an outage, start replaying queued settles."""
        super().recovered()
        waiting = self._queued or self._abandoned
        if waiting and (self._replay_task is None or self._replay_task.done()):
            self._replay_task = asyncio.create_task(self._replay_in_background())

    async def _replay_in_background(self) -> None:
        try:
            await self.replay()
        except (RedisError, OSError, TimeoutError) as exc:
            self.failed(exc)

    def _trim_view(self) -> None:
        # Bounded: subjects of past periods are dropped first (their keys sort by date).
        if len(self._view) > MAX_CACHED:
            today = period_start("day", self.clock()).strftime("%Y%m")
            self._view = {k: v for k, v in self._view.items() if today in k}
