"""Twisted's private internals (pypicache._twisted): the start-up self-check
finds them on the installed Twisted, and on a Twisted without them it turns
off what needs them, while the server still answers everything correctly."""

from __future__ import annotations

import json
from typing import Any, Iterator

import attrs
import pytest
import pytest_twisted
import treq
from twisted.logger import globalLogPublisher

from pypicache import _twisted
from pypicache.web import sending
from pypicache.web.fastpath import FastPathFactory
from tests.server import make_config, start_server
from tests.uploads import NAME, PASSWORD, WHEEL_NAME, cheap_accounts, form, good_wheel, post


class BareTransport:
    """A transport with only the public ITransport methods."""

    def write(self, data: bytes) -> None:
        pass

    def loseConnection(self) -> None:
        pass


class OpaqueChannel:
    """A channel that reads heads without showing how far it got."""

    def dataReceived(self, data: bytes) -> None:
        pass


@pytest.fixture(autouse=True)
def restore_support() -> Iterator[None]:
    saved = attrs.asdict(_twisted.support)
    logged = set(_twisted._logged)
    _twisted._logged.clear()
    yield
    for name, value in saved.items():
        setattr(_twisted.support, name, value)
    _twisted._logged.clear()
    _twisted._logged.update(logged)


@pytest.fixture
def warnings() -> Iterator[list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "pypicache._twisted":
            seen.append(event)

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


def test_the_installed_twisted_has_everything(warnings):
    found = _twisted.self_check()
    assert attrs.asdict(found) == dict.fromkeys(attrs.asdict(found), True)
    assert found.fast_path and found.sendfile
    assert found == _twisted.support
    assert warnings == []


def test_a_transport_without_them_turns_the_fast_path_and_sendfile_off(warnings):
    found = _twisted.self_check(transport_factory=BareTransport)
    assert not found.fast_path and not found.sendfile
    assert not found.direct_writes and not found.producer_swap and not found.hand_over
    assert found.request_line and found.head_progress  # the channel still has its own
    assert _twisted.support == found
    assert sorted(e["feature"] for e in warnings) == ["direct_writes", "hand_over", "producer_swap"]
    assert "_tempDataLen" in warnings[0]["names"]
    _twisted.self_check(transport_factory=BareTransport)
    assert len(warnings) == 3  # logged once, not at every check


def test_a_channel_without_them_turns_the_early_upload_gate_and_head_deadline_off(warnings):
    found = _twisted.self_check(channel_class=OpaqueChannel)
    assert found.fast_path and found.sendfile
    assert not found.request_line and not found.head_progress
    assert _twisted.request_line(OpaqueChannel()) is None  # the request then cannot tell: any body may be an upload
    assert sorted(e["feature"] for e in warnings) == ["head_progress", "request_line"]


class SpySendfile(sending._SendfileProducer):
    started: list[Any] = []

    def start(self) -> None:
        SpySendfile.started.append(self)
        super().start()


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("internals", [True, False], ids=["with-internals", "without"])
async def test_a_server_answers_the_same_with_or_without_them(tmp_path, fake_upstream, monkeypatch, internals):
    if not internals:
        monkeypatch.setattr(_twisted, "_tcp_connection", BareTransport)
        monkeypatch.setattr(_twisted, "_http_channel_class", lambda: OpaqueChannel)
    SpySendfile.started = []
    monkeypatch.setattr(sending, "_SendfileProducer", SpySendfile)
    server = await start_server(make_config(tmp_path, fake_upstream.url, fast_path=True))
    try:
        assert isinstance(server.app.factory.inner, FastPathFactory) is internals
        pages = []
        for _ in range(2):  # the ordinary route renders the page, then the fast path may answer
            response = await treq.get(server.simple + "tinyproj/", persistent=False)
            pages.append((response.code, await treq.content(response),
                          response.headers.getRawHeaders(b"server")))
        assert pages[0][:2] == pages[1][:2] and pages[0][0] == 200
        assert (pages[1][2] == [b"pypicache"]) is internals
        wheel = "tinyproj-1.0-py3-none-any.whl"
        for _ in range(2):  # fetched from the upstream, then sent from storage
            response = await treq.get(server.root + f"/files/tinyproj/{wheel}", persistent=False)
            assert response.code == 200
            assert await treq.content(response) == fake_upstream.files[wheel].read_bytes()
        assert bool(SpySendfile.started) is internals

        store = cheap_accounts(server)
        store.add_user("alice", PASSWORD)
        answer = await post(server, form(good_wheel(tmp_path)))
        assert answer.code == 200, answer
        response = await treq.get(server.simple + NAME + "/", persistent=False,
                                  headers={"accept": ["application/vnd.pypi.simple.v1+json"]})
        assert [f["filename"] for f in json.loads(await treq.content(response))["files"]] == [WHEEL_NAME]
        refused = await post(server, form(good_wheel(tmp_path / "again")), auth=("alice", "wrong"))
        assert refused.code == 401
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_without_them_reads_still_need_credentials(tmp_path, fake_upstream, monkeypatch):
    """Without the request line every body is bounded as an upload's, but
    the route, and so the read gate, is still known once the head is read."""
    monkeypatch.setattr(_twisted, "_http_channel_class", lambda: OpaqueChannel)
    config = make_config(tmp_path, fake_upstream.url)
    config = attrs.evolve(config, auth=attrs.evolve(config.auth, read="authenticated"))
    server = await start_server(config)
    try:
        assert not _twisted.support.request_line
        store = cheap_accounts(server)
        store.add_user("alice", PASSWORD)
        anonymous = await treq.get(server.simple + "tinyproj/", persistent=False)
        assert anonymous.code == 401
        await treq.content(anonymous)
        allowed = await treq.get(server.simple + "tinyproj/", persistent=False, auth=("alice", PASSWORD))
        assert allowed.code == 200
        await treq.content(allowed)
    finally:
        await server.stop()


def test_the_bad_request_hook_wraps_a_method_twisted_has():
    """The hook counts twisted.web's 400s by wrapping a private method: this
    fails first when a Twisted upgrade renames it (the 400s would go uncounted)."""
    from twisted.web.http import HTTPChannel

    from pypicache._twisted import BadRequestHook

    assert callable(getattr(HTTPChannel, "_respondToBadRequestAndDisconnect", None))
    assert "_respondToBadRequestAndDisconnect" in vars(BadRequestHook)
