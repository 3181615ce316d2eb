"""Field-level encryption of personal data at rest: AES-256-GCM with envelope keys.

Fields that can carry personal data (cached prompts and answers today; stored
completions, file contents and document text as they arrive) are encrypted by the
application before they reach PostgreSQL or Redis, and decrypted after they come
back.

Keys
----
* The **master key** (key-encryption key, KEK): ``crypto.master_key`` in
  strata.yaml, a secret reference (``env:NAME``, ``file:/path`` or
  ``vault:secret/data/PATH#FIELD``) to 32 bytes, base64- or hex-encoded. Without
  one, Strata generates a key once into ``<data_dir>/master.key`` (mode 0600):
  zero configuration on a laptop. **Production should use a reference** (a key
  on the same disk as the database backups protects little). Losing the master
  key makes every encrypted field unreadable.
* **Data keys** (DEKs): random 32-byte keys, stored only wrapped (AES-GCM under
  the KEK) in the ``data_keys`` table; one is *active* (new ciphertext), the
  others stay readable until ``strata crypto rotate`` has re-encrypted
  everything under the new one and retires them.
* A **blind index** (``blind_index``): HMAC-SHA256 under a key derived from the
  KEK, for equality lookups on an encrypted field (a user id, a cached
  question) without storing its plaintext. It does not change with the DEK.

Ciphertext layout: version byte (1) | data key id (4, big-endian) | nonce (12) |
ciphertext + GCM tag (16). The caller's *associated data* (AAD) binds a value to
where it belongs (a cache key, a row's context), so a ciphertext moved elsewhere
fails to decrypt as surely as a modified one.

Why application-side AES-GCM rather than pgcrypto
-------------------------------------------------
``pgp_sym_encrypt(data, key)`` takes the key as a SQL parameter: it travels to
the database on every statement and can land in ``pg_stat_statements``, the
server log (``log_statement``, errors, auto_explain) and anything that proxies
SQL. Here keys never reach the database; the same code protects Redis values
(pgcrypto cannot); it works on any PostgreSQL (managed services without the
extension included); and AES-GCM (AES-NI) costs microseconds per field, far below
pgcrypto's PGP packet framing. The price: the database cannot search or sort on
encrypted fields (equality goes through the blind index), and the application
holds key material in memory.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import secrets
import struct
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Integer,
    LargeBinary,
    Table,
    func,
    select,
    text,
    update,
)

from strata.errors import ConfigError
from strata.storage.models import Base

log = logging.getLogger("strata.crypto")

VERSION = 1
HEADER = struct.Struct(">BI")  # version, data key id
NONCE_BYTES = 12
OVERHEAD = HEADER.size + NONCE_BYTES + 16
KEY_BYTES = 32
_WRAP_AAD = b"strata data key v1:"
_INDEX_LABEL = b"strata blind index v1"


class CryptoSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # A secret reference to the 32-byte master key (base64 or hex); None: a key
    # generated once into <data_dir>/master.key (development only).
    master_key: str | None = None
    # Seconds between reloads of the data keys (picks up `strata crypto rotate`).
    refresh_s: float = 30.0


class DecryptError(Exception):
    """A value that was modified, moved (wrong associated data), or whose key is gone."""


class UnknownKeyError(DecryptError):
    """Made with a data key this process has not loaded (new from a rotation, or retired)."""


def _aead(key: bytes) -> Any:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key)


def _parse_key(value: str, where: str) -> bytes:
    text = value.strip()
    for decode in (bytes.fromhex, base64.b64decode, base64.urlsafe_b64decode):
        try:
            key = decode(text)
        except (ValueError, binascii.Error):
            continue
        if len(key) == KEY_BYTES:
            return key
    raise ConfigError(
        f"{where}: the master key must be 32 bytes, base64- or hex-encoded "
        "(generate one: openssl rand -base64 32)"
    )


def load_master_key(settings: CryptoSettings, data_dir: Path) -> bytes:
    """The KEK: from its reference, or from (created once) ``<data_dir>/master.key``."""
    if settings.master_key:
        from strata.security.credentials import resolve_secret

        where = "crypto.master_key"
        return _parse_key(resolve_secret(settings.master_key, where).reveal(), where)
    path = Path(data_dir) / "master.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode() + "\n")
        log.warning(
            "generated a master key in %s: set crypto.master_key to a secret reference "
            "in production",
            path,
        )
    return _parse_key(path.read_text(), str(path))


class Crypto:
    """The key ring of one process: the KEK, the unwrapped data keys, the active one."""

    def __init__(self, master_key: bytes) -> None:
        if len(master_key) != KEY_BYTES:
            raise ValueError("master key must be 32 bytes")
        self._kek = _aead(master_key)
        self._index_key = hmac.new(master_key, _INDEX_LABEL, hashlib.sha256).digest()
        # Keyed once: copying a keyed HMAC is several times cheaper than hmac.new.
        self._index_mac = hmac.new(self._index_key, digestmod=hashlib.sha256)
        self._keys: dict[int, Any] = {}  # id -> AESGCM
        self._unopenable: set[int] = set()
        self.active_id: int | None = None

    # -- data keys ---------------------------------------------------------------

    def wrap(self, key_id: int, dek: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + bytes(self._kek.encrypt(nonce, dek, _WRAP_AAD + str(key_id).encode()))

    def unwrap(self, key_id: int, wrapped: bytes) -> bytes:
        from cryptography.exceptions import InvalidTag

        try:
            return bytes(
                self._kek.decrypt(
                    wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], _WRAP_AAD + str(key_id).encode()
                )
            )
        except InvalidTag as exc:
            raise ConfigError(
                f"data key {key_id} does not open with this master key: every instance "
                "sharing this database needs the same crypto.master_key (a secret reference), "
                "and the old one is needed to read data written under it"
            ) from exc

    @property
    def ready(self) -> bool:
        return self.active_id is not None

    def load(self, rows: list[tuple[int, bytes, bool]]) -> None:
        """Install data keys from ``(id, wrapped, active)`` rows (replacing the ring).
        Keys that do not open under this master key are skipped, loudly."""
        keys = {}
        active = None
        for key_id, wrapped, is_active in rows:
            try:
                keys[key_id] = _aead(self.unwrap(key_id, bytes(wrapped)))
            except ConfigError as exc:
                if key_id not in self._unopenable:
                    log.error("%s", exc)
                    self._unopenable.add(key_id)
                continue
            if is_active and (active is None or key_id > active):
                active = key_id
        self._keys = keys
        self.active_id = active

    def add_key(self, key_id: int, dek: bytes, active: bool = True) -> None:
        self._keys[key_id] = _aead(dek)
        if active:
            self.active_id = key_id

    def key_ids(self) -> set[int]:
        return set(self._keys)

    def knows(self, key_id: int) -> bool:
        return key_id in self._keys

    # -- fields ------------------------------------------------------------------

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        key_id = self.active_id
        if key_id is None:
            raise RuntimeError("no active data key (the key ring was not loaded)")
        nonce = os.urandom(NONCE_BYTES)
        return (
            HEADER.pack(VERSION, key_id) + nonce + self._keys[key_id].encrypt(nonce, plaintext, aad)
        )

    def decrypt(self, blob: bytes, aad: bytes) -> bytes:
        from cryptography.exceptions import InvalidTag

        if len(blob) < OVERHEAD:
            raise DecryptError("ciphertext too short")
        version, key_id = HEADER.unpack_from(blob)
        if version != VERSION:
            raise DecryptError(f"unknown ciphertext version {version}")
        key = self._keys.get(key_id)
        if key is None:
            raise UnknownKeyError(f"unknown data key {key_id}")
        nonce = blob[HEADER.size : HEADER.size + NONCE_BYTES]
        try:
            return bytes(key.decrypt(nonce, blob[HEADER.size + NONCE_BYTES :], aad))
        except InvalidTag as exc:
            raise DecryptError("ciphertext failed authentication") from exc

    def encrypt_text(self, text: str, aad: bytes) -> bytes:
        return self.encrypt(text.encode(), aad)

    def decrypt_text(self, blob: bytes, aad: bytes) -> str:
        return self.decrypt(blob, aad).decode()

    def blind_index(self, text: str) -> str:
        """Keyed HMAC-SHA256 (hex, 64 chars) of ``text``, for equality lookups."""
        mac = self._index_mac.copy()
        mac.update(text.encode())
        return mac.hexdigest()


def key_id_of(blob: bytes) -> int:
    """The data key a ciphertext was made with."""
    return int(HEADER.unpack_from(blob)[1])


# Wrapped data keys (migration 0012). On Base.metadata: migrations are checked against it.
data_keys = Table(
    "data_keys",
    Base.metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("wrapped", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
    Column("active", Boolean, nullable=False, server_default=text("true")),
)


async def _rows(conn: Any) -> list[tuple[int, bytes, bool]]:
    result = await conn.execute(select(data_keys.c.id, data_keys.c.wrapped, data_keys.c.active))
    return [(r.id, bytes(r.wrapped), r.active) for r in result]


async def new_data_key(conn: Any, crypto: Crypto, exclusive: bool = True) -> int:
    """Create a data key and make it active (``exclusive``: the only active one); its id."""
    key_id = int(
        (
            await conn.execute(text("SELECT nextval(pg_get_serial_sequence('data_keys', 'id'))"))
        ).scalar_one()
    )
    dek = secrets.token_bytes(KEY_BYTES)
    if exclusive:  # only keys this master key opens: never another's
        await conn.execute(
            update(data_keys)
            .where(data_keys.c.active, data_keys.c.id.in_(crypto.key_ids()))
            .values(active=False)
        )
    await conn.execute(
        data_keys.insert().values(id=key_id, wrapped=crypto.wrap(key_id, dek), active=True)
    )
    crypto.add_key(key_id, dek)
    return key_id


async def sync_keys(engine: Any, crypto: Crypto) -> None:
    """Load the key ring from the database (a rotation elsewhere: new active key,
    retired keys); create the first active key when none opens here. A process whose
    master key opens no active key gets one of its own, without deactivating the
    others (a misconfigured replica must not take the good key out of service)."""
    async with engine.begin() as conn:
        # One creator at a time when several processes start on an empty table.
        await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('strata.data_keys'))"))
        rows = await _rows(conn)
        crypto.load(rows)
        if crypto.active_id is None:
            await new_data_key(conn, crypto, exclusive=not rows)


async def open_crypto(engine: Any, settings: CryptoSettings, data_dir: Path) -> Crypto:
    """The process's key ring: KEK from settings, data keys from the database."""
    crypto = Crypto(load_master_key(settings, data_dir))
    await sync_keys(engine, crypto)
    return crypto


