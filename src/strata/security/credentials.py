"""Secret references: configuration names where a secret lives, never the secret.

``env:NAME`` reads an environment variable; ``file:/path`` reads a file (trailing
newline stripped); ``vault:secret/data/PATH#FIELD`` reads one field of a HashiCorp
Vault KV v2 secret (``GET {VAULT_ADDR}/v1/secret/data/PATH``, value at
``data.data[FIELD]``), authenticating with ``VAULT_TOKEN`` or with AppRole
(``VAULT_ROLE_ID`` + ``VAULT_SECRET_ID``). Vault is spoken to through ``hvac``
(the design's chosen client); it is synchronous, so the refresh task calls it in
a worker thread.

A reference that cannot be resolved fails at start-up with the fix spelled out;
messages name the reference, never the value or a token. Resolved values are
wrapped in ``SecretRef`` (a ``Secret``) so they never print, and every live one is
re-resolved by ``strata.security.secrets.refresh_secrets`` on a schedule: holders
read ``.reveal()`` each time they use the secret, so a rotated value is picked up
without a restart.
"""

from __future__ import annotations

import threading
import weakref
from pathlib import Path
from typing import Any

from strata.errors import ConfigError
from strata.settings import environ

SCHEMES = ("env", "file", "vault")
VAULT_TIMEOUT_S = 5.0


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


class SecretRef(Secret):
    """A secret that remembers its reference, so it can be re-resolved in place."""

    __slots__ = ("__weakref__", "ref", "where")

    def __init__(self, value: str, ref: str, where: str) -> None:
        super().__init__(value)
        self.ref = ref
        self.where = where

    def refresh(self) -> bool:
        """Re-resolve (blocking; raises ConfigError and keeps the old value on failure).
        Returns whether the value changed."""
        value = _resolve_value(self.ref, self.where)
        changed = value != self._value
        self._value = value
        return changed

    def __repr__(self) -> str:
        return f"SecretRef({self.ref!r}, '****')"

    __str__ = __repr__


_live: weakref.WeakSet[SecretRef] = weakref.WeakSet()


def live_refs() -> list[SecretRef]:
    """Every resolved reference still held somewhere in this process."""
    return list(_live)


def is_reference(value: str) -> bool:
    scheme, sep, _ = value.partition(":")
    return bool(sep) and scheme in SCHEMES


def resolve_secret(ref: str, where: str) -> SecretRef:
    """Resolve ``ref`` (found at config path ``where``) or raise ConfigError."""
    secret = SecretRef(_resolve_value(ref, where), ref, where)
    _live.add(secret)
    return secret


def _resolve_value(ref: str, where: str) -> str:
    scheme, sep, rest = ref.partition(":")
    if not sep or scheme not in SCHEMES:
        raise ConfigError(
            f"{where}: secrets must be references, not values: use env:NAME, file:/path or "
            "vault:secret/data/PATH#FIELD (a literal key in a config file would leak into "
            "version control)"
        )
    if scheme == "env":
        value = environ(rest)
        if not value:
            raise ConfigError(
                f"{where} refers to env:{rest}, which is not set. Fix: export {rest}=<your key> "
                "before starting Strata, or remove this provider from the config."
            )
        return value
    if scheme == "vault":
        return _VAULT.read(rest, where)
    try:
        value = Path(rest).read_text().strip()
    except OSError as exc:
        raise ConfigError(
            f"{where} refers to file:{rest}, which cannot be read ({exc.strerror}). "
            "Fix: create the file with the secret, or correct the path."
        ) from None
    if not value:
        raise ConfigError(f"{where} refers to file:{rest}, which is empty.")
    return value


