"""Secret references: env:NAME and file:/path resolve; values never print."""

from __future__ import annotations

from pathlib import Path

import pytest

from strata.errors import ConfigError
from strata.security.credentials import Secret, resolve_secret

WHERE = "providers.together.api_key"
VALUE = "sk-live-Zq81-recognisable-secret"


def test_env_reference_resolves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRATA_TEST_CRED_A", VALUE)
    secret = resolve_secret("env:STRATA_TEST_CRED_A", WHERE)
    assert isinstance(secret, Secret)
    assert secret.reveal() == VALUE


def test_file_reference_resolves_without_trailing_newline(tmp_path: Path) -> None:
    path = tmp_path / "together.key"
    path.write_text(VALUE + "\n")
    assert resolve_secret(f"file:{path}", WHERE).reveal() == VALUE


def test_missing_env_var_names_the_variable_and_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STRATA_TEST_CRED_MISSING", raising=False)
    with pytest.raises(ConfigError) as info:
        resolve_secret("env:STRATA_TEST_CRED_MISSING", WHERE)
    msg = info.value.message
    assert WHERE in msg
    assert "STRATA_TEST_CRED_MISSING" in msg
    assert "export STRATA_TEST_CRED_MISSING=" in msg


def test_empty_env_var_counts_as_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRATA_TEST_CRED_EMPTY", "")
    with pytest.raises(ConfigError, match="STRATA_TEST_CRED_EMPTY"):
        resolve_secret("env:STRATA_TEST_CRED_EMPTY", WHERE)


def test_unreadable_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.key"
    with pytest.raises(ConfigError) as info:
        resolve_secret(f"file:{missing}", WHERE)
    assert WHERE in info.value.message
    assert str(missing) in info.value.message


def test_empty_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "empty.key"
    path.write_text("\n")
    with pytest.raises(ConfigError) as info:
        resolve_secret(f"file:{path}", WHERE)
    assert str(path) in info.value.message


@pytest.mark.parametrize(
    "literal",
    [
        VALUE,  # no scheme at all
        "https://user:pw@example.com",  # a colon, but not a reference scheme
        "vault:secret/data/together",
        "ENV:TOGETHER_API_KEY",  # schemes are lower case
    ],
)
def test_literal_values_are_rejected_without_echoing_them(literal: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_secret(literal, WHERE)
    msg = info.value.message
    assert WHERE in msg
    assert "env:NAME" in msg
    assert "file:/path" in msg
    # The rejected value may be a real key: it must not end up in logs.
    assert literal not in msg


def test_secret_never_prints() -> None:
    secret = Secret(VALUE)
    renderings = [
        repr(secret),
        str(secret),
        f"{secret}",
        f"{secret!r}",
        "%s" % secret,  # noqa: UP031
        repr([secret]),
        repr({"api_key": secret}),
    ]
    for text in renderings:
        assert VALUE not in text
        assert "****" in text
    assert secret.reveal() == VALUE
    with pytest.raises(AttributeError):
        secret.extra = "x"
