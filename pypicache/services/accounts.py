"""Users, API tokens and project maintainers: who may upload what.

Two layers:

* :class:`AccountStore` is synchronous SQLite (WAL mode, its own file
  ``<data_dir>/accounts.sqlite3``, separate from the index so a cache wipe
  never loses accounts).  The admin command uses it directly; the server
  never calls it from the reactor thread.
* :class:`Accounts` wraps a store for the server: database calls run on one
  dedicated thread and password hashing on another; it parses HTTP Basic
  credentials, caches recent successful verifications and throttles failed
  ones.

Secrets are never stored in plain text.  Passwords are hashed with argon2id
(argon2-cffi's ``PasswordHasher``; its default parameters are RFC 9106's
low-memory profile: 3 passes over 64 MiB with 4 lanes, some tens of
milliseconds of CPU per verification, which is why :class:`Accounts` caches
successes).  An API token is ``pypicache-<id>-<secret>`` where the secret
has 256 random bits; only its sha256 is kept: a fast hash is enough for a
secret that cannot be guessed, and it keeps token checks cheap.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import secrets
import sqlite3
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, TypeVar

import attrs
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from pypicache.durable import create_sqlite
from pypicache.model import InvalidName, normalize
from pypicache.services.throttle import FailureWindow

if TYPE_CHECKING:
    from argon2 import PasswordHasher

__all__ = [
    "AccountError", "AccountStore", "Accounts", "Identity", "LoginRefused", "TokenInfo", "UnknownToken",
    "UnknownUser", "User", "UserExists", "TOKEN_USER", "parse_basic",
]

log = Logger()

T = TypeVar("T")


def default_hasher() -> PasswordHasher:
    """argon2-cffi's hasher with its default (RFC 9106) parameters.

    Imported here, on first use, rather than with the module: most servers
    never check a password, and start-up time and memory count.
    """
    from argon2 import PasswordHasher

    return PasswordHasher()

#: The Basic-auth user name that says "the password is an API token" (as PyPI).
TOKEN_USER = "__token__"
TOKEN_PREFIX = "pypicache-"
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
MAX_DESCRIPTION = 200
#: PRAGMA user_version written by this code; add a step to _MIGRATIONS to change it.
SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 10_000

_USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_TOKEN_ID = re.compile(r"[0-9a-f]{12}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE users (
            name TEXT PRIMARY KEY,
            password_hash TEXT NOT NULL,
            admin INTEGER NOT NULL DEFAULT 0,
            created REAL NOT NULL
        ) WITHOUT ROWID""",
        """CREATE TABLE tokens (
            id TEXT PRIMARY KEY,
            user TEXT NOT NULL,
            secret_sha256 TEXT NOT NULL,
            description TEXT NOT NULL DEFAULT '',
            projects TEXT,
            created REAL NOT NULL,
            last_used REAL,
            revoked INTEGER NOT NULL DEFAULT 0
        ) WITHOUT ROWID""",
        "CREATE INDEX tokens_user ON tokens (user)",
        """CREATE TABLE maintainers (
            project TEXT NOT NULL,
            user TEXT NOT NULL,
            PRIMARY KEY (project, user)
        ) WITHOUT ROWID""",
        "CREATE INDEX maintainers_user ON maintainers (user)",
    ),
}

#: ``last_used`` is rewritten at most this often per token: a write per
#: request would make every authenticated read contend for the DB lock.
LAST_USED_RESOLUTION = 60.0


class AccountError(ValueError):
    """A request the store refuses (bad name, short password, ...): the
    message is one line fit for the admin command's stderr."""


