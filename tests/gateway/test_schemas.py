"""Request validation names the offending parameter the way clients write it."""

from __future__ import annotations

import pytest

from strata.errors import InvalidRequest
from strata.gateway.schemas import ChatRequest, EmbeddingRequest, validate

OK = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("patch", "param", "fragment"),
    [
        ({"model": None}, "model", "model"),
        ({"messages": [{"content": "x"}]}, "messages[0].role", "missing"),
        (
            {"messages": [OK["messages"][0], {"role": "user", "content": 5}]},
            "messages[1].content",
            "",
        ),
        ({"n": 0}, "n", ""),
        ({"stream_options": {"include_usage": "maybe"}}, "stream_options.include_usage", ""),
        ({"user": "u" * 300}, "user", ""),
    ],
)
def test_chat_errors_name_the_parameter(patch: dict, param: str, fragment: str) -> None:
    body = {**OK, **patch}
    if patch.get("model", 0) is None:
        del body["model"]
    with pytest.raises(InvalidRequest) as e:
        validate(ChatRequest, body)
    assert e.value.param == param
    assert fragment in e.value.message


def test_unknown_parameters_pass_through() -> None:
    body = {**OK, "logit_bias": {"1": 2}, "vendor_thing": [1, 2]}
    validate(ChatRequest, body)  # no error: forwarded to providers untouched


def test_multimodal_content_parts_are_accepted() -> None:
    parts = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "x"}},
    ]
    validate(ChatRequest, {**OK, "messages": [{"role": "user", "content": parts}]})


def test_embedding_limits() -> None:
    with pytest.raises(InvalidRequest, match="2048"):
        validate(EmbeddingRequest, {"model": "e", "input": ["x"] * 2049})
    with pytest.raises(InvalidRequest) as e:
        validate(EmbeddingRequest, {"model": "e", "input": "x", "encoding_format": "hex"})
    assert e.value.param == "encoding_format"


def test_non_object_body() -> None:
    with pytest.raises(InvalidRequest, match="JSON object"):
        validate(ChatRequest, [OK])
