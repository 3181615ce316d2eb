"""HTTP hardening: security headers, CORS (closed by default), metrics token.

Settings (``hardening:`` in strata.yaml)::

    hardening:
      cors:
        allow_origins: ["https://app.example.com"]   # empty (default): no CORS at all
        allow_methods: ["GET", "POST", "PUT", "DELETE", "OPTIONS"]
        allow_headers: ["authorization", "content-type", "x-request-id"]
        allow_credentials: false
        max_age_s: 600
      metrics_token: env:STRATA_METRICS_TOKEN   # /metrics then needs "Bearer <token>"
      api_docs: false                           # /docs and /openapi.json (login-free)

What is hardened where:

- Body size limit (413) and request ids: ``api/middleware.py``.
- Security headers: every response (fast lane included) carries
  ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY``,
  ``Referrer-Policy: no-referrer`` and, unless the route set its own,
  ``Cache-Control: no-store`` (responses are per tenant, cache replays included:
  no shared cache in between may keep them). A precomputed list appended in the
  middleware's send wrapper; ``bench`` / the test measure it well under 5 µs.
- CORS: only origins listed in ``allow_origins`` (``"*"`` allows any, never with
  credentials) get ``Access-Control-Allow-*`` headers; a preflight (``OPTIONS``
  with ``Access-Control-Request-Method``) from an allowed origin is answered by
  the middleware with 204; from any other origin it gets no CORS headers, so the
  browser refuses the call.
- Strict JSON: ``api/fast.py`` ``read_json`` rejects NaN/Infinity and invalid
  UTF-8 (orjson is RFC 8259 strict). Duplicate keys: the last one wins, as in
  Python's ``json``, JavaScript's ``JSON.parse`` and the OpenAI API itself, so a
  proxy or SDK in front reads a body the same way Strata does; detecting them
  would mean a second, slow parse of every hot-path body.
- Constant-time key comparison: an API key is never compared with a stored
  secret. It is hashed (SHA-256) and the hash is looked up (dict in process,
  unique index in PostgreSQL). The time a lookup takes depends only on the hash,
  which an attacker cannot steer byte by byte without a SHA-256 preimage, so
  there is no timing oracle on the secret. The one plain secret compared is the
  metrics token, with ``hmac.compare_digest``.
- Login-free routes: ``/healthz``, ``/readyz`` and ``/metrics`` (the latter
  behind ``metrics_token`` when set); ``/docs`` and ``/openapi.json`` only with
  ``api_docs: true``. A test walks every route and checks the rest need a key.
"""

from __future__ import annotations

import hmac

from pydantic import BaseModel, ConfigDict, Field, model_validator

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)
NO_STORE = (b"cache-control", b"no-store")
# Headers a browser script may read on a cross-origin response.
EXPOSE_HEADERS = b"x-request-id, x-strata-cache, retry-after"


class CorsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    allow_origins: list[str] = Field(default_factory=list)
    allow_methods: list[str] = Field(
        default_factory=lambda: ["GET", "POST", "PUT", "DELETE", "OPTIONS"]
    )
    allow_headers: list[str] = Field(
        default_factory=lambda: ["authorization", "content-type", "x-request-id"]
    )
    allow_credentials: bool = False
    max_age_s: int = Field(default=600, ge=0)

    @model_validator(mode="after")
    def _no_wildcard_credentials(self) -> CorsSettings:
        if self.allow_credentials and "*" in self.allow_origins:
            raise ValueError(
                "hardening.cors: allow_credentials cannot be used with allow_origins ['*'] "
                "(any site could then call Strata with the user's credentials); list the origins"
            )
        return self


class HardeningSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cors: CorsSettings = CorsSettings()
    # A secret reference (env:, file:, vault:); when set, GET /metrics needs
    # "Authorization: Bearer <token>".
    metrics_token: str | None = None
    # Serve /docs and /openapi.json (login-free, so off by default).
    api_docs: bool = False


class Cors:
    """Precomputed CORS answers for the middleware (None when CORS is off)."""

    def __init__(self, s: CorsSettings) -> None:
        self.any_origin = "*" in s.allow_origins
        self.origins = frozenset(o.encode().rstrip(b"/") for o in s.allow_origins)
        self.credentials = s.allow_credentials
        common = [(b"vary", b"origin"), (b"access-control-expose-headers", EXPOSE_HEADERS)]
        if s.allow_credentials:
            common.append((b"access-control-allow-credentials", b"true"))
        self.common = common
        self.preflight = [
            (b"access-control-allow-methods", ", ".join(s.allow_methods).encode()),
            (b"access-control-allow-headers", ", ".join(s.allow_headers).encode()),
            (b"access-control-max-age", str(s.max_age_s).encode()),
        ]

    @classmethod
    def of(cls, s: CorsSettings) -> Cors | None:
        return cls(s) if s.allow_origins else None

    def allowed(self, origin: bytes) -> bool:
        return self.any_origin or origin in self.origins

    def headers(self, origin: bytes) -> list[tuple[bytes, bytes]]:
        value = b"*" if self.any_origin and not self.credentials else origin
        return [(b"access-control-allow-origin", value), *self.common]


def token_matches(authorization: str | None, token: str) -> bool:
    """``Authorization: Bearer <token>``, compared in constant time."""
    if not authorization:
        return False
    scheme, _, given = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )
