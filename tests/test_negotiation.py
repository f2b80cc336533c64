"""Content negotiation: Accept parsing, ?format=, and Accept-Encoding."""

from __future__ import annotations

import pytest

from pypicache.web import negotiation
from pypicache.web.negotiation import (
    FORMATS,
    HTML,
    HTML_V1,
    JSON,
    accepts_gzip,
    choose_format,
)

PIP_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, "
    "text/html; q=0.01"
)
UV_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, "
    "text/html;q=0.01"
)


def test_format_constants():
    assert JSON.content_type == "application/vnd.pypi.simple.v1+json"
    assert HTML_V1.content_type == "application/vnd.pypi.simple.v1+html"
    assert HTML.content_type == "text/html; charset=utf-8"
    assert JSON.is_json and not HTML_V1.is_json and not HTML.is_json
    assert len({fmt.name for fmt in FORMATS}) == 3


def test_formats_are_frozen():
    with pytest.raises(AttributeError):
        JSON.name = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    "accept, expected",
    [
        (PIP_ACCEPT, JSON),
        (UV_ACCEPT, JSON),
        ("text/html", HTML),
        ("application/json", None),
        (None, HTML),
        ("", HTML),
        ("   ", HTML),
        ("*/*", HTML),
        ("*", HTML),
        ("text/*", HTML),
        ("application/vnd.pypi.simple.v1+json", JSON),
        ("application/vnd.pypi.simple.v1+html", HTML_V1),
        ("application/vnd.pypi.simple.latest+json", JSON),
        ("application/vnd.pypi.simple.latest+html", HTML_V1),
        # Browsers.
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", HTML),
        # Old Java clients.
        ("text/html, image/gif, image/jpeg, *; q=.2, */*; q=.2", HTML),
    ],
)
def test_accept_headers(accept, expected):
    assert choose_format(accept, None) is expected


def test_media_types_are_case_insensitive_and_whitespace_tolerant():
    assert choose_format("  APPLICATION/VND.PYPI.SIMPLE.V1+JSON  ", None) is JSON
    assert choose_format("Text/HTML ; Q=0.5", None) is HTML
    assert choose_format("application/vnd.pypi.simple.v1+json ;  q = 0.5 ,text/html;q=0.4", None) is JSON


def test_highest_q_wins():
    accept = "application/vnd.pypi.simple.v1+json;q=0.2, text/html;q=0.9"
    assert choose_format(accept, None) is HTML
    accept = "text/html;q=0.3, application/vnd.pypi.simple.v1+html;q=0.4"
    assert choose_format(accept, None) is HTML_V1


def test_equal_q_prefers_json_then_v1_html_among_listed_types():
    assert choose_format("text/html, application/vnd.pypi.simple.v1+json", None) is JSON
    assert choose_format("text/html, application/vnd.pypi.simple.v1+html", None) is HTML_V1
    assert (
        choose_format(
            "text/html;q=0.5, application/vnd.pypi.simple.v1+html;q=0.5, "
            "application/vnd.pypi.simple.v1+json;q=0.5",
            None,
        )
        is JSON
    )


def test_wildcards_lose_ties_to_listed_types():
    # */* reaches every format, but the client only named JSON.
    assert choose_format("*/*, application/vnd.pypi.simple.v1+json", None) is JSON
    # ...and with nothing named, the server's default (plain HTML) wins.
    assert choose_format("*/*", None) is HTML
    # A wildcard with the higher q still wins.
    assert choose_format("application/vnd.pypi.simple.v1+json;q=0.5, */*", None) is HTML
    # application/* reaches the vendor types, JSON first.
    assert choose_format("application/*", None) is JSON


def test_q_zero_means_not_acceptable():
    assert choose_format("text/html;q=0", None) is None
    assert choose_format("application/vnd.pypi.simple.v1+json;q=0, text/html;q=0", None) is None
    # A more specific q=0 overrides a wildcard for that one format.
    assert choose_format("text/html;q=0, */*", None) is JSON
    assert choose_format("application/vnd.pypi.simple.v1+json;q=0, */*", None) is HTML
    assert choose_format("text/*;q=0, application/vnd.pypi.simple.v1+html;q=0.1", None) is HTML_V1


def test_most_specific_range_decides_a_formats_q():
    # text/html at 0.1 beats nothing, although text/* says 1.
    accept = "text/*, text/html;q=0.1, application/vnd.pypi.simple.v1+html;q=0.5"
    assert choose_format(accept, None) is HTML_V1


