"""Monthly cost against monthly tokens for an API and a GPU, break-even marked.

Uses matplotlib's object API (no pyplot): no global figure state and no
display backend, so it works on a headless server and in tests.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from strata.planner.breakeven import Breakeven
from strata.planner.model import MILLION, num, usd

POINTS = 400


def breakeven_chart(be: Breakeven, path: Path, mark_tokens: Decimal | None = None) -> Path:
    """Write a PNG to ``path``; ``mark_tokens`` draws a plan's own monthly volume."""
    from matplotlib.figure import Figure

    t = be.tokens
    top = t * Decimal("1.5") if t is not None and not be.never else be.capacity * 3
    if mark_tokens is not None:
        top = max(top, mark_tokens * Decimal("1.2"))
    xs = [top * i / POINTS for i in range(POINTS + 1)]
    millions = [float(x / MILLION) for x in xs]
    fig = Figure(figsize=(9, 5.5), layout="constrained")
    ax = fig.subplots()
    ax.plot(
        millions,
        [float(be.api_cost(x)) for x in xs],
        label=f"API {be.api}: {usd(be.api_per_1m)}/1M tokens (blended)",
    )
    ax.plot(
        millions,
        [float(be.gpu_cost(x)) for x in xs],
        drawstyle="steps-post",
        label=(
            f"{be.gpu} {be.billing.replace('_', '-')}: {usd(be.gpu_month)}/month per GPU, "
            f"{num((be.capacity / MILLION).quantize(Decimal('0.1')))}M tokens each "
            f"at {num(be.tokens_per_s)} tokens/s"
        ),
    )
    if t is not None and not be.never:
        ax.axvline(float(t / MILLION), color="grey", linestyle="--")
        ax.annotate(
            f"break-even {num((t / MILLION).quantize(Decimal('0.1')))}M tokens",
            (float(t / MILLION), float(be.gpu_month)),
            textcoords="offset points",
            xytext=(8, 8),
        )
        ax.set_title("API vs self-hosted: monthly cost")
    else:
        ax.set_title("API vs self-hosted: the GPU never breaks even")
    if mark_tokens is not None:
        ax.axvline(float(mark_tokens / MILLION), color="green", linestyle=":", label="this plan")
    ax.set_xlabel("monthly tokens (millions)")
    ax.set_ylabel("monthly cost (USD)")
    ax.set_xlim(0, float(top / MILLION))
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
    fig.savefig(path, dpi=100)
    return path
