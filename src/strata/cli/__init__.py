"""``strata``: serve | migrate | keys | usage | config."""

from __future__ import annotations

from strata.cli.main import app


def main() -> None:
    app()


__all__ = ["app", "main"]
