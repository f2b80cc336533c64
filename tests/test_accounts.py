"""Accounts: the SQLite store (users, tokens, maintainers), Basic-auth parsing
and the server-side async wrapper with its cache."""

from __future__ import annotations

import base64
import hashlib
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from argon2 import PasswordHasher
from twisted.internet import defer, task

from pypicache.services.accounts import (
    LAST_USED_RESOLUTION,
    AccountError,
    Accounts,
    AccountStore,
    Identity,
    LoginRefused,
    SchemaTooNew,
    UnknownToken,
    UnknownUser,
    UserExists,
    parse_basic,
)
from pypicache.testing import wait

PASSWORD = "correct horse battery"


def cheap_hasher(**overrides: Any) -> PasswordHasher:
    """argon2id with the lowest cost: the real algorithm, fast enough for tests."""
    params = dict(time_cost=1, memory_cost=8, parallelism=1)
    params.update(overrides)
    return PasswordHasher(**params)


class FakeTime:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeTime:
    return FakeTime()


@pytest.fixture
def store(tmp_path: Path, clock: FakeTime) -> Any:
    s = AccountStore(tmp_path / "accounts.sqlite3", hasher=cheap_hasher(), clock=clock)
    yield s
    s.close()


def db_bytes(path: Path) -> bytes:
    """Everything SQLite wrote for the database: main file, WAL and shm."""
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


# ---------------------------------------------------------------------- users


def test_password_is_stored_as_argon2id_only(store: AccountStore) -> None:
    store.add_user("Alice", PASSWORD)
    with sqlite3.connect(store.path) as db:
        (name, stored), = db.execute("SELECT name, password_hash FROM users").fetchall()
    assert name == "alice"
    assert stored.startswith("$argon2id$")
    assert PASSWORD.encode() not in db_bytes(store.path)


def test_database_is_private(store: AccountStore) -> None:
    store.add_user("bob", PASSWORD)
    files = list(store.path.parent.glob(store.path.name + "*"))
    assert len(files) == 3  # the database, its WAL and shm
    assert {f.stat().st_mode & 0o777 for f in files} == {0o600}


def test_schema_is_versioned_and_newer_is_refused(tmp_path: Path, store: AccountStore) -> None:
    with sqlite3.connect(store.path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()
    with sqlite3.connect(store.path) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(SchemaTooNew):
        AccountStore(store.path, hasher=cheap_hasher())


def test_reopen_keeps_users(tmp_path: Path, store: AccountStore) -> None:
    store.add_user("bob", PASSWORD, admin=True)
    store.close()
    again = AccountStore(store.path, hasher=cheap_hasher())
    try:
        assert again.verify_password("bob", PASSWORD).admin is True
    finally:
        again.close()


def test_add_get_list(store: AccountStore, clock: FakeTime) -> None:
    store.add_user("bob", PASSWORD)
    store.add_user("Alice.Smith-2_x", PASSWORD, admin=True)
    assert [(u.name, u.admin) for u in store.list_users()] == [("alice.smith-2_x", True), ("bob", False)]
    user = store.get_user("BOB")
    assert user is not None and user.name == "bob" and user.created == clock.now
    assert store.get_user("nobody") is None
    assert store.get_user("__token__") is None


@pytest.mark.parametrize("name", ["", "__token__", "-bob", ".bob", "_bob", "a" * 65, "bo b", "bób",
                                  "bob\n", "bob/x", "bob:x"])
def test_invalid_user_names(store: AccountStore, name: str) -> None:
    with pytest.raises(AccountError):
        store.add_user(name, PASSWORD)
    assert store.list_users() == []


def test_longest_name_accepted(store: AccountStore) -> None:
    """64 characters is the limit (65 is refused above): the user exists, whole, and can log in."""
    name = "a" * 64
    user = store.add_user(name, PASSWORD)
    assert user.name == name
    assert [u.name for u in store.list_users()] == [name]
    assert store.get_user(name) == user
    assert store.verify_password(name, PASSWORD) == user


def test_duplicate_user_case_insensitive(store: AccountStore) -> None:
    store.add_user("bob", PASSWORD)
    with pytest.raises(UserExists):
        store.add_user("BOB", "another password")


def test_password_length(store: AccountStore) -> None:
    with pytest.raises(AccountError, match="too short"):
        store.add_user("bob", "7 chars")
    store.add_user("bob", "8 chars!")
    with pytest.raises(AccountError, match="too short"):
        store.set_password("bob", "short")


def test_verify_password(store: AccountStore) -> None:
    store.add_user("bob", PASSWORD, admin=True)
    user = store.verify_password("Bob", PASSWORD)
    assert user is not None and user.name == "bob" and user.admin
    assert store.verify_password("bob", PASSWORD + "x") is None
    assert store.verify_password("bob", "") is None
    assert store.verify_password("nobody", PASSWORD) is None
    assert store.verify_password("not a valid name", PASSWORD) is None


class CountingHasher(PasswordHasher):
    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1)
        self.verifies = 0

    def verify(self, hash: Any, password: Any) -> bool:  # noqa: A002
        self.verifies += 1
        return super().verify(hash, password)


