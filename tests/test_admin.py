"""The ``pypicache`` admin command: ``main([...])`` against a temporary config."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from argon2 import PasswordHasher

from pypicache.services import accounts as accounts_module
from pypicache.cli import admin
from pypicache.services.accounts import AccountStore
from pypicache.cli.admin import CommandError, catalog_action, main
from pypicache.providers.index import memory, sqlite
from pypicache.testing import index_file, index_page, local_file, make_context, stop_context, wait

PASSWORD = "correct horse battery"

needs_index_writes = pytest.mark.xfail(
    not all(hasattr(cls, m) for cls in (memory.MemoryIndex, sqlite.SQLiteIndex)
            for m in ("add_file", "set_yanked", "remove_file")),
    reason="IIndex.add_file/set_yanked/remove_file are not implemented by the index providers yet",
    strict=True,
)


@pytest.fixture(autouse=True)
def cheap_argon2(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command builds its own store: make its default hasher cheap."""
    monkeypatch.setattr(accounts_module, "default_hasher",
                        lambda: PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "pypicache.toml"
    path.write_text('[server]\ndata_dir = "data"\n')
    return path


class Stdin(io.StringIO):
    def __init__(self, text: str = "", tty: bool = False) -> None:
        super().__init__(text)
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


class CLI:
    """Runs ``main`` with the temp config; remembers the last output."""

    def __init__(self, config: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.config = config
        self.capsys = capsys
        self.monkeypatch = monkeypatch
        self.out = self.err = ""

    def __call__(self, *argv: str, stdin: str = "", tty: bool = False) -> int:
        self.monkeypatch.setattr(sys, "stdin", Stdin(stdin, tty))
        code = main(["--config", str(self.config), *argv])
        captured = self.capsys.readouterr()
        self.out, self.err = captured.out, captured.err
        assert "Traceback" not in self.err
        if code:
            assert self.err.count("\n") == 1, self.err  # one clear line
        return code

    def store(self) -> AccountStore:
        return AccountStore(self.config.parent / "data" / "accounts.sqlite3",
                            hasher=PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))


@pytest.fixture
def cli(config: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch) -> CLI:
    return CLI(config, capsys, monkeypatch)


# ---------------------------------------------------------------------- users


def test_user_add_from_stdin(cli: CLI) -> None:
    assert cli("user", "add", "Alice", "--password-stdin", stdin=PASSWORD + "\n") == 0
    assert cli.out == "added user alice\n"
    assert PASSWORD not in cli.out + cli.err
    store = cli.store()
    try:
        user = store.verify_password("alice", PASSWORD)
        assert user is not None and not user.admin
    finally:
        store.close()
    assert cli("user", "add", "root", "--admin", "--password-stdin", stdin=PASSWORD + "\r\n") == 0
    assert cli("user", "list") == 0
    lines = cli.out.splitlines()
    assert [line.split("\t")[:2] for line in lines] == [["alice", "user"], ["root", "admin"]]


def test_user_add_interactive(cli: CLI, monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter([PASSWORD, PASSWORD, PASSWORD, "different!"])
    prompts: list[str] = []

    def fake_getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return next(answers)

    monkeypatch.setattr(admin.getpass, "getpass", fake_getpass)
    assert cli("user", "add", "bob", tty=True) == 0
    assert len(prompts) == 2
    assert cli("user", "add", "carol", tty=True) == 1
    assert "do not match" in cli.err
    assert cli("user", "list") == 0 and "carol" not in cli.out


def test_user_add_refusals(cli: CLI) -> None:
    assert cli("user", "add", "bob") == 1
    assert "--password-stdin" in cli.err
    assert cli("user", "add", "bob", "--password-stdin") == 1
    assert "no password" in cli.err
    assert cli("user", "add", "bob", "--password-stdin", stdin="short\n") == 1
    assert "too short" in cli.err
    assert cli("user", "add", "__token__", "--password-stdin", stdin=PASSWORD) == 1
    assert "invalid user name" in cli.err
    assert cli("user", "add", "bob", "--password-stdin", stdin=PASSWORD) == 0
    assert cli("user", "add", "BOB", "--password-stdin", stdin=PASSWORD) == 1
    assert "already exists" in cli.err


def test_user_passwd_and_remove(cli: CLI) -> None:
    assert cli("user", "add", "bob", "--password-stdin", stdin=PASSWORD) == 0
    assert cli("user", "passwd", "bob", "--password-stdin", stdin="brand new pw\n") == 0
    store = cli.store()
    try:
        assert store.verify_password("bob", "brand new pw") is not None
    finally:
        store.close()
    assert cli("user", "passwd", "nobody", "--password-stdin", stdin="brand new pw\n") == 1
    assert "no user named" in cli.err
    assert cli("project", "grant", "proj", "bob") == 0
    assert cli("user", "remove", "bob") == 0
    assert "removed user bob" in cli.out
    assert "proj" in cli.err  # now without maintainer
    assert cli("user", "remove", "bob") == 1
    assert "no user named" in cli.err


# --------------------------------------------------------------------- tokens


def test_token_lifecycle(cli: CLI) -> None:
    assert cli("user", "add", "bob", "--password-stdin", stdin=PASSWORD) == 0
    assert cli("token", "create", "bob", "--description", "CI", "--project", "My_Proj", "my.proj",
               "-p", "other") == 0
    token = cli.out.strip()
    assert token.startswith("pypicache-") and "\n" not in token
    assert "__token__" in cli.err and token not in cli.err
    store = cli.store()
    try:
        identity = store.verify_token(token)
        assert identity.user == "bob" and identity.projects == {"my-proj", "other"}
    finally:
        store.close()
    token_id = identity.token_id
    assert cli("token", "list") == 0
    assert token_id in cli.out and "active" in cli.out and "projects=my-proj,other" in cli.out
    assert token.split("-", 2)[2] not in cli.out
    assert cli("token", "list", "nobody") == 0 and cli.out == ""
    assert cli("token", "revoke", token_id) == 0
    assert cli("token", "list", "bob") == 0 and "revoked" in cli.out
    store = cli.store()
    try:
        assert store.verify_token(token) is None
    finally:
        store.close()
    assert cli("token", "revoke", "ffffffffffff") == 1
    assert cli("token", "create", "nobody") == 1
    assert "no user named" in cli.err


# ---------------------------------------------------------------- maintainers


def test_project_maintainers(cli: CLI) -> None:
    for name in ("bob", "carol"):
        assert cli("user", "add", name, "--password-stdin", stdin=PASSWORD) == 0
    assert cli("project", "grant", "My.Proj", "bob") == 0
    assert cli.out == "bob now maintains my-proj\n"
    assert cli("project", "grant", "my_proj", "Carol") == 0
    assert cli("project", "maintainers", "MY-PROJ") == 0
    assert cli.out == "bob\ncarol\n"
    assert cli("project", "revoke", "my-proj", "carol") == 0
    assert cli("project", "revoke", "my-proj", "carol") == 1
    assert "not a maintainer" in cli.err
    assert cli("project", "grant", "proj", "nobody") == 1
    assert cli("project", "grant", "not valid!", "bob") == 1
    assert "not a valid project name" in cli.err
    assert cli("project", "maintainers", "nothing") == 0 and cli.out == ""


# ------------------------------------------------------ usage and config errors


def test_usage_errors_exit_2(cli: CLI, capsys: Any) -> None:
    assert main([]) == 2
    assert "required" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2
    assert main(["user", "add"]) == 2
    assert main(["token", "create"]) == 2
    assert main(["--help"]) == 0
    assert "user" in capsys.readouterr().out


def test_config_errors_exit_2(tmp_path: Path, cli: CLI) -> None:
    cli.config = tmp_path / "missing.toml"
    assert cli("user", "list") == 2
    assert "config error" in cli.err and "missing.toml" in cli.err
    cli.config = tmp_path / "bad.toml"
    cli.config.write_text("[server\n")
    assert cli("user", "list") == 2
    cli.config.write_text("[server]\nbogus = 1\n")
    assert cli("user", "list") == 2
    assert "server.bogus" in cli.err


def test_data_dir_that_cannot_be_created(tmp_path: Path, cli: CLI) -> None:
    (tmp_path / "file").write_text("")
    cli.config.write_text(f'[server]\ndata_dir = "{tmp_path / "file" / "sub"}"\n')
    assert cli("user", "list") == 2
    assert "server.data_dir" in cli.err


def test_default_config_uses_xdg_data_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: Any) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(sys, "stdin", Stdin(PASSWORD))
    assert main(["user", "add", "bob", "--password-stdin"]) == 0
    assert (tmp_path / "xdg" / "pypicache" / "accounts.sqlite3").exists()


# -------------------------------------------------------------------- catalog


@pytest.fixture
def memory_index() -> Any:
    return memory.MemoryIndex()


async def private_project(index: Any) -> None:
    """``proj``: 1.0 (wheel + sdist), 1.0.post1 and 2.0 wheels, all uploaded."""
    for filename in ("proj-1.0-py3-none-any.whl", "proj-1.0.tar.gz",
                     "proj-1.0.post1-py3-none-any.whl", "Proj-2.0-py3-none-any.whl"):
        await wait(index.add_file("proj", local_file(filename)))


def yank_state(record: Any) -> dict[str, tuple[bool, str | None]]:
    return {f.filename: (f.yanked, f.yanked_reason) for f in record.files}


@needs_index_writes
@pytest_twisted.ensureDeferred
async def test_yank_by_version_and_filename(memory_index: Any) -> None:
    await private_project(memory_index)
    said: list[str] = []
    assert await catalog_action(memory_index, "yank", "Proj", "1.0", reason="broken",
                                out=said.append) == 0
    assert said == ["yanked proj-1.0-py3-none-any.whl", "yanked proj-1.0.tar.gz"]
    record = await wait(memory_index.get_project("proj"))
    assert yank_state(record) == {
        "proj-1.0-py3-none-any.whl": (True, "broken"), "proj-1.0.tar.gz": (True, "broken"),
        "proj-1.0.post1-py3-none-any.whl": (False, None), "Proj-2.0-py3-none-any.whl": (False, None)}
    # "2" is version 2.0; an unnormalised filename spelling still matches.
    assert await catalog_action(memory_index, "yank", "proj", "2", out=said.append) == 0
    assert await catalog_action(memory_index, "unyank", "proj", "proj-1.0.tar.gz", out=said.append) == 0
    record = await wait(memory_index.get_project("proj"))
    assert yank_state(record)["Proj-2.0-py3-none-any.whl"] == (True, None)
    assert yank_state(record)["proj-1.0.tar.gz"] == (False, None)


@needs_index_writes
@pytest_twisted.ensureDeferred
async def test_delete_asks_first(memory_index: Any) -> None:
    await private_project(memory_index)
    asked: list[list[str]] = []

    def refuse(files: Any) -> bool:
        asked.append([f.filename for f in files])
        return False

    said: list[str] = []
    assert await catalog_action(memory_index, "delete", "proj", "1.0", confirm=refuse,
                                out=said.append) == 1
    assert asked == [["proj-1.0-py3-none-any.whl", "proj-1.0.tar.gz"]]
    assert len((await wait(memory_index.get_project("proj"))).files) == 4
    assert await catalog_action(memory_index, "delete", "proj", "1.0", confirm=lambda files: True,
                                out=said.append) == 0
    record = await wait(memory_index.get_project("proj"))
    assert [f.filename for f in record.files] == ["proj-1.0.post1-py3-none-any.whl",
                                                  "Proj-2.0-py3-none-any.whl"]
    assert await wait(memory_index.used_filename("proj-1.0.tar.gz")) is not None


@needs_index_writes
@pytest_twisted.ensureDeferred
async def test_catalog_refusals(memory_index: Any) -> None:
    await private_project(memory_index)
    await wait(memory_index.save_upstream_page(index_page("public", index_file("public-1.0.tar.gz")), 0.0))

    async def refused(project: str, target: str) -> str:
        with pytest.raises(CommandError) as info:
            await catalog_action(memory_index, "yank", project, target, out=lambda line: None)
        return str(info.value)

    assert "no project named nothing" in await refused("nothing", "1.0")
    assert "not a valid project name" in await refused("bad name!", "1.0")
    assert "not a private project" in await refused("public", "public-1.0.tar.gz")
    assert "no uploaded file of version 3.0" in await refused("proj", "3.0")
    assert "not a version" in await refused("proj", "proj-9.9.tar.gz")


@needs_index_writes
@pytest_twisted.ensureDeferred
async def test_upstream_files_of_a_private_project_are_left_alone(memory_index: Any) -> None:
    from pypicache.model import BlobInfo

    cached = [index_file("proj-0.5.tar.gz"), index_file("proj-1.0-py2-none-any.whl")]
    await wait(memory_index.save_upstream_page(index_page("proj", *cached), 0.0))
    for f in cached:
        await wait(memory_index.mark_stored("proj", f.filename, BlobInfo(f.sha256, 1)))
    await private_project(memory_index)  # the name becomes private; stored files stay unlisted
    with pytest.raises(CommandError, match="comes from the upstream"):
        await catalog_action(memory_index, "delete", "proj", "proj-0.5.tar.gz", out=lambda line: None)
    said: list[str] = []
    await catalog_action(memory_index, "yank", "proj", "1.0", out=said.append)
    assert said == ["yanked proj-1.0-py3-none-any.whl", "yanked proj-1.0.tar.gz"]


# ----------------------------------------- the real command, in its own process


async def _populate_sqlite(data_dir: Path) -> None:
    context = make_context(data_dir)
    index = sqlite.factory.create({}, context)
    try:
        await private_project(index)
    finally:
        await wait(index.close())
        stop_context(context)


async def run_command(config: Path, *argv: str, stdin: str = "") -> subprocess.CompletedProcess:
    """``pypicache ...`` as a user runs it, in its own process: the catalog
    commands run the (process-wide, one-shot) reactor."""
    from twisted.internet import reactor
    from twisted.internet.threads import deferToThread

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    command = [sys.executable, "-m", "pypicache.cli.admin", "--config", str(config), *argv]
    return await deferToThread(subprocess.run, command, input=stdin, capture_output=True, text=True,
                               timeout=60, env=env).addTimeout(90, reactor)


async def _project(data_dir: Path, name: str) -> Any:
    context = make_context(data_dir)
    index = sqlite.factory.create({}, context)
    try:
        return await wait(index.get_project(name))
    finally:
        await wait(index.close())
        stop_context(context)


@needs_index_writes
@pytest_twisted.ensureDeferred
async def test_catalog_commands_against_the_configured_index(config: Path) -> None:
    data_dir = config.parent / "data"
    data_dir.mkdir()
    await _populate_sqlite(data_dir)

    done = await run_command(config, "yank", "proj", "1.0", "--reason", "security fix in 1.0.post1")
    assert (done.returncode, done.stdout, done.stderr) == (
        0, "yanked proj-1.0-py3-none-any.whl\nyanked proj-1.0.tar.gz\n", "")
    record = await _project(data_dir, "proj")
    assert record.file("proj-1.0.tar.gz").yanked_reason == "security fix in 1.0.post1"

    done = await run_command(config, "delete", "proj", "proj-1.0.tar.gz")  # stdin is no terminal
    assert done.returncode == 1 and "--yes" in done.stderr and "Traceback" not in done.stderr
    done = await run_command(config, "delete", "proj", "proj-1.0.tar.gz", "--yes")
    assert (done.returncode, done.stdout) == (0, "deleted proj-1.0.tar.gz\n")
    done = await run_command(config, "unyank", "proj", "nothing-here.whl")
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert (await _project(data_dir, "proj")).file("proj-1.0.tar.gz") is None


def test_catalog_command_config_error_in_process(config: Path, cli: CLI) -> None:
    # Fails before the reactor runs, so it can run in-process.
    config.write_text('[index]\nprovider = "nonexistent"\n')
    assert cli("yank", "proj", "1.0") == 2
    assert "nonexistent" in cli.err



@pytest_twisted.ensureDeferred
async def test_delete_confirmation_prompt(monkeypatch: pytest.MonkeyPatch, capsys: Any,
                                          tmp_path: Path) -> None:
    import argparse

    from twisted.internet import reactor

    from pypicache.model import FileRecord

    args = argparse.Namespace(yes=False, project="Proj")
    context = make_context(tmp_path)
    try:
        monkeypatch.setattr(sys, "stdin", Stdin(tty=False))
        with pytest.raises(CommandError, match="--yes"):
            admin._confirm_factory(args, reactor, context.threadpool)
        monkeypatch.setattr(sys, "stdin", Stdin(tty=True))
        ask = admin._confirm_factory(args, reactor, context.threadpool)
        for answer, expected in (("y\n", True), (" YES ", True), ("", False), ("no", False)):
            monkeypatch.setattr("builtins.input", lambda prompt, answer=answer: answer)
            assert await wait(ask([FileRecord("proj-1.0.tar.gz")])) is expected
        assert "proj-1.0.tar.gz" in capsys.readouterr().err
        assert admin._confirm_factory(argparse.Namespace(yes=True, project="p"), reactor, None) is None
    finally:
        stop_context(context)


def test_project_names_must_be_ascii(cli: CLI) -> None:
    """``ſ`` and the Kelvin sign fold onto ASCII letters; PEP 508 names are ASCII."""
    assert cli("user", "add", "bob", "--password-stdin", stdin=PASSWORD) == 0
    for name in ("\u017fample", "\u212aiwi", "\u0130nfo"):
        assert cli("project", "grant", name, "bob") == 1
        assert "not a valid project name" in cli.err
    assert cli("project", "maintainers", "\u212aiwi") == 1
    assert cli("user", "add", "\u212aarl", "--password-stdin", stdin=PASSWORD) == 1
