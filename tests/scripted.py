"""An upstream that answers from a script: for tests that need no sockets.

The mirror and the routes are driven in memory (a ``task.Clock``, the memory
index and storage, ``treq.testing.StubTreq``); this upstream stands in for
the network, so a test states exactly what the upstream says and checks
exactly what it was asked.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from pypicache.model import ProjectList, UpstreamNotFound, Validators


class ScriptedUpstream:
    """An upstream that answers from a script, and remembers what it was asked.

    ``pages[name]`` is what the next fetch of ``name`` gives: a ProjectPage,
    an exception instance (raised), or a Deferred (returned as it is, so the
    test decides when the answer arrives).  A name not in the script is
    unknown upstream.
    """

    def __init__(self) -> None:
        self.pages: dict[str, Any] = {}
        self.project_list: Any = ProjectList(names=())
        self.asked: list[tuple[str, Validators]] = []
        self.lists_asked: list[Validators] = []
        self.opened: list[str] = []

    def fetch_project(self, name: str, validators: Validators) -> defer.Deferred:
        self.asked.append((name, validators))
        answer = self.pages.get(name, UpstreamNotFound(name))
        if isinstance(answer, defer.Deferred):
            return answer
        if isinstance(answer, BaseException):
            return defer.fail(answer)
        return defer.succeed(answer)

    def fetch_project_list(self, validators: Validators) -> defer.Deferred:
        self.lists_asked.append(validators)
        if isinstance(self.project_list, BaseException):
            return defer.fail(self.project_list)
        return defer.succeed(self.project_list)

    def open_file(self, url: str) -> defer.Deferred:
        """No file is scripted: every download is a 404 (tests serve stored files)."""
        self.opened.append(url)
        return defer.fail(UpstreamNotFound(url))
