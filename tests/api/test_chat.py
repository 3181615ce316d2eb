"""Chat completions through the official openai SDK against the real local model."""

from __future__ import annotations

import openai
import pytest

MSG = [{"role": "user", "content": "Name a colour."}]


def test_local_model_answers_with_real_counts(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="default", messages=MSG, max_tokens=12, temperature=0)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage is not None
    assert r.usage.prompt_tokens > 5
    assert 0 < r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_max_tokens_is_honoured(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "Write a long story about a dragon."}],
        max_tokens=3,
        temperature=0,
    )
    assert r.usage is not None and r.usage.completion_tokens == 3
    assert r.choices[0].finish_reason == "length"


def test_seed_makes_sampling_repeatable(client: openai.OpenAI) -> None:
    def ask() -> str:
        r = client.chat.completions.create(
            model="default", messages=MSG, max_tokens=16, temperature=1.0, top_p=0.9, seed=42
        )
        return r.choices[0].message.content or ""

    assert ask() == ask()


def test_temperature_zero_is_deterministic(client: openai.OpenAI) -> None:
    outs = {
        client.chat.completions.create(model="default", messages=MSG, max_tokens=10, temperature=0)
        .choices[0]
        .message.content
        for _ in range(2)
    }
    assert len(outs) == 1


def test_stop_sequence_cuts_the_answer(client: openai.OpenAI) -> None:
    base = (
        client.chat.completions.create(model="default", messages=MSG, max_tokens=16, temperature=0)
        .choices[0]
        .message.content
        or ""
    )
    words = base.split()
    assert len(words) >= 2, base
    stop = words[1]
    cut = client.chat.completions.create(
        model="default", messages=MSG, max_tokens=16, temperature=0, stop=[stop]
    )
    assert stop not in (cut.choices[0].message.content or "")
    assert cut.choices[0].finish_reason == "stop"


def test_stream_with_usage(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="default",
            messages=MSG,
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None and 0 < last.usage.completion_tokens <= 8
    assert all(c.usage is None for c in chunks[:-1])
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes in (["stop"], ["length"])


def test_stream_matches_non_stream_at_temperature_zero(client: openai.OpenAI) -> None:
    full = client.chat.completions.create(
        model="default", messages=MSG, max_tokens=10, temperature=0
    )
    chunks = list(
        client.chat.completions.create(
            model="default",
            messages=MSG,
            max_tokens=10,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[-1].usage is not None and full.usage is not None
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_stream_without_usage_has_no_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="fake", messages=MSG, stream=True))
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=MSG)
    assert e.value.code == "model_not_found"


def test_embedding_model_cannot_chat(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="embed-default", messages=MSG)
    assert e.value.param == "model"


def test_context_too_long_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "word " * 5000}], max_tokens=5
        )
    assert e.value.code == "context_length_exceeded"


def test_upstream_outage_is_503_naming_the_provider(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.create(model="fake-down", messages=MSG)
    assert e.value.status_code == 503
    assert "fake-down" in e.value.message
