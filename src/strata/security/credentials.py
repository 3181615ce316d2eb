"""Secret references: configuration names where a secret lives, never the secret.

``env:NAME`` reads an environment variable; ``file:/path`` reads a file (trailing
newline stripped). A reference that cannot be resolved fails at start-up with the
fix spelled out. Resolved values are wrapped in ``Secret`` so they never print.
"""

from __future__ import annotations

from pathlib import Path

from strata.errors import ConfigError
from strata.settings import environ


class Secret:
    """A resolved secret. ``str()`` and ``repr()`` are masked; use ``.reveal()``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('****')"

    __str__ = __repr__


def resolve_secret(ref: str, where: str) -> Secret:
    """Resolve ``ref`` (found at config path ``where``) or raise ConfigError."""
    scheme, sep, rest = ref.partition(":")
    if not sep or scheme not in ("env", "file"):
        raise ConfigError(
            f"{where}: secrets must be references, not values: use env:NAME or file:/path "
            "(a literal key in a config file would leak into version control)"
        )
    if scheme == "env":
        value = environ(rest)
        if not value:
            raise ConfigError(
                f"{where} refers to env:{rest}, which is not set. Fix: export {rest}=<your key> "
                "before starting Strata, or remove this provider from the config."
            )
        return Secret(value)
    try:
        value = Path(rest).read_text().strip()
    except OSError as exc:
        raise ConfigError(
            f"{where} refers to file:{rest}, which cannot be read ({exc.strerror}). "
            "Fix: create the file with the secret, or correct the path."
        ) from None
    if not value:
        raise ConfigError(f"{where} refers to file:{rest}, which is empty.")
    return Secret(value)
