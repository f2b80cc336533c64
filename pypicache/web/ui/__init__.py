"""The web UI: the project list at ``/``, project pages, the statistics page.

Server-rendered HTML with an inline style and inline SVG charts: usable
without JavaScript, nothing fetched from anywhere else (the
Content-Security-Policy forbids it).  Built on the first request to one of
its routes (pypicache.web.site), so a server nobody browses never imports it.

    layout.py   the shared frame, escaping, the headers
    charts.py   SVG bar charts
    pages.py    the pages as pure functions of what they show
    routes.py   the resources: what each page reads
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import attrs
from twisted.web.resource import Resource

from pypicache.services.stats import Stats
from pypicache.services.usage import Usage

__all__ = ["UI", "build_ui"]


@attrs.frozen
class UI:
    """The UI's resources: ``home`` renders ``/``; the others are children of the root."""

    home: Resource
    project: Resource
    statistics: Resource


def build_ui(mirror: Any, storage: Any, downloader: Any, stats: Stats,
             disk_usage: Callable[[], Awaitable[Usage]], in_thread: Callable[..., Any] | None = None,
             policy: Callable[[], Any] = lambda: None) -> UI:
    """``in_thread`` renders the pages of very big projects in the thread pool;
    ``policy()`` is the current ``[policy]`` (``app.policy``), read per request."""
    from pypicache.services.projectjson import ProjectJson
    from pypicache.web.ui.routes import ProjectList, ProjectPage, StatisticsPage

    documents = ProjectJson(storage, downloader, mirror.clock, cache_size=256)
    return UI(home=ProjectList(mirror.index, mirror.blocklist),
              project=ProjectPage(mirror, documents, in_thread, policy),
              statistics=StatisticsPage(stats, disk_usage, mirror.blocklist, policy))
