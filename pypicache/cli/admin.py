"""The ``pypicache`` admin command: accounts, tokens, maintainers, yanking,
and ``verify`` (is every stored file really stored, with the right bytes?).

It works against the same config file as the server (``--config``; without
it the embedded default), so it finds the same data directory: the accounts
database ``<data_dir>/accounts.sqlite3`` and the configured index.  Both are
SQLite in WAL mode by default, so the command may run while the server does.

Every failure is one line on stderr and a non-zero exit status, never a
traceback: 2 for a usage or config error, 1 when the operation itself
fails (unknown user, wrong password confirmation, no such file, ...).
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence, TextIO

from pypicache.cli.common import CommandError, fail as _fail, open_storage as _open_storage, out as _out, \
    run_reactor
from pypicache.daemon import config as configuration
from pypicache.errors import ConfigError
from pypicache.model import FileRecord, InvalidName, normalize

__all__ = ["main", "build_parser", "catalog_action", "verify_command", "run_reactor", "CommandError"]

ACCOUNTS_FILE = "accounts.sqlite3"
_DONE = {"yank": "yanked", "unyank": "unyanked", "delete": "deleted"}




class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so ``main`` returns a code."""

    def error(self, message: str) -> Any:
        raise _UsageError(f"{self.prog}: {message}", self.format_usage())


class _UsageError(Exception):
    def __init__(self, message: str, usage: str) -> None:
        super().__init__(message)
        self.usage = usage


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pypicache", description="Run a pypicache server's chores: accounts, catalogue, pre-filling, bundles, policy, audit, cache.")
    parser.add_argument("--config", "-c", metavar="FILE", default=None,
                        help="the server's TOML config file (default: the embedded default)")
    commands = parser.add_subparsers(dest="group", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    user = commands.add_parser("user", help="manage users").add_subparsers(dest="action", metavar="ACTION")
    user.required = True
    p = user.add_parser("add", help="create a user (asks for the password)")
    p.add_argument("name")
    p.add_argument("--admin", action="store_true", help="may upload to and manage every project")
    p.add_argument("--password-stdin", action="store_true", help="read the password from one line of stdin")
    p = user.add_parser("passwd", help="change a user's password")
    p.add_argument("name")
    p.add_argument("--password-stdin", action="store_true", help="read the password from one line of stdin")
    p = user.add_parser("remove", help="delete a user, revoking their tokens and maintainerships")
    p.add_argument("name")
    user.add_parser("list", help="list users")

    token = commands.add_parser("token", help="manage API tokens").add_subparsers(dest="action",
                                                                                 metavar="ACTION")
    token.required = True
    p = token.add_parser("create", help="create a token for USER and print it (once)")
    p.add_argument("user")
    p.add_argument("--description", "-d", default="", help="what the token is for")
    p.add_argument("--project", "-p", action="extend", nargs="+", dest="projects", metavar="PROJECT",
                   help="restrict the token to these projects (repeatable; default: all of the user's)")
    p = token.add_parser("list", help="list tokens (never their secrets)")
    p.add_argument("user", nargs="?")
    p = token.add_parser("revoke", help="revoke a token")
    p.add_argument("id")

    project = commands.add_parser("project", help="manage project maintainers").add_subparsers(
        dest="action", metavar="ACTION")
    project.required = True
    for name, help_text in (("grant", "let USER upload to PROJECT"),
                            ("revoke", "stop USER uploading to PROJECT")):
        p = project.add_parser(name, help=help_text)
        p.add_argument("project")
        p.add_argument("user")
    p = project.add_parser("maintainers", help="list a project's maintainers")
    p.add_argument("project")

    what = "a filename, or a version meaning all of its files"
    p = commands.add_parser("yank", help="mark uploaded files yanked (PEP 592)")
    p.add_argument("project")
    p.add_argument("target", metavar="FILENAME_OR_VERSION", help=what)
    p.add_argument("--reason", "-r", default=None, help="shown to installers")
    p = commands.add_parser("unyank", help="undo a yank")
    p.add_argument("project")
    p.add_argument("target", metavar="FILENAME_OR_VERSION", help=what)
    p = commands.add_parser("delete", help="remove uploaded files (their filenames stay used)")
    p.add_argument("project")
    p.add_argument("target", metavar="FILENAME_OR_VERSION", help=what)
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")

    p = commands.add_parser("verify", help="check every stored file against the index (exit 1 on problems)",
                            description="Hash every stored file and METADATA blob and compare it with "
                                        "the index.  Safe while the server runs.")
    p.add_argument("--repair", action="store_true",
                   help="remove corrupt blobs and mark missing or corrupt files not stored (the proxy "
                        "fetches them again), fix sizes, re-attach blobs the index lost, empty the "
                        "quarantine")
    p.add_argument("--quick", action="store_true", help="check presence and size only, do not hash")
    for module in _command_modules():
        module.add_parser(commands)
    return parser


#: Commands that live in a module of their own under pypicache.cli: each has
#: ``add_parser(commands)`` (adds its sub-commands)
#: and ``run(cfg, args) -> int`` (the exit status); ``COMMANDS`` names the
#: sub-commands it adds.
COMMAND_MODULES: tuple[str, ...] = ("prefetch", "bundles", "policy", "audit", "cache")


def _command_modules() -> list[Any]:
    import importlib

    return [importlib.import_module(f"pypicache.cli.{name}") for name in COMMAND_MODULES]


def _module_for(group: str) -> Any:
    """The command module that added the sub-command ``group``, or None."""
    for module in _command_modules():
        if group in getattr(module, "COMMANDS", ()):
            return module
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; return the exit status (the console script exits with it)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as e:
        sys.stderr.write(e.usage)
        sys.stderr.write(f"{e}\n")
        return 2
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0
    try:
        cfg = configuration.load(args.config)
    except ConfigError as e:
        return _fail(f"config error: {e}", 2)
    try:
        module = _module_for(args.group)
        if module is not None:
            return module.run(cfg, args)
        if args.group in ("yank", "unyank", "delete"):
            return _run_catalog(cfg, args)
        if args.group == "verify":
            return run_reactor(cfg, args, verify_command)
        return _run_accounts(cfg, args)
    except ConfigError as e:
        return _fail(f"config error: {e}", 2)
    except CommandError as e:
        return _fail(str(e), e.code)
    except ValueError as e:  # AccountError and InvalidName are ValueErrors
        return _fail(str(e), 1)
    except KeyboardInterrupt:
        return _fail("interrupted", 1)
    except Exception as e:  # e.g. sqlite3 errors: still one line
        return _fail(f"{type(e).__name__}: {e}", 1)




# ------------------------------------------------------------------ accounts


def open_store(cfg: Any, **kwargs: Any) -> Any:
    """The account store of the configured data directory (created if needed)."""
    from pypicache.services.accounts import AccountStore

    try:
        cfg.data_dir.mkdir(0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"server.data_dir: cannot create {cfg.data_dir}: {e.strerror or e}") from e
    return AccountStore(Path(cfg.data_dir) / ACCOUNTS_FILE, **kwargs)


def read_password(from_stdin: bool, stdin: TextIO | None = None) -> str:
    """The new password: one line of stdin, or typed twice at the terminal."""
    stdin = stdin if stdin is not None else sys.stdin
    if from_stdin:
        line = stdin.readline()
        if not line:
            raise CommandError("no password on stdin")
        return line.rstrip("\r\n")
    if not stdin.isatty():
        raise CommandError("stdin is not a terminal: pass --password-stdin to read the password from it")
    first = getpass.getpass("Password: ")
    second = getpass.getpass("Password (again): ")
    if first != second:
        raise CommandError("the passwords do not match")
    return first


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(seconds))


