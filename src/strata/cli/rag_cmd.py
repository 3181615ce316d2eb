"""strata ingest DIR --collection X, and strata rag eval|collections.

Both run in this process against the database (embedded PostgreSQL is started
when no URL is set), embedding with the collection's model loaded here: no server
is needed. Ingestion is resumable: a rerun skips every file whose content hash is
unchanged, so an interrupted run picks up where it stopped.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from strata.cli.common import ConfigOpt, console, err_console, running_services, settings_or_exit
from strata.errors import StrataError
from strata.settings import Settings

app = typer.Typer(no_args_is_help=True, help="Document collections for retrieval (RAG).")
T = TypeVar("T")
# Files handed to one ingestion call: chunks of several files share embedding
# batches, and progress still moves often.
FILES_PER_CALL = 16
SKIP_DIRS = {".git", "node_modules", "__pycache__", ".venv"}


def _files(root: Path) -> list[Path]:
    from strata.rag.extract import _EXT

    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if "." in name and name.rsplit(".", 1)[1].lower() in _EXT:
                out.append(Path(dirpath) / name)
    return out


def _run(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    """Services up, then ``work(rag)`` with a RagService embedding in-process."""
    with running_services(settings) as live:

        async def go() -> T:
            from strata.providers.registry import build_providers
            from strata.rag.service import RagService
            from strata.rag.wiring import direct_embedder, embedding_aliases
            from strata.security.crypto import open_crypto
            from strata.storage.engine import make_engine
            from strata.storage.repositories import rag as repo

            engine = make_engine(live.database_url or "", pool_size=2)
            providers = build_providers(live)
            try:
                if not await repo.available(engine):
                    raise StrataError("RAG needs the pgvector extension in PostgreSQL")
                crypto = await open_crypto(engine, live.crypto, live.data_dir)
                for p in providers.values():
                    if p.supports_embeddings:
                        await p.start()
                rag = RagService(
                    engine,
                    crypto,
                    live.rag,
                    direct_embedder(live, providers),
                    lambda: embedding_aliases(live),
                )
                return await work(rag)
            finally:
                for p in providers.values():
                    await p.close()
                await engine.dispose()

        try:
            return asyncio.run(go())
        except StrataError as exc:
            err_console.print(f"[red]error[/red]: {exc.message}")
            raise typer.Exit(1) from None


async def _collection(rag: Any, tenant: str, name: str, create: bool, model: str | None) -> Any:
    from strata.errors import NotFound

    try:
        return await rag.collection(tenant, name)
    except NotFound:
        if not create:
            raise
    console.print(f"creating collection [bold]{name}[/bold] (tenant {tenant})")
    return await rag.create_collection(tenant, name, model)


def ingest(
    directory: Path = typer.Argument(..., help="directory of .txt .md .html .pdf .jsonl files"),
    collection: str = typer.Option(..., "--collection", help="collection id or name"),
    tenant: str = typer.Option("default", help="tenant that owns the collection"),
    user: str = typer.Option("cli", help="user recorded as the uploader (GDPR export/erase)"),
    create: bool = typer.Option(True, help="create the collection if it does not exist"),
    embedding_model: str | None = typer.Option(None, help="embedding alias of a new collection"),
    config: Path | None = ConfigOpt,
) -> None:
    """Ingest a directory into a collection; unchanged files are skipped (resumable)."""
    if not directory.is_dir():
        err_console.print(f"[red]not a directory[/red]: {directory}")
        raise typer.Exit(2)
    files = _files(directory)
    if not files:
        err_console.print(f"no supported files under {directory}")
        raise typer.Exit(1)
    settings = settings_or_exit(config)

    async def work(rag: Any) -> dict[str, int]:
        from strata.rag.extract import detect_format
        from strata.rag.service import DocumentInput

        col = await _collection(rag, tenant, collection, create, embedding_model)
        counts = {"created": 0, "replaced": 0, "unchanged": 0, "failed": 0, "chunks": 0}
        columns = (
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[chunks]} chunks embedded"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console) as progress:
            bar = progress.add_task(f"ingesting into {col.name}", total=len(files), chunks=0)
            for i in range(0, len(files), FILES_PER_CALL):
                group = files[i : i + FILES_PER_CALL]
                docs = [
                    DocumentInput(
                        p.read_bytes(), detect_format(p.name), p.relative_to(directory).as_posix()
                    )
                    for p in group
                ]

                def done(r: Any) -> None:
                    counts[r.status] += 1
                    if r.status != "unchanged":
                        counts["chunks"] += r.chunks
                    progress.update(bar, chunks=counts["chunks"])

                try:
                    await rag.ingest(col, user, docs, on_document=done)
                except StrataError:
                    # One bad file must not stop the rest: retry the group file by file.
                    for doc in docs:
                        try:
                            await rag.ingest(col, user, [doc], on_document=done)
                        except StrataError as exc:
                            counts["failed"] += 1
                            progress.console.print(f"[red]{doc.source}[/red]: {exc.message}")
                progress.advance(bar, len(group))
        return counts

    counts = _run(settings, work)
    console.print(
        f"[green]done[/green]: {counts['created']} new, {counts['replaced']} replaced, "
        f"{counts['unchanged']} unchanged, {counts['failed']} failed; "
        f"{counts['chunks']} chunks embedded"
    )
    if counts["failed"]:
        raise typer.Exit(1)


@app.command("eval")
def eval_command(
    dataset: Path = typer.Argument(..., help="JSONL queries with relevance judgments"),
    collection: str = typer.Option(..., "--collection", help="collection id or name"),
    tenant: str = typer.Option("default", help="tenant that owns the collection"),
    mode: str = typer.Option("all", help="hybrid, vector, lexical, or all"),
    config: Path | None = ConfigOpt,
) -> None:
    """recall@1/5/10, MRR and nDCG@10 of the collection's retrieval on a labelled set."""
    from strata.rag.evaluate import RECALL_AT, evaluate, load_queries
    from strata.rag.retrieve import MODES

    modes = list(MODES) if mode == "all" else [mode]
    if any(m not in MODES for m in modes):
        raise typer.BadParameter(f"mode: one of {', '.join(MODES)} or all")
    try:
        queries = load_queries(dataset)
    except (OSError, ValueError) as exc:
        err_console.print(f"[red]cannot read the dataset[/red]: {exc}")
        raise typer.Exit(2) from None
    settings = settings_or_exit(config)

    async def work(rag: Any) -> list[Any]:
        col = await rag.collection(tenant, collection)
        out = []
        with Progress(console=console) as progress:
            for m in modes:
                task = progress.add_task(f"{m} retrieval", total=len(queries))

                def step(t: Any = task) -> None:
                    progress.advance(t)

                out.append(await evaluate(rag, col, queries, m, step))
        return out

    results = _run(settings, work)
    table = Table(title=f"{dataset.name}: {len(queries)} queries")
    table.add_column("mode")
    for k in RECALL_AT:
        table.add_column(f"recall@{k}", justify="right")
    table.add_column("MRR", justify="right")
    table.add_column("nDCG@10", justify="right")
    for s in results:
        table.add_row(
            s.mode, *(f"{s.recall[k]:.3f}" for k in RECALL_AT), f"{s.mrr:.3f}", f"{s.ndcg10:.3f}"
        )
    console.print(table)


@app.command("collections")
def collections(
    tenant: str = typer.Option("default", help="tenant whose collections to list"),
    config: Path | None = ConfigOpt,
) -> None:
    """List a tenant's collections with their document and chunk counts."""
    settings = settings_or_exit(config)

    async def work(rag: Any) -> list[Any]:
        from strata.storage.repositories import rag as repo

        return await repo.list_collections(rag.engine, tenant)

    table = Table()
    for col in ("id", "name", "embedding model", "dims", "documents", "chunks"):
        table.add_column(col)
    for c in _run(settings, work):
        table.add_row(
            c.id, c.name, c.embedding_model, str(c.dimensions), str(c.documents), str(c.chunks)
        )
    console.print(table)
