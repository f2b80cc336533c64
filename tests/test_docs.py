"""The operations guide and the configuration reference keep up with the code:
every admin command, every route and every config key is documented."""

from __future__ import annotations

import argparse
from pathlib import Path

import attrs
import pytest

from pypicache.cli.admin import build_parser
from pypicache.daemon import config as configuration

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _subcommands() -> list[str]:
    parser = build_parser()
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sorted(actions[0].choices)


@pytest.mark.parametrize("command", _subcommands())
def test_every_admin_command_is_in_the_operations_guide(command):
    text = (DOCS / "operations.md").read_text()
    assert f"`pypicache {command}" in text or f"pypicache {command} " in text, \
        f"docs/operations.md does not mention `pypicache {command}`"


@pytest.mark.parametrize("route", ["/simple/", "/local/simple/", "/as-of/", "/files/", ".metadata", ".provenance",
                                   "/pypi/", "/legacy/", "/api/projects/", "/requirements.txt", "/requirements/jobs/",
                                   "/project/", "/statistics", "/stats", "/health", "/ready", "/metrics"])
def test_every_route_is_in_the_operations_guide(route):
    assert route in (DOCS / "operations.md").read_text()


def test_every_route_the_root_serves_is_in_that_list():
    """A route added to build_root without a row in the guide fails here."""
    from pypicache.web import site

    documented = {"simple", "local", "as-of", "files", "pypi", "legacy", "api", "requirements.txt",
                  "requirements", "project", "statistics", "stats", "health", "ready", "metrics"}
    root = site.build_root(None, None, None, site.Stats(), upload=lambda: None, manage=lambda: None,
                           jsonapi=lambda: None, prefetch=lambda: None, ready=lambda: None,
                           metrics=lambda: None, ui=lambda: None)
    children = {name.decode() for name in root.children} | {name.decode() for name in root._lazy}
    assert children - documented == set(), "add these routes to docs/operations.md and to this test"


@pytest.mark.parametrize("section, key", [
    (name, f.name) for name in ("uploads", "auth", "prefetch", "cache", "monitoring", "policy")
    for f in attrs.fields(type(getattr(configuration.Config(), name)))])
def test_every_config_key_is_in_the_reference(section, key):
    text = (DOCS / "configuration.md").read_text()
    assert f"`{key}`" in text or f"`{section}.{key}`" in text, \
        f"docs/configuration.md does not document [{section}] {key}"


@pytest.mark.parametrize("key", sorted(configuration._SERVER_KEYS))
def test_every_server_key_is_in_the_reference(key):
    assert f"`{key}`" in (DOCS / "configuration.md").read_text()