def test_unknown_user_still_costs_a_verification(tmp_path: Path) -> None:
    hasher = CountingHasher()
    store = AccountStore(tmp_path / "a.sqlite3", hasher=hasher)
    try:
        assert store.verify_password("ghost", PASSWORD) is None
        assert store.verify_password("in valid", PASSWORD) is None
        assert hasher.verifies == 2
    finally:
        store.close()


def test_rehash_when_parameters_change(tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite3"
    old = AccountStore(path, hasher=cheap_hasher())
    old.add_user("bob", PASSWORD)
    old.close()
    new = AccountStore(path, hasher=cheap_hasher(time_cost=2))
    try:
        assert new.verify_password("bob", PASSWORD) is not None
        with sqlite3.connect(path) as db:
            stored = db.execute("SELECT password_hash FROM users").fetchone()[0]
        assert "t=2" in stored and stored.startswith("$argon2id$")
        assert new.verify_password("bob", PASSWORD) is not None
    finally:
        new.close()


def test_set_password(store: AccountStore) -> None:
    store.add_user("bob", PASSWORD)
    store.set_password("bob", "new password!")
    assert store.verify_password("bob", PASSWORD) is None
    assert store.verify_password("bob", "new password!") is not None
    with pytest.raises(UnknownUser):
        store.set_password("nobody", "new password!")


def test_remove_user_revokes_everything(store: AccountStore) -> None:
    store.add_user("bob", PASSWORD)
    store.add_user("carol", PASSWORD)
    _, token = store.create_token("bob")
    store.grant("shared", "bob")
    store.grant("shared", "carol")
    store.grant("Bobs_Own", "bob")
    assert store.remove_user("bob") == ["bobs-own"]  # left without any maintainer
    assert store.get_user("bob") is None
    assert store.verify_token(token) is None
    assert all(t.revoked for t in store.list_tokens("bob"))
    assert store.maintainers("shared") == {"carol"}
    assert store.projects_of("bob") == []
    # A new user of the same name does not inherit the old tokens.
    store.add_user("bob", PASSWORD)
    assert store.verify_token(token) is None
    with pytest.raises(UnknownUser):
        store.remove_user("nobody")


# --------------------------------------------------------------------- tokens

TOKEN_RE = re.compile(r"pypicache-([0-9a-f]{12})-([A-Za-z0-9_-]{43})")


def test_token_format_and_only_digest_stored(store: AccountStore) -> None:
    store.add_user("bob", PASSWORD)
    token_id, token = store.create_token("Bob", "CI uploads")
    match = TOKEN_RE.fullmatch(token)
    assert match and match.group(1) == token_id
    secret = match.group(2)
    assert secret.encode() not in db_bytes(store.path)
    with sqlite3.connect(store.path) as db:
        digest = db.execute("SELECT secret_sha256 FROM tokens").fetchone()[0]
    assert digest == hashlib.sha256(secret.encode()).hexdigest()


def test_verify_token(store: AccountStore) -> None:
    store.add_user("bob", PASSWORD, admin=True)
    token_id, token = store.create_token("bob")
    assert store.verify_token(token) == Identity("bob", True, token_id, None)


def test_token_reflects_current_admin_flag(store: AccountStore) -> None:
    store.add_user("bob", PASSWORD)
    _, token = store.create_token("bob")
    store.set_admin("bob", True)
    assert store.verify_token(token).admin is True


def test_revoke_token(store: AccountStore) -> None:
    store.add_user("bob", PASSWORD)
    token_id, token = store.create_token("bob")
    other_id, other = store.create_token("bob")
    store.revoke_token(token_id)
    assert store.verify_token(token) is None
    assert store.verify_token(other) is not None
    with pytest.raises(UnknownToken):
        store.revoke_token("000000000000")


def test_wrong_or_malformed_tokens(store: AccountStore) -> None:
    store.add_user("bob", PASSWORD)
    token_id, token = store.create_token("bob")
    secret = token.split("-", 2)[2]
    bad = [
        "", "pypicache-", token + "x", token[:-1], token.upper(),
        f"pypicache-{token_id}-", f"pypicache-{token_id}", f"pypicache-{token_id}{secret}",
        f"pypicache-000000000000-{secret}",             # unknown id, right secret
        f"pypicache-{token_id.upper()}-{secret}",
        f"other-{token_id}-{secret}", f"pypicache-{token_id}-{'A' * 1000}",
        PASSWORD,
    ]
    for candidate in bad:
        if candidate == token:  # e.g. upper() of an all-digit id changes nothing
            continue
        assert store.verify_token(candidate) is None, candidate


def test_token_scope(store: AccountStore) -> None:
    store.add_user("bob", PASSWORD)
    token_id, token = store.create_token("bob", projects=["My_Project", "other.proj", "my-project"])
    identity = store.verify_token(token)
    assert identity.projects == frozenset({"my-project", "other-proj"})
    (info,) = store.list_tokens()
    assert info.projects == identity.projects
    with pytest.raises(AccountError):
        store.create_token("bob", projects=[])
    with pytest.raises(AccountError):
        store.create_token("bob", projects=["not a name!"])
    with pytest.raises(AccountError):
        store.create_token("bob", projects="single-string")


def test_token_bad_input(store: AccountStore) -> None:
    with pytest.raises(UnknownUser):
        store.create_token("nobody")
    store.add_user("bob", PASSWORD)
    with pytest.raises(AccountError):
        store.create_token("bob", description="line\nbreak")
    with pytest.raises(AccountError):
        store.create_token("bob", description="x" * 201)
    assert store.list_tokens() == []


def test_last_used(store: AccountStore, clock: FakeTime) -> None:
    store.add_user("bob", PASSWORD)
    created = clock.now
    token_id, token = store.create_token("bob", "laptop")
    (info,) = store.list_tokens("bob")
    assert (info.id, info.user, info.description, info.created, info.last_used, info.revoked) == \
        (token_id, "bob", "laptop", created, None, False)
    clock.now += 10
    store.verify_token(token)
    assert store.list_tokens()[0].last_used == created + 10
    clock.now += LAST_USED_RESOLUTION / 2  # not rewritten on every use
    store.verify_token(token)
    assert store.list_tokens()[0].last_used == created + 10
    clock.now += LAST_USED_RESOLUTION
    store.verify_token(token)
    assert store.list_tokens()[0].last_used == clock.now


def test_list_tokens_never_has_secrets(store: AccountStore) -> None:
    store.add_user("bob", PASSWORD)
    store.add_user("carol", PASSWORD)
    _, token = store.create_token("bob")
    store.create_token("carol")
    infos = store.list_tokens()
    assert [t.user for t in infos] == ["bob", "carol"]
    assert [t.user for t in store.list_tokens("Carol")] == ["carol"]
    secret = token.split("-", 2)[2]
    assert secret not in repr(infos)
    assert hashlib.sha256(secret.encode()).hexdigest() not in repr(infos)


# ---------------------------------------------------------------- maintainers


def test_maintainers(store: AccountStore) -> None:
    store.add_user("bob", PASSWORD)
    store.add_user("carol", PASSWORD)
    store.grant("My_Project", "Bob")
    store.grant("my-project", "bob")  # idempotent
    store.grant("my.project", "carol")
    store.grant("another", "bob")
    assert store.maintainers("MY-PROJECT") == {"bob", "carol"}
    assert store.projects_of("bob") == ["another", "my-project"]
    assert store.revoke("my_project", "carol") is True
    assert store.revoke("my_project", "carol") is False
    assert store.maintainers("my-project") == {"bob"}
    assert store.maintainers("unknown") == set()
    with pytest.raises(UnknownUser):
        store.grant("x", "nobody")
    with pytest.raises(AccountError):
        store.grant("not valid!", "bob")
    with pytest.raises(AccountError):
        store.maintainers("-bad-")


# ------------------------------------------------------------------- identity


@pytest.mark.parametrize("identity, maintainers, existing, expected", [
    (Identity("bob"), {"bob"}, True, True),
    (Identity("bob"), {"carol"}, True, False),
    (Identity("bob"), set(), False, True),       # a new private name: first uploader
    (Identity("bob"), set(), True, False),       # an orphaned one: admins only
    (Identity("root", admin=True), {"carol"}, True, True),
    (Identity("root", admin=True), set(), True, True),
    (Identity("root", True, "t", frozenset({"other"})), {"carol"}, True, False),
    (Identity("bob", False, "t", frozenset({"proj"})), {"bob"}, True, True),
    (Identity("bob", False, "t", frozenset({"other"})), {"bob"}, True, False),
    (Identity("bob", False, "t", frozenset({"other"})), set(), False, False),
])
def test_may_upload(identity: Identity, maintainers: set[str], existing: bool, expected: bool) -> None:
    assert identity.may_upload("proj", maintainers, existing=existing) is expected


def test_may_upload_default_is_new_project() -> None:
    assert Identity("bob").may_upload("proj", set()) is True


def test_may_manage() -> None:
    assert Identity("bob").may_manage("proj", {"bob"})
    assert not Identity("bob").may_manage("proj", set())
    assert not Identity("bob").may_manage("proj", {"carol"})
    assert Identity("root", admin=True).may_manage("proj", set())
    assert not Identity("bob", False, "t", frozenset({"x"})).may_manage("proj", {"bob"})


# ----------------------------------------------------------------- basic auth


def basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


@pytest.mark.parametrize("header, expected", [
    (None, None),
    (b"", None),
    (basic("bob", "pw"), ("bob", "pw")),
    (basic("bob", "a:b:c"), ("bob", "a:b:c")),       # only the first colon splits
    (basic("bob", ""), ("bob", "")),
    (basic("", "pw"), None),
    (b"basic " + base64.b64encode(b"bob:pw"), ("bob", "pw")),
    (b"BASIC   " + base64.b64encode(b"bob:pw") + b"  ", ("bob", "pw")),
    ("Basic " + base64.b64encode(b"bob:pw").decode(), ("bob", "pw")),
    (b"Basic " + base64.b64encode(b"bobpw"), None),  # no colon
    (b"Basic not*base64", None),
    (b"Basic Ym9iOnB3", ("bob", "pw")),
    (b"Basic Ym9iOnB", None),                        # truncated: bad padding
    (b"Basic " + base64.b64encode(b"bob:\xff\xfe"), None),  # not UTF-8
    (b"Basic " + base64.b64encode("bób:pässword".encode()), ("bób", "pässword")),
    (b"Bearer abc", None),
    (b"Basic", None),
    ("Basic é", None),
    (b"Basic " + b"A" * 10000, None),
])
def test_parse_basic(header: Any, expected: Any) -> None:
    assert parse_basic(header) == expected


# ------------------------------------------------------- async wrapper + cache


class SpyStore:
    """Counts how often the real store is asked."""

    def __init__(self, store: AccountStore) -> None:
        self.store = store
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.store, name)
        if name.startswith("verify_"):
            def spy(*args: Any) -> Any:
                self.calls.append(name)
                return target(*args)
            return spy
        return target


