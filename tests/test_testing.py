"""The plugin authors' kit keeps its public surface while its insides move.

The contracts themselves run in test_storage.py, test_index.py and
test_upstream_simple.py (and, from outside the suite, in
test_third_party_provider.py); this file pins what a plugin author imports.
"""

from __future__ import annotations

from pathlib import Path

import pypicache.testing as kit
from tests import builders, fakeupstream

#: Every name plugin authors (and this suite) imported from the single-file
#: ``pypicache/testing.py``; the package must keep offering each.
BEFORE = [
    "TIMEOUT", "make_context", "stop_context", "provider_context", "wait", "wait_for_error", "sha256_of",
    "write_blob", "read_blob", "StorageContract", "index_file", "index_page", "local_file", "IndexContract",
    "_digest",
]
#: What the package added: the upstream contract, its fake and the builders.
ADDED = ["UpstreamContract", "FakeUpstream", "FAULTS", "build_wheel", "build_sdist", "wheel_metadata", "sha256_file",
         "provenance_object"]


def test_every_earlier_name_is_still_importable() -> None:
    missing = [name for name in BEFORE + ADDED if not hasattr(kit, name)]
    assert missing == []


def test_all_names_the_public_surface() -> None:
    assert sorted(kit.__all__) == sorted(name for name in BEFORE + ADDED if not name.startswith("_"))


def test_private_modules_import_what_they_use() -> None:
    package = Path(kit.__file__).parent
    for module in package.glob("*.py"):
        assert "noqa: E402" not in module.read_text(), module.name


def test_the_suite_uses_the_kits_fake_and_builders() -> None:
    """One fake upstream and one set of builders: the suite's names are the kit's objects."""
    assert fakeupstream.FakeUpstream is kit.FakeUpstream
    assert fakeupstream.FAULTS is kit.FAULTS
    for name in ("build_wheel", "build_sdist", "wheel_metadata", "sha256_file"):
        assert getattr(builders, name) is getattr(kit, name)
