"""Field encryption at rest: the AES-GCM envelope, and the caches storing no plaintext
(raw SQL on semantic_cache, raw GET on Redis), with paraphrase hits and rotation."""

from __future__ import annotations

import os
import stat
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from strata.errors import ConfigError
from strata.security import crypto as crypto_mod
from strata.security.crypto import Crypto, CryptoSettings, DecryptError
from strata.storage.engine import make_engine
from strata.storage.repositories import semantic_cache as semantic_repo
from strata.storage.repositories.keys import NewKey
from tests.conftest import ServerThread


def ring() -> Crypto:
    c = Crypto(os.urandom(32))
    c.add_key(7, os.urandom(32))
    return c


def test_round_trip_and_layout() -> None:
    c = ring()
    blob = c.encrypt(b"Marisol's passport", b"where")
    assert blob[0] == crypto_mod.VERSION and crypto_mod.key_id_of(blob) == 7
    assert len(blob) == len(b"Marisol's passport") + crypto_mod.OVERHEAD
    assert b"passport" not in blob
    assert c.decrypt(blob, b"where") == b"Marisol's passport"
    assert c.encrypt(b"x", b"a") != c.encrypt(b"x", b"a")  # fresh nonce each time


@pytest.mark.parametrize("at", [0, 3, 10, 20, -1])
def test_a_flipped_byte_is_detected(at: int) -> None:
    c = ring()
    blob = bytearray(c.encrypt(b"secret text", b"aad"))
    blob[at] ^= 0x01
    with pytest.raises(DecryptError):
        c.decrypt(bytes(blob), b"aad")


def test_wrong_aad_short_blob_and_unknown_key_fail() -> None:
    c = ring()
    blob = c.encrypt(b"secret text", b"cache-key-1")
    with pytest.raises(DecryptError):
        c.decrypt(blob, b"cache-key-2")
    with pytest.raises(DecryptError):
        c.decrypt(blob[:10], b"cache-key-1")
    other = Crypto(os.urandom(32))
    other.add_key(7, os.urandom(32))
    with pytest.raises(DecryptError):
        other.decrypt(blob, b"cache-key-1")
    with pytest.raises(crypto_mod.UnknownKeyError):
        Crypto(os.urandom(32)).decrypt(blob, b"cache-key-1")


def test_wrapped_keys_open_only_under_their_master_key() -> None:
    kek = os.urandom(32)
    a, b = Crypto(kek), Crypto(kek)
    dek = os.urandom(32)
    wrapped = a.wrap(3, dek)
    assert dek not in wrapped
    b.load([(3, wrapped, True)])
    a.add_key(3, dek)
    assert b.decrypt(a.encrypt(b"hi", b""), b"") == b"hi"
    with pytest.raises(ConfigError):
        Crypto(os.urandom(32)).unwrap(3, wrapped)
    with pytest.raises(ConfigError):
        b.unwrap(4, wrapped)  # bound to its id


def test_blind_index_is_keyed_and_deterministic() -> None:
    kek = os.urandom(32)
    a, b = Crypto(kek), Crypto(os.urandom(32))
    assert a.blind_index("alice@example.com") == Crypto(kek).blind_index("alice@example.com")
    assert a.blind_index("alice@example.com") != b.blind_index("alice@example.com")
    assert len(a.blind_index("x")) == 64


def test_master_key_file_and_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = crypto_mod.load_master_key(CryptoSettings(), tmp_path)
    path = tmp_path / "master.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert crypto_mod.load_master_key(CryptoSettings(), tmp_path) == key  # generated once
    monkeypatch.setenv("STRATA_TEST_KEK", key.hex())
    assert (
        crypto_mod.load_master_key(
            CryptoSettings(master_key="env:STRATA_TEST_KEK"), Path("/nonexistent")
        )
        == key
    )
    monkeypatch.setenv("STRATA_TEST_KEK", "too short")
    with pytest.raises(ConfigError):
        crypto_mod.load_master_key(CryptoSettings(master_key="env:STRATA_TEST_KEK"), tmp_path)


def test_cpu_cost_per_cache_entry_is_microseconds() -> None:
    """Encrypt + decrypt of a 4 KB entry (one exact-cache store and hit)."""
    c = ring()
    entry, aad = os.urandom(4096), b"strata:cache:exact:t:a:" + b"0" * 64
    n = 2000
    t0 = time.perf_counter()
    for _ in range(n):
        c.decrypt(c.encrypt(entry, aad), aad)
    per = (time.perf_counter() - t0) / n
    print(f"AES-GCM encrypt+decrypt of 4 KB: {per * 1e6:.1f} us")
    assert per < 0.001


# -- end to end -------------------------------------------------------------------


@pytest.fixture
def key(server: ServerThread, new_key: Callable[..., NewKey]) -> NewKey:
    embedder = server.runtime.providers["local-embed"]
    deadline = time.monotonic() + 120
    while not embedder.ready():
        assert time.monotonic() < deadline, "the embedding model did not load"
        time.sleep(0.05)
    return new_key(tenant="pii-" + uuid.uuid4().hex[:8], user="marisol")