@pytest.fixture
def accounts(store: AccountStore) -> Any:
    from twisted.internet import reactor

    spy = SpyStore(store)
    fake = task.Clock()
    made = Accounts(spy, reactor, clock=fake, cache_size=3)  # type: ignore[arg-type]
    made.fake_clock = fake
    made.spy = spy
    yield made
    pytest_twisted.blockon(made.close().addTimeout(10, reactor))


@pytest_twisted.ensureDeferred
async def test_authenticate_password_cached(accounts: Any, store: AccountStore) -> None:
    store.add_user("bob", PASSWORD, admin=True)
    identity = await wait(accounts.authenticate(basic("bob", PASSWORD)))
    assert identity == Identity("bob", admin=True)
    assert await wait(accounts.authenticate(basic("bob", PASSWORD))) == identity
    assert accounts.spy.calls == ["verify_password"]
    accounts.fake_clock.advance(59)
    await wait(accounts.authenticate(basic("bob", PASSWORD)))
    assert len(accounts.spy.calls) == 1
    accounts.fake_clock.advance(2)
    await wait(accounts.authenticate(basic("bob", PASSWORD)))
    assert len(accounts.spy.calls) == 2


@pytest_twisted.ensureDeferred
async def test_authenticate_failures_not_cached(accounts: Any, store: AccountStore) -> None:
    store.add_user("bob", PASSWORD)
    assert await wait(accounts.authenticate(basic("bob", "wrong password"))) is None
    assert await wait(accounts.authenticate(basic("bob", "wrong password"))) is None
    assert await wait(accounts.authenticate(basic("nobody", PASSWORD))) is None
    assert len(accounts.spy.calls) == 3
    # A right password after wrong ones works at once.
    assert await wait(accounts.authenticate(basic("bob", PASSWORD))) is not None


