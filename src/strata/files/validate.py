"""Batch input files (JSONL): checked line by line at upload, parsed again by workers.

Each line is one request, as OpenAI's Batch API takes it::

    {"custom_id": "req-1", "method": "POST", "url": "/v1/chat/completions", "body": {...}}

At upload a file is refused (400) when a line is not a JSON object with those four
fields, when a custom id repeats, or past the request limit; the message names
the first lines at fault. The body itself is checked when the request runs, as a
live request would be: a bad body is one error line in the batch's error file,
never a crashed batch. Workers parse leniently for the same reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from strata.errors import InvalidRequest

ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings")
# Problems named in one error message at most (the rest are counted).
SHOWN = 5


@dataclass(frozen=True, slots=True)
class Line:
    """One input line: a request, or why it is not one (``error``)."""

    number: int  # 1-based, as editors count
    custom_id: str | None
    url: str | None
    body: dict[str, Any] | None
    error: str | None = None


def _check(number: int, raw: bytes) -> Line:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Line(number, None, None, None, f"not valid JSON ({exc.msg})")
    if not isinstance(obj, dict):
        return Line(number, None, None, None, "not a JSON object")
    cid = obj.get("custom_id")
    custom_id = cid if isinstance(cid, str) and cid else None
    if custom_id is None:
        return Line(number, None, None, None, "'custom_id' must be a non-empty string")
    if len(custom_id) > 512:
        return Line(number, None, None, None, "'custom_id' is longer than 512 characters")
    if obj.get("method") != "POST":
        return Line(number, custom_id, None, None, "'method' must be \"POST\"")
    url = obj.get("url")
    if url not in ENDPOINTS:
        return Line(number, custom_id, None, None, f"'url' must be one of {', '.join(ENDPOINTS)}")
    body = obj.get("body")
    if not isinstance(body, dict):
        return Line(number, custom_id, url, None, "'body' must be a JSON object")
    return Line(number, custom_id, url, body)


def lines(data: bytes) -> Iterator[Line]:
    """Every non-blank line, checked (duplicate custom ids are errors after the first)."""
    seen: set[str] = set()
    for number, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        line = _check(number, raw)
        cid = line.custom_id
        if cid is not None and line.error is None:
            if cid in seen:
                line = Line(number, cid, None, None, "duplicate 'custom_id'")
            else:
                seen.add(cid)
        yield line


def validate_batch_file(data: bytes, max_requests: int) -> int:
    """The number of requests, or InvalidRequest naming the lines at fault."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        at = data[: exc.start].count(b"\n") + 1
        raise InvalidRequest(f"line {at}: the file is not UTF-8", param="file") from None
    count = 0
    problems: list[str] = []
    for line in lines(data):
        count += 1
        if line.error is not None:
            problems.append(f"line {line.number}: {line.error}")
    if problems:
        more = len(problems) - SHOWN
        text = "; ".join(problems[:SHOWN]) + (f"; and {more} more" if more > 0 else "")
        raise InvalidRequest(f"invalid batch input file: {text}", param="file")
    if count == 0:
        raise InvalidRequest("the batch input file has no requests", param="file")
    if count > max_requests:
        raise InvalidRequest(
            f"the batch input file has {count} requests; the limit is {max_requests}",
            param="file",
        )
    return count
