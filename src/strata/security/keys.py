"""API key format, hashing and the principal a key resolves to.

A key is ``sk-strata-`` followed by 32 random bytes in URL-safe base64. Only its
SHA-256 hash is stored, with a short display prefix so people can tell keys apart.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from strata.errors import InvalidRequest, PermissionDenied

KEY_PREFIX = "sk-strata-"
# 32 bytes of entropy: brute force is out of reach, so a fast hash is enough.
KEY_BYTES = 32
DISPLAY_CHARS = 6

# What a key may be scoped to. A key whose scopes are NULL (every key made before
# scopes existed) has all of them but ``admin``, which only admin keys have.
SCOPES = ("chat", "embeddings", "files", "batches", "rag", "admin", "usage:read")
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    tenant_id: str
    user_id: str
    is_admin: bool
    # An operator may turn capability-based routing off for a key (cheap tier).
    auto_routing: bool = True
    # Semantic cache opt-in for this key; None: as the alias says.
    semantic_cache: bool | None = None
    # Lifecycle (see docs in the README, "API key lifecycle"); None: unrestricted.
    scopes: frozenset[str] | None = None
    allowed_models: frozenset[str] | None = None
    # When this secret stops working: the key's expiry, or for the previous secret
    # of a rotated key the end of its grace window (whichever is first).
    expires_at: datetime | None = None
    ip_allow: tuple[IpNetwork, ...] | None = None

    def has_scope(self, scope: str) -> bool:
        if self.scopes is None:
            return self.is_admin or scope != "admin"
        return scope in self.scopes

    def authorize(self, scope: str, client_host: str | None) -> None:
        """403 unless this key has ``scope`` and the client address is allowed.

        The one place scope and IP allow-list checks live; endpoints call it right
        after authenticating (``scope`` is what the endpoint needs)."""
        if not self.has_scope(scope):
            raise PermissionDenied(
                f"this API key does not have the '{scope}' scope", code="insufficient_scope"
            )
        self.check_ip(client_host)

    def check_ip(self, client_host: str | None) -> None:
        """403 when the key has an IP allow-list the client address is not on."""
        if self.ip_allow is not None and not _ip_allowed(self.ip_allow, client_host):
            raise PermissionDenied(
                f"this API key may not be used from {client_host or 'an unknown address'}",
                code="ip_not_allowed",
            )

    def require_any_scope(self, scopes: Iterable[str]) -> None:
        """403 unless the key has one of ``scopes`` (for an endpoint several open;
        the IP allow-list is checked where the key is authenticated, api/deps.py)."""
        scopes = tuple(scopes)
        if not any(self.has_scope(s) for s in scopes):
            raise PermissionDenied(
                "this API key needs one of the scopes: " + ", ".join(scopes),
                code="insufficient_scope",
            )

    def check_model(self, alias: object) -> None:
        """403 naming the alias when the key is limited to other aliases."""
        if self.allowed_models is not None and alias not in self.allowed_models:
            raise PermissionDenied(
                f"this API key may not use the model '{alias}'",
                param="model",
                code="model_not_allowed",
            )


def _ip_allowed(networks: tuple[IpNetwork, ...], host: str | None) -> bool:
    if not host:
        return False
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in net for net in networks)


def parse_networks(values: Iterable[str]) -> tuple[IpNetwork, ...]:
    """CIDRs (or single addresses) to networks; 400 naming a bad one."""
    out = []
    for v in values:
        try:
            out.append(ipaddress.ip_network(v.strip(), strict=False))
        except ValueError:
            raise InvalidRequest(f"not an IP address or CIDR: {v!r}", param="ip_allow") from None
    return tuple(out)


def check_scopes(values: Iterable[str]) -> list[str]:
    """Validated, de-duplicated scopes in the canonical order; 400 naming an unknown one."""
    values = [v.strip() for v in values]
    bad = [v for v in values if v not in SCOPES]
    if bad:
        raise InvalidRequest(
            f"unknown scope {bad[0]!r}; scopes: {', '.join(SCOPES)}", param="scopes"
        )
    return [s for s in SCOPES if s in values]


def generate_key() -> str:
    raw = secrets.token_bytes(KEY_BYTES)
    return KEY_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def display_prefix(key: str) -> str:
    return key[: len(KEY_PREFIX) + DISPLAY_CHARS] + "…"


def looks_like_key(key: str) -> bool:
    return key.startswith(KEY_PREFIX) and 40 <= len(key) <= 128