@pytest_twisted.ensureDeferred
async def test_authenticate_malformed_never_reaches_store(accounts: Any) -> None:
    for header in (None, b"", b"Bearer x", b"Basic !!!", b"Basic " + base64.b64encode(b"nocolon")):
        assert await wait(accounts.authenticate(header)) is None
    assert accounts.spy.calls == []


@pytest_twisted.ensureDeferred
async def test_authenticate_token_short_cache(accounts: Any, store: AccountStore) -> None:
    store.add_user("bob", PASSWORD)
    token_id, token = store.create_token("bob", projects=["proj"])
    identity = await wait(accounts.authenticate(basic("__token__", token)))
    assert identity == Identity("bob", False, token_id, frozenset({"proj"}))
    store.revoke_token(token_id)
    accounts.fake_clock.advance(4)
    assert await wait(accounts.authenticate(basic("__token__", token))) == identity  # still cached
    accounts.fake_clock.advance(1.5)
    assert await wait(accounts.authenticate(basic("__token__", token))) is None
    assert accounts.spy.calls == ["verify_token", "verify_token"]


@pytest_twisted.ensureDeferred
async def test_token_as_password_of_named_user_is_refused(accounts: Any, store: AccountStore) -> None:
    store.add_user("bob", PASSWORD)
    _, token = store.create_token("bob")
    assert await wait(accounts.authenticate(basic("bob", token))) is None
    assert await wait(accounts.authenticate(basic("__token__", PASSWORD))) is None


