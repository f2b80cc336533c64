"""Reading what to pre-fill: requirements files, pylock.toml, uv.lock,
poetry.lock (small samples in each format's documented shape), and the
target environments' tags and markers."""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.tags import Tag

from pypicache.cli.prefetch import read_inputs
from pypicache.services.environments import InvalidEnvironment, environments
from pypicache.services.lockfiles import (
    detect_format,
    parse_any,
    parse_poetry_lock,
    parse_pylock,
    parse_requirements,
    parse_uv_lock,
)

SHA_A = "a" * 64
SHA_B = "b" * 64

REQUIREMENTS = f"""\
# a comment line
--index-url https://example.invalid/simple/
requests[socks,security] >=2.28, <3  # inline comment
attrs==23.2.0 \\
    --hash=sha256:{SHA_A} \\
    --hash=sha256:{SHA_B}
tomli ; python_version < "3.11"
-e ./local-checkout
https://example.invalid/pkg-1.0.tar.gz
thing @ https://example.invalid/thing-1.0.whl
not a requirement !!
--frobnicate
"""


def test_requirements_lines_hashes_markers_and_refusals() -> None:
    inputs = parse_requirements(REQUIREMENTS)
    wanted = {w.name: w for w in inputs.wanted}
    assert set(wanted) == {"requests", "attrs", "tomli"}
    assert wanted["requests"].requirement.extras == {"socks", "security"}
    assert str(wanted["requests"].requirement.specifier) == "<3,>=2.28"
    assert wanted["attrs"].hashes == {("sha256", SHA_A), ("sha256", SHA_B)}
    assert wanted["attrs"].where == "requirements.txt:4"
    assert str(wanted["tomli"].requirement.marker) == 'python_version < "3.11"'
    reasons = {p.where: p.reason for p in inputs.problems}
    assert set(reasons) == {"requirements.txt:8", "requirements.txt:9", "requirements.txt:10",
                            "requirements.txt:11", "requirements.txt:12"}
    assert "editable" in reasons["requirements.txt:8"]
    assert "URL" in reasons["requirements.txt:9"] and "URL" in reasons["requirements.txt:10"]
    assert "not a valid requirement" in reasons["requirements.txt:11"]
    assert "unknown option --frobnicate" in reasons["requirements.txt:12"]


def test_includes_and_constraints_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "base.txt").write_text("-r sub/more.txt\n-c constraints.txt\ndepproj\n")
    (tmp_path / "sub" / "more.txt").write_text("tinyproj>=1\n--requirement=../loop.txt\n")
    (tmp_path / "loop.txt").write_text("-r base.txt\n")
    (tmp_path / "constraints.txt").write_text("tinyproj<2\n")
    inputs = read_inputs([str(tmp_path / "base.txt")])
    assert sorted(w.name for w in inputs.wanted) == ["depproj", "tinyproj"]
    assert [str(c) for c in inputs.constraints] == ["tinyproj<2"]
    assert any("loop" in p.reason for p in inputs.problems)
    # An uploaded file cannot follow includes: a per-line problem, the rest still counts.
    uploaded = parse_requirements("-r other.txt\ndepproj\n")
    assert [w.name for w in uploaded.wanted] == ["depproj"]
    assert "cannot follow -r other.txt" in uploaded.problems[0].reason


PYLOCK = f"""\
lock-version = "1.0"
requires-python = ">=3.11"
created-by = "pip"

[[packages]]
name = "attrs"
version = "25.1.0"
index = "https://pypi.org/simple"

[[packages.wheels]]
name = "attrs-25.1.0-py3-none-any.whl"
url = "https://files.example/attrs-25.1.0-py3-none-any.whl"
size = 63152
hashes = {{sha256 = "{SHA_A}"}}

[packages.sdist]
url = "https://files.example/attrs-25.1.0.tar.gz"
hashes = {{sha256 = "{SHA_B}"}}

[[packages]]
name = "colorama"
version = "0.4.6"
marker = "sys_platform == 'win32'"
wheels = [{{url = "https://files.example/colorama-0.4.6-py2.py3-none-any.whl", hashes = {{sha256 = "{SHA_A}"}}}}]

[[packages]]
name = "mylib"
[packages.vcs]
type = "git"
url = "https://example.invalid/mylib.git"
commit-id = "abc"
"""


def test_pylock() -> None:
    inputs = parse_pylock(PYLOCK)
    files = {f.filename: f for f in inputs.locked}
    assert set(files) == {"attrs-25.1.0-py3-none-any.whl", "attrs-25.1.0.tar.gz",
                          "colorama-0.4.6-py2.py3-none-any.whl"}
    assert files["attrs-25.1.0.tar.gz"].hashes == {("sha256", SHA_B)}
    assert str(files["colorama-0.4.6-py2.py3-none-any.whl"].marker) == 'sys_platform == "win32"'
    assert [(p.project, "vcs" in p.reason) for p in inputs.problems] == [("mylib", True)]
    assert detect_format(None, PYLOCK) == "pylock" and detect_format("pylock.dev.toml", "") == "pylock"


