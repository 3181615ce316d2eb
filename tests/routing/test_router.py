"""Alias resolution."""

from __future__ import annotations

import pytest

from strata.errors import InvalidRequest, ModelNotFound
from strata.providers.registry import build_providers
from strata.routing.router import Router
from strata.settings import load_settings


@pytest.fixture
def router() -> Router:
    settings = load_settings(
        None,
        providers={"a": {"type": "fake"}, "b": {"type": "fake"}},
        models={
            "chat": {
                "deployments": [{"provider": "a", "model": "m1"}, {"provider": "b", "model": "m2"}]
            },
            "vec": {"kind": "embedding", "provider": "b", "model": "e1"},
        },
    )
    return Router(settings, build_providers(settings))


def test_candidates_keep_declared_order(router: Router) -> None:
    got = [(t.provider.name, t.model) for t in router.candidates("chat", "chat")]
    assert got == [("a", "m1"), ("b", "m2")]
    assert router.candidates("chat", "chat")[0].model == "m1"


def test_unknown_alias(router: Router) -> None:
    with pytest.raises(ModelNotFound) as e:
        router.candidates("gpt-9", "chat")
    assert e.value.status == 404 and e.value.param == "model"


def test_kind_mismatch_points_at_the_right_endpoint(router: Router) -> None:
    with pytest.raises(InvalidRequest, match="/v1/embeddings"):
        router.candidates("vec", "chat")
    with pytest.raises(InvalidRequest, match="/v1/chat/completions"):
        router.candidates("chat", "embedding")
