"""strata jobs list|show|retry and strata batches list|watch against real services."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest
from typer.testing import CliRunner

from strata.cli.main import app
from strata.storage.repositories.keys import NewKey
from tests.conftest import ServerThread
from tests.jobs.helpers import chat_line, jsonl, wait_batch


@pytest.fixture(scope="module")
def queue_name() -> str:
    return "test-cli-" + uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def cli_server(start_server: Callable[..., ServerThread], queue_name: str) -> ServerThread:
    return start_server(jobs={"queue": queue_name})


@pytest.fixture
def cli(
    database_url: str,
    redis_url: str,
    queue_name: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Callable[..., Any]:
    monkeypatch.setenv("STRATA_DATABASE_URL", database_url)
    monkeypatch.setenv("STRATA_REDIS_URL", redis_url)
    monkeypatch.setenv("STRATA_JOBS__QUEUE", queue_name)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def invoke(*args: str, code: int = 0) -> Any:
        result = runner.invoke(app, list(args), catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result

    return invoke


def test_jobs_and_batches_commands(
    cli_server: ServerThread,
    new_key: Callable[..., NewKey],
    sdk: Callable[[ServerThread, str], openai.OpenAI],
    cli: Callable[..., Any],
) -> None:
    client = sdk(cli_server, new_key(tenant="cli-" + uuid.uuid4().hex[:6]).key)
    f = client.files.create(
        file=("in.jsonl", io.BytesIO(jsonl([chat_line(f"c{i}") for i in range(5)]))),
        purpose="batch",
    )
    b = client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    wait_batch(client, b.id, ("completed",))

    watched = cli("batches", "watch", b.id, "--interval", "0.1").stdout
    assert f"{b.id}: completed" in watched and "5/5" in watched  # the bar, then the status

    listed = json.loads(cli("jobs", "list", "--json").stdout)
    keys = {j["key"]: j for j in listed["jobs"]}
    assert keys[f"batch:{b.id}"]["status"] == "complete"
    assert keys[f"batch:{b.id}"]["kwargs"] == {"batch_id": b.id}
    assert listed["workers"] >= 1  # the server's in-process worker

    shown = json.loads(cli("jobs", "show", f"batch:{b.id}").stdout)
    assert shown["function"] == "run_batch" and shown["result"] == "completed"
    cli("jobs", "show", "batch:nope", code=1)

    # A retry of a finished batch's job runs again and changes nothing.
    assert "queued" in cli("jobs", "retry", f"batch:{b.id}").stdout
    again = wait_batch(client, b.id, ("completed",))
    assert again.request_counts is not None and again.request_counts.completed == 5

    listed_batches = json.loads(cli("batches", "list", "--limit", "50", "--json").stdout)["data"]
    assert {"id": b.id, "status": "completed", "total": 5}.items() <= next(
        x for x in listed_batches if x["id"] == b.id
    ).items()
    cli("batches", "list")  # the table renders
    cli("batches", "watch", "batch_nope", code=1)
