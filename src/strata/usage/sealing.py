"""The end-user id on usage records, encrypted at rest.

Clients may send OpenAI's ``user`` field (an end-user id: often an e-mail address or
an account number). Usage records keep it so spend can be reported per end user and
a GDPR request about that person can be answered, but never in clear:

- ``end_user_enc``: AES-256-GCM under the active data key (``security.crypto``),
  bound to the row (tenant and row id as associated data, so a ciphertext copied to
  another row does not open);
- ``end_user_hmac``: a keyed blind index of ``tenant + id`` for equality lookups
  and grouping (the same person in two tenants does not correlate);
- ``end_user_dek``: the data key, so ``strata crypto rotate`` finds what to rewrite.

The id is sealed when a record leaves memory (a batch written, or a record spilled to
disk while PostgreSQL is down), off the request path. With no data key loaded (the
database was down since start-up) the id is dropped from the record, never written in
clear; the numbers are kept.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from strata.security.crypto import Crypto

log = logging.getLogger("strata.usage")

COLUMNS = ("end_user_enc", "end_user_hmac", "end_user_dek")
# Blind indexes remembered per (tenant, end user): the same people come back, and
# the HMAC is most of the sealing cost. Cleared when full.
INDEX_CACHE_MAX = 10_000


_AAD = b"usage_records.end_user\x00"


def end_user_aad(tenant_id: str, row_id: uuid.UUID | str) -> bytes:
    """Binds the ciphertext to its row (the id as 16 bytes: the record's UUID, or
    its text form as a spill file or a JSON export carries it)."""
    raw = row_id.bytes if isinstance(row_id, uuid.UUID) else uuid.UUID(row_id).bytes
    return _AAD + tenant_id.encode() + b"\x00" + raw


def end_user_index(crypto: Crypto, tenant_id: str, end_user: str) -> str:
    return crypto.blind_index(f"end_user\x00{tenant_id}\x00{end_user}")


class EndUserSealer:
    """Replaces a row's plaintext ``end_user`` by the encrypted columns."""

    def __init__(self, crypto: Crypto) -> None:
        self.crypto = crypto
        self.dropped = 0  # ids not recorded because no data key was loaded
        self._index: dict[tuple[str, str], str] = {}

    def __call__(self, row: dict[str, Any]) -> None:
        end_user = row.pop("end_user", None)
        if not end_user:
            row.update(end_user_enc=None, end_user_hmac=None, end_user_dek=None)
            return
        crypto = self.crypto
        if not crypto.ready:
            if not self.dropped:
                log.warning("no data key loaded: end-user ids are left off usage records")
            self.dropped += 1
            row.update(end_user_enc=None, end_user_hmac=None, end_user_dek=None)
            return
        tenant = row["tenant_id"]
        row["end_user_dek"] = crypto.active_id
        row["end_user_enc"] = crypto.encrypt_text(end_user, end_user_aad(tenant, row["id"]))
        index = self._index.get((tenant, end_user))
        if index is None:
            if len(self._index) >= INDEX_CACHE_MAX:
                self._index.clear()
            index = self._index[(tenant, end_user)] = end_user_index(crypto, tenant, end_user)
        row["end_user_hmac"] = index


def drop_end_user(row: dict[str, Any]) -> None:
    """The sealer of a recorder with no key ring (tools, tests): the id is not kept."""
    row.pop("end_user", None)
    row.update(end_user_enc=None, end_user_hmac=None, end_user_dek=None)


class Opener:
    """``(tenant, row id, ciphertext) -> end-user id``; None for one that does not
    open. ``unknown_key`` tells that a ciphertext was under a data key this process
    has not loaded (a rotation elsewhere): reload the keys and ask again."""

    def __init__(self, crypto: Crypto) -> None:
        self.crypto = crypto
        self.unknown_key = False

    def __call__(self, tenant_id: str, row_id: Any, blob: bytes) -> str | None:
        from strata.security.crypto import DecryptError, UnknownKeyError

        try:
            return self.crypto.decrypt_text(blob, end_user_aad(tenant_id, row_id))
        except UnknownKeyError:
            self.unknown_key = True
            return None
        except DecryptError:
            return None
