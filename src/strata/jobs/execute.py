"""Running the requests of a batch through the gateway, and committing their results.

Each request takes the live path (``rt.chat`` / ``rt.embeddings``): the same
routing, caches, rate limits and budget reservations, under the batch owner's key.
What differs:

* **Price**: ``batch.discount`` off the price table (OpenAI's 50%), on the usage
  record and on what the budget is charged.
* **Priority**: live traffic first. A batch request that is rate limited, or finds
  a local model's queue full, waits ``batch.backoff_s`` and tries again instead of
  failing; at most ``batch.concurrency_per_deployment`` requests per deployment of
  an alias are in flight, so a batch never takes a deployment's whole capacity.
* **Embeddings are grouped**: single-text requests for the same model and
  options go to the model together, up to ``batch.embed_group`` (32) inputs per
  call (one forward pass on the local engine). Each request's tokens are its share
  of the call's, by input length (the shares sum to the call's exact count).
* **Exactly once**: results and usage are committed per chunk, in this order: the
  usage records (ids derived from batch and line, so a replay is ignored by
  ``ON CONFLICT (id)``) are flushed, then the results are inserted (primary key
  (batch_id, line): a line is stored once), and only lines newly stored settle
  their budget reservation. A worker killed anywhere in between redoes at most
  the uncommitted chunk, and its records and charges land once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import orjson

from strata.errors import InvalidRequest, ProviderRateLimited, RateLimited, StrataError
from strata.files.validate import Line
from strata.gateway.chat import Controls
from strata.gateway.meter import Meter
from strata.gateway.schemas import ChatRequest, EmbeddingRequest, validate
from strata.jobs.config import BatchSettings
from strata.jobs.results import (
    URL_KIND,
    Capture,
    Outcome,
    apportion,
    inputs_of,
    request_id,
    result_line,
    usage_id,
)
from strata.security.crypto import Crypto
from strata.security.keys import Principal
from strata.storage.repositories import batches as repo
from strata.usage.pricing import QUANTUM
from strata.usage.recorder import UsageEvent

log = logging.getLogger("strata.jobs")


class Executor:
    """Runs lines of one batch; ``stop`` (cancel, expiry, a lost lease) ends it early,
    after the chunk in flight is committed."""

    def __init__(self, rt: Any, crypto: Crypto, principal: Principal, batch: repo.BatchRow) -> None:
        self.rt = rt
        self.crypto = crypto
        self.principal = principal
        self.batch = batch
        self.settings: BatchSettings = rt.settings.batch
        self.factor = Decimal(1) - self.settings.discount
        self._sems: dict[str, asyncio.Semaphore] = {}

    # -- scheduling ----------------------------------------------------------------

    async def run(
        self,
        lines: list[Line],
        stop: asyncio.Event,
        on_commit: Callable[[int], Awaitable[None]] | None = None,
    ) -> int:
        """Run ``lines`` in chunks of ``commit_every``; how many results were stored."""
        stored = 0
        units = self._units(lines)
        step = self.settings.commit_every
        i = 0
        while i < len(units) and not stop.is_set():
            chunk: list[list[Line]] = []
            n = 0
            while i < len(units) and n < step:
                chunk.append(units[i])
                n += len(units[i])
                i += 1
            results = await asyncio.gather(*(self._unit(u, stop) for u in chunk))
            outcomes = [o for group in results for o in group if o is not None]
            stored += await self.commit(outcomes)
            if on_commit is not None:
                await on_commit(stored)
        return stored

    def _units(self, lines: list[Line]) -> list[list[Line]]:
        """Embedding requests groupable together, and every other line on its own."""
        out: list[list[Line]] = []
        groups: dict[tuple[Any, ...], list[Line]] = {}
        sizes: dict[tuple[Any, ...], int] = {}
        cap = self.settings.embed_group
        for ln in lines:
            key = self._group_key(ln)
            if key is None:
                out.append([ln])
                continue
            n = len(inputs_of(ln.body))
            if key in groups and sizes[key] + n > cap:
                out.append(groups.pop(key))
            if key in groups:
                groups[key].append(ln)
                sizes[key] += n
            else:
                groups[key], sizes[key] = [ln], n
        out.extend(groups.values())
        return out

    def _group_key(self, ln: Line) -> tuple[Any, ...] | None:
        if ln.error is not None or ln.body is None or ln.url != "/v1/embeddings":
            return None
        if self.batch.endpoint != ln.url:  # reported by _single as a wrong url
            return None
        body = ln.body
        inputs = inputs_of(body)
        if not inputs or not isinstance(body.get("model"), str):
            return None
        if set(body) - {"model", "input", "encoding_format", "dimensions", "user"}:
            return None
        try:
            validate(EmbeddingRequest, body)
        except StrataError:
            return None
        return (body["model"], body.get("encoding_format"), body.get("dimensions"))

    def _local_queues(self, alias: str) -> list[Any]:
        """The queues of the alias's models that run on this machine."""
        spec = self.rt.settings.models.get(alias)
        deps = spec.deployments if spec is not None else []
        providers = (self.rt.providers.get(d.provider) for d in deps)
        return [p.queue for p in providers if getattr(p, "is_local", False)]

    def _sem(self, alias: str) -> asyncio.Semaphore:
        sem = self._sems.get(alias)
        if sem is None:
            spec = self.rt.settings.models.get(alias)
            deployments = len(spec.deployments) if spec is not None and spec.deployments else 1
            # A local model runs one job at a time: one batch request in its queue at
            # most, so live requests never find it full because of a batch.
            size = 1 if self._local_queues(alias) else self.settings.concurrency_per_deployment
            sem = self._sems[alias] = asyncio.Semaphore(size * deployments)
        return sem

    async def _after_live(self, alias: str, stop: asyncio.Event) -> None:
        """Live traffic first on local models: wait while live requests queue for one."""
        queues = self._local_queues(alias)
        while queues and any(q.waiting for q in queues) and not stop.is_set():
            await _sleep(stop, 0.05)

    async def _unit(self, unit: list[Line], stop: asyncio.Event) -> list[Outcome | None]:
        if len(unit) > 1 or self._group_key(unit[0]) is not None:
            return await self._embed_group(unit, stop)
        return [await self._single(unit[0], stop)]

    # -- one request -----------------------------------------------------------------

    def _meter(self, ln: Line, kind: str, capture: Capture) -> Meter:
        meter = Meter(
            capture,  # type: ignore[arg-type]
            self.rt.pricer,
            self.principal,
            request_id(self.batch.id, ln.number),
            kind,
        )
        meter.event.id = usage_id(self.batch.id, ln.number)
        meter.event.route = "batch"
        return meter

    async def _single(self, ln: Line, stop: asyncio.Event) -> Outcome | None:
        problem: StrataError | None = None
        if ln.error is not None or ln.body is None:
            problem = InvalidRequest(f"line {ln.number}: {ln.error}")
        elif ln.url != self.batch.endpoint:
            problem = InvalidRequest(
                f"line {ln.number}: 'url' is {ln.url}, but this batch's endpoint is "
                f"{self.batch.endpoint}",
                param="url",
            )
        if problem is not None or ln.url is None or ln.body is None:
            capture = Capture()
            meter = self._meter(ln, URL_KIND.get(ln.url or "", "chat"), capture)
            return self._failed(ln, meter, capture, problem or InvalidRequest("bad line"))
        kind = URL_KIND[ln.url]
        body = dict(ln.body)
        while not stop.is_set():
            capture = Capture()
            meter = self._meter(ln, kind, capture)
            try:
                alias = body.get("model")
                async with self._sem(alias if isinstance(alias, str) else ""):
                    await self._after_live(alias if isinstance(alias, str) else "", stop)
                    if stop.is_set():  # cancelled while waiting: not started
                        return None
                    out = await self._call(kind, body, meter)
            except (RateLimited, ProviderRateLimited) as exc:
                # Live traffic first: wait, then try again (not a failure).
                _drop(meter)
                await _sleep(stop, max(self.settings.backoff_s, exc.retry_after or 0))
                continue
            except StrataError as exc:
                return self._failed(ln, meter, capture, exc)
            except Exception as exc:
                log.exception("batch %s line %d failed", self.batch.id, ln.number)
                internal = StrataError(f"internal error ({type(exc).__name__})")
                return self._failed(ln, meter, capture, internal)
            return self._ok(ln, meter, capture, out)
        return None

    async def _call(self, kind: str, body: dict[str, Any], meter: Meter) -> dict[str, Any]:
        self.principal.check_model(body.get("model"))
        if kind == "chat":
            body.pop("stream", None)  # batch answers are whole responses
            body.pop("stream_options", None)
            validate(ChatRequest, body)
            result: dict[str, Any] = await self.rt.chat.complete(body, meter, Controls())
            return result
        validate(EmbeddingRequest, body)
        result = await self.rt.embeddings.embed(body, meter)
        return result

    def _ok(self, ln: Line, meter: Meter, capture: Capture, out: dict[str, Any]) -> Outcome:
        admission, meter.admission = meter.admission, None  # settled after the commit
        meter.ok()
        o = Outcome(ln.number, True, result_line(self.batch.id, ln.custom_id, ln.number, 200, out))
        self._account(o, meter, capture, admission)
        return o

    def _failed(self, ln: Line, meter: Meter, capture: Capture, exc: StrataError) -> Outcome:
        admission, meter.admission = meter.admission, None
        meter.failed(exc)
        o = Outcome(
            ln.number,
            False,
            result_line(self.batch.id, ln.custom_id, ln.number, exc.status, exc.to_dict()),
        )
        self._account(o, meter, capture, admission)
        return o

    def _account(self, o: Outcome, meter: Meter, capture: Capture, admission: Any) -> None:
        for e in capture.events:
            self._discount(e)
            o.events.append(e)
        if admission is not None:
            e = meter.event
            o.settle.append(
                (meter.gate, admission, e.prompt_tokens + e.completion_tokens, e.cost_usd)
            )

    def _discount(self, e: UsageEvent) -> None:
        e.cost_usd = (e.cost_usd * self.factor).quantize(QUANTUM)
        e.failed_cost_usd = (e.failed_cost_usd * self.factor).quantize(QUANTUM)

    # -- grouped embeddings --------------------------------------------------------------

    async def _embed_group(self, unit: list[Line], stop: asyncio.Event) -> list[Outcome | None]:
        first = unit[0].body or {}
        texts: list[str] = []
        spans: list[tuple[int, int]] = []
        for ln in unit:
            inputs = inputs_of(ln.body)
            spans.append((len(texts), len(texts) + len(inputs)))
            texts.extend(inputs)
        body = {k: v for k, v in first.items() if k in ("model", "encoding_format", "dimensions")}
        body["input"] = texts
        while not stop.is_set():
            capture = Capture()
            meter = self._meter(unit[0], "embeddings", capture)
            try:
                async with self._sem(body["model"]):
                    await self._after_live(body["model"], stop)
                    if stop.is_set():
                        return [None] * len(unit)
                    self.principal.check_model(body["model"])
                    out = await self.rt.embeddings.embed(body, meter)
            except (RateLimited, ProviderRateLimited) as exc:
                _drop(meter)
                await _sleep(stop, max(self.settings.backoff_s, exc.retry_after or 0))
                continue
            except StrataError as exc:
                _drop(meter)
                return [self._group_failed(ln, exc) for ln in unit]
            admission, meter.admission = meter.admission, None
            meter.ok()
            return self._split(unit, spans, texts, out, meter, capture, admission)
        return [None] * len(unit)

    def _group_failed(self, ln: Line, exc: StrataError) -> Outcome:
        capture = Capture()
        return self._failed(ln, self._meter(ln, "embeddings", capture), capture, exc)

    def _split(
        self,
        unit: list[Line],
        spans: list[tuple[int, int]],
        texts: list[str],
        out: dict[str, Any],
        meter: Meter,
        capture: Capture,
        admission: Any,
    ) -> list[Outcome | None]:
        """One grouped call back into one response and one usage record per line."""
        (group,) = capture.events
        total = group.prompt_tokens
        weights = [sum(len(t) for t in texts[a:b]) + 1 for a, b in spans]
        shares = apportion(total, weights)
        results: list[Outcome] = []
        for ln, (a, b), tokens in zip(unit, spans, shares, strict=True):
            data = [dict(d, index=d["index"] - a) for d in out["data"][a:b]]
            body = {
                "object": "list",
                "data": data,
                "model": out["model"],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
            e = UsageEvent(
                request_id=request_id(self.batch.id, ln.number),
                tenant_id=group.tenant_id,
                user_id=group.user_id,
                key_id=group.key_id,
                endpoint="embeddings",
                alias=group.alias,
                provider=group.provider,
                model=group.model,
                prompt_tokens=tokens,
                cost_usd=self.rt.pricer.cost(group.provider or "", group.model or "", tokens, 0),
                latency_ms=group.latency_ms,
                attempts=group.attempts,
                route="batch",
                id=usage_id(self.batch.id, ln.number),
            )
            self._discount(e)
            o = Outcome(
                ln.number, True, result_line(self.batch.id, ln.custom_id, ln.number, 200, body), [e]
            )
            results.append(o)
        if admission is not None and results:
            cost = sum((o.events[0].cost_usd for o in results), Decimal(0))
            # Settled with the first line: stored together, in one commit.
            results[0].settle.append((meter.gate, admission, total, cost))
        return list(results)

    # -- commit --------------------------------------------------------------------------

    async def commit(self, outcomes: list[Outcome]) -> int:
        """Usage first (idempotent ids), then results (once per line), then budgets
        for the lines this commit stored; how many were stored."""
        if not outcomes:
            return 0
        recorder = self.rt.recorder
        for o in outcomes:
            for e in o.events:
                recorder.record(e)
        await recorder.flush()
        rows = [
            (
                o.line,
                o.ok,
                self.crypto.encrypt(orjson.dumps(o.body), repo.result_aad(self.batch.id, o.line)),
            )
            for o in outcomes
        ]
        stored = await repo.insert_results(self.rt.engine, self.batch.id, rows)
        for o in outcomes:
            for gate, admission, tokens, cost in o.settle:
                if o.line in stored:
                    gate.finish(admission, tokens=tokens, cost_usd=cost)
                else:  # another worker stored this line: release, charge nothing
                    gate.finish(admission, tokens=0, cost_usd=Decimal(0))
        return len(stored)


def _drop(meter: Meter) -> None:
    """A refused attempt that will be retried: release its admission, record nothing."""
    if meter.admission is not None:
        meter.gate.finish(meter.admission, tokens=0, cost_usd=Decimal(0))
        meter.admission = None


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    try:
        async with asyncio.timeout(seconds):
            await stop.wait()
    except TimeoutError:
        pass
