"""A third-party storage provider, installed like a user would install one.

The test writes a tiny distribution ``mystore`` (hatchling, one module, an
entry point in ``pypicache.storage``, as docs/providers.md describes), installs
it offline with pip -- once normally and once editable -- into a directory of
its own, and checks from a fresh interpreter that sees that directory (via
``site.addsitedir``, so the editable install's ``.pth`` file is processed) that
the config's ``provider = "mystore"`` finds it, that its options are checked,
and that the real daemon serves files through it.

Editable installs: hatchling's default editable wheel needs the ``editables``
package at build time, which is not installed here and cannot be fetched
offline; ``dev-mode-dirs`` makes hatchling write a plain ``.pth`` file instead,
a documented hatchling setting and what many projects use.

The plugin's own test file runs the kit's contracts (:mod:`pypicache.testing`)
in a pytest of its own, outside this suite, as a plugin author's CI would.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import attrs
import pytest
import pytest_twisted

from pypicache.testing import StorageContract, UpstreamContract

from tests.clients import isolated_env
from tests.daemon import JSON, free_port

SUBPROCESS_TIMEOUT = 20

PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "mystore"
version = "0.1"
description = "A pypicache storage provider for the tests"
dependencies = ["pypicache-server"]

[project.entry-points."pypicache.storage"]
mystore = "mystore:factory"

[tool.hatch.build.targets.wheel]
include = ["mystore.py"]
dev-mode-dirs = ["."]
"""

MODULE = '''\
"""Blobs in memory, with a label: a storage provider from outside pypicache."""

from twisted.logger import Logger
from zope.interface import implementer

from pypicache.interfaces import IProviderFactory, IStorage
from pypicache.providers import check_options
from pypicache.providers.storage.memory import MemoryStorage

FLAVOUR = "original"
log = Logger()


@implementer(IStorage)
class LabelledStorage(MemoryStorage):
    def __init__(self, label):
        super().__init__()
        self.label = label


@implementer(IProviderFactory)
class Factory:
    kind = "storage"

    def create(self, options, context):
        check_options("storage", options, {"label": str})
        storage = LabelledStorage(options.get("label", "unlabelled"))
        log.info("mystore: storage {label!r} ready ({flavour})", label=storage.label, flavour=FLAVOUR)
        return storage


factory = Factory()
'''

#: The plugin's own tests, as docs/providers.md tells a plugin author to write them.
PLUGIN_TESTS = '''\
import mystore
from pypicache.providers.upstream import simple
from pypicache.testing import StorageContract, UpstreamContract


class TestLabelledStorage(StorageContract):
    def make_storage(self, tmp_path, context):
        return mystore.factory.create({"label": "contract"}, context)


class TestSimpleUpstreamFromOutside(UpstreamContract):
    def make_upstream(self, url, context):
        return simple.factory.create({"url": url, "headers": {"X-Plugin": "mystore"}}, context)
'''

#: Run in a fresh interpreter: build the app from a config naming mystore.
PROBE = '''\
import json
import site
import sys

site.addsitedir(sys.argv[1])

from twisted.internet import defer, task


async def main(reactor):
    import importlib.metadata

    import attrs
    from zope.interface.verify import verifyObject

    import mystore
    from pypicache import providers
    from pypicache.daemon import config
    from pypicache.daemon.app import build
    from pypicache.errors import ConfigError
    from pypicache.interfaces import IStorage

    cfg = config.load(sys.argv[2])
    app = build(cfg, reactor)
    try:
        (ep,) = importlib.metadata.entry_points(group="pypicache.storage", name="mystore")
        out = {
            "class": f"{type(app.storage).__module__}.{type(app.storage).__qualname__}",
            "is_plugin_class": isinstance(app.storage, mystore.LabelledStorage),
            "label": app.storage.label,
            "verified": verifyObject(IStorage, app.storage),
            "module_file": mystore.__file__,
            "flavour": mystore.FLAVOUR,
            "available": sorted(providers.available("storage")),
            "entry_point": [ep.value, ep.dist.name],
            "direct_url": json.loads(ep.dist.read_text("direct_url.json") or "{}"),
        }
    finally:
        await app.close()
    bad = attrs.evolve(cfg, storage=config.ProviderConfig("mystore", {"label": "x", "colour": "red"}))
    try:
        build(bad, reactor)
    except ConfigError as e:
        out["error"] = str(e)
    print("RESULT " + json.dumps(out))


task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
'''

