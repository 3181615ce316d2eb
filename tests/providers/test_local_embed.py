"""The embedded embedding model: single texts on ONNX Runtime once exported, the same
vectors as the torch path; the torch path whenever ONNX is off or disagrees."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from strata.providers import onnx_query
from strata.providers.local_embed import LocalEmbedProvider
from strata.providers.registry import build_providers
from strata.settings import load_settings

TEXTS = ["How do I factory reset my air purifier?", "E-4172 fault", "version 3.4.12 changes"]


async def provider(**options: Any) -> LocalEmbedProvider:
    s = load_settings(
        None,
        providers={"e": {"type": "local_embed", **options}},
        models={"x": {"kind": "embedding", "provider": "e", "model": "all-minilm-l6-v2"}},
    )
    p = build_providers(s)["e"]
    assert isinstance(p, LocalEmbedProvider)
    await p.start()
    return p


@pytest.fixture(scope="module")
async def onnx_provider() -> AsyncIterator[LocalEmbedProvider]:
    p = await provider()
    await p.embed(["warm"], "x")  # loaded on torch
    for _ in range(480):  # the first export on a machine takes ~30 s
        if p._onnx is not None:
            break
        await asyncio.sleep(0.5)
    yield p
    await p.close()


async def test_single_texts_run_on_onnx_with_the_same_vectors(
    onnx_provider: LocalEmbedProvider,
) -> None:
    p = onnx_provider
    assert p._onnx is not None, "the ONNX path was not built"
    batch = await p.embed(TEXTS, "x")  # several texts: torch (sentence-transformers)
    for i, text in enumerate(TEXTS):
        one = await p.embed([text], "x")  # one text: ONNX Runtime
        cos = float(np.dot(one.vectors[0], batch.vectors[i]))
        assert cos > 0.9999, (text, cos)
        assert abs(float(np.linalg.norm(one.vectors[0])) - 1.0) < 1e-5
        tokens = len(p._tokenizer(text)["input_ids"])
        assert one.prompt_tokens == tokens


async def test_onnx_off_keeps_torch() -> None:
    p = await provider(onnx_queries=False)
    try:
        await p.embed(["warm"], "x")
        await asyncio.sleep(0.5)
        assert p._onnx is None
        one = await p.embed([TEXTS[0]], "x")
        assert len(one.vectors[0]) == 384
    finally:
        await p.close()


async def test_an_export_that_disagrees_is_not_used(
    onnx_provider: LocalEmbedProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    def wrong(self: onnx_query.OnnxQueryEncoder, text: str) -> tuple[list[float], int]:
        return [1.0] + [0.0] * 383, 3

    monkeypatch.setattr(onnx_query.OnnxQueryEncoder, "encode", wrong)
    p = onnx_provider
    built = await asyncio.to_thread(onnx_query.build, p._model, p.path, 256)
    assert built is None