class UnknownUser(AccountError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no user named {name!r}")
        self.name = name


class UserExists(AccountError):
    def __init__(self, name: str) -> None:
        super().__init__(f"user {name!r} already exists")
        self.name = name


class UnknownToken(AccountError):
    def __init__(self, token_id: str) -> None:
        super().__init__(f"no token with id {token_id!r}")
        self.token_id = token_id


class LoginRefused(Exception):
    """Credentials not checked: too many failed logins (429) or too many
    password checks waiting (503).  ``retry_after`` is in whole seconds."""

    def __init__(self, status: int, retry_after: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.retry_after = retry_after
        self.reason = reason


class SchemaTooNew(RuntimeError):
    """The accounts database was written by a newer pypicache."""


@attrs.frozen
class User:
    """A user as listed: never carries the password hash."""

    name: str
    admin: bool
    created: float


@attrs.frozen
class TokenInfo:
    """A token as listed: never carries the secret nor its hash."""

    id: str
    user: str
    description: str
    projects: frozenset[str] | None
    created: float
    last_used: float | None
    revoked: bool


@attrs.frozen
class Identity:
    """Who made a request, once authenticated.

    ``token_id`` is None for a password login.  ``projects`` is the token's
    scope: None means every project the user may upload to; a frozenset of
    normalised names restricts the token to those (even for an admin).
    """

    user: str
    admin: bool = False
    token_id: str | None = None
    projects: frozenset[str] | None = None

    def in_scope(self, project: str) -> bool:
        """Whether the credentials (token scope) cover normalised ``project``."""
        return self.projects is None or project in self.projects

    def may_upload(self, project: str, maintainers: Iterable[str], *, existing: bool = False) -> bool:
        """Whether this identity may upload a file to normalised ``project``.

        In order: a token whose scope leaves ``project`` out may not; an
        admin may; a maintainer may; and when the project has no maintainer
        at all anyone authenticated may: that is how a new private name gets
        its first owner (the caller then :meth:`AccountStore.grant`\\ s it).

        ``existing=True`` says the project already exists privately.  It then
        has no maintainer only because an admin created it or removed the
        last one (``pypicache user remove``); only an admin may upload there,
        so an orphaned name is never up for grabs.  Pass it.
        """
        if not self.in_scope(project):
            return False
        if self.admin:
            return True
        maintainers = set(maintainers)
        if self.user in maintainers:
            return True
        return not maintainers and not existing

    def may_manage(self, project: str, maintainers: Iterable[str]) -> bool:
        """Whether this identity may yank, unyank or delete files of ``project``:
        an admin or a maintainer, within the token's scope."""
        return self.in_scope(project) and (self.admin or self.user in set(maintainers))


def normalize_user(name: str) -> str:
    """The stored (lower-case) form of a valid user name, else AccountError."""
    if not isinstance(name, str) or name == TOKEN_USER or not _USER_NAME.fullmatch(name):
        raise AccountError(f"invalid user name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
                           "starting with a letter or digit")
    return name.lower()


def _project(name: str) -> str:
    try:
        return normalize(name)
    except InvalidName as e:
        raise AccountError(str(e)) from None


def _check_password(password: str) -> None:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise AccountError(f"password too short: at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise AccountError(f"password too long: at most {MAX_PASSWORD} characters")


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def parse_token(token: str) -> tuple[str, str] | None:
    """``(id, secret)`` of a well-formed token string, else None."""
    if not isinstance(token, str) or not token.startswith(TOKEN_PREFIX):
        return None
    token_id, sep, secret = token[len(TOKEN_PREFIX):].partition("-")
    if not sep or not _TOKEN_ID.fullmatch(token_id) or not secret or len(secret) > 256:
        return None
    return token_id, secret


class AccountStore:
    """The accounts database (see the module docstring).

    Thread-safe by a lock (one connection, ``check_same_thread=False``), but
    meant for one thread at a time: the admin command's, or the one thread
    of :class:`Accounts`.  Another process may use the same file meanwhile
    (WAL mode, busy timeout).

    :param hasher: an argon2 ``PasswordHasher``; tests pass a cheap one.
    :param clock: seconds since the epoch, for ``created``/``last_used``.
    """

    def __init__(self, path: Path | str, *, hasher: PasswordHasher | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._given_hasher = hasher
        self._clock = clock
        self._lock = threading.RLock()
        self._dummy_hash: str | None = None
        self._conn: sqlite3.Connection | None = _connect(self.path)

    # ------------------------------------------------------------ plumbing

    @property
    def _hasher(self) -> PasswordHasher:
        if self._given_hasher is None:
            self._given_hasher = default_hasher()
        return self._given_hasher

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError(f"account store {self.path} is closed")
        return self._conn

    def _write(self) -> _Transaction:
        return _Transaction(self, "BEGIN IMMEDIATE")

    def _read(self) -> _Transaction:
        return _Transaction(self, "BEGIN")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                conn, self._conn = self._conn, None
                conn.close()

    # --------------------------------------------------------------- users

    def add_user(self, name: str, password: str, admin: bool = False) -> User:
        """Create a user; UserExists if the (case-insensitive) name is taken."""
        name = normalize_user(name)
        _check_password(password)
        password_hash = self._hasher.hash(password)  # before the lock: it is slow
        created = self._clock()
        with self._write() as db:
            if db.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
                raise UserExists(name)
            db.execute("INSERT INTO users (name, password_hash, admin, created) VALUES (?, ?, ?, ?)",
                       (name, password_hash, int(bool(admin)), created))
        log.info("accounts: user {user} added{admin}", user=name, admin=" (admin)" if admin else "")
        return User(name, bool(admin), created)

    def set_password(self, name: str, password: str) -> None:
        name = normalize_user(name)
        _check_password(password)
        password_hash = self._hasher.hash(password)
        with self._write() as db:
            if db.execute("UPDATE users SET password_hash = ? WHERE name = ?",
                          (password_hash, name)).rowcount == 0:
                raise UnknownUser(name)
        log.info("accounts: password of {user} changed", user=name)

    def set_admin(self, name: str, admin: bool) -> None:
        name = normalize_user(name)
        with self._write() as db:
            if db.execute("UPDATE users SET admin = ? WHERE name = ?",
                          (int(bool(admin)), name)).rowcount == 0:
                raise UnknownUser(name)

    def remove_user(self, name: str) -> list[str]:
        """Delete a user, revoke their tokens and drop them as maintainer.

        :return: the projects left without any maintainer (only admins may
            upload there until someone is granted them).
        """
        name = normalize_user(name)
        with self._write() as db:
            if db.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount == 0:
                raise UnknownUser(name)
            db.execute("UPDATE tokens SET revoked = 1 WHERE user = ?", (name,))
            projects = [row[0] for row in
                        db.execute("SELECT project FROM maintainers WHERE user = ?", (name,))]
            db.execute("DELETE FROM maintainers WHERE user = ?", (name,))
            orphans = [p for p in projects
                       if not db.execute("SELECT 1 FROM maintainers WHERE project = ?", (p,)).fetchone()]
        log.info("accounts: user {user} removed", user=name)
        return sorted(orphans)

    def get_user(self, name: str) -> User | None:
        try:
            name = normalize_user(name)
        except AccountError:
            return None
        with self._read() as db:
            row = db.execute("SELECT name, admin, created FROM users WHERE name = ?", (name,)).fetchone()
        return None if row is None else User(row[0], bool(row[1]), row[2])

    def list_users(self) -> list[User]:
        with self._read() as db:
            rows = db.execute("SELECT name, admin, created FROM users ORDER BY name").fetchall()
        return [User(n, bool(a), c) for n, a, c in rows]

    def verify_password(self, name: str, password: str) -> User | None:
        """The user if ``password`` is theirs, else None.

        An unknown or invalid name still costs one argon2 verification (of a
        dummy hash), so response time does not tell which names exist.  A
        hash made with older parameters is replaced on success.
        """
        try:
            key = normalize_user(name)
        except AccountError:
            key = None
        from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

        row = None
        if key is not None:
            with self._read() as db:
                row = db.execute("SELECT name, password_hash, admin, created FROM users WHERE name = ?",
                                 (key,)).fetchone()
        if row is None:
            try:
                self._hasher.verify(self._dummy(), password)
            except (VerificationError, InvalidHashError):
                pass
            return None
        user_name, password_hash, admin, created = row
        try:
            self._hasher.verify(password_hash, password)
        except VerifyMismatchError:
            return None
        except (VerificationError, InvalidHashError):
            log.warn("accounts: the stored password hash of {user} is not valid", user=user_name)
            return None
        if self._hasher.check_needs_rehash(password_hash):
            new_hash = self._hasher.hash(password)
            with self._write() as db:
                db.execute("UPDATE users SET password_hash = ? WHERE name = ? AND password_hash = ?",
                           (new_hash, user_name, password_hash))
        return User(user_name, bool(admin), created)

    def _dummy(self) -> str:
        if self._dummy_hash is None:
            self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(16))
        return self._dummy_hash

    # -------------------------------------------------------------- tokens

    def create_token(self, user: str, description: str = "",
                     projects: Iterable[str] | None = None) -> tuple[str, str]:
        """A new API token for ``user``: ``(token_id, token_string)``.

        The token string is shown once and cannot be recovered: only the
        sha256 of its secret is stored.  ``projects`` (project names)
        restricts what the token may upload to; None means no restriction.
        """
        user = normalize_user(user)
        if not isinstance(description, str) or len(description) > MAX_DESCRIPTION \
                or _CONTROL.search(description):
            raise AccountError(f"description: at most {MAX_DESCRIPTION} printable characters")
        scope: str | None = None
        if projects is not None:
            if isinstance(projects, str):
                raise AccountError("projects: expected a list of project names")
            names = sorted({_project(p) for p in projects})
            if not names:
                raise AccountError("projects: an empty scope allows nothing (leave it out for all)")
            scope = json.dumps(names)
        secret = secrets.token_urlsafe(32)
        with self._write() as db:
            if not db.execute("SELECT 1 FROM users WHERE name = ?", (user,)).fetchone():
                raise UnknownUser(user)
            while True:
                token_id = secrets.token_hex(6)
                if not db.execute("SELECT 1 FROM tokens WHERE id = ?", (token_id,)).fetchone():
                    break
            db.execute("INSERT INTO tokens (id, user, secret_sha256, description, projects, created) "
                       "VALUES (?, ?, ?, ?, ?, ?)",
                       (token_id, user, _sha256(secret), description, scope, self._clock()))
        log.info("accounts: token {token_id} created for {user}", token_id=token_id, user=user)
        return token_id, f"{TOKEN_PREFIX}{token_id}-{secret}"

    def verify_token(self, token: str) -> Identity | None:
        """The identity a token string stands for, or None when it is
        malformed, unknown, revoked or its user is gone."""
        parsed = parse_token(token)
        if parsed is None:
            return None
        token_id, secret = parsed
        with self._read() as db:
            row = db.execute(
                "SELECT t.secret_sha256, t.projects, t.revoked, t.last_used, u.name, u.admin "
                "FROM tokens t LEFT JOIN users u ON u.name = t.user WHERE t.id = ?",
                (token_id,)).fetchone()
        expected = row[0] if row is not None else "0" * 64
        if not hmac.compare_digest(expected.encode("ascii"), _sha256(secret).encode("ascii")):
            return None
        _, scope, revoked, last_used, user, admin = row
        if revoked or user is None:
            return None
        now = self._clock()
        if last_used is None or abs(now - last_used) >= LAST_USED_RESOLUTION:
            with self._write() as db:
                db.execute("UPDATE tokens SET last_used = ? WHERE id = ?", (now, token_id))
        return Identity(user, bool(admin), token_id, None if scope is None else frozenset(json.loads(scope)))

    def revoke_token(self, token_id: str) -> None:
        """Revoke a token for good (it stays listed as revoked)."""
        with self._write() as db:
            if db.execute("UPDATE tokens SET revoked = 1 WHERE id = ?", (token_id,)).rowcount == 0:
                raise UnknownToken(token_id)
        log.info("accounts: token {token_id} revoked", token_id=token_id)

    def list_tokens(self, user: str | None = None) -> list[TokenInfo]:
        query = "SELECT id, user, description, projects, created, last_used, revoked FROM tokens"
        args: tuple = ()
        if user is not None:
            query += " WHERE user = ?"
            args = (normalize_user(user),)
        with self._read() as db:
            rows = db.execute(query + " ORDER BY user, created, id", args).fetchall()
        return [TokenInfo(i, u, d, None if p is None else frozenset(json.loads(p)), c, lu, bool(r))
                for i, u, d, p, c, lu, r in rows]

    # --------------------------------------------------------- maintainers

    def grant(self, project: str, user: str) -> None:
        """Make ``user`` a maintainer of ``project`` (no error if already)."""
        project, user = _project(project), normalize_user(user)
        with self._write() as db:
            if not db.execute("SELECT 1 FROM users WHERE name = ?", (user,)).fetchone():
                raise UnknownUser(user)
            db.execute("INSERT OR IGNORE INTO maintainers (project, user) VALUES (?, ?)", (project, user))
        log.info("accounts: {user} now maintains {project}", user=user, project=project)

    def revoke(self, project: str, user: str) -> bool:
        """Drop ``user`` from ``project``'s maintainers; False if they were not one."""
        project, user = _project(project), normalize_user(user)
        with self._write() as db:
            removed = db.execute("DELETE FROM maintainers WHERE project = ? AND user = ?",
                                 (project, user)).rowcount > 0
        if removed:
            log.info("accounts: {user} no longer maintains {project}", user=user, project=project)
        return removed

    def maintainers(self, project: str) -> set[str]:
        project = _project(project)
        with self._read() as db:
            return {row[0] for row in
                    db.execute("SELECT user FROM maintainers WHERE project = ?", (project,))}

    def projects_of(self, user: str) -> list[str]:
        user = normalize_user(user)
        with self._read() as db:
            return [row[0] for row in
                    db.execute("SELECT project FROM maintainers WHERE user = ? ORDER BY project", (user,))]


class _Transaction:
    """``with store._write() as db``: the store's lock plus one SQLite
    transaction, committed on success and rolled back on any error."""

    def __init__(self, store: AccountStore, begin: str) -> None:
        self._store = store
        self._begin = begin

    def __enter__(self) -> sqlite3.Connection:
        self._store._lock.acquire()
        try:
            db = self._store._db()
            db.execute(self._begin)
        except BaseException:
            self._store._lock.release()
            raise
        self._db = db
        return db

    def __exit__(self, kind: Any, value: Any, tb: Any) -> None:
        try:
            self._db.execute("ROLLBACK" if kind is not None else "COMMIT")
        finally:
            self._store._lock.release()


def _connect(path: Path) -> sqlite3.Connection:
    # Password hashes: readable by the server's user only.  Created with that
    # mode before SQLite opens it, as SQLite gives its -wal and -shm files
    # the database file's permissions.  A new database is built whole and
    # linked into place (2 fsyncs instead of 8, on the server's way to its
    # first answer).
    try:
        create_sqlite(path, _migrate, mode=0o600)
    except (OSError, sqlite3.Error):
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        except OSError:
            pass  # SQLite's own error about the path, below, says more
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                           check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        # Deleted hashes and token digests are overwritten, not left in free pages.
        conn.execute("PRAGMA secure_delete = ON")
        _migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _migrate(conn: sqlite3.Connection) -> None:
    if conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(f"accounts schema version {version} is newer than this pypicache "
                               f"understands ({SCHEMA_VERSION})")
        for step in range(version + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[step]:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


# ------------------------------------------------------------ the server side


def parse_basic(header: bytes | str | None) -> tuple[str, str] | None:
    """``(user, password)`` from an ``Authorization: Basic ...`` value.

    None for anything else: another scheme, bad base64, not UTF-8, no
    colon, an empty user name, or an absurdly long header.
    """
    if header is None:
        return None
    if isinstance(header, str):
        try:
            header = header.encode("ascii")
        except UnicodeEncodeError:
            return None
    if len(header) > 8192:
        return None
    scheme, _, encoded = header.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep or not user:
        return None
    return user, password


class Accounts:
    """The account store as the server uses it: off the reactor thread.

    Store calls run on one dedicated thread (SQLite blocks), so they never
    contend with each other for the database; password checks (argon2) on a
    second one.
    Successful password checks are cached for ``password_ttl`` seconds
    (bounded to ``cache_size`` entries, keyed by a sha256 of user and
    password, so no plain password is kept in memory): without it every
    request of an authenticated ``pip install`` would cost an argon2 hash.
    Token checks are cheap and cached only ``token_ttl`` seconds, so a
    revoked token stops working almost at once.  A password changed or a
    user removed with the admin command (another process) is noticed when
    the cached entry expires.

    Concurrent checks of the same credentials share one verification.

    Under attack (docs/security.md, "Login throttling"): password checks
    (argon2) run on a thread of their own, so token checks and the
    maintainer lookups of uploads never queue behind them; at most
    ``max_pending_passwords`` wait for that thread (then
    :class:`LoginRefused` 503); and each client address and each user name
    gets ``max_failures`` attempts per ``failure_window`` seconds (then
    :class:`LoginRefused` 429).  Cached successes skip the limits, so a user
    whose name is under attack keeps working with a token or a password
    checked recently.
    """

    def __init__(self, store: AccountStore, reactor: Any, *, clock: Any = None,
                 password_ttl: float = 60.0, token_ttl: float = 5.0, cache_size: int = 1024,
                 max_failures: int = 10, failure_window: float = 60.0, max_pending_passwords: int = 16) -> None:
        self.store = store
        self._reactor = reactor
        self._clock = clock if clock is not None else reactor
        self._ttl = {"password": password_ttl, "token": token_ttl}
        self._cache_size = cache_size
        self._cache: OrderedDict[str, tuple[float, Identity]] = OrderedDict()
        self._pending: dict[str, list[defer.Deferred]] = {}
        self._failures = FailureWindow(self._clock, max_failures=max_failures, window=failure_window)
        self._max_pending_passwords = max_pending_passwords
        self._passwords_queued = 0
        self._closed = False
        self._pool = ThreadPool(1, 1, name="pypicache-accounts")
        self._pool.start()
        #: Started on the first password check: most servers never have one.
        self._password_pool: ThreadPool | None = None
        # The thread is not a daemon: stop it at shutdown even without close().
        self._trigger: Any = reactor.addSystemEventTrigger("before", "shutdown", self._shutdown)

    def _call(self, f: Callable[..., T], *args: Any, pool: ThreadPool | None = None) -> defer.Deferred:
        if self._closed:
            return defer.fail(RuntimeError("accounts are closed"))
        return deferToThreadPool(self._reactor, pool or self._pool, f, *args)

    def authenticate(self, authorization: bytes | None, client: str | None = None) -> defer.Deferred:
        """Deferred firing with the :class:`Identity` of an ``Authorization``
        header value, or None for missing, malformed or wrong credentials.

        ``client`` (the peer's address) is what failed attempts are counted
        against, besides the user name.  Fails with :class:`LoginRefused`
        when the credentials were not checked because of the limits, and
        otherwise only when the account database itself fails.
        """
        credentials = parse_basic(authorization)
        if credentials is None:
            return defer.succeed(None)
        user, password = credentials
        kind = "token" if user == TOKEN_USER else "password"
        key = hashlib.sha256(f"{kind}\0{user}\0{password}".encode("utf-8", "surrogatepass")).hexdigest()
        now = self._clock.seconds()
        cached = self._cache.get(key)
        if cached is not None:
            if cached[0] > now:
                self._cache.move_to_end(key)
                return defer.succeed(cached[1])
            del self._cache[key]
        mine: defer.Deferred = defer.Deferred()
        waiters = self._pending.get(key)
        if waiters is not None:
            waiters.append(mine)
            return mine
        # A token has 256 random bits: guessing one is hopeless, so a wrong
        # token counts against the client only, never locks out its user.
        limited: list[tuple[str, str]] = [] if client is None else [("client", client)]
        if kind == "password":
            limited.append(("user", user.lower()))
        wait = self._failures.retry_after(limited)
        if wait:
            return defer.fail(LoginRefused(429, wait, f"too many failed logins: retry in {wait} s"))
        if kind == "password":
            if self._passwords_queued >= self._max_pending_passwords:
                return defer.fail(LoginRefused(503, 1, "too many password checks waiting: retry shortly"))
            self._passwords_queued += 1
        stamp = self._failures.attempt(limited)
        self._pending[key] = [mine]
        if kind == "token":
            d = self._call(self.store.verify_token, password)
        else:
            if self._password_pool is None and not self._closed:
                self._password_pool = ThreadPool(1, 1, name="pypicache-passwords")
                self._password_pool.start()
            d = self._call(self._password_identity, user, password, pool=self._password_pool)
        d.addBoth(self._settled, key, kind, limited, stamp)
        return mine

    def _password_identity(self, user: str, password: str) -> Identity | None:
        found = self.store.verify_password(user, password)
        return None if found is None else Identity(found.name, found.admin)

    def _settled(self, result: Any, key: str, kind: str, limited: list[tuple[str, str]], stamp: float) -> None:
        if kind == "password":
            self._passwords_queued -= 1
        waiters = self._pending.pop(key, [])
        if isinstance(result, Identity):
            self._failures.succeeded(limited, stamp)
            self._cache[key] = (self._clock.seconds() + self._ttl[kind], result)
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        elif isinstance(result, Failure):  # the database failed: not the client's fault
            self._failures.succeeded(limited, stamp)
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    def forget(self) -> None:
        """Drop every cached verification (after a change made in-process)."""
        self._cache.clear()

    def maintainers(self, project: str) -> defer.Deferred:
        """Deferred firing with the set of ``project``'s maintainers."""
        return self._call(self.store.maintainers, project)

    def grant(self, project: str, user: str) -> defer.Deferred:
        """Deferred firing with None once ``user`` maintains ``project``."""
        return self._call(self.store.grant, project, user)

    def revoke(self, project: str, user: str) -> defer.Deferred:
        """Deferred firing with True once ``user`` no longer maintains
        ``project`` (False if they did not)."""
        return self._call(self.store.revoke, project, user)

    def close(self) -> defer.Deferred:
        """Finish queued calls, close the database, stop the thread."""
        if self._closed:
            return defer.succeed(None)
        d = deferToThreadPool(self._reactor, self._pool, self.store.close)
        self._closed = True

        def stopped(result: Any) -> Any:
            self._pool.stop()
            if self._password_pool is not None:
                self._password_pool.stop()
            if self._trigger is not None:
                self._reactor.removeSystemEventTrigger(self._trigger)
                self._trigger = None
            return result

        return d.addBoth(stopped)

    def _shutdown(self) -> defer.Deferred:
        self._trigger = None
        return self.close()
