"""Strata's one error hierarchy.

Every failure a client can see is a ``StrataError``; only ``strata.api`` turns
them into HTTP, always as ``{"error": {"message", "type", "param", "code"}}``.

    StrataError (500 server_error)
    ├── ConfigError                      start-up only; never reaches a client
    ├── InvalidRequest (400 invalid_request_error)
    │   ├── BodyTooLarge (413)
    │   └── ContextLengthExceeded (400, code context_length_exceeded)
    ├── AuthenticationError (401 authentication_error)
    ├── PermissionDenied (403 permission_error)
    ├── NotFound (404 not_found_error)
    │   └── ModelNotFound (code model_not_found)
    ├── RateLimited (429 rate_limit_error, Retry-After)
    │   └── QueueFull (local model queue is full)
    ├── ServiceUnavailable (503 service_unavailable)   our own dependency (DB, Redis) is down
    └── ProviderError (502 upstream_error)             names the provider
        ├── ProviderAuthError (502)                    upstream rejected our credentials
        ├── ProviderRateLimited (429, Retry-After)
        ├── ProviderUnavailable (503)
        └── ProviderTimeout (504)
"""

from __future__ import annotations

from typing import Any


class StrataError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = None
    # Sent with the error response too, e.g. the x-ratelimit-* headers.
    extra_headers: list[tuple[bytes, bytes]] = []  # replaced, never mutated in place

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.retry_after = retry_after

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def headers(self) -> dict[str, str]:
        out = {k.decode(): v.decode() for k, v in self.extra_headers}
        if self.retry_after is not None:
            # Retry-After is whole seconds; never advertise 0 for a real wait.
            out["retry-after"] = str(max(1, int(self.retry_after + 0.999)))
        return out


class ConfigError(StrataError):
    """A configuration problem found at start-up; the message spells out the fix."""

    type = "configuration_error"


class InvalidRequest(StrataError):
    status = 400
    type = "invalid_request_error"


class BodyTooLarge(InvalidRequest):
    status = 413
    code = "request_too_large"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class AuthenticationError(StrataError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(StrataError):
    status = 403
    type = "permission_error"


class NotFound(StrataError):
    status = 404
    type = "not_found_error"


class ModelNotFound(NotFound):
    type = "invalid_request_error"
    code = "model_not_found"


class RateLimited(StrataError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class QueueFull(RateLimited):
    code = "queue_full"


class ServiceUnavailable(StrataError):
    status = 503
    type = "service_unavailable"


class ProviderError(StrataError):
    status = 502
    type = "upstream_error"

    def __init__(self, message: str, *, provider: str, **kwargs: Any) -> None:
        super().__init__(f"provider {provider!r}: {message}", **kwargs)
        self.provider = provider


class ProviderAuthError(ProviderError):
    code = "upstream_authentication_failed"


class ProviderRateLimited(ProviderError):
    status = 429
    type = "rate_limit_error"
    code = "upstream_rate_limited"


class ProviderUnavailable(ProviderError):
    status = 503
    code = "upstream_unavailable"


class ProviderTimeout(ProviderError):
    status = 504
    code = "upstream_timeout"
