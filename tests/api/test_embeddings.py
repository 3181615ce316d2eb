"""Embeddings from the embedded all-MiniLM-L6-v2 through the openai SDK."""

from __future__ import annotations

import base64
import math

import numpy as np
import openai
import pytest


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / (
        math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    )


def test_vectors_are_384_dimensional_and_meaningful(client: openai.OpenAI) -> None:
    texts = [
        "The cat sits on the mat.",
        "A kitten is resting on a rug.",
        "Stock markets fell sharply.",
    ]
    r = client.embeddings.create(model="embed-default", input=texts)
    assert [d.index for d in r.data] == [0, 1, 2]
    vecs = [d.embedding for d in r.data]
    assert all(len(v) == 384 for v in vecs)
    # Real semantics: the paraphrase is closer than the unrelated sentence.
    assert cosine(vecs[0], vecs[1]) > cosine(vecs[0], vecs[2]) + 0.2
    assert r.usage.prompt_tokens > len(texts)


def test_single_string_input(client: openai.OpenAI) -> None:
    r = client.embeddings.create(model="embed-default", input="hello world")
    assert len(r.data) == 1 and len(r.data[0].embedding) == 384


def test_base64_matches_float(client: openai.OpenAI) -> None:
    text = ["base64 round trip"]
    floats = client.embeddings.create(model="embed-default", input=text).data[0].embedding
    # The SDK decodes base64 itself; check the raw wire format too.
    raw = client.embeddings.with_raw_response.create(
        model="embed-default", input=text, encoding_format="base64"
    )
    b64 = raw.http_response.json()["data"][0]["embedding"]
    assert isinstance(b64, str)
    decoded = np.frombuffer(base64.b64decode(b64), dtype="<f4")
    assert np.allclose(decoded, floats, atol=1e-6)
    floats_raw = client.embeddings.with_raw_response.create(
        model="embed-default", input=text, encoding_format="float"
    ).http_response.json()["data"][0]["embedding"]
    assert np.allclose(decoded, floats_raw, atol=1e-6)


def test_many_inputs_are_batched_and_ordered(client: openai.OpenAI) -> None:
    texts = [f"sentence number {i}" for i in range(70)]  # three forward passes of 32
    r = client.embeddings.create(model="embed-default", input=texts)
    assert len(r.data) == 70
    single = client.embeddings.create(model="embed-default", input=texts[45]).data[0].embedding
    assert np.allclose(r.data[45].embedding, single, atol=1e-5)


def test_wrong_dimensions_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="embed-default", input="x", dimensions=100)
    assert e.value.param == "dimensions"


@pytest.mark.parametrize("bad", ["", [], [""], [[1, 2, 3]]])
def test_bad_input_is_400(client: openai.OpenAI, bad: object) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="embed-default", input=bad)  # type: ignore[arg-type]
    assert e.value.param == "input"


def test_chat_model_cannot_embed(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="default", input="x")
    assert e.value.param == "model"