def _run_accounts(cfg: Any, args: argparse.Namespace) -> int:
    store = open_store(cfg)
    try:
        return _accounts_command(store, args)
    finally:
        store.close()


def _audit(store: Any, action: str, target: str, **details: Any) -> None:
    """An account change, in the audit log next to the accounts database."""
    from pypicache.services import audit

    audit.append(Path(store.path).parent / audit.FILENAME, audit.event(action, "admin-cli", target, **details))


def _accounts_command(store: Any, args: argparse.Namespace) -> int:
    group, action = args.group, args.action
    if group == "user":
        if action == "add":
            from pypicache.services.accounts import normalize_user

            normalize_user(args.name)  # a bad name fails before the password is asked
            if store.get_user(args.name) is not None:
                raise CommandError(f"user {args.name.lower()!r} already exists")
            user = store.add_user(args.name, read_password(args.password_stdin), admin=args.admin)
            _audit(store, "user.add", user.name, admin=user.admin)
            _out(f"added user {user.name}{' (admin)' if user.admin else ''}")
        elif action == "passwd":
            if store.get_user(args.name) is None:
                raise CommandError(f"no user named {args.name!r}")
            store.set_password(args.name, read_password(args.password_stdin))
            _audit(store, "user.passwd", args.name.lower())
            _out(f"password of {args.name.lower()} changed")
        elif action == "remove":
            orphans = store.remove_user(args.name)
            _audit(store, "user.remove", args.name.lower())
            _out(f"removed user {args.name.lower()} (tokens revoked)")
            if orphans:
                sys.stderr.write("pypicache: note: now without maintainer (admins only until granted): "
                                 + ", ".join(orphans) + "\n")
        else:  # list
            for user in store.list_users():
                _out(f"{user.name}\t{'admin' if user.admin else 'user'}\tcreated {_when(user.created)}")
    elif group == "token":
        if action == "create":
            token_id, token = store.create_token(args.user, args.description, args.projects)
            _audit(store, "token.create", args.user.lower(), token=token_id, projects=args.projects)
            sys.stderr.write(f"pypicache: token {token_id} created; it is shown only once. "
                             "Use it as the password with user name __token__.\n")
            _out(token)
        elif action == "list":
            for t in store.list_tokens(args.user):
                scope = ",".join(sorted(t.projects)) if t.projects is not None else "*"
                state = "revoked" if t.revoked else "active"
                _out(f"{t.id}\t{t.user}\t{state}\tprojects={scope}\tcreated {_when(t.created)}\t"
                     f"last used {_when(t.last_used)}\t{t.description}")
        else:  # revoke
            store.revoke_token(args.id)
            _audit(store, "token.revoke", args.id)
            _out(f"revoked token {args.id}")
    else:  # project
        if action == "grant":
            store.grant(args.project, args.user)
            _audit(store, "grant", normalize(args.project), user=args.user.lower())
            _out(f"{args.user.lower()} now maintains {normalize(args.project)}")
        elif action == "revoke":
            if not store.revoke(args.project, args.user):
                raise CommandError(f"{args.user.lower()} is not a maintainer of {normalize(args.project)}")
            _audit(store, "revoke", normalize(args.project), user=args.user.lower())
            _out(f"{args.user.lower()} no longer maintains {normalize(args.project)}")
        else:  # maintainers
            for name in sorted(store.maintainers(args.project)):
                _out(name)
    return 0