@pytest.mark.parametrize(
    "accept, expected",
    [
        ("text/html;q=abc", HTML),  # the only item is malformed: header disregarded
        ("text/html;q=abc, application/vnd.pypi.simple.v1+json;q=0.1", JSON),
        ("application/vnd.pypi.simple.v1+json;q=2, text/html;q=0.5", HTML),
        ("application/vnd.pypi.simple.v1+json;q=-1, text/html;q=0.5", HTML),
        ("application/vnd.pypi.simple.v1+json;q=nan, text/html;q=0.5", HTML),
        ("application/vnd.pypi.simple.v1+json;q, text/html;q=0.5", HTML),
        ('application/vnd.pypi.simple.v1+json;q="0.9", text/html;q=0.5', JSON),
        ("text/html;level=1;q=0.5, application/vnd.pypi.simple.v1+json;q=0.4", HTML),
        ("text/html;q=0.5;ext=1, application/vnd.pypi.simple.v1+json;q=0.4", HTML),
        (",,, ,text/html", HTML),
        ("garbage", HTML),  # nothing recognisable: header disregarded
        ("garbage, also garbage;;;", HTML),
        ("*/html", HTML),  # invalid range: skipped, nothing left
        ("text/html/extra, application/vnd.pypi.simple.v1+json", JSON),
        ("image/png", None),
        ("application/json, text/plain", None),
        ('text/html;foo="a,b", application/vnd.pypi.simple.v1+json;q=0.1', HTML),
    ],
)
def test_malformed_headers_never_crash(accept, expected):
    assert choose_format(accept, None) is expected


@pytest.mark.parametrize(
    "param, expected",
    [
        ("application/vnd.pypi.simple.v1+json", JSON),
        ("application/vnd.pypi.simple.v1+html", HTML_V1),
        ("text/html", HTML),
        ("latest+json", JSON),
        ("latest+html", HTML_V1),
        ("application/vnd.pypi.simple.latest+json", JSON),
        ("application/vnd.pypi.simple.latest+html", HTML_V1),
        (" Application/Vnd.Pypi.Simple.V1+JSON ", JSON),
        ("json", None),
        ("application/json", None),
        ("bogus", None),
    ],
)
def test_format_param(param, expected):
    assert choose_format(None, param) is expected


def test_format_param_overrides_accept():
    assert choose_format("text/html", "application/vnd.pypi.simple.v1+json") is JSON
    assert choose_format(PIP_ACCEPT, "text/html") is HTML
    # Even an Accept that refuses everything: the parameter is explicit.
    assert choose_format("image/png", "latest+html") is HTML_V1
    # An unknown parameter is a 406, whatever Accept says.
    assert choose_format(PIP_ACCEPT, "nonsense") is None


def test_empty_format_param_counts_as_absent():
    assert choose_format(PIP_ACCEPT, "") is JSON


def test_results_are_memoised_and_bounded(monkeypatch):
    cache: dict = {}
    monkeypatch.setattr(negotiation, "_accept_cache", cache)
    calls = []
    real = negotiation._choose_from_accept

    def counting(accept):
        calls.append(accept)
        return real(accept)

    monkeypatch.setattr(negotiation, "_choose_from_accept", counting)
    for _ in range(5):
        assert choose_format(PIP_ACCEPT, None) is JSON
    assert calls == [PIP_ACCEPT]

    # Many distinct headers never grow the cache past its bound.
    for i in range(negotiation._CACHE_SIZE * 3):
        choose_format(f"text/html;q=0.{i % 9 + 1}, x/y{i}", None)
    assert len(cache) <= negotiation._CACHE_SIZE
    # Oversized headers are answered but not stored.
    huge = "text/html, " + "x/y, " * 1000
    assert choose_format(huge, None) is HTML
    assert huge not in cache


def test_memoised_none_is_returned_from_cache(monkeypatch):
    monkeypatch.setattr(negotiation, "_accept_cache", {})
    assert choose_format("application/json", None) is None
    assert choose_format("application/json", None) is None


@pytest.mark.parametrize(
    "header, expected",
    [
        (None, False),
        ("", False),
        ("gzip", True),
        ("GZIP", True),
        ("x-gzip", True),
        ("gzip, deflate, zstd", True),  # uv
        ("gzip, deflate, br", True),
        ("deflate, br", False),
        ("identity", False),
        ("gzip;q=0", False),
        ("gzip;q=0.5", True),
        ("*", True),
        ("*;q=0", False),
        ("br, *;q=0.1", True),
        ("gzip;q=0, *", False),  # gzip refused explicitly, even with *
        ("gzip;q=bad", False),
        ("gzip;q=bad, *", True),
        (" gzip ; q=1.0 ", True),
    ],
)
def test_accepts_gzip(header, expected):
    assert accepts_gzip(header) is expected
