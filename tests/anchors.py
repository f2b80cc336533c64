"""The ``<a>`` elements of a simple-API HTML page, with their attributes and text."""

from __future__ import annotations

from html.parser import HTMLParser


class Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[dict] = []
        self._current: dict | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self._current = dict(attrs)
            self._current["text"] = ""
            self.links.append(self._current)

    def handle_data(self, data):
        if self._current is not None:
            self._current["text"] += data

    def handle_endtag(self, tag):
        if tag == "a":
            self._current = None


def anchors(body: bytes) -> list[dict]:
    p = Anchors()
    p.feed(body.decode())
    return p.links
