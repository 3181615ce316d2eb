"""Redis health as one limits component sees it: back off after a failure, log once
per outage, count every error.

A connection error starts an outage at once; timeouts only after
``TIMEOUTS_BEFORE_BACKOFF`` in a row, because a lone timeout is usually this
process's event loop running late under load, not Redis (that request is decided
without Redis, the next one uses it again).
"""

from __future__ import annotations

import time

# Consecutive timeouts that count as an outage (a connection error is one at once).
TIMEOUTS_BEFORE_BACKOFF = 3


class RedisBackoff:
    """Mixin: ``redis_usable``, ``failed`` and ``recovered``. Subclasses call
    ``_init_backoff`` and say what an outage means in ``_went_down`` and
    ``_came_back``."""

    def _init_backoff(self, backoff_s: float) -> None:
        self._backoff_s = backoff_s
        self.errors = 0
        self._down = False
        self._down_until = 0.0
        self._timeouts = 0  # consecutive

    def redis_usable(self) -> bool:
        """False while backing off after a Redis failure."""
        return time.monotonic() >= self._down_until

    def failed(self, exc: BaseException) -> None:
        """Redis failed (error or timeout): back off, log once per outage, count."""
        self.errors += 1
        if isinstance(exc, TimeoutError):
            self._timeouts += 1
            if self._timeouts < TIMEOUTS_BEFORE_BACKOFF:
                return
        self._down_until = time.monotonic() + self._backoff_s
        if not self._down:
            self._down = True
            self._went_down(exc)

    def recovered(self) -> None:
        """Redis answered: an outage, if any, is over."""
        self._timeouts = 0
        if self._down:
            self._down = False
            self._came_back()

    def _went_down(self, exc: BaseException) -> None:
        pass

    def _came_back(self) -> None:
        pass
