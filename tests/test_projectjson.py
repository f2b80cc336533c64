"""services/projectjson.py: the JSON API's document, built without HTTP.

The collaborators (storage, the downloader, the clock) are passed in, so the
metadata memo and the back-off after a failed upstream fetch are driven here
by a memory storage, a scripted downloader and ``task.Clock``.
"""

from __future__ import annotations

import json

import pytest_twisted
from twisted.internet.task import Clock

from pypicache.model import FileRecord, UpstreamError
from pypicache.providers.storage.memory import MemoryStorage
from pypicache.services.blocklist import Blocklist
from pypicache.services.projectjson import METADATA_RETRY_SECONDS, ProjectJson

METADATA = b"Metadata-Version: 2.1\nName: Pkg\nVersion: 1.0\nSummary: fetched\n"


class ScriptedDownloader:
    """fetch_metadata fails while ``fail`` is set, else stores METADATA."""

    def __init__(self, storage: MemoryStorage) -> None:
        self.storage = storage
        self.fail = True
        self.calls = 0

    async def fetch_metadata(self, project: str, record: FileRecord) -> str:
        self.calls += 1
        if self.fail:
            raise UpstreamError("upstream down")
        writer = self.storage.open_write(None)
        writer.write(METADATA)
        return (await writer.commit()).sha256


def upstream_wheel() -> FileRecord:
    return FileRecord(filename="pkg-1.0-py3-none-any.whl", url="https://up.invalid/pkg-1.0-py3-none-any.whl",
                      hashes={"sha256": "a" * 64}, core_metadata={"sha256": "b" * 64},
                      upload_time="2025-01-02T03:04:05Z")


@pytest_twisted.ensureDeferred
async def test_failed_metadata_fetch_backs_off_by_the_clock():
    storage, clock = MemoryStorage(), Clock()
    downloader = ScriptedDownloader(storage)
    documents = ProjectJson(storage, downloader, clock)
    files = (upstream_wheel(),)

    first = await documents.build("pkg", files, None, "../../", allow_upstream=True)
    assert first is not None and not first.complete  # not cacheable: the metadata may come later
    assert json.loads(first.body)["info"]["summary"] is None
    downloader.fail = False
    clock.advance(METADATA_RETRY_SECONDS - 1)
    again = await documents.build("pkg", files, None, "../../", allow_upstream=True)
    assert downloader.calls == 1 and not again.complete  # still backing off
    clock.advance(1)
    done = await documents.build("pkg", files, None, "../../", allow_upstream=True)
    assert downloader.calls == 2 and done.complete
    data = json.loads(done.body)
    assert data["info"]["summary"] == "fetched" and data["info"]["name"] == "Pkg"
    assert data["last_serial"] == done.serial == 1735787045
    assert data["urls"][0]["url"] == "../../files/pkg/pkg-1.0-py3-none-any.whl"


@pytest_twisted.ensureDeferred
async def test_without_the_upstream_info_is_minimal_and_complete():
    storage = MemoryStorage()
    downloader = ScriptedDownloader(storage)
    documents = ProjectJson(storage, downloader, Clock())
    built = await documents.build("pkg", (upstream_wheel(),), None, "/", allow_upstream=False)
    assert built.complete and downloader.calls == 0
    assert await documents.build("pkg", (upstream_wheel(),), None, "/", allow_upstream=False,
                                 extra_versions=["0.1"]) is not None
    from packaging.version import Version

    assert await documents.build("pkg", (upstream_wheel(),), Version("9"), "/", allow_upstream=False) is None


class NoProjects:
    """A mirror that knows no project."""

    offline = False
    merge: frozenset[str] = frozenset()
    clock = Clock()
    blocklist = Blocklist()

    async def project(self, name: str, *, allow_upstream: bool = True) -> None:
        return None


@pytest_twisted.ensureDeferred
async def test_json_errors_use_the_shared_error_helper():
    """The JSON API answers errors through web/util.send_error (json_body):
    PyPI's ``{"message": ...}`` under the standard reason phrase, not the
    plain-text shape with the message in the status line."""
    from treq.testing import StubTreq
    from twisted.web.resource import Resource

    from pypicache.web.jsonapi import JsonAPI

    root = Resource()
    root.putChild(b"pypi", JsonAPI(NoProjects(), MemoryStorage(), object()))  # type: ignore[arg-type]
    client = StubTreq(root)
    response = await client.get("http://pkgs.example/pypi/nothing/json")
    assert response.code == 404 and response.phrase == b"Not Found"
    assert response.headers.getRawHeaders(b"content-type") == [b"application/json"]
    assert json.loads(await client.content(response)) == {"message": "Not Found"}
