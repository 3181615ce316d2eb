"""The batch executor's pure parts: embedding grouping, token shares, line parsing."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import orjson
import pytest

from strata.errors import InvalidRequest
from strata.files.validate import lines, validate_batch_file
from strata.jobs.config import BatchSettings
from strata.jobs.execute import Executor
from strata.jobs.results import apportion


def _embed(n: int, text: str = "a b", model: str = "m", **extra: Any) -> bytes:
    body = {"model": model, "input": text, **extra}
    return orjson.dumps(
        {"custom_id": f"e{n}", "method": "POST", "url": "/v1/embeddings", "body": body}
    )


def _executor(group: int = 32, endpoint: str = "/v1/embeddings") -> Executor:
    rt = SimpleNamespace(settings=SimpleNamespace(batch=BatchSettings(embed_group=group)))
    batch = SimpleNamespace(id="batch_x", endpoint=endpoint)
    return Executor(rt, cast(Any, None), cast(Any, None), cast(Any, batch))


def test_embedding_requests_group_up_to_the_cap_per_model_and_options() -> None:
    data = b"\n".join(
        [_embed(i) for i in range(70)]
        + [_embed(100, model="other"), _embed(101, encoding_format="base64")]
        + [_embed(102, text="x y", dimensions=8)]
    )
    units = _executor()._units(list(lines(data)))
    sizes = sorted(len(u) for u in units)
    assert sizes == [1, 1, 1, 6, 32, 32]  # 70 = 32 + 32 + 6; other options apart
    for u in units:
        assert len({(ln.body or {}).get("model") for ln in u}) == 1


def test_list_inputs_count_toward_the_cap() -> None:
    data = b"\n".join(_embed(i, text=["a", "b", "c"]) for i in range(12))  # type: ignore[arg-type]
    units = _executor(group=8)._units(list(lines(data)))
    assert [sum(len((ln.body or {})["input"]) for ln in u) for u in units] == [6, 6, 6, 6, 6, 6]


def test_chat_lines_and_wrong_endpoint_are_never_grouped() -> None:
    data = _embed(1) + b"\n" + _embed(2)
    assert [
        len(u) for u in _executor(endpoint="/v1/chat/completions")._units(list(lines(data)))
    ] == [1, 1]


@pytest.mark.parametrize(
    ("total", "weights"), [(100, [1, 1, 1]), (7, [5, 1, 1, 1]), (0, [3, 4]), (33, [10] * 32)]
)
def test_token_shares_sum_exactly(total: int, weights: list[int]) -> None:
    parts = apportion(total, weights)
    assert sum(parts) == total and all(p >= 0 for p in parts)
    assert max(parts) - min(parts) <= 1 or len(set(weights)) > 1


def test_validation_names_lines_and_counts_requests() -> None:
    good = _embed(1) + b"\n\n" + _embed(2) + b"\n"
    assert validate_batch_file(good, 10) == 2
    with pytest.raises(InvalidRequest, match="line 1: the file is not UTF-8"):
        validate_batch_file(b"\xff\xfe", 10)
    many = b"\n".join(b"{" for _ in range(9))
    with pytest.raises(InvalidRequest, match="and 4 more"):
        validate_batch_file(many, 10)


def test_local_models_get_one_batch_request_at_a_time() -> None:
    from strata.providers.local_queue import LocalQueue

    local = SimpleNamespace(is_local=True, queue=LocalQueue("l", 4))
    remote = SimpleNamespace(is_local=False)
    spec = {
        "loc": SimpleNamespace(deployments=[SimpleNamespace(provider="local")]),
        "api": SimpleNamespace(deployments=[SimpleNamespace(provider="r")] * 2),
    }
    rt = SimpleNamespace(
        settings=SimpleNamespace(batch=BatchSettings(concurrency_per_deployment=8), models=spec),
        providers={"local": local, "r": remote},
    )
    batch = cast(Any, SimpleNamespace(id="b", endpoint="/v1/embeddings"))
    ex = Executor(rt, cast(Any, None), cast(Any, None), batch)
    assert ex._sem("loc")._value == 1
    assert ex._sem("api")._value == 16  # 8 per deployment
    local.queue.shutdown()
