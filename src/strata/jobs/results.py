"""What a batch request leaves behind: its OpenAI result line, its usage record id,
and the helpers that split a grouped embedding call back into requests."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from strata.usage.recorder import UsageEvent

# Usage record ids of batch requests: uuid5(batch id + line) under this namespace.
USAGE_NS = uuid.UUID("6f1d7c1e-4b8a-4f43-9d0e-6a8f2b1c9e55")
URL_KIND = {"/v1/chat/completions": "chat", "/v1/embeddings": "embeddings"}


def usage_id(batch_id: str, line: int) -> uuid.UUID:
    return uuid.uuid5(USAGE_NS, f"{batch_id}:{line}")


def request_id(batch_id: str, line: int) -> str:
    return f"{batch_id}:{line}"


class Capture:
    """Stands in for the usage recorder: the meter's record is kept, not buffered, so
    it can be written with the result (see strata.jobs.execute)."""

    def __init__(self) -> None:
        self.events: list[UsageEvent] = []

    def record(self, event: UsageEvent) -> None:
        self.events.append(event)


@dataclass(slots=True)
class Outcome:
    """One line's result: the OpenAI result line, its usage, and a reservation."""

    line: int
    ok: bool
    body: dict[str, Any]
    events: list[UsageEvent] = field(default_factory=list)
    settle: list[tuple[Any, Any, int, Decimal]] = field(default_factory=list)


def result_line(
    batch_id: str,
    custom_id: str | None,
    line: int,
    status: int,
    body: dict[str, Any] | None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """OpenAI's batch result line (output and error files share the shape)."""
    response = (
        None
        if body is None
        else {"status_code": status, "request_id": request_id(batch_id, line), "body": body}
    )
    return {
        "id": "batch_req_" + secrets.token_hex(12),
        "custom_id": custom_id,
        "response": response,
        "error": error,
    }


def inputs_of(body: dict[str, Any] | None) -> list[str]:
    if body is None:
        return []
    raw = body.get("input")
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and raw and all(isinstance(x, str) for x in raw):
        return list(raw)
    return []


def apportion(total: int, weights: list[int]) -> list[int]:
    """``total`` split in proportion to ``weights``; the parts sum to ``total``."""
    whole = sum(weights)
    parts = [total * w // whole for w in weights]
    rest = total - sum(parts)
    for i in sorted(range(len(weights)), key=lambda i: -(total * weights[i] % whole))[:rest]:
        parts[i] += 1
    return parts