#: twistd with the install directory added as a site directory first.
TWISTD_WITH_SITE = (
    "import site, sys; site.addsitedir(sys.argv[1]); sys.argv = ['twistd'] + sys.argv[2:]; "
    "from twisted.scripts.twistd import run; run()"
)


@attrs.frozen
class Installed:
    mode: str
    src: Path
    site_dir: Path


def write_source(src: Path, flavour: str = "original") -> None:
    src.mkdir(parents=True, exist_ok=True)
    (src / "pyproject.toml").write_text(PYPROJECT)
    (src / "mystore.py").write_text(MODULE.replace('"original"', repr(flavour)))


def pip_install(src: Path, target: Path, *, editable: bool) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--isolated", "--no-cache-dir", "--disable-pip-version-check",
           "--no-input", "--no-build-isolation", "--no-deps", "--no-index", "--target", str(target)]
    cmd += ["-e", str(src)] if editable else [str(src)]
    result = subprocess.run(cmd, env=isolated_env(), capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL, cwd=src.parent)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module", params=["normal", "editable"])
def installed(request: Any, tmp_path_factory: Any) -> Installed:
    base = tmp_path_factory.mktemp(f"mystore-{request.param}")
    src, site_dir = base / "src", base / "site"
    write_source(src)
    pip_install(src, site_dir, editable=request.param == "editable")
    return Installed(request.param, src, site_dir)


def child_env() -> dict[str, str]:
    # No bytecode: the editable test rewrites the source within one second.
    return isolated_env({"PYTHONDONTWRITEBYTECODE": "1"})


def probe(installed: Installed, tmp_path: Path, storage_table: str) -> dict[str, Any]:
    conf = tmp_path / "pypicache.toml"
    conf.write_text(textwrap.dedent(f"""\
        [server]
        data_dir = "data"
        [storage]
        {storage_table}
        [index]
        provider = "memory"
        [upstream]
        url = "http://127.0.0.1:9/simple/"
        """))
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    result = subprocess.run([sys.executable, str(script), str(installed.site_dir), str(conf)], env=child_env(),
                            capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, cwd=tmp_path,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("RESULT ")]
    return json.loads(line[len("RESULT "):])


def test_install_layout(installed):
    files = {p.name for p in installed.site_dir.iterdir()}
    assert "mystore-0.1.dist-info" in files
    if installed.mode == "editable":
        # Only a path file: the code stays in the source tree.
        assert "mystore.py" not in files
        (pth,) = installed.site_dir.glob("*.pth")
        assert pth.read_text().strip() == str(installed.src)
    else:
        assert "mystore.py" in files


def test_config_selects_the_plugin(installed, tmp_path):
    out = probe(installed, tmp_path, 'provider = "mystore"\nlabel = "x"')
    assert out["class"] == "mystore.LabelledStorage"
    assert out["is_plugin_class"] is True
    assert out["verified"] is True
    assert out["label"] == "x"
    assert {"filesystem", "memory", "mystore"} <= set(out["available"])
    assert out["entry_point"] == ["mystore:factory", "mystore"]
    home = installed.src if installed.mode == "editable" else installed.site_dir
    assert Path(out["module_file"]).parent == home
    assert out["direct_url"].get("dir_info", {}).get("editable", False) is (installed.mode == "editable")
    # An option the plugin does not know: a ConfigError naming the key.
    assert out["error"].startswith("storage.colour: unknown key (allowed: label)"), out["error"]


