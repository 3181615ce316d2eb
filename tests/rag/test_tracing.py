"""A grounded chat request traces its retrieval: rag.embed and rag.retrieve spans
under the request's span, before the model call."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from strata.settings import Settings
from strata.storage.repositories.keys import NewKey
from tests.observability.test_tracing import (
    Receiver,
    Traced,
    rid,
    server_span,
    start_traced,
    trace_of,
    traced_config,
)
from tests.observability.test_tracing import receiver as receiver  # the fixture
from tests.rag.conftest import BASE, add, call


@pytest.fixture(scope="module")
def traced(settings_factory: Callable[..., Settings], receiver: Receiver) -> Iterator[Traced]:
    t = start_traced(settings_factory, traced_config(receiver.endpoint))
    yield t
    t.server.stop()


async def test_grounded_chat_has_retrieval_spans(
    traced: Traced, new_key: Callable[..., NewKey], sdk: Any
) -> None:
    key = new_key(tenant="rag-trace-" + uuid.uuid4().hex[:8])
    col = call(traced.server, key, "POST", BASE, json={"name": "traced"}).json()
    add(traced.server, key, col, {"text": "The ferry leaves the harbour at seven."})
    r = rid()
    resp = await asyncio.to_thread(
        sdk(traced.server, key.key).chat.completions.create,
        model="fake",
        messages=[{"role": "user", "content": "When does the ferry leave?"}],
        extra_body={"rag": {"collection": col["id"]}},
        extra_headers={"x-request-id": r},
    )
    assert resp.model_extra["strata"]["citations"]
    root = server_span(traced.spans, r)
    children = sorted(trace_of(traced.spans, root), key=lambda s: s.start_time or 0)
    names = [c.name for c in children]
    assert names.index("rag.embed") < names.index("rag.retrieve") < names.index("chat fake-1")
    retrieve = next(c for c in children if c.name == "rag.retrieve")
    assert retrieve.attributes["strata.rag.mode"] == "hybrid"
    assert retrieve.attributes["strata.rag.hits"] >= 1
    embed = next(c for c in children if c.name == "rag.embed")
    assert embed.attributes["strata.rag.collection"] == col["id"]
