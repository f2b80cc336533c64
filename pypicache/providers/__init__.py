"""Finding providers by name and checking that they keep their contract.

Providers are registered as entry points in the groups ``pypicache.storage``,
``pypicache.index`` and ``pypicache.upstream`` (docs/providers.md explains why
entry points rather than Twisted's ``getPlugins``).  The entry point names an
object providing :class:`~pypicache.interfaces.IProviderFactory`.

The built-in names (``filesystem``, ``memory``, ``sqlite``, ``simple``) are
reserved: they resolve without scanning the installed distributions' entry
points, which costs start-up time, and another package cannot take them over.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import attrs
from zope.interface import Interface
from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyObject

from pypicache.errors import ConfigError
from pypicache.interfaces import IIndex, IProviderFactory, IStorage, IUpstream

KINDS: dict[str, type[Interface]] = {"storage": IStorage, "index": IIndex, "upstream": IUpstream}


@attrs.frozen
class HTTPSettings:
    """How the server talks to upstreams: every timeout is bounded."""

    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    page_timeout: float = 10.0
    user_agent: str = "pypicache"
    max_page_bytes: int = 64 * 1024 * 1024
    #: Consecutive upstream failures that open the circuit breaker (0: never).
    breaker_threshold: int = 5
    #: Seconds the breaker stays open before one probe request is let through.
    breaker_cooldown: float = 30.0


@attrs.frozen
class ProviderContext:
    """What a provider factory may use: injected so tests can replace it.

    ``threadpool`` is a started ``twisted.python.threadpool.ThreadPool`` for
    blocking work (``deferToThreadPool(reactor, threadpool, f)``).
    ``exclusive`` is True in the server, which owns its data; False in a
    second process on the same data (``pypicache verify``, yank, delete),
    where a provider must leave alone what a running server may be using
    (the filesystem storage then skips its start-up clean-up of half-written
    files).  :func:`pypicache.daemon.context.start_context` builds one.
    """

    reactor: Any
    threadpool: Any
    data_dir: Path
    http: HTTPSettings = HTTPSettings()
    exclusive: bool = True


def _builtin(kind: str) -> dict[str, str]:
    # Used when the package's own metadata is missing (running from a bare
    # checkout without `pip install`): the built-ins still resolve.
    return {
        "storage": {"filesystem": "pypicache.providers.storage.filesystem:factory",
                    "memory": "pypicache.providers.storage.memory:factory"},
        "index": {"sqlite": "pypicache.providers.index.sqlite:factory",
                  "memory": "pypicache.providers.index.memory:factory"},
        "upstream": {"simple": "pypicache.providers.upstream.simple:factory"},
    }[kind]


def available(kind: str) -> dict[str, Any]:
    """Name -> entry point (or import string) for every provider of ``kind``."""
    from importlib.metadata import entry_points

    found: dict[str, Any] = {ep.name: ep for ep in entry_points(group=f"pypicache.{kind}")}
    found.update(_builtin(kind))  # reserved names
    return found


def _load(ref: Any) -> Any:
    if isinstance(ref, str):
        from importlib import import_module

        module, _, attr = ref.partition(":")
        return getattr(import_module(module), attr)
    return ref.load()


def load_factory(kind: str, name: str) -> Any:
    """The verified factory named ``name`` for ``kind``, or ConfigError."""
    if kind not in KINDS:
        raise ConfigError(f"unknown provider kind {kind!r}")
    builtin = _builtin(kind)
    known = {name: builtin[name]} if name in builtin else available(kind)
    if name not in known:
        names = ", ".join(sorted(known)) or "none"
        raise ConfigError(f"{kind}.provider: no {kind} provider named {name!r} is installed "
                          f"(installed: {names})")
    try:
        factory = _load(known[name])
    except Exception as e:  # a broken plugin must not give a traceback
        raise ConfigError(f"{kind}.provider: {name!r} failed to import: {e}") from e
    try:
        verifyObject(IProviderFactory, factory)
    except Invalid as e:
        raise ConfigError(f"{kind}.provider: {name!r} is not an IProviderFactory: {_one_line(e)}") from e
    if factory.kind != kind:
        raise ConfigError(f"{kind}.provider: {name!r} makes {factory.kind!r} providers")
    return factory


def _one_line(error: Exception) -> str:
    # verifyObject lists each missing method on its own line; a ConfigError
    # is printed as one line.
    text = ""
    for line in filter(None, (line.strip() for line in str(error).splitlines())):
        text += (" " if not text or text.endswith(":") else "; ") + line
    return text.strip()


def create(kind: str, name: str, options: Mapping[str, Any], context: ProviderContext) -> Any:
    """Build and verify the provider ``name`` of ``kind`` from its options."""
    factory = load_factory(kind, name)
    provider = factory.create(dict(options), context)
    try:
        verifyObject(KINDS[kind], provider)
    except Invalid as e:
        raise ConfigError(f"{kind}.provider: {name!r} built an object that does not provide "
                          f"{KINDS[kind].__name__}: {_one_line(e)}") from e
    return provider


def check_options(kind: str, options: Mapping[str, Any], allowed: Mapping[str, type | tuple]) -> None:
    """Reject unknown keys and wrongly typed values in a provider's table.

    A helper for factories: ``allowed`` maps key -> accepted type(s).
    """
    for key, value in options.items():
        if key not in allowed:
            raise ConfigError(f"{kind}.{key}: unknown key (allowed: {', '.join(sorted(allowed)) or 'none'})")
        if not isinstance(value, allowed[key]) or isinstance(value, bool) and allowed[key] in (int, float):
            raise ConfigError(f"{kind}.{key}: bad value {value!r}")
