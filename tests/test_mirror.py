"""The mirror's freshness rules, driven by a ``task.Clock``: no sockets, no sleeps.

The mirror (pypicache.services.mirror) decides when a page is asked of the
upstream: within ``page_ttl`` never, after it with the stored validators (a
304 keeps the page), an upstream 404 is remembered for ``not_found_ttl``, a
failing upstream gets the stale page (or 503 when nothing is cached),
concurrent requests for one project share one upstream request, and private
projects are re-read from the index every ``local_recheck`` seconds.  Each
test uses the in-memory index and a scripted upstream, and every Deferred
here has fired before the test looks at it (:func:`done`).
"""

from __future__ import annotations

from typing import Any, Coroutine

import attrs
import pytest
from twisted.internet import defer, task
from twisted.python.failure import Failure

from pypicache.model import (
    FileRecord,
    NotModified,
    ProjectList,
    ProjectPage,
    UpstreamError,
    Validators,
)
from pypicache.providers.index.memory import MemoryIndex
from pypicache.services.mirror import Mirror, PageResult, UpstreamUnavailable
from tests.scripted import ScriptedUpstream

TTL = 600.0
NOT_FOUND_TTL = 60.0
RECHECK = 2.0
SHA = "ab" * 32


def wheel(version: str, project: str = "tinyproj", **kw: Any) -> FileRecord:
    filename = f"{project}-{version}-py3-none-any.whl"
    return FileRecord(filename=filename, url=f"https://files.example/{filename}", hashes={"sha256": SHA}, **kw)


def page(*versions: str, name: str = "tinyproj", etag: str | None = None) -> ProjectPage:
    return ProjectPage(name=name, files=tuple(wheel(v, name) for v in versions), validators=Validators(etag=etag))


@attrs.define
class World:
    clock: task.Clock
    index: MemoryIndex
    upstream: ScriptedUpstream
    mirror: Mirror


def world(**options: Any) -> World:
    clock = task.Clock()
    clock.advance(1_000_000)  # a clock at 0 would make "never refreshed" and "refreshed at 0" alike
    index, upstream = MemoryIndex(), ScriptedUpstream()
    settings: dict[str, Any] = {"page_ttl": TTL, "not_found_ttl": NOT_FOUND_TTL, "local_recheck": RECHECK}
    settings.update(options)
    mirror = Mirror(index=index, upstream=upstream, clock=clock, **settings)
    return World(clock, index, upstream, mirror)


def done(work: Coroutine[Any, Any, Any] | defer.Deferred) -> Any:
    """The result of ``work``, which must have finished already (everything here is in memory)."""
    d = work if isinstance(work, defer.Deferred) else defer.ensureDeferred(work)
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "still waiting: something asked for a real delay"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def versions(result: PageResult) -> list[str]:
    return [f.filename.split("-")[1] for f in result.record.files]


# ------------------------------------------------------------ page_ttl


def test_a_fresh_page_is_served_without_asking_the_upstream():
    w = world()
    w.upstream.pages["tinyproj"] = page("1.0", etag='"v1"')
    first = done(w.mirror.project("tinyproj"))
    assert versions(first) == ["1.0"] and not first.stale
    assert first.record.refreshed_at == w.clock.seconds()
    assert len(w.upstream.asked) == 1

    w.clock.advance(TTL - 1)
    again = done(w.mirror.project("tinyproj"))
    assert again.record is first.record
    assert len(w.upstream.asked) == 1
    assert w.mirror.is_fresh(again.record)


def test_after_the_ttl_the_upstream_is_asked_with_the_stored_validators():
    w = world()
    w.upstream.pages["tinyproj"] = page("1.0", etag='"v1"')
    done(w.mirror.project("tinyproj"))
    w.clock.advance(TTL)
    assert not w.mirror.is_fresh(w.mirror.cached("tinyproj"))

    w.upstream.pages["tinyproj"] = page("1.0", "2.0", etag='"v2"')
    result = done(w.mirror.project("tinyproj"))
    assert w.upstream.asked[-1] == ("tinyproj", Validators(etag='"v1"'))
    assert versions(result) == ["1.0", "2.0"]
    assert result.record.validators == Validators(etag='"v2"')
    assert result.record.refreshed_at == w.clock.seconds()
    # The index holds what the mirror serves.
    assert done(w.index.get_project("tinyproj")).files == result.record.files


def test_not_modified_keeps_the_page_and_restarts_the_ttl():
    w = world()
    w.upstream.pages["tinyproj"] = page("1.0", etag='"v1"')
    first = done(w.mirror.project("tinyproj"))
    w.clock.advance(TTL + 5)
    w.upstream.pages["tinyproj"] = NotModified()
    second = done(w.mirror.project("tinyproj"))
    assert not second.stale
    # The same files tuple: pages rendered from it stay valid.
    assert second.record.files is first.record.files
    assert second.record.refreshed_at == w.clock.seconds()
    assert done(w.index.get_project("tinyproj")).refreshed_at == w.clock.seconds()

    w.clock.advance(TTL - 1)
    done(w.mirror.project("tinyproj"))
    assert len(w.upstream.asked) == 2