@pytest_twisted.ensureDeferred
async def test_cache_is_bounded(accounts: Any, store: AccountStore) -> None:
    for i in range(4):
        store.add_user(f"user{i}", PASSWORD)
        await wait(accounts.authenticate(basic(f"user{i}", PASSWORD)))
    assert len(accounts.spy.calls) == 4
    # cache_size=3: user0, the least recently used, was dropped.
    await wait(accounts.authenticate(basic("user3", PASSWORD)))
    assert len(accounts.spy.calls) == 4
    await wait(accounts.authenticate(basic("user0", PASSWORD)))
    assert len(accounts.spy.calls) == 5


@pytest_twisted.ensureDeferred
async def test_cache_keyed_by_password(accounts: Any, store: AccountStore) -> None:
    store.add_user("bob", PASSWORD)
    assert await wait(accounts.authenticate(basic("bob", PASSWORD))) is not None
    assert await wait(accounts.authenticate(basic("bob", PASSWORD + "!"))) is None


@pytest_twisted.ensureDeferred
async def test_concurrent_checks_share_one_verification(accounts: Any, store: AccountStore) -> None:
    store.add_user("bob", PASSWORD)
    pending = [accounts.authenticate(basic("bob", PASSWORD)) for _ in range(5)]
    results = await wait(defer.gatherResults(pending))
    assert results == [Identity("bob")] * 5
    assert accounts.spy.calls == ["verify_password"]


