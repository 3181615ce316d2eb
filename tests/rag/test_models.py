"""A collection embeds with its own model: any embedding alias (here the scripted
fake provider, standing in for an OpenAI-compatible endpoint), with its own
dimension count and its own partial HNSW index."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from strata.storage.repositories.keys import NewKey
from tests.conftest import TEST_CONFIG, ServerThread
from tests.rag.conftest import BASE, add, call, search
from tests.rag.test_api import raw_rows


def test_collection_with_another_embedding_model(
    start_server: Callable[..., ServerThread],
    new_key: Callable[..., NewKey],
    database_url: str,
) -> None:
    models: dict[str, Any] = {
        **TEST_CONFIG["models"],
        "embed-fake-48": {"kind": "embedding", "provider": "fake48", "model": "fake-embed"},
    }
    providers = {**TEST_CONFIG["providers"], "fake48": {"type": "fake", "dimensions": 48}}
    server = start_server(models=models, providers=providers)
    key = new_key(tenant="rag-models-" + uuid.uuid4().hex[:8])
    r = call(server, key, "POST", BASE, json={"name": "fake48", "embedding_model": "embed-fake-48"})
    assert r.status_code == 200, r.text
    col = r.json()
    assert col["dimensions"] == 48 and col["embedding_model"] == "embed-fake-48"
    (doc,) = add(server, key, col, {"text": "Alpha bravo charlie.", "source": "a.txt"})
    # The fake model's vectors are hashes of the text: the same text is the nearest.
    hits = search(server, key, col, "Alpha bravo charlie.", mode="vector", min_similarity=-1)
    assert hits[0]["document_id"] == doc["id"] and hits[0]["similarity"] > 0.99
    indexes = raw_rows(
        database_url, "SELECT indexname FROM pg_indexes WHERE tablename = 'rag_chunks'"
    )
    assert "ix_rag_chunks_hnsw_48" in {i["indexname"] for i in indexes}
    dims = raw_rows(
        database_url, "SELECT DISTINCT dims FROM rag_chunks WHERE document_id = $1", doc["id"]
    )
    assert [d["dims"] for d in dims] == [48]
