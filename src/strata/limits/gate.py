"""Every rate limit and budget of a request in one Redis round trip.

``Gate.admit`` pipelines the rate check (``CHECK_SCRIPT``) and the budget
reservation (``RESERVE_SCRIPT``) on one connection: one round trip before the
call. ``Gate.finish`` queues the budget settle and the token correction; the
finishes of a few milliseconds (``FINISH_DELAY_S``, at most ``FINISH_BATCH``) go
in one write, in the background: under load, well under one round trip per
request (settles are late by at most those milliseconds, and reservations only
ever hold more than the actual cost, so caps stay safe meanwhile).
``RateLimiter`` and ``Budgets`` build the calls and read the replies; the gate
only sends them, so both keep their own algorithms, timeouts and failure
policies (see ``rate`` and ``budget``):

- Redis unreachable (error, or no reply within the larger ``redis_timeout_s`` of
  the two): each component backs off and applies its own fallback (rate limits:
  ``failure_mode`` per rule set; budgets: the last known spend, settles queued and
  replayed once when Redis answers again).
- A script Redis lost (restart, SCRIPT FLUSH): loaded again and retried once,
  only the calls that got NOSCRIPT (those never ran).

The two scripts run one after the other, not atomically together, so each
denial undoes the other's effect in the background:

- Rate limit denies: the reservation (if one was made) is released (settled at
  0), and the rate error (429, or 503 for a fail-closed limit while Redis is
  away) is raised.
- Budget denies while the rate limits allowed: the request still counts against
  the request limits (it was made: a client hammering an exhausted budget is
  rate limited too), the token estimate is refunded, ``BudgetExceeded`` is raised.

Either error carries the ``x-ratelimit-*`` headers in ``extra_headers``
(a list of ``(name, value)`` byte pairs) for the HTTP layer to send.

Both components must use the same Redis client (one pipeline). With neither a
limit nor a budget applying (both disabled, or no rule set for the subjects), a
request costs no round trip at all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from redis.exceptions import NoScriptError, RedisError, ResponseError

from strata.limits.budget import BudgetExceeded, Budgets, Reservation
from strata.limits.rate import Decision, RateLimiter
from strata.limits.scripts import CHECK_SCRIPT, CORRECT_SCRIPT, RESERVE_SCRIPT, SETTLE_SCRIPT, SHAS

log = logging.getLogger("strata.limits")

# ``aclose`` waits this long for background settles and corrections, then cancels.
CLOSE_TIMEOUT_S = 5.0
# Finishes gathered into one write: for this long, or this many, whichever first.
FINISH_DELAY_S = 0.005
FINISH_BATCH = 64
# The header flagging a soft budget limit passed: "scope subject period", comma-joined.
SOFT_HEADER = b"x-strata-budget-soft"

# (script, KEYS, ARGV) of one EVALSHA.
Call = tuple[str, list[str], list[Any]]


@dataclass(slots=True)
class Admission:
    """A request admitted by ``Gate.admit``; hand it to ``Gate.finish`` once."""

    decision: Decision  # the rate decision (``headers()``: x-ratelimit-*)
    reservation: Reservation | None  # None when budgets do not apply
    finished: bool = False

    @property
    def soft_exceeded(self) -> list[tuple[str, str, str]]:
        """The budgets whose soft limit this request passed: (scope, subject, period)."""
        return list(self.reservation.soft_exceeded) if self.reservation is not None else []

    def headers(self) -> list[tuple[bytes, bytes]]:
        out = self.decision.headers()
        if self.reservation is not None and self.reservation.soft_exceeded:
            value = ", ".join(f"{s} {i} {p}" for s, i, p in self.reservation.soft_exceeded)
            out.append((SOFT_HEADER, value.encode()))
        return out


class Gate:
    """Admits requests against rate limits and budgets; settles them afterwards."""

    def __init__(self, rate: RateLimiter | None, budgets: Budgets | None) -> None:
        self.rate = rate if rate is not None and rate.s.enabled else None
        self.budgets = budgets if budgets is not None and budgets.s.enabled else None
        both = self.rate is not None and self.budgets is not None
        if both and self.rate.redis is not self.budgets.redis:  # type: ignore[union-attr]
            raise ValueError("rate limits and budgets must share one Redis client")
        source = self.rate or self.budgets
        self.redis: Any = source.redis if source is not None else None
        self._pending: set[asyncio.Task[None]] = set()
        # Finishes waiting for their batch's write: (calls, timeout, reservation, actual).
        self._batch: list[tuple[list[Call], float, Reservation | None, int | None]] = []
        self._flush_at: asyncio.TimerHandle | None = None

    async def admit(
        self,
        *,
        tenant: str,
        user: str | None,
        key: str | None,
        alias: str | None,
        tokens: int,
        worst_case_usd: Decimal,
    ) -> Admission:
        """Check every rate limit and reserve the worst case against every budget.

        Raises the rate error or ``BudgetExceeded`` (see the module docstring), each
        with ``extra_headers``."""
        rate, budgets = self.rate, self.budgets
        tokens = max(0, tokens)
        limits = rate.limits_for(tenant=tenant, user=user, key=key, alias=alias) if rate else ()
        res = None
        if budgets is not None:
            subjects = budgets.subjects(tenant=tenant, user=user, key=key)
            if subjects:
                res = budgets.new_reservation(subjects, worst_case_usd)
        calls: list[Call] = []
        timeout = 0.0
        rate_sent = budget_sent = False
        if limits and rate is not None and rate.redis_usable():
            calls.append((CHECK_SCRIPT, *rate.check_args(limits, tokens)))
            timeout = rate.s.redis_timeout_s
            rate_sent = True
        if res is not None and budgets is not None and res.slots and budgets.redis_usable():
            calls.append((RESERVE_SCRIPT, *budgets.reserve_args(res)))
            timeout = max(timeout, budgets.s.redis_timeout_s)
            budget_sent = True

        replies: list[Any] = []
        if calls:
            try:
                async with asyncio.timeout(timeout):
                    replies = await self._send(calls)
            except (RedisError, OSError, TimeoutError) as exc:
                replies = [exc] * len(calls)
            except asyncio.CancelledError:
                # The client went away mid-flight: release what may have been reserved
                # (a settle finding no reservation does nothing).
                if res is not None and budget_sent:
                    self._release(res)
                raise

        decision = Decision(True)
        if limits and rate is not None:
            decision = self._rate_decision(rate, limits, tokens, replies[0] if rate_sent else None)
        exceeded = None
        if res is not None and budgets is not None and res.slots:
            reply = replies[-1] if budget_sent else None
            exceeded = self._reserve(budgets, res, reply)

        if not decision.allowed:
            if res is not None and exceeded is None:
                self._release(res)
            err = decision.error()
            err.extra_headers = decision.headers()
            raise err
        if exceeded is not None:
            if rate is not None:
                self._refund(rate, decision)
            exceeded.extra_headers = decision.headers()
            raise exceeded
        return Admission(decision, res)

    def finish(self, admission: Admission, *, tokens: int, cost_usd: Decimal) -> None:
        """Settle the budget at the actual cost and correct the token estimate, in
        the background (one round trip); never blocks, never raises."""
        try:
            if admission.finished:
                return
            admission.finished = True
            calls: list[Call] = []
            timeout = 0.0
            res, actual = admission.reservation, None
            budgets, rate = self.budgets, self.rate
            if res is not None and budgets is not None:
                actual = budgets.begin_settle(res, cost_usd)
                if actual == 0 and not res.slots:
                    actual = None  # nothing held, nothing spent: nothing to settle
                if actual is not None:
                    if budgets.redis_usable():
                        calls.append((SETTLE_SCRIPT, *budgets.settle_args(res, actual)))
                        timeout = budgets.s.redis_timeout_s
                    else:
                        budgets.settle_local(res, actual)
                        actual = None
            correction = None
            if rate is not None:
                correction = rate.correct_args(admission.decision, max(0, tokens))
                if correction is not None:
                    calls.append((CORRECT_SCRIPT, *correction))
                    timeout = max(timeout, rate.s.redis_timeout_s * 4)
            if calls:
                self._batch.append((calls, timeout, res, actual))
                if len(self._batch) >= FINISH_BATCH:
                    self._flush()
                elif self._flush_at is None:
                    loop = asyncio.get_running_loop()
                    self._flush_at = loop.call_later(FINISH_DELAY_S, self._flush)
        except Exception:  # finish must never fail a response
            log.exception("limits: finishing an admission failed")

    async def drain(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Wait for the background settles, releases and corrections started so far.

        Each is bounded by its own Redis timeout; one still running after
        ``timeout_s`` is cancelled (its reservation, if still held in Redis, is
        released after ``reservation_ttl_s``)."""
        self._flush()
        if self._pending:
            _, late = await asyncio.wait(set(self._pending), timeout=timeout_s)
            for t in late:
                t.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    async def aclose(self) -> None:
        """Wait (bounded) for background work, including the budgets' replay; the
        Redis client is the caller's."""
        await self.drain()
        if self.rate is not None:
            await self.rate.aclose()
        if self.budgets is not None:
            await self.budgets.aclose()

    @property
    def pending(self) -> int:
        """Background settles, releases and corrections in flight."""
        return len(self._pending)

    # --- internals -----------------------------------------------------------------

    async def _send(self, calls: Sequence[Call]) -> list[Any]:
        """One round trip for ``calls``: their replies, or the error each got (a call
        that got NOSCRIPT is loaded and sent again, once: a second round trip)."""
        redis = self.redis
        pool = getattr(redis, "connection_pool", None)
        if pool is not None:
            replies = await _pipeline(pool, calls)
        else:  # another client type: its own pipeline
            async with redis.pipeline(transaction=False) as pipe:
                for script, keys, args in calls:
                    pipe.evalsha(SHAS[script], len(keys), *keys, *args)
                replies = await pipe.execute(raise_on_error=False)
        lost = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if lost:
            async with redis.pipeline(transaction=False) as pipe:
                for script in dict.fromkeys(calls[i][0] for i in lost):
                    pipe.script_load(script)
                for i in lost:
                    script, keys, args = calls[i]
                    pipe.evalsha(SHAS[script], len(keys), *keys, *args)
                again = await pipe.execute(raise_on_error=False)
            for i, reply in zip(lost, again[-len(lost) :], strict=True):
                replies[i] = reply
        return replies

    @staticmethod
    def _rate_decision(
        rate: RateLimiter, limits: Sequence[Any], tokens: int, reply: Any
    ) -> Decision:
        if reply is not None and not isinstance(reply, BaseException):
            return rate.check_reply(limits, reply, tokens)
        if isinstance(reply, BaseException):
            rate.failed(reply)
        return rate.check_fallback(limits, tokens)

    @staticmethod
    def _reserve(budgets: Budgets, res: Reservation, reply: Any) -> BudgetExceeded | None:
        if reply is not None and not isinstance(reply, BaseException):
            return budgets.reserve_reply(res, reply)
        if isinstance(reply, BaseException):
            budgets.failed(reply)
            budgets.abandon(res)
        return budgets.reserve_local(res)

    def _release(self, res: Reservation) -> None:
        """Give a reservation back (settle at 0), in the background."""
        budgets = self.budgets
        if budgets is None:
            return
        actual = budgets.begin_settle(res, Decimal(0))
        if actual is None:
            return
        if not budgets.redis_usable():
            budgets.settle_local(res, actual)
            return
        call = (SETTLE_SCRIPT, *budgets.settle_args(res, actual))
        self._background(self._finish([call], budgets.s.redis_timeout_s, res, actual))

    def _refund(self, rate: RateLimiter, decision: Decision) -> None:
        """Give the token estimate of a request that was not made back, in the background."""
        correction = rate.correct_args(decision, 0)
        if correction is not None:
            call = (CORRECT_SCRIPT, *correction)
            self._background(self._finish([call], rate.s.redis_timeout_s * 4, None, None))

    def _flush(self) -> None:
        """Send the queued finishes, in one write, in the background."""
        if self._flush_at is not None:
            self._flush_at.cancel()
            self._flush_at = None
        if self._batch:
            batch, self._batch = self._batch, []
            self._background(self._finish_batch(batch))

    async def _finish_batch(
        self, batch: list[tuple[list[Call], float, Reservation | None, int | None]]
    ) -> None:
        calls = [c for entry in batch for c in entry[0]]
        try:
            async with asyncio.timeout(max(entry[1] for entry in batch)):
                replies = await self._send(calls)
        except (RedisError, OSError, TimeoutError) as exc:
            replies = [exc] * len(calls)
        except asyncio.CancelledError:
            replies = [TimeoutError()] * len(calls)  # shutdown: queue them for replay
        i = 0
        for entry_calls, _, res, actual in batch:
            mine = replies[i : i + len(entry_calls)]
            i += len(entry_calls)
            try:
                self._finish_replies(entry_calls, mine, res, actual)
            except Exception:  # a background task: nobody else would see it
                log.exception("limits: settling in the background failed")

    async def _finish(
        self, calls: list[Call], wait_s: float, res: Reservation | None, actual: int | None
    ) -> None:
        """Send a settle (first, if ``actual`` is set) and/or a correction; apply the
        failure policies to what did not get through."""
        try:
            await self._finish_calls(calls, wait_s, res, actual)
        except Exception:  # a background task: nobody else would see it
            log.exception("limits: settling in the background failed")

    async def _finish_calls(
        self, calls: list[Call], wait_s: float, res: Reservation | None, actual: int | None
    ) -> None:
        try:
            async with asyncio.timeout(wait_s):
                replies = await self._send(calls)
        except (RedisError, OSError, TimeoutError) as exc:
            replies = [exc] * len(calls)
        self._finish_replies(calls, replies, res, actual)

    def _finish_replies(
        self, calls: list[Call], replies: list[Any], res: Reservation | None, actual: int | None
    ) -> None:
        """Apply each reply (or error) of a settle and/or correction."""
        budgets, rate = self.budgets, self.rate
        for (script, _, _), reply in zip(calls, replies, strict=True):
            failed = isinstance(reply, BaseException)
            if script == SETTLE_SCRIPT and budgets is not None and res is not None:
                assert actual is not None
                if failed:
                    budgets.failed(reply)
                    budgets.settle_local(res, actual)  # queued: replayed once Redis is back
                    continue
                crossings = budgets.settle_reply(res, actual, reply)
                budgets.recovered()
                if crossings and budgets.on_crossing is not None:
                    try:
                        budgets.on_crossing(crossings)
                    except Exception:
                        log.exception("limits: reporting budget crossings failed")
            elif script == CORRECT_SCRIPT and rate is not None and failed:
                rate.failed(reply)  # the correction is dropped (see ``rate``)

    def _background(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)