def test_an_unchanged_page_keeps_the_files_tuple():
    w = world()
    w.upstream.pages["tinyproj"] = page("1.0")
    first = done(w.mirror.project("tinyproj"))
    w.clock.advance(TTL)
    second = done(w.mirror.refresh("tinyproj"))
    assert second.files is first.record.files


def test_a_project_without_files_is_fetched_without_validators():
    """A 304 against an empty page would keep a page that lists nothing for ever."""
    w = world()
    w.upstream.pages["tinyproj"] = page(etag='"empty"')
    done(w.mirror.project("tinyproj"))
    w.clock.advance(TTL)
    w.upstream.pages["tinyproj"] = page("1.0")
    done(w.mirror.project("tinyproj"))
    assert w.upstream.asked[-1] == ("tinyproj", Validators())


def test_a_page_in_the_index_from_an_earlier_run_is_used_until_its_ttl():
    w = world()
    done(w.index.save_upstream_page(page("1.0"), w.clock.seconds() - 10, False))
    result = done(w.mirror.project("tinyproj"))
    assert versions(result) == ["1.0"] and w.upstream.asked == []
    w.clock.advance(TTL)
    w.upstream.pages["tinyproj"] = page("1.0", "2.0")
    assert versions(done(w.mirror.project("tinyproj"))) == ["1.0", "2.0"]


# ------------------------------------------------------------ upstream 404


def test_an_upstream_404_is_remembered_for_not_found_ttl():
    w = world()
    assert done(w.mirror.project("nosuch")) is None
    assert done(w.mirror.project("nosuch")) is None
    assert len(w.upstream.asked) == 1
    w.clock.advance(NOT_FOUND_TTL - 1)
    assert done(w.mirror.project("nosuch")) is None
    assert len(w.upstream.asked) == 1

    w.clock.advance(1)
    w.upstream.pages["nosuch"] = page("1.0", name="nosuch")
    assert versions(done(w.mirror.project("nosuch"))) == ["1.0"]
    assert len(w.upstream.asked) == 2


def test_not_found_ttl_zero_asks_every_time():
    w = world(not_found_ttl=0)
    for _ in range(3):
        assert done(w.mirror.project("nosuch")) is None
    assert len(w.upstream.asked) == 3


def test_a_project_that_disappears_upstream_is_gone():
    w = world()
    w.upstream.pages["tinyproj"] = page("1.0")
    done(w.mirror.project("tinyproj"))
    w.clock.advance(TTL)
    del w.upstream.pages["tinyproj"]
    assert done(w.mirror.project("tinyproj")) is None
    assert w.mirror.cached("tinyproj") is None
    assert done(w.mirror.project("tinyproj")) is None
    assert len(w.upstream.asked) == 2  # the 404 is cached too


def test_a_local_name_is_never_taken_for_an_upstream_404():
    """An upload after a cached 404 is served at once (remember forgets the 404)."""
    w = world()
    assert done(w.mirror.project("acme")) is None
    record = done(w.index.create_project("acme", "local"))
    w.mirror.remember(record)
    result = done(w.mirror.project("acme"))
    assert result is not None and result.record.origin == "local"


# ------------------------------------------------------------ a failing upstream


@pytest.mark.parametrize("error", [UpstreamError("timed out"), ValueError("provider bug")],
                         ids=["upstream-error", "provider-bug"])
def test_a_failing_upstream_gets_the_stale_page(error):
    w = world()
    w.upstream.pages["tinyproj"] = page("1.0")
    first = done(w.mirror.project("tinyproj"))
    w.clock.advance(TTL)
    w.upstream.pages["tinyproj"] = error
    result = done(w.mirror.project("tinyproj"))
    assert result.stale and result.record is first.record
    # Still stale, and asked again on every request: the next one may succeed.
    assert done(w.mirror.project("tinyproj")).stale
    assert len(w.upstream.asked) == 3
    w.upstream.pages["tinyproj"] = page("1.0", "2.0")
    healed = done(w.mirror.project("tinyproj"))
    assert not healed.stale and versions(healed) == ["1.0", "2.0"]


@pytest.mark.parametrize("hint,seconds", [(None, 2), ("120", 5), (3, 3), ("4", 4), ("Wed, 21 Oct 2015 07:28:00 GMT", 2),
                                          (10**9, 5)])
def test_nothing_cached_and_a_failing_upstream_is_unavailable(hint, seconds):
    w = world()
    error = UpstreamError("503 from upstream")
    error.retry_after = hint  # type: ignore[attr-defined]
    w.upstream.pages["tinyproj"] = error
    with pytest.raises(UpstreamUnavailable) as raised:
        done(w.mirror.project("tinyproj"))
    assert raised.value.retry_after == seconds
    assert done(w.index.get_project("tinyproj")) is None


# ------------------------------------------------------------ coalescing


def test_concurrent_requests_share_one_upstream_request():
    w = world()
    answer: defer.Deferred = defer.Deferred()
    w.upstream.pages["tinyproj"] = answer
    waiting = [defer.ensureDeferred(w.mirror.project("tinyproj")) for _ in range(5)]
    assert len(w.upstream.asked) == 1
    assert not any(d.called for d in waiting)
    answer.callback(page("1.0"))
    results = [done(d) for d in waiting]
    assert all(r.record is results[0].record for r in results)
    assert len(w.upstream.asked) == 1