UV_LOCK = f"""\
version = 1
revision = 2
requires-python = ">=3.11"

[[package]]
name = "app"
version = "0.1.0"
source = {{ editable = "." }}
dependencies = [{{ name = "idna" }}]

[[package]]
name = "idna"
version = "3.10"
source = {{ registry = "https://pypi.org/simple" }}
sdist = {{ url = "https://files.example/idna-3.10.tar.gz", hash = "sha256:{SHA_A}", size = 190490 }}
wheels = [
    {{ url = "https://files.example/idna-3.10-py3-none-any.whl", hash = "sha256:{SHA_B}", size = 70442 }},
]

[[package]]
name = "gitdep"
version = "1.0"
source = {{ git = "https://example.invalid/gitdep.git?rev=main#abc" }}
"""


def test_uv_lock() -> None:
    inputs = parse_uv_lock(UV_LOCK)
    assert sorted((f.project, f.version, f.filename) for f in inputs.locked) == [
        ("idna", "3.10", "idna-3.10-py3-none-any.whl"), ("idna", "3.10", "idna-3.10.tar.gz")]
    assert {f.filename: f.hashes for f in inputs.locked}["idna-3.10-py3-none-any.whl"] == {("sha256", SHA_B)}
    assert [p.project for p in inputs.problems] == ["gitdep"]
    assert detect_format(None, UV_LOCK) == "uv.lock"


POETRY_LOCK = f"""\
# This file is automatically @generated by Poetry 2.0.1 and should not be changed by hand.

[[package]]
name = "certifi"
version = "2024.12.14"
description = "Python package for providing Mozilla's CA Bundle."
optional = false
python-versions = ">=3.6"
groups = ["main"]
files = [
    {{file = "certifi-2024.12.14-py3-none-any.whl", hash = "sha256:{SHA_A}"}},
    {{file = "certifi-2024.12.14.tar.gz", hash = "sha256:{SHA_B}"}},
]

[[package]]
name = "pywin32-ctypes"
version = "0.2.3"
description = ""
optional = false
python-versions = ">=3.6"
markers = "sys_platform == \\"win32\\""
files = [
    {{file = "pywin32_ctypes-0.2.3-py3-none-any.whl", hash = "sha256:{SHA_A}"}},
]

[metadata]
lock-version = "2.1"
python-versions = "^3.11"
content-hash = "0123"
"""

OLD_POETRY_LOCK = f"""\
[[package]]
name = "six"
version = "1.16.0"
description = ""
category = "main"
optional = false
python-versions = ">=2.7"

[metadata]
lock-version = "1.1"
python-versions = "^3.8"
content-hash = "0123"

[metadata.files]
six = [
    {{file = "six-1.16.0-py2.py3-none-any.whl", hash = "sha256:{SHA_A}"}},
]
"""


def test_poetry_lock_new_and_old_layouts() -> None:
    inputs = parse_poetry_lock(POETRY_LOCK)
    assert sorted(f.filename for f in inputs.locked) == [
        "certifi-2024.12.14-py3-none-any.whl", "certifi-2024.12.14.tar.gz", "pywin32_ctypes-0.2.3-py3-none-any.whl"]
    assert {f.project: f.marker is not None for f in inputs.locked} == {"certifi": False, "pywin32-ctypes": True}
    old = parse_any(OLD_POETRY_LOCK, label="poetry.lock")
    assert [(f.project, f.filename) for f in old.locked] == [("six", "six-1.16.0-py2.py3-none-any.whl")]
    assert detect_format(None, POETRY_LOCK) == "poetry.lock"
    assert parse_poetry_lock("not toml [").problems[0].reason.startswith("not valid TOML")


def test_environments_tags_and_markers() -> None:
    (native,) = environments()
    assert native.platform == "native" and native.tags
    envs = environments(["3.12"], ["manylinux_2_28_x86_64", "win_amd64", "macosx_11_0_arm64"])
    linux, win, mac = envs
    assert linux.wheel_rank("x-1-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl") is not None
    assert linux.wheel_rank("x-1-cp312-cp312-manylinux_2_34_x86_64.whl") is None  # newer glibc
    assert linux.wheel_rank("x-1-cp311-cp311-manylinux_2_17_x86_64.whl") is None  # other Python
    assert linux.wheel_rank("x-1-cp312-cp312-win_amd64.whl") is None
    assert win.wheel_rank("x-1-cp312-cp312-win_amd64.whl") is not None
    assert mac.wheel_rank("x-1-cp312-cp312-macosx_10_9_universal2.whl") is not None
    # Platform wheels rank before pure ones; abi3 fits later Pythons.
    assert linux.wheel_rank("x-1-cp312-cp312-manylinux_2_28_x86_64.whl") < linux.wheel_rank("x-1-py3-none-any.whl")
    assert Tag("cp38", "abi3", "manylinux_2_17_x86_64") in linux.rank
    assert (win.markers["sys_platform"], mac.markers["sys_platform"], linux.markers["python_version"]) == \
        ("win32", "darwin", "3.12")
    assert not linux.accepts_python(">=3.13") and linux.accepts_python(">=3.8")
    with pytest.raises(InvalidEnvironment):
        environments(["three"])
    with pytest.raises(InvalidEnvironment):
        environments([], ["Bad Tag!"])