class _Vault:
    """One hvac client per process, rebuilt when the VAULT_* environment changes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._client: Any = None
        self._env: tuple[str | None, ...] = ()

    def read(self, rest: str, where: str) -> str:
        ref = f"vault:{rest}"
        path, _, field = rest.partition("#")
        path = path.strip("/")
        if not path or not field:
            raise ConfigError(
                f"{where}: not a Vault reference Strata understands (not echoed: it may be "
                "a literal secret). "
                "Fix: write vault:MOUNT/data/PATH#FIELD, e.g. vault:secret/data/myapp#api_key "
                "(the other references are env:NAME and file:/path)."
            )
        with self._lock:
            data = self._read_locked(path, ref, where)
        inner = data.get("data") if isinstance(data, dict) else None
        fields = inner.get("data") if isinstance(inner, dict) else None
        if not isinstance(fields, dict):
            raise ConfigError(
                f"{where} refers to {ref}, but Vault did not answer with a KV v2 secret. "
                "Fix: use the KV v2 API path, with /data/ after the mount "
                "(vault:secret/data/NAME#FIELD for `vault kv put secret/NAME FIELD=...`)."
            )
        if field not in fields:
            raise ConfigError(
                f"{where} refers to {ref}, but that secret has no field {field!r} "
                f"(fields: {', '.join(sorted(map(str, fields))) or 'none'}). "
                f"Fix: vault kv patch {_kv_cli_path(path)} {field}=<value>, or correct the field."
            )
        value = fields[field]
        if not isinstance(value, str) or not value:
            raise ConfigError(
                f"{where} refers to {ref}, whose value is empty or not a string. "
                "Fix: store the secret as a non-empty string."
            )
        return value

    def _read_locked(self, path: str, ref: str, where: str) -> Any:
        import hvac.exceptions
        import requests

        env = tuple(
            environ(n)
            for n in (
                "VAULT_ADDR",
                "VAULT_TOKEN",
                "VAULT_ROLE_ID",
                "VAULT_SECRET_ID",
                "VAULT_NAMESPACE",
                "VAULT_CACERT",
            )
        )
        addr = env[0] or "http://127.0.0.1:8200"
        for attempt in (0, 1):
            try:
                client = self._login(env, addr, ref, where)
                data = client.read(path)
            except hvac.exceptions.Forbidden:
                approle = bool(env[2] and env[3])
                self._client = None  # an expired AppRole token: log in again, once
                if approle and attempt == 0:
                    continue
                raise ConfigError(
                    f"{where} refers to {ref}, but Vault at {addr} refused access (403). "
                    f"Fix: give the {'AppRole' if approle else 'VAULT_TOKEN'} a policy with "
                    f'`path "{path}" {{ capabilities = ["read"] }}`, or renew the token.'
                ) from None
            except ConfigError:
                raise
            except (hvac.exceptions.VaultError, requests.RequestException) as exc:
                self._client = None
                raise ConfigError(
                    f"{where} refers to {ref}, but Vault at {addr} cannot be reached or "
                    f"failed ({type(exc).__name__}). Fix: start Vault or set VAULT_ADDR to "
                    "its address (and VAULT_CACERT for a private CA)."
                ) from None
            if data is None:
                raise ConfigError(
                    f"{where} refers to {ref}, which does not exist in Vault at {addr}. "
                    f"Fix: vault kv put {_kv_cli_path(path)} FIELD=<value>, or correct the path."
                )
            return data
        raise AssertionError("unreachable")

    def _login(self, env: tuple[str | None, ...], addr: str, ref: str, where: str) -> Any:
        import hvac
        import hvac.exceptions

        if self._client is not None and self._env == env:
            return self._client
        _, token, role_id, secret_id, namespace, cacert = env
        if not token and not (role_id and secret_id):
            raise ConfigError(
                f"{where} refers to {ref}, but no Vault credentials are set. Fix: export "
                "VAULT_TOKEN, or VAULT_ROLE_ID and VAULT_SECRET_ID for AppRole (and VAULT_ADDR)."
            )
        client = hvac.Client(
            url=addr,
            token=token or "",
            namespace=namespace or None,
            verify=cacert or True,
            timeout=VAULT_TIMEOUT_S,
        )
        if role_id and secret_id and not token:
            try:
                client.auth.approle.login(role_id=role_id, secret_id=secret_id)
            except (hvac.exceptions.Forbidden, hvac.exceptions.InvalidRequest):
                raise ConfigError(
                    f"{where} refers to {ref}, but Vault at {addr} rejected the AppRole login. "
                    "Fix: check VAULT_ROLE_ID and VAULT_SECRET_ID (secret ids expire)."
                ) from None
        self._client, self._env = client, env
        return client


def _kv_cli_path(api_path: str) -> str:
    mount, sep, rest = api_path.partition("/data/")
    return f"{mount}/{rest}" if sep else api_path


_VAULT = _Vault()
