"""The audit log (pypicache.services.audit): one JSON line per change, from
the server (a real twine upload, a yank over HTTP) and from the admin
command (users, tokens, delete, policy), readable after a torn write, and
``pypicache audit``'s filters."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
import treq
from twisted.internet.threads import deferToThread

from pypicache.cli import admin
from pypicache.services import audit
from tests.builders import build_wheel
from tests.clients import isolated_env
from tests.daemon import sleep, write_config
from tests.uploads import PASSWORD

BIN = Path(sys.executable).parent


def twine_upload(url: str, *files: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in isolated_env({"TWINE_NON_INTERACTIVE": "1"}).items()
           if not k.startswith("TWINE_") or k == "TWINE_NON_INTERACTIVE"}
    cmd = [str(BIN / "twine"), "upload", "--disable-progress-bar", "--non-interactive", "--repository-url", url,
           "-u", "alice", "-p", PASSWORD, *map(str, files)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def entries(data_dir: Path) -> list[dict]:
    return list(audit.read(data_dir / audit.FILENAME))


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_server_and_command_changes_are_audited(start, tmp_path, capsys):
    server = await start()
    data = server.app.config.data_dir
    conf = write_config(tmp_path / "c.toml", f'[server]\ndata_dir = "{data}"\n')
    wheel = build_wheel(tmp_path / "dist", "acme-tools", "1.0")
    result = await deferToThread(twine_upload, server.root + "/legacy/", wheel)
    assert result.returncode == 0, result.stdout + result.stderr

    response = await treq.post(server.root + f"/api/projects/acme-tools/{wheel.name}/yank",
                               auth=("alice", PASSWORD), persistent=False, data=b"reason=broken", timeout=10,
                               headers={"content-type": ["application/x-www-form-urlencoded"]})
    assert response.code == 200, await treq.content(response)
    await treq.content(response)
    await sleep(0.1)

    from pypicache.cli.admin import catalog_action  # what `pypicache delete` runs, on this reactor

    assert await catalog_action(server.app.index, "delete", "acme-tools", wheel.name, out=lambda _: None,
                                audit_dir=data) == 0
    store_cmds = [["token", "create", "alice", "-d", "ci"], ["project", "grant", "acme-tools", "bob"],
                  ["policy", "block", "evil==1.0", "--reason", "malware"]]
    for cmd in store_cmds:
        assert admin.main(["--config", str(conf), *cmd]) == 0, capsys.readouterr().err
    capsys.readouterr()

    log = entries(data)
    by_action = {e["action"]: e for e in log}
    assert by_action["claim"]["target"] == "acme-tools" and by_action["claim"]["actor"] == "alice"
    upload = by_action["upload"]
    assert upload["target"] == f"acme-tools/{wheel.name}" and upload["actor"] == "alice"
    assert upload["client"] == "127.0.0.1" and len(upload["sha256"]) == 64
    assert upload["time"].endswith("Z")
    assert by_action["yank"]["target"] == f"acme-tools/{wheel.name}"
    assert by_action["yank"]["reason"] == "broken" and by_action["yank"]["actor"] == "alice"
    assert by_action["delete"]["target"] == f"acme-tools/{wheel.name}" and by_action["delete"]["actor"] == "admin-cli"
    assert by_action["token.create"]["target"] == "alice" and by_action["token.create"]["actor"] == "admin-cli"
    assert by_action["grant"] == {**by_action["grant"], "target": "acme-tools", "user": "bob"}
    assert by_action["policy.block"]["target"] == "evil==1.0" and by_action["policy.block"]["reason"] == "malware"
    assert oct((data / audit.FILENAME).stat().st_mode & 0o777) == "0o600"


def test_user_add_and_delete_from_the_command_are_audited(tmp_path, monkeypatch, capsys):
    import io

    conf = write_config(tmp_path / "c.toml", f'[server]\ndata_dir = "{tmp_path / "d"}"\n')
    monkeypatch.setattr(sys, "stdin", io.StringIO("a long enough password\n"))
    assert admin.main(["--config", str(conf), "user", "add", "Carol", "--password-stdin"]) == 0
    assert admin.main(["--config", str(conf), "user", "remove", "carol"]) == 0
    actions = [(e["action"], e["target"], e["actor"]) for e in entries(tmp_path / "d")]
    assert actions == [("user.add", "carol", "admin-cli"), ("user.remove", "carol", "admin-cli")]


def test_a_torn_last_line_is_skipped_with_a_warning(tmp_path, capsys):
    path = tmp_path / audit.FILENAME
    audit.append(path, audit.event("upload", "alice", "a/a-1.0.tar.gz", client="10.0.0.1"))
    audit.append(path, audit.event("yank", "bob", "a/a-1.0.tar.gz"))
    whole = path.read_bytes()
    path.write_bytes(whole[:-9])  # a crash in the middle of the second write
    warnings: list[str] = []
    assert [e["action"] for e in audit.read(path, warnings.append)] == ["upload"]
    assert len(warnings) == 1 and "torn" in warnings[0]
    audit.append(path, audit.event("delete", "bob", "a/a-1.0.tar.gz"))  # appending goes on after it
    assert [e["action"] for e in audit.read(path, warnings.append)] == ["upload", "delete"]

    conf = write_config(tmp_path / "c.toml", f'[server]\ndata_dir = "{tmp_path}"\n')
    assert admin.main(["--config", str(conf), "audit"]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("\n") == 2 and "warning" in captured.err and "Traceback" not in captured.err


def test_audit_command_filters(tmp_path, capsys):
    from datetime import datetime, timezone

    path = tmp_path / audit.FILENAME
    old = datetime(2020, 1, 1, tzinfo=timezone.utc)
    audit.append(path, audit.event("upload", "alice", "acme-tools/acme_tools-1.0.tar.gz", when=old))
    audit.append(path, audit.event("upload", "bob", "other/other-1.0.tar.gz", client="10.0.0.2"))
    audit.append(path, audit.event("yank", "alice", "acme-tools/acme_tools-1.0.tar.gz", reason="bad"))
    audit.append(path, audit.event("token.create", "admin-cli", "alice", token="t1"))
    conf = write_config(tmp_path / "c.toml", f'[server]\ndata_dir = "{tmp_path}"\n')

    def run(*args: str) -> list[str]:
        assert admin.main(["--config", str(conf), "audit", *args]) == 0
        return capsys.readouterr().out.splitlines()

    assert len(run()) == 4
    assert [line.split("\t")[2] for line in run("--actor", "alice")] == ["upload", "yank"]
    assert [line.split("\t")[2] for line in run("--project", "Acme_Tools")] == ["upload", "yank"]
    assert [line.split("\t")[1] for line in run("--action", "upload")] == ["alice", "bob"]
    assert len(run("--since", "2021-01-01T00:00:00Z")) == 3
    assert len(run("--since", "1d")) == 3
    lines = run("--json", "--action", "yank")
    assert json.loads(lines[0])["reason"] == "bad"
    assert "reason=bad" in run("--action", "yank")[0]
    assert admin.main(["--config", str(conf), "audit", "--action", "nope"]) == 1
    assert "unknown action" in capsys.readouterr().err
    assert admin.main(["--config", str(conf), "audit", "--since", "yesterday"]) == 1
    assert "--since" in capsys.readouterr().err