def test_plugin_options_default(installed, tmp_path):
    out = probe(installed, tmp_path, 'provider = "mystore"')
    assert out["label"] == "unlabelled"


def test_only_the_editable_install_follows_the_source(installed, tmp_path):
    write_source(installed.src, flavour="edited in place")
    try:
        out = probe(installed, tmp_path, 'provider = "mystore"\nlabel = "y"')
    finally:
        write_source(installed.src)
    expected = "edited in place" if installed.mode == "editable" else "original"
    assert out["flavour"] == expected


@pytest_twisted.ensureDeferred
async def test_daemon_serves_through_the_plugin(installed, tmp_path, fake_upstream, spawn):
    conf = tmp_path / "pypicache.toml"
    conf.write_text(textwrap.dedent(f"""\
        [server]
        data_dir = "data"
        [storage]
        provider = "mystore"
        label = "daemon"
        [index]
        provider = "memory"
        [http]
        connect_timeout = 2
        read_timeout = 2
        page_timeout = 3
        [upstream]
        url = "{fake_upstream.url}"
        """))
    port = free_port()
    argv = [sys.executable, "-c", TWISTD_WITH_SITE, str(installed.site_dir), "-n", "--pidfile=", "--logfile=-",
            "pypicache", "--config", str(conf), "--listen", f"tcp:{port}:interface=127.0.0.1"]
    daemon = spawn(argv, port=port, env={"PYTHONDONTWRITEBYTECODE": "1"})
    code, body, _ = await daemon.wait_until_answers("/simple/tinyproj/")
    assert code == 200, daemon.output
    code, body, _ = await daemon.get("/simple/tinyproj/", accept=JSON)
    sdist = next(f for f in json.loads(body)["files"] if f["filename"].endswith(".tar.gz"))
    url = urljoin(daemon.root + "/simple/tinyproj/", sdist["url"])
    assert url.startswith(daemon.root + "/")
    code, data, _ = await daemon.get(url[len(daemon.root):])
    assert code == 200
    assert data == fake_upstream.files[sdist["filename"]].read_bytes()
    # Twice: the second answer comes from the plugin's storage.
    code, again, _ = await daemon.get(url[len(daemon.root):])
    assert (code, again) == (200, data)
    assert fake_upstream.count("/files/" + sdist["filename"], "GET") == 1
    await daemon.stop()
    assert "mystore: storage 'daemon' ready (original)" in daemon.output


@pytest_twisted.ensureDeferred
async def test_daemon_rejects_an_unknown_plugin_option(installed, tmp_path, spawn):
    conf = tmp_path / "pypicache.toml"
    conf.write_text('[server]\ndata_dir = "data"\n[storage]\nprovider = "mystore"\nbucket = "b"\n')
    argv = [sys.executable, "-c", TWISTD_WITH_SITE, str(installed.site_dir), "-n", "--pidfile=", "--logfile=-",
            "pypicache", "--config", str(conf)]
    daemon = spawn(argv, env={"PYTHONDONTWRITEBYTECODE": "1"})
    assert await daemon.exited(10.0) != 0
    assert "Traceback" not in daemon.output, daemon.output
    (line,) = [x for x in daemon.output.splitlines() if "storage.bucket" in x]
    assert "unknown key" in line


def test_plugin_runs_the_kits_contracts(tmp_path):
    """The kit works from outside this suite: its contracts, fixtures, fake
    upstream and builders need nothing from ``tests``, nor this repository's
    pytest settings."""
    src = tmp_path / "src"
    write_source(src)
    (src / "test_mystore.py").write_text(PLUGIN_TESTS)
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_mystore.py"],
                            env=child_env(), capture_output=True, text=True, timeout=120, cwd=src,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
    contract_tests = sum(name.startswith("test_") for cls in (StorageContract, UpstreamContract) for name in dir(cls))
    assert f"{contract_tests} passed" in result.stdout, result.stdout
