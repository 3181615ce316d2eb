"""Authenticator: the key cache, single flight, revocation and the outage policy.

Unit tests drive the Authenticator with a fake lookup and a fake clock; the last
tests use the real key repository on the test PostgreSQL.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from strata.errors import AuthenticationError, ServiceUnavailable
from strata.security import auth as auth_mod
from strata.security.auth import Authenticator
from strata.security.keys import KEY_PREFIX, Principal, generate_key, hash_key
from strata.storage.engine import make_engine
from strata.storage.repositories import keys as key_repo

TTL = 5.0
GRACE = 300.0
ALICE = Principal(key_id="key_alice", tenant_id="acme", user_id="alice", is_admin=False)


class Clock:
    """Stands in for the ``time`` module inside strata.security.auth."""

    def __init__(self) -> None:
        self.now = 10_000.0

    def monotonic(self) -> float:
        return self.now


class FakeLookup:
    """An async key lookup: a table of hash -> principal, a call log, a gate, an outage."""

    def __init__(self) -> None:
        self.table: dict[str, Principal | None] = {}
        self.calls: list[str] = []
        self.down: Exception | None = None
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()
        self.finished = 0

    async def __call__(self, key_hash: str) -> Principal | None:
        self.calls.append(key_hash)
        self.entered.set()
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.down is not None:
                raise self.down
            return self.table.get(key_hash)
        finally:
            self.finished += 1

    async def drain(self) -> None:
        """Let lookups still running in the background finish (no task left pending)."""
        if self.gate is not None:
            self.gate.set()
        for _ in range(200):
            if self.finished == len(self.calls):
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(auth_mod, "time", c)
    return c


@pytest.fixture
def lookup() -> FakeLookup:
    return FakeLookup()


@pytest.fixture
def authn(lookup: FakeLookup, clock: Clock) -> Authenticator:
    return Authenticator(lookup, ttl_s=TTL, stale_grace_s=GRACE)


def bearer(key: str) -> str:
    return f"Bearer {key}"


def known_key(lookup: FakeLookup, principal: Principal = ALICE) -> str:
    key = generate_key()
    lookup.table[hash_key(key)] = principal
    return key


async def test_valid_key_resolves_to_its_principal(
    authn: Authenticator, lookup: FakeLookup
) -> None:
    key = known_key(lookup)
    assert await authn.authenticate(bearer(key)) == ALICE
    # The lookup receives the hash, never the key itself.
    assert lookup.calls == [hash_key(key)]


async def test_cache_hit_within_ttl_skips_lookup(
    authn: Authenticator, lookup: FakeLookup, clock: Clock
) -> None:
    key = known_key(lookup)
    await authn.authenticate(bearer(key))
    clock.now += TTL - 0.1
    assert await authn.authenticate(bearer(key)) == ALICE
    assert len(lookup.calls) == 1


async def test_after_ttl_key_is_checked_again(
    authn: Authenticator, lookup: FakeLookup, clock: Clock
) -> None:
    key = known_key(lookup)
    await authn.authenticate(bearer(key))
    clock.now += TTL + 0.1
    assert await authn.authenticate(bearer(key)) == ALICE
    assert len(lookup.calls) == 2
    # The re-check refreshed the cache: the next call within TTL is free again.
    clock.now += TTL - 0.1
    await authn.authenticate(bearer(key))
    assert len(lookup.calls) == 2


async def test_revocation_noticed_after_ttl(
    authn: Authenticator, lookup: FakeLookup, clock: Clock
) -> None:
    key = known_key(lookup)
    await authn.authenticate(bearer(key))
    lookup.table[hash_key(key)] = None  # revoked in the database
    clock.now += TTL + 0.1
    with pytest.raises(AuthenticationError) as info:
        await authn.authenticate(bearer(key))
    assert info.value.status == 401
    assert key not in info.value.message


async def test_concurrent_requests_share_one_lookup(
    authn: Authenticator, lookup: FakeLookup
) -> None:
    key = known_key(lookup)
    lookup.gate = asyncio.Event()
    tasks = [asyncio.create_task(authn.authenticate(bearer(key))) for _ in range(20)]
    await asyncio.wait_for(lookup.entered.wait(), 5)
    for _ in range(5):
        await asyncio.sleep(0)  # let every task reach the in-flight future
    lookup.gate.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert results == [ALICE] * 20
    assert len(lookup.calls) == 1


async def test_concurrent_requests_during_outage_share_one_failed_lookup(
    authn: Authenticator, lookup: FakeLookup
) -> None:
    key = known_key(lookup)
    lookup.down = ConnectionRefusedError("database down")
    lookup.gate = asyncio.Event()
    tasks = [asyncio.create_task(authn.authenticate(bearer(key))) for _ in range(5)]
    await asyncio.wait_for(lookup.entered.wait(), 5)
    for _ in range(5):
        await asyncio.sleep(0)
    lookup.gate.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
    assert all(isinstance(r, ServiceUnavailable) and r.status == 503 for r in results), results
    assert len(lookup.calls) == 1


async def test_revoked_or_unknown_key_is_401_without_leaking_the_key(
    authn: Authenticator, lookup: FakeLookup
) -> None:
    key = generate_key()
    lookup.table[hash_key(key)] = None
    with pytest.raises(AuthenticationError) as info:
        await authn.authenticate(bearer(key))
    err = info.value
    assert err.status == 401
    assert err.to_dict()["error"]["type"] == "authentication_error"
    assert key not in err.message
    assert key[len(KEY_PREFIX) : -4] not in err.message
    # Enough is shown to recognise which key it was.
    assert key[-4:] in err.message


async def test_unknown_key_is_cached_as_unknown(
    authn: Authenticator, lookup: FakeLookup, clock: Clock
) -> None:
    key = generate_key()
    for _ in range(3):
        with pytest.raises(AuthenticationError):
            await authn.authenticate(bearer(key))
    assert len(lookup.calls) == 1
    clock.now += TTL + 0.1
    with pytest.raises(AuthenticationError):
        await authn.authenticate(bearer(key))
    assert len(lookup.calls) == 2


async def test_database_error_with_recent_principal_keeps_working(
    authn: Authenticator, lookup: FakeLookup, clock: Clock
) -> None:
    key = known_key(lookup)
    await authn.authenticate(bearer(key))
    lookup.down = ConnectionRefusedError("database down")
    clock.now += TTL + 1  # cache expired, but within the stale grace
    assert await authn.authenticate(bearer(key)) == ALICE
    assert len(lookup.calls) == 2  # it did try the database


async def test_database_error_past_stale_grace_is_503(
    authn: Authenticator, lookup: FakeLookup, clock: Clock
) -> None:
    key = known_key(lookup)
    await authn.authenticate(bearer(key))
    lookup.down = ConnectionRefusedError("database down")
    clock.now += GRACE + 1
    with pytest.raises(ServiceUnavailable) as info:
        await authn.authenticate(bearer(key))
    assert info.value.status == 503


async def test_database_error_for_unknown_key_is_503_not_401(
    authn: Authenticator, lookup: FakeLookup, clock: Clock
) -> None:
    key = known_key(lookup)
    lookup.down = OSError("database down")
    with pytest.raises(ServiceUnavailable) as info:
        await authn.authenticate(bearer(key))
    assert info.value.status == 503
    assert key not in info.value.message
    # Once the database is back, the same key works (the failure was not cached).
    lookup.down = None
    clock.now += auth_mod.DOWN_BACKOFF_S + 0.1
    assert await authn.authenticate(bearer(key)) == ALICE


async def test_after_a_failure_the_database_is_skipped_briefly(
    authn: Authenticator, lookup: FakeLookup, clock: Clock
) -> None:
    cached = known_key(lookup)
    await authn.authenticate(bearer(cached))
    clock.now += TTL + 1
    lookup.down = ConnectionRefusedError("database down")
    assert await authn.authenticate(bearer(cached)) == ALICE  # stale, after one try
    assert len(lookup.calls) == 2

    # While marked down, requests are answered at once, without queueing on the database.
    new = known_key(lookup)
    with pytest.raises(ServiceUnavailable):
        await authn.authenticate(bearer(new))
    assert await authn.authenticate(bearer(cached)) == ALICE
    assert len(lookup.calls) == 2

    # After the back-off the database is asked again, and it is back.
    lookup.down = None
    clock.now += auth_mod.DOWN_BACKOFF_S + 0.1
    assert await authn.authenticate(bearer(new)) == ALICE
    assert len(lookup.calls) == 3


async def test_slow_database_is_waited_on_for_a_bounded_time(
    authn: Authenticator, lookup: FakeLookup, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth_mod, "STALE_WAIT_S", 0.05)
    monkeypatch.setattr(auth_mod, "LOOKUP_WAIT_S", 0.2)
    cached = known_key(lookup)
    await authn.authenticate(bearer(cached))
    clock.now += TTL + 1
    lookup.gate = asyncio.Event()  # every lookup now hangs
    try:
        # A key trusted before gets its cached answer after the short wait.
        assert await asyncio.wait_for(authn.authenticate(bearer(cached)), 5) == ALICE
        clock.now += auth_mod.DOWN_BACKOFF_S + 0.1
        # A key never seen gets 503 after the longer wait, not an endless hang.
        with pytest.raises(ServiceUnavailable):
            await asyncio.wait_for(authn.authenticate(bearer(known_key(lookup))), 5)
    finally:
        await lookup.drain()
    # The slow lookup that finished anyway refreshed the cache.
    lookup.gate = None
    calls = len(lookup.calls)
    assert await authn.authenticate(bearer(cached)) == ALICE
    assert len(lookup.calls) == calls


async def test_database_error_for_key_cached_as_unknown_is_503(
    authn: Authenticator, lookup: FakeLookup, clock: Clock
) -> None:
    key = generate_key()
    with pytest.raises(AuthenticationError):
        await authn.authenticate(bearer(key))
    lookup.down = OSError("database down")
    clock.now += TTL + 1
    with pytest.raises(ServiceUnavailable):
        await authn.authenticate(bearer(key))


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (None, "missing_api_key"),
        ("", "missing_api_key"),
        ("Basic dXNlcjpwYXNz", "invalid_api_key"),
        ("Bearer", "invalid_api_key"),
        ("Bearer    ", "invalid_api_key"),
        ("Token sk-strata-" + "a" * 43, "invalid_api_key"),
        ("Bearer sk-strata-short", "invalid_api_key"),
        ("Bearer sk-openai-" + "a" * 43, "invalid_api_key"),
        ("Bearer sk-strata-" + "a" * 200, "invalid_api_key"),
    ],
)
async def test_bad_authorization_header_is_401_without_lookup(
    authn: Authenticator, lookup: FakeLookup, header: str | None, code: str
) -> None:
    with pytest.raises(AuthenticationError) as info:
        await authn.authenticate(header)
    assert info.value.status == 401
    assert info.value.code == code
    assert lookup.calls == []


async def test_bearer_scheme_is_case_insensitive(authn: Authenticator, lookup: FakeLookup) -> None:
    key = known_key(lookup)
    assert await authn.authenticate(f"bearer {key}") == ALICE


async def test_evict_forces_a_recheck(
    authn: Authenticator, lookup: FakeLookup, clock: Clock
) -> None:
    key = known_key(lookup)
    await authn.authenticate(bearer(key))
    lookup.table[hash_key(key)] = None  # revoked
    authn.evict(hash_key(key))
    with pytest.raises(AuthenticationError):
        await authn.authenticate(bearer(key))  # within TTL, yet re-checked
    assert len(lookup.calls) == 2
    authn.evict("no-such-hash")  # evicting the unknown is harmless


async def test_cancelled_request_does_not_wedge_the_key(
    authn: Authenticator, lookup: FakeLookup
) -> None:
    key = known_key(lookup)
    lookup.gate = asyncio.Event()
    first = asyncio.create_task(authn.authenticate(bearer(key)))
    await asyncio.wait_for(lookup.entered.wait(), 5)
    first.cancel()  # e.g. the client went away while the database was slow
    with pytest.raises(asyncio.CancelledError):
        await first
    lookup.gate.set()
    # A later request for the same key must get an answer, not hang.
    assert await asyncio.wait_for(authn.authenticate(bearer(key)), 2) == ALICE
    await lookup.drain()


# Real PostgreSQL: the key repository the Authenticator uses in production.


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = make_engine(database_url, pool_size=1)
    yield eng
    await eng.dispose()


async def test_keys_repository_create_find_revoke(engine: AsyncEngine) -> None:
    tenant = "t-" + uuid.uuid4().hex[:12]
    new = await key_repo.create_key(engine, tenant_id=tenant, user_id="bob", name="ci")
    assert new.key.startswith(KEY_PREFIX)
    assert new.id.startswith("key_")

    found = await key_repo.find_active(engine, hash_key(new.key))
    assert found == Principal(key_id=new.id, tenant_id=tenant, user_id="bob", is_admin=False)
    assert await key_repo.find_active(engine, hash_key(generate_key())) is None

    # A second key for the same user and an admin key for the same tenant.
    admin = await key_repo.create_key(engine, tenant_id=tenant, user_id="root", is_admin=True)
    other = await key_repo.create_key(engine, tenant_id=tenant, user_id="bob")
    admin_principal = await key_repo.find_active(engine, hash_key(admin.key))
    assert admin_principal is not None
    assert admin_principal.is_admin

    listed = await key_repo.list_keys(engine, tenant_id=tenant)
    assert {k.id for k in listed} == {new.id, admin.id, other.id}
    for k in listed:
        assert k.key_hash != ""
        assert new.key not in (k.display_prefix, k.key_hash, k.name)
        assert k.revoked_at is None

    assert await key_repo.revoke_key(engine, new.id) == hash_key(new.key)
    assert await key_repo.find_active(engine, hash_key(new.key)) is None
    assert await key_repo.revoke_key(engine, new.id) is None  # already revoked
    assert await key_repo.revoke_key(engine, "key_doesnotexist") is None
    # Revoking one key leaves the user's other key working.
    assert await key_repo.find_active(engine, hash_key(other.key)) is not None


async def test_authenticator_over_real_database(engine: AsyncEngine) -> None:
    tenant = "t-" + uuid.uuid4().hex[:12]
    new = await key_repo.create_key(engine, tenant_id=tenant, user_id="carol")
    authn = Authenticator(
        lambda h: key_repo.find_active(engine, h), ttl_s=60.0, stale_grace_s=GRACE
    )
    principal = await authn.authenticate(bearer(new.key))
    assert (principal.tenant_id, principal.user_id, principal.key_id) == (tenant, "carol", new.id)

    key_hash = await key_repo.revoke_key(engine, new.id)
    assert key_hash is not None
    # Cached for the TTL until the revocation announcement evicts it.
    assert await authn.authenticate(bearer(new.key)) == principal
    authn.evict(key_hash)
    with pytest.raises(AuthenticationError) as info:
        await authn.authenticate(bearer(new.key))
    assert new.key not in info.value.message