def test_a_caller_giving_up_does_not_cancel_the_shared_request():
    w = world()
    answer: defer.Deferred = defer.Deferred()
    w.upstream.pages["tinyproj"] = answer
    quitter = defer.ensureDeferred(w.mirror.project("tinyproj"))
    stayer = defer.ensureDeferred(w.mirror.project("tinyproj"))
    quitter.cancel()
    quitter.addErrback(lambda f: f.trap(defer.CancelledError))
    assert not answer.called
    answer.callback(page("1.0"))
    assert versions(done(stayer)) == ["1.0"]
    assert w.mirror.cached("tinyproj") is not None  # the work finished and filled the cache


def test_a_shared_failure_reaches_every_waiter():
    w = world()
    answer: defer.Deferred = defer.Deferred()
    w.upstream.pages["tinyproj"] = answer
    waiting = [defer.ensureDeferred(w.mirror.project("tinyproj")) for _ in range(3)]
    answer.errback(UpstreamError("reset"))
    for d in waiting:
        with pytest.raises(UpstreamUnavailable):
            done(d)


# ------------------------------------------------------------ private projects


def upload(w: World, name: str, version: str) -> None:
    """What the admin command or another process does: writes the index, not the mirror."""
    done(w.index.add_file(name, wheel(version, name, origin="local", stored=True)))


def test_a_private_project_never_asks_the_upstream():
    w = world()
    upload(w, "acme", "1.0")
    result = done(w.mirror.project("acme"))
    assert versions(result) == ["1.0"] and w.mirror.is_fresh(result.record)
    w.clock.advance(TTL * 10)
    done(w.mirror.project("acme"))
    assert w.upstream.asked == []


def test_index_changes_to_a_private_project_show_after_local_recheck():
    w = world()
    upload(w, "acme", "1.0")
    first = done(w.mirror.project("acme"))
    upload(w, "acme", "2.0")  # behind the mirror's back
    w.clock.advance(RECHECK - 0.5)
    assert done(w.mirror.project("acme")).record is first.record
    w.clock.advance(0.5)
    assert versions(done(w.mirror.project("acme"))) == ["1.0", "2.0"]


def test_an_unchanged_private_project_keeps_its_record_after_a_recheck():
    w = world()
    upload(w, "acme", "1.0")
    first = done(w.mirror.project("acme"))
    w.clock.advance(RECHECK * 3)
    assert done(w.mirror.project("acme")).record is first.record


def test_a_merged_private_project_survives_an_upstream_404():
    w = world(merge=frozenset({"acme"}))
    upload(w, "acme", "1.0")
    result = done(w.mirror.project("acme"))
    assert w.upstream.asked == [("acme", Validators())]
    assert versions(result) == ["1.0"] and result.record.refreshed_at == w.clock.seconds()
    w.clock.advance(RECHECK - 0.5)
    assert versions(done(w.mirror.project("acme"))) == ["1.0"]
    assert len(w.upstream.asked) == 1


def test_a_merged_private_projects_upstream_404_lasts_page_ttl():
    w = world(merge=frozenset({"acme"}))
    upload(w, "acme", "1.0")
    done(w.mirror.project("acme"))
    w.clock.advance(RECHECK * 2)
    done(w.mirror.project("acme"))
    assert len(w.upstream.asked) == 1


# ------------------------------------------------------------ offline, local view


def test_offline_and_the_local_view_never_ask_the_upstream():
    for w, kwargs in ((world(offline=True), {}), (world(), {"allow_upstream": False})):
        done(w.index.save_upstream_page(page("1.0"), w.clock.seconds() - 2 * TTL, False))
        result = done(w.mirror.project("tinyproj", **kwargs))
        assert versions(result) == ["1.0"] and not result.stale
        assert done(w.mirror.project("unknown", **kwargs)) is None
        assert w.upstream.asked == []


# ------------------------------------------------------------ the root list


def test_the_project_list_is_refreshed_after_root_ttl_and_stale_on_failure():
    w = world(root_ttl=3600.0)
    upload(w, "acme", "1.0")
    w.upstream.project_list = ProjectList(names=("tinyproj", "depproj"), validators=Validators(etag='"l1"'))
    assert done(w.mirror.project_names()) == (["acme", "depproj", "tinyproj"], False)
    w.clock.advance(3599)
    done(w.mirror.project_names())
    assert len(w.upstream.lists_asked) == 1

    w.clock.advance(1)
    w.upstream.project_list = NotModified()
    assert done(w.mirror.project_names()) == (["acme", "depproj", "tinyproj"], False)
    assert w.upstream.lists_asked[-1] == Validators(etag='"l1"')

    w.clock.advance(3600)
    w.upstream.project_list = UpstreamError("down")
    assert done(w.mirror.project_names()) == (["acme", "depproj", "tinyproj"], True)
    assert done(w.mirror.project_names(allow_upstream=False)) == (["acme"], False)