async def refresh_forever(engine: Any, crypto: Crypto, interval_s: float) -> None:
    """Pick up rotations made by other processes."""
    import asyncio

    while True:
        await asyncio.sleep(interval_s)
        try:
            await sync_keys(engine, crypto)
        except Exception as exc:
            log.info("data key reload failed (%s)", type(exc).__name__)


# A key stays this long after the key that replaced it was made: every running
# server reloads its ring within crypto.refresh_s (30 s by default) and may write
# under the old key until then. Twice that, for a server whose reload was late.
RETIRE_GRACE_S = 60.0


async def rotate(
    engine: Any, crypto: Crypto, batch: int = 500, grace_s: float = RETIRE_GRACE_S
) -> dict[str, Any]:
    """``strata crypto rotate``: a new active data key; every encrypted row
    re-encrypted under it in batches (online: readers accept any known key id, and
    running servers pick up the new key within ``crypto.refresh_s``); then the old
    keys no row uses any more are retired (deleted). Every store listed in
    ``security.stores`` is covered. Redis cache entries are not
    rewritten: they expire with their TTL, and one under a retired key is a miss.
    Rows a server writes under an old key before it picks up the new one are
    re-encrypted by a later rotation. A key is retired only when no row uses it
    and the key that replaced it is older than ``grace_s``: rotations in quick
    succession must not retire a key a server has not stopped using
    (``strata crypto rotate`` passes twice ``crypto.refresh_s``)."""
    from strata.security.stores import encrypted_stores

    await sync_keys(engine, crypto)
    old = crypto.key_ids()
    async with engine.begin() as conn:
        await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('strata.data_keys'))"))
        new_id = await new_data_key(conn, crypto)
    per_store: dict[str, int] = {}
    in_use: set[int] = set()
    for store in encrypted_stores():
        if not await store.available(engine):
            continue
        n = 0
        while done := await store.reencrypt_batch(engine, crypto, batch):
            n += done
        per_store[store.name] = n
        in_use |= await store.key_ids_in_use(engine)
    reencrypted = sum(per_store.values())
    # A key replaced less than grace_s ago (the one just replaced, surely) stays:
    # servers that have not reloaded yet still write under it.
    async with engine.connect() as conn:
        made = {
            r.id: r.created_at
            for r in await conn.execute(select(data_keys.c.id, data_keys.c.created_at))
        }
        now = (await conn.execute(select(func.now()))).scalar_one()

    def settled(k: int) -> bool:
        """The key made next after ``k`` (which replaced it) is older than grace_s."""
        later = [i for i in made if i > k]
        return bool(later) and (now - made[min(later)]).total_seconds() >= grace_s

    retire = sorted(k for k in old if k not in in_use and k != new_id and settled(k))
    if retire:
        async with engine.begin() as conn:
            await conn.execute(
                data_keys.delete().where(data_keys.c.id.in_(retire), ~data_keys.c.active)
            )
        for k in retire:
            crypto._keys.pop(k, None)
    return {"key_id": new_id, "reencrypted": reencrypted, "stores": per_store, "retired": retire}
