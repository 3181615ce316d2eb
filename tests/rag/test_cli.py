"""strata ingest (resumable, skips unchanged files) and strata rag eval, in-process
against the test database, with the server's master key (it reads what the CLI wrote)."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from strata.cli.main import app
from strata.storage.repositories.keys import NewKey
from tests.conftest import ServerThread
from tests.rag.conftest import BASE, call


@pytest.fixture
def cli(
    database_url: str, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    for name in list(os.environ):
        if name.startswith("STRATA_") and name != "STRATA_TEST_MASTER_KEY":
            monkeypatch.delenv(name)
    monkeypatch.setenv("STRATA_DATABASE_URL", database_url)
    monkeypatch.setenv("STRATA_REDIS_URL", redis_url)
    monkeypatch.setenv("STRATA_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("STRATA_CRYPTO__MASTER_KEY", "env:STRATA_TEST_MASTER_KEY")
    runner = CliRunner()
    yield lambda *args: runner.invoke(app, list(args), catch_exceptions=False)


def test_ingest_is_resumable_and_eval_reports_metrics(
    cli: Any, tmp_path: Path, server: ServerThread, new_key: Any
) -> None:
    tenant = "rag-cli-" + uuid.uuid4().hex[:8]
    docs = tmp_path / "docs"
    (docs / "guides").mkdir(parents=True)
    (docs / "guides" / "setup.md").write_text(
        "# Setup\n\n## Install\n\nRun pip install strata, then strata serve."
    )
    (docs / "faq.txt").write_text("Refunds are paid back to the original card within a week.")
    (docs / "page.html").write_text("<h1>Hours</h1><p>The office opens at nine.</p>")
    (docs / "ignored.bin").write_bytes(b"\x00\x01")

    first = cli("ingest", str(docs), "--collection", "handbook", "--tenant", tenant)
    assert first.exit_code == 0, first.output
    assert "3 new, 0 replaced, 0 unchanged" in first.output
    again = cli("ingest", str(docs), "--collection", "handbook", "--tenant", tenant)
    assert "0 new, 0 replaced, 3 unchanged" in again.output
    (docs / "faq.txt").write_text("Refunds are paid back to the original card within 3 days.")
    third = cli("ingest", str(docs), "--collection", "handbook", "--tenant", tenant)
    assert "0 new, 1 replaced, 2 unchanged" in third.output

    dataset = tmp_path / "queries.jsonl"
    rows = [
        {"id": "1", "query": "how do I install it", "relevant": {"guides/setup.md": 2}},
        {"id": "2", "query": "when are refunds paid", "relevant": {"faq.txt": 2}},
        {"id": "3", "query": "opening time", "relevant": {"page.html": 1}},
    ]
    dataset.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = cli("rag", "eval", str(dataset), "--collection", "handbook", "--tenant", tenant)
    assert report.exit_code == 0, report.output
    assert "nDCG@10" in report.output and "3 queries" in report.output
    for mode in ("hybrid", "vector", "lexical"):
        assert mode in report.output

    # The server (same master key) reads what the CLI wrote.
    key: NewKey = new_key(tenant=tenant)
    hits = call(server, key, "POST", f"{BASE}/handbook/search", json={"query": "refund card"})
    assert hits.status_code == 200, hits.text
    assert hits.json()["data"][0]["source"] == "faq.txt"
    assert "3 days" in hits.json()["data"][0]["text"]

    listed = cli("rag", "collections", "--tenant", tenant)
    assert "handbook" in listed.output


def test_ingest_errors(cli: Any, tmp_path: Path) -> None:
    r = cli("ingest", str(tmp_path / "missing"), "--collection", "x")
    assert r.exit_code == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    r = cli("rag", "eval", str(bad), "--collection", "x")
    assert r.exit_code == 2 and "cannot read the dataset" in r.output