@pytest_twisted.ensureDeferred
async def test_maintainers_and_grant(accounts: Any, store: AccountStore) -> None:
    store.add_user("bob", PASSWORD)
    assert await wait(accounts.maintainers("proj")) == set()
    await wait(accounts.grant("Proj", "bob"))
    assert await wait(accounts.maintainers("proj")) == {"bob"}
    with pytest.raises(UnknownUser):
        await wait(accounts.grant("proj", "nobody"))


@pytest_twisted.ensureDeferred
async def test_database_failure_is_an_error_not_a_refusal(accounts: Any, store: AccountStore) -> None:
    store.close()
    with pytest.raises(RuntimeError):
        await wait(accounts.authenticate(basic("bob", PASSWORD)))


@pytest_twisted.ensureDeferred
async def test_close(store: AccountStore) -> None:
    from twisted.internet import reactor

    made = Accounts(store, reactor)
    await wait(made.close())
    await wait(made.close())  # twice is fine
    with pytest.raises(RuntimeError):
        await wait(made.authenticate(basic("bob", PASSWORD)))
    with pytest.raises(RuntimeError):
        store.list_users()  # the store was closed on the accounts thread


@pytest_twisted.ensureDeferred
async def test_failed_logins_are_limited_per_client_and_per_user(store: AccountStore) -> None:
    from twisted.internet import reactor

    fake = task.Clock()
    made = Accounts(store, reactor, clock=fake, max_failures=2, failure_window=10)
    try:
        store.add_user("bob", PASSWORD)
        store.add_user("carol", PASSWORD)
        _, token = store.create_token("bob")
        good = await wait(made.authenticate(basic("bob", PASSWORD), "10.0.0.1"))
        for _ in range(2):
            assert await wait(made.authenticate(basic("bob", "wrong password"), "10.0.0.1")) is None
        with pytest.raises(LoginRefused) as refused:  # bob, from another address
            await wait(made.authenticate(basic("bob", "wrong again"), "10.0.0.2"))
        assert refused.value.status == 429 and 1 <= refused.value.retry_after <= 10
        with pytest.raises(LoginRefused):  # the same address, another user
            await wait(made.authenticate(basic("carol", PASSWORD), "10.0.0.1"))
        # A success still cached passes; a token is never limited by its user's failures.
        assert await wait(made.authenticate(basic("bob", PASSWORD), "10.0.0.1")) == good
        assert await wait(made.authenticate(basic("__token__", token), "10.0.0.3")) is not None
        fake.advance(10)
        assert await wait(made.authenticate(basic("carol", PASSWORD), "10.0.0.1")) == Identity("carol")
    finally:
        await wait(made.close())


class BlockingHasher(PasswordHasher):
    """Verifications wait until ``release`` is set: a password thread kept busy."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1)
        import threading

        self.release = threading.Event()

    def verify(self, hash: Any, password: Any) -> bool:  # noqa: A002
        self.release.wait(10)
        return super().verify(hash, password)


@pytest_twisted.ensureDeferred
async def test_password_queue_is_bounded_and_tokens_skip_it(tmp_path: Path) -> None:
    from twisted.internet import reactor

    hasher = BlockingHasher()
    store = AccountStore(tmp_path / "a.sqlite3", hasher=hasher)
    made = Accounts(store, reactor, max_pending_passwords=2)
    try:
        store.add_user("bob", PASSWORD)
        _, token = store.create_token("bob")
        queued = [made.authenticate(basic("bob", f"guess {i}"), f"10.0.0.{i}") for i in range(2)]
        with pytest.raises(LoginRefused) as busy:
            await wait(made.authenticate(basic("bob", "one more"), "10.0.0.9"))
        assert busy.value.status == 503 and busy.value.retry_after >= 1
        # The password thread is stuck; a token is checked on another one.
        assert await wait(made.authenticate(basic("__token__", token)), 5) is not None
        hasher.release.set()
        assert await wait(defer.gatherResults(queued)) == [None, None]
    finally:
        hasher.release.set()
        await wait(made.close())