async def _pipeline(pool: Any, calls: Sequence[Call]) -> list[Any]:
    """Send EVALSHAs in one write on one pooled connection and read their replies.

    What ``redis.pipeline(transaction=False)`` does, for a fraction of its client CPU
    (it packs every argument through the generic encoder): the arguments here are
    str, int and float only. An error reply is returned in its call's place; any
    other failure (or cancellation) drops the connection, which may be mid-reply."""
    conn = await pool.get_connection()
    try:
        await conn.send_packed_command(_pack(calls), check_health=False)
        replies: list[Any] = []
        for _ in calls:
            try:
                replies.append(await conn.read_response())
            except ResponseError as exc:  # the whole reply was read: still in sync
                replies.append(exc)
    except BaseException:
        await conn.disconnect(nowait=True)
        raise
    finally:
        await pool.release(conn)
    return replies


def _pack(calls: Sequence[Call]) -> bytes:
    """RESP for ``EVALSHA sha numkeys key... arg...`` of each call, in one buffer.

    Built as text and encoded once; text with non-ASCII (a subject id) is encoded
    argument by argument, as RESP lengths count bytes."""
    out: list[str] = []
    for script, keys, args in calls:
        out.append(f"*{len(keys) + len(args) + 3}\r\n$7\r\nEVALSHA\r\n$40\r\n{SHAS[script]}\r\n")
        n = str(len(keys))
        out.append(f"${len(n)}\r\n{n}\r\n")
        for item in keys:
            out.append(f"${len(item)}\r\n{item}\r\n")
        for arg in args:
            text = repr(arg) if type(arg) is float else str(arg)
            out.append(f"${len(text)}\r\n{text}\r\n")
    packed = "".join(out)
    if packed.isascii():
        return packed.encode()
    return _pack_bytes(calls)


def _pack_bytes(calls: Sequence[Call]) -> bytes:
    out: list[bytes] = []
    for script, keys, args in calls:
        out.append(b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n" % (len(keys) + len(args) + 3))
        out.append(SHAS[script].encode() + b"\r\n")
        for item in (str(len(keys)), *keys, *args):
            raw = (repr(item) if type(item) is float else str(item)).encode()
            out.append(b"$%d\r\n%b\r\n" % (len(raw), raw))
    return b"".join(out)