async def ask(srv: ServerThread, key: NewKey, text: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=60) as http:
        return await http.post(
            srv.base_url + "/v1/chat/completions",
            json={
                "model": "fake-sem",
                "temperature": 0,
                "messages": [
                    {"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": text},
                ],
            },
            headers={"authorization": f"Bearer {key.key}"},
        )


async def settle(srv: ServerThread) -> None:
    import asyncio

    chat = srv.runtime.chat
    for _ in range(200):
        if not chat.semantic._pending and not chat.cache._pending:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("cache writes did not finish")


async def raw_rows(database_url: str, tenant: str) -> list[dict[str, Any]]:
    engine = make_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            driver = await semantic_repo._driver(conn)
            rows = await driver.fetch(
                "SELECT s.*, s::text AS as_text FROM semantic_cache s WHERE tenant_id = $1",
                tenant,
            )
        return [dict(r) for r in rows]
    finally:
        await engine.dispose()


async def raw_redis(redis_url: str, tenant: str) -> dict[bytes, bytes]:
    r = aioredis.from_url(redis_url)
    try:
        keys = [k async for k in r.scan_iter(match=f"strata:cache:exact:{tenant}:*")]
        return {k: await r.get(k) for k in keys}
    finally:
        await r.aclose()


def plaintext_in(phrase: str, blob: Any) -> bool:
    data = blob if isinstance(blob, bytes) else str(blob).encode()
    p = phrase.encode()
    return p in data or p.hex().encode() in data or p.hex().encode() in data.lower()


async def test_caches_store_no_plaintext_and_paraphrases_still_hit(
    server: ServerThread, key: NewKey, database_url: str, redis_url: str
) -> None:
    secret = "Quintero-Vance" + uuid.uuid4().hex[:6]
    first = await ask(server, key, f"How do I renew the passport of {secret}?")
    assert first.headers["x-strata-cache"] == "miss"
    answer = first.json()["choices"][0]["message"]["content"]
    await settle(server)

    rows = await raw_rows(database_url, key.tenant_id)
    assert len(rows) == 1
    for value in rows[0].values():
        assert not plaintext_in(secret, value)
        assert not plaintext_in(answer, value)
    assert rows[0]["query_hmac"] == server.runtime.chat.cache.crypto.blind_index(
        f"How do I renew the passport of {secret}?"
    )
    stored = await raw_redis(redis_url, key.tenant_id)
    assert len(stored) == 1
    for k, v in stored.items():
        assert not plaintext_in(secret, k) and not plaintext_in(secret, v)
        assert not plaintext_in(answer, v) and b"prompt_tokens" not in v

    para = await ask(server, key, f"How can I renew the passport of {secret}?")
    assert para.headers["x-strata-cache"] == "hit-semantic"
    assert para.json() == first.json()
    again = await ask(server, key, f"How do I renew the passport of {secret}?")
    assert again.headers["x-strata-cache"] == "hit-exact"
    assert again.json() == first.json()


async def test_rotate_reencrypts_and_hits_still_work(
    server: ServerThread, key: NewKey, database_url: str, redis_url: str
) -> None:
    secret = "Okonkwo-" + uuid.uuid4().hex[:6]
    first = await ask(server, key, f"Where do I mail the tax form for {secret}?")
    assert first.headers["x-strata-cache"] == "miss"
    await settle(server)
    before = (await raw_rows(database_url, key.tenant_id))[0]

    s = server.settings
    admin = Crypto(crypto_mod.load_master_key(s.crypto, s.data_dir))
    engine = make_engine(database_url, pool_size=1)
    try:
        report = await crypto_mod.rotate(engine, admin)
        # The export path reads the rows back in clear.
        exported = await semantic_repo.rows_for_user(engine, key.tenant_id, key.user_id, admin)
    finally:
        await engine.dispose()
    assert report["reencrypted"] >= 1
    assert before["dek_id"] in report["retired"] or before["dek_id"] != report["key_id"]
    after = (await raw_rows(database_url, key.tenant_id))[0]
    assert after["dek_id"] == report["key_id"] != before["dek_id"]
    assert after["query_enc"] != before["query_enc"]
    assert crypto_mod.key_id_of(after["entry_enc"]) == report["key_id"]
    assert exported[0]["query"] == f"Where do I mail the tax form for {secret}?"
    assert exported[0]["entry"]["body"] == first.json()

    # The running server has not reloaded its keys yet: it picks up the new one.
    para = await ask(server, key, f"Where should I mail the tax form for {secret}?")
    assert para.headers["x-strata-cache"] == "hit-semantic"
    assert para.json() == first.json()
    await settle(server)
    # New writes use the new active key.
    third = await ask(server, key, f"What is the deadline to file taxes for {secret} in 2027?")
    assert third.headers["x-strata-cache"] == "miss"
    await settle(server)
    ids = {r["dek_id"] for r in await raw_rows(database_url, key.tenant_id)}
    assert ids == {report["key_id"]}