# ------------------------------------------------------------------- catalog


async def catalog_action(index: Any, action: str, project_name: str, target: str, *,
                         reason: str | None = None,
                         confirm: Callable[[list[FileRecord]], Any] | None = None,
                         out: Callable[[str], None] = _out, audit_dir: Path | None = None) -> int:
    """Yank, unyank or delete the files ``target`` names, through an IIndex.

    ``confirm(files)`` (delete only) returns, or a Deferred firing with,
    True to go ahead.  Raises CommandError when nothing matches.
    """
    from twisted.internet import defer

    from pypicache.services.management import Management, ManageRefused, NoSuchProject, NotPrivate, NoUploadedFile

    try:
        name = normalize(project_name)
    except InvalidName as e:
        raise CommandError(str(e)) from None
    from pypicache.services.audit import FILENAME, AuditLog

    management = Management(index, audit=AuditLog(audit_dir / FILENAME) if audit_dir is not None else None)
    try:  # the rule the HTTP route follows too
        files = await management.select(name, target)
    except NoSuchProject:
        raise CommandError(f"no project named {name}") from None
    except NotPrivate:
        raise CommandError(f"{name} is not a private project: only uploaded files can be {_DONE[action]}") from None
    except (ManageRefused, NoUploadedFile) as e:
        raise CommandError(str(e)) from None
    if action == "delete" and confirm is not None and not await defer.maybeDeferred(confirm, files):
        out("nothing deleted")
        return 1
    await management.apply(action, name, files, reason=reason,
                           done=lambda f: out(f"{_DONE[action]} {f.filename}"))
    return 0


def _confirm_factory(args: argparse.Namespace, reactor: Any, threadpool: Any) -> Callable | None:
    if args.yes:
        return None
    if not sys.stdin.isatty():
        raise CommandError("stdin is not a terminal: pass --yes to delete without confirmation")

    def ask(files: list[FileRecord]) -> Any:
        from twisted.internet.threads import deferToThreadPool

        listing = "".join(f"  {f.filename}\n" for f in files)
        sys.stderr.write(f"About to delete from {normalize(args.project)}:\n{listing}"
                         "Their filenames can never be uploaded again.\n")
        # input() blocks: keep it off the reactor thread.
        d = deferToThreadPool(reactor, threadpool, input, "Delete? [y/N] ")
        return d.addCallback(lambda answer: answer.strip().lower() in ("y", "yes"))

    return ask


def _run_catalog(cfg: Any, args: argparse.Namespace) -> int:
    """Build the configured index, then run the reactor just to act and close it.

    Everything that can fail on the command line or in the config fails
    before the reactor runs, like the daemon's start-up.
    """
    confirm: dict[str, Any] = {}

    def prepare(reactor: Any, threadpool: Any) -> None:
        if args.group == "delete":
            confirm["ask"] = _confirm_factory(args, reactor, threadpool)

    async def act(cfg: Any, args: argparse.Namespace, index: Any, context: Any) -> int:
        return await catalog_action(index, args.group, args.project, args.target,
                                    reason=getattr(args, "reason", None), confirm=confirm.get("ask"),
                                    audit_dir=cfg.data_dir)

    return run_reactor(cfg, args, act, prepare=prepare)


async def verify_command(cfg: Any, args: argparse.Namespace, index: Any, context: Any) -> int:
    """``pypicache verify [--repair] [--quick]``: print each problem, then a
    summary; 0 when nothing is (left) wrong, 1 otherwise."""
    from pypicache.services.verify import verify

    storage = _open_storage(cfg, context)
    report = await verify(index, storage, repair=args.repair, deep=not args.quick,
                          reactor=context.reactor, threadpool=context.threadpool,
                          on_problem=lambda problem: _out(str(problem)))
    _out(report.summary())
    if not report.ok:
        hint = "" if args.repair else "; run with --repair to fix what can be fixed"
        sys.stderr.write(f"pypicache: {len(report.unrepaired)} problem(s) left{hint}\n")
        return 1
    return 0


if __name__ == "__main__":  # python -m pypicache.cli.admin
    raise SystemExit(main())
