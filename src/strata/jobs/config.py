"""Settings for the job queue and batches (``jobs:`` and ``batch:`` in strata.yaml)."""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field


class JobsSettings(BaseModel):
    """The Redis job queue (SAQ) and the workers that take from it."""

    model_config = ConfigDict(extra="forbid")

    # Redis key prefix of the queue: separate deployments sharing a Redis pick
    # different names.
    queue: str = "strata"
    # Jobs one worker process runs at once (each batch is one job; its requests
    # have their own bounds below).
    concurrency: int = Field(default=4, gt=0)
    # `strata serve` runs one worker in-process (embedded mode); production turns it
    # off and runs `strata worker` processes instead.
    embedded_worker: bool = True
    # A job silent this long is taken to be dead (its worker was killed) and is
    # retried by another worker's sweep, every sweep_s.
    heartbeat_s: int = Field(default=30, gt=0)
    sweep_s: int = Field(default=10, gt=0)
    # Re-enqueue unfinished batches whose lease lapsed (a lost job), every this often.
    reconcile_s: int = Field(default=30, gt=0)
    # On SIGTERM a worker stops taking jobs, has its batches commit the chunk in
    # flight and release their leases, and waits this long for that (keep it under
    # the platform's kill deadline: a spot node's notice, terminationGracePeriodSeconds).
    shutdown_grace_s: int = Field(default=25, gt=0)


class BatchSettings(BaseModel):
    """The Batch API: limits, pricing and how batch requests share capacity."""

    model_config = ConfigDict(extra="forbid")

    # OpenAI's limits per input file.
    max_requests: int = Field(default=50_000, gt=0)
    max_file_bytes: int = Field(default=200 * 1024 * 1024, gt=0)
    # Fraction off the price table for batch requests (OpenAI's is 50%).
    discount: Decimal = Field(default=Decimal("0.5"), ge=0, le=1)
    # Requests of one batch in flight at once, per deployment of the alias they use:
    # batch traffic never takes more than this from a deployment live traffic shares.
    concurrency_per_deployment: int = Field(default=8, gt=0)
    # Embedding inputs sent to a model in one call (one forward pass locally).
    embed_group: int = Field(default=32, gt=0)
    # Results committed per transaction (and the lease renewed between them).
    commit_every: int = Field(default=32, gt=0)
    # A batch's lease: a worker that stops renewing it for this long is presumed dead.
    lease_s: float = Field(default=30.0, gt=0)
    # Live traffic first: a rate-limited or queue-full batch request waits this long
    # and tries again (not an error in the batch).
    backoff_s: float = Field(default=1.0, gt=0)
    # Ray: batches with more pending requests than this are split into shards.
    ray_shard_size: int = Field(default=500, gt=0)
