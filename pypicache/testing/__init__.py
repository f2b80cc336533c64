"""The kit for provider authors: contract tests, fakes and helpers.

A third-party provider proves it keeps the contract by running the same suite
as the built-ins.  For storage::

    from pypicache.testing import StorageContract

    class TestMyStorage(StorageContract):
        def make_storage(self, tmp_path, context):
            return MyStorage(tmp_path / "blobs", context.reactor, context.threadpool)

:class:`IndexContract` (``make_index``) and :class:`UpstreamContract`
(``make_upstream``, run against :class:`FakeUpstream`) work the same way;
docs/providers.md shows each.  Needs pytest and pytest-twisted (the ``test``
extra).

Everything public is named here; the private modules behind it hold one
contract each (``_storage``, ``_index``, ``_upstream``), the shared context
and waits (``_context``), the fault-injecting fake upstream
(``_fake_upstream``) and the distribution builders (``_builders``).
"""

from pypicache.testing._builders import build_sdist, build_wheel, provenance_object, sha256_file, wheel_metadata
from pypicache.testing._context import (
    TIMEOUT,
    make_context,
    provider_context,
    sha256_of,
    stop_context,
    wait,
    wait_for_error,
)
from pypicache.testing._fake_upstream import FAULTS, FakeUpstream
from pypicache.testing._index import IndexContract, _digest, index_file, index_page, local_file
from pypicache.testing._storage import StorageContract, read_blob, write_blob
from pypicache.testing._upstream import UpstreamContract

__all__ = [
    "FAULTS",
    "TIMEOUT",
    "FakeUpstream",
    "IndexContract",
    "StorageContract",
    "UpstreamContract",
    "build_sdist",
    "build_wheel",
    "index_file",
    "index_page",
    "local_file",
    "make_context",
    "provenance_object",
    "provider_context",
    "read_blob",
    "sha256_file",
    "sha256_of",
    "stop_context",
    "wait",
    "wait_for_error",
    "wheel_metadata",
    "write_blob",
]
# ``_digest`` stays importable (the suite's index tests use it) but is no API.
