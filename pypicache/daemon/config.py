"""The configuration file: TOML in, frozen attrs objects out.

Everything is validated here at start-up, so a typo stops the daemon with one
line naming the key (``ConfigError``) instead of surfacing later as odd
behaviour.  Provider tables (``[storage]``, ``[index]``, ``[upstream]``) are
passed on to the provider's factory, which validates its own keys.

With no file at all the embedded default applies: filesystem storage and a
SQLite index under the data directory, the public PyPI as upstream, and a
listener on the loopback interface only.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import attrs

from pypicache.errors import ConfigError
from pypicache.providers import HTTPSettings

__all__ = ["Config", "ConfigError", "ProviderConfig", "load", "parse", "DEFAULT_LISTEN"]

DEFAULT_LISTEN = "tcp:8141:interface=127.0.0.1"


def default_data_dir() -> Path:
    """Where data lives when the config does not say: the XDG data home."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "pypicache"


@attrs.frozen
class ProviderConfig:
    """Which provider to use for one kind, and its own options."""

    name: str
    options: Mapping[str, Any] = attrs.field(factory=dict)


def _claim_table(value: Any) -> Mapping[str, frozenset[str]]:
    """``claim`` as name -> owners; a plain collection of names (the list
    form) claims each name without owners."""
    if isinstance(value, Mapping):
        return MappingProxyType({name: frozenset(owners) for name, owners in value.items()})
    return MappingProxyType({name: frozenset() for name in value})


@attrs.frozen
class UploadConfig:
    """Who may upload what (docs/uploading.md, docs/security.md)."""

    enabled: bool = True
    max_size: int = 100 * 1024 * 1024
    #: Names that may be created privately although the upstream has them,
    #: each with the users who own it.  A name claimed without owners (the
    #: list form) is created only by a user granted with ``pypicache
    #: project grant`` (or an admin): no ordinary user wins it by racing.
    claim: Mapping[str, frozenset[str]] = attrs.field(factory=dict, converter=_claim_table)
    #: Uploads in progress at once (from their headers to the answer); more get 503.
    max_concurrent: int = 4
    #: Private names whose upstream files are listed too (opt-in mixing).
    merge: frozenset[str] = frozenset()


@attrs.frozen
class AuthConfig:
    """Whether reading needs credentials ("anonymous" or "authenticated")."""

    read: str = "anonymous"
    #: Login attempts per client address and per user name in each window
    #: (docs/security.md, "Login throttling"); then 429 until it slides on.
    max_failed_logins: int = 10
    failed_login_window: float = 60.0


@attrs.frozen
class PrefetchConfig:
    """Pre-filling (docs/operations.md): target environments, who may ask, bounds."""

    python: tuple[str, ...] = ()  # () and (): the server's own environment
    platforms: tuple[str, ...] = ()
    open: bool = False  # True: POST /requirements.txt without credentials
    max_body: int = 1024 * 1024
    max_requirements: int = 1000
    job_threshold: int = 20  # larger sets answer 202 and run as a job


@attrs.frozen
class CacheConfig:
    """The size limit on cached upstream files and its eviction (docs/operations.md)."""

    #: Bytes storage may hold before least recently used upstream files are
    #: evicted; None: no limit.  Private uploads count but are never evicted.
    max_size: int | None = None
    #: Eviction frees down to this fraction of max_size, so it does not run
    #: again at the very next store.
    low_water: float = 0.9
    #: Seconds between writes of the batched access times.
    access_flush: float = 10.0


@attrs.frozen
class MonitoringConfig:
    """Metrics, health and access logs (docs/operations.md, "Monitoring")."""

    #: Endpoints of a listener serving only /metrics, /health and /ready.
    listen: tuple[str, ...] = ()
    #: Whether the main listener still serves them (only matters with ``listen``).
    on_main_listener: bool = True
    #: "combined" (Apache's combined format) or "json" (one object per line).
    access_log_format: str = "combined"


@attrs.frozen
class PolicyConfig:
    """Supply-chain policy for upstream files (docs/security.md, "Supply chain").

    Replaced as a whole when the config is reloaded (SIGHUP): code reads the
    current one from the app at request time, never keeps its own copy.
    """

    #: Seconds an upstream file must have been public (PEP 700 upload time)
    #: before it is served; 0: no cooldown.
    min_age: float = 0.0
    #: Projects the cooldown does not apply to (normalized names).
    min_age_exempt: frozenset[str] = frozenset()
    #: Per-project cooldowns (normalized name -> seconds), overriding min_age.
    min_age_overrides: Mapping[str, float] = attrs.field(factory=dict, converter=MappingProxyType)
    #: What the cooldown does with a file the upstream gives no upload time:
    #: "allow" serves it, "hide" holds it back.
    missing_upload_time: str = "allow"
    #: Requirement specifiers ("name", "name==1.1", "name>=2,<2.3") never served.
    block: tuple[str, ...] = ()
    #: When set, only these projects (normalized names) are proxied.
    allow_only: frozenset[str] | None = None


@attrs.frozen
class Config:
    """The whole validated configuration."""

    listen: tuple[str, ...] = (DEFAULT_LISTEN,)
    data_dir: Path = attrs.field(factory=default_data_dir)
    offline: bool = False
    page_ttl: float = 600.0
    root_ttl: float = 3600.0
    threads: int = 4
    access_log: bool = True
    fast_path: bool = True
    #: Absolute base URL of this server as clients reach it ("https://host/prefix/"),
    #: for the JSON API's URLs; None: they are relative to the request URL.
    public_url: str | None = None
    #: Seconds an upstream 404 is remembered (0: off); memory for parsed pages.
    not_found_ttl: float = 60.0
    page_cache_bytes: int = 64 * 1024 * 1024
    #: Client limits (pypicache.web.limits, docs/security.md "Request limits").
    header_timeout: float = 20.0
    min_body_rate: int = 1000
    max_connections: int = 768
    max_connections_per_client: int = 128
    #: Seconds SIGTERM waits for requests in flight (docs/operations.md "Restarts").
    shutdown_timeout: float = 30.0
    storage: ProviderConfig = ProviderConfig("filesystem")
    index: ProviderConfig = ProviderConfig("sqlite")
    upstream: ProviderConfig = ProviderConfig("simple")
    http: HTTPSettings = HTTPSettings()
    uploads: UploadConfig = UploadConfig()
    auth: AuthConfig = AuthConfig()
    prefetch: PrefetchConfig = PrefetchConfig()
    cache: CacheConfig = CacheConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    policy: PolicyConfig = PolicyConfig()
    source: str = "<embedded default>"


_SERVER_KEYS: dict[str, Any] = {
    "listen": (str, list),
    "data_dir": str,
    "offline": bool,
    "page_ttl": (int, float),
    "root_ttl": (int, float),
    "threads": int,
    "access_log": bool,
    "fast_path": bool,
    "public_url": str,
    "not_found_ttl": (int, float),
    "page_cache_bytes": int,
    "header_timeout": (int, float),
    "min_body_rate": int,
    "max_connections": int,
    "max_connections_per_client": int,
    "shutdown_timeout": (int, float),
}
_HTTP_KEYS = {"connect_timeout", "read_timeout", "page_timeout", "user_agent", "max_page_bytes",
              "breaker_threshold", "breaker_cooldown"}


def _check_type(where: str, value: Any, kind: Any) -> None:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise ConfigError(f"{where}: expected {' or '.join(k.__name__ for k in kinds)}, got {value!r}")
    if not isinstance(value, kinds):
        raise ConfigError(f"{where}: expected {' or '.join(k.__name__ for k in kinds)}, got {value!r}")


def _positive(where: str, value: float, *, upper: float | None = None) -> float:
    if value <= 0 or (upper is not None and value > upper):
        bound = f" and at most {upper:g}" if upper is not None else ""
        raise ConfigError(f"{where}: must be greater than 0{bound}, got {value!r}")
    return float(value)


def _provider(table: Any, section: str, default: str) -> ProviderConfig:
    if table is None:
        return ProviderConfig(default)
    if not isinstance(table, dict):
        raise ConfigError(f"{section}: must be a table")
    options = dict(table)
    name = options.pop("provider", default)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{section}.provider: expected a provider name, got {name!r}")
    return ProviderConfig(name, options)


def parse(data: Mapping[str, Any], *, source: str = "<config>", base_dir: Path | None = None) -> Config:
    """Validate a parsed TOML document into a Config (or raise ConfigError)."""
    known = {"server", "http", "storage", "index", "upstream", "uploads", "auth", "prefetch",
             "cache", "monitoring", "policy"}
    for key in data:
        if key not in known:
            raise ConfigError(f"{key}: unknown section (known: {', '.join(sorted(known))})")
    server = data.get("server", {})
    if not isinstance(server, dict):
        raise ConfigError("server: must be a table")
    kwargs: dict[str, Any] = {}
    for key, value in server.items():
        if key not in _SERVER_KEYS:
            raise ConfigError(f"server.{key}: unknown key (known: {', '.join(sorted(_SERVER_KEYS))})")
        _check_type(f"server.{key}", value, _SERVER_KEYS[key])
    if "listen" in server:
        listen = server["listen"]
        listen = [listen] if isinstance(listen, str) else listen
        if not listen or not all(isinstance(x, str) and x for x in listen):
            raise ConfigError("server.listen: expected an endpoint string or a list of them")
        kwargs["listen"] = tuple(listen)
    if "data_dir" in server:
        path = Path(os.path.expanduser(server["data_dir"]))
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        kwargs["data_dir"] = path
    for key in ("offline", "access_log", "fast_path"):
        if key in server:
            kwargs[key] = server[key]
    for key in ("page_ttl", "root_ttl"):
        if key in server:
            if server[key] < 0:
                raise ConfigError(f"server.{key}: must be 0 or more seconds, got {server[key]!r}")
            kwargs[key] = float(server[key])
    if "public_url" in server:
        kwargs["public_url"] = _public_url(server["public_url"])

    if "not_found_ttl" in server:
        if not 0 <= server["not_found_ttl"] <= 3600:
            raise ConfigError(f"server.not_found_ttl: must be between 0 (off) and 3600 seconds, "
                              f"got {server['not_found_ttl']!r}")
        kwargs["not_found_ttl"] = float(server["not_found_ttl"])
    if "page_cache_bytes" in server:
        if server["page_cache_bytes"] < 1024 * 1024:
            raise ConfigError(f"server.page_cache_bytes: must be at least 1048576 (1 MiB), "
                              f"got {server['page_cache_bytes']!r}")
        kwargs["page_cache_bytes"] = server["page_cache_bytes"]
    if "threads" in server:
        if not 1 <= server["threads"] <= 64:
            raise ConfigError(f"server.threads: must be between 1 and 64, got {server['threads']!r}")
        kwargs["threads"] = server["threads"]
    if "header_timeout" in server:
        kwargs["header_timeout"] = _positive("server.header_timeout", server["header_timeout"], upper=3600)
    if "shutdown_timeout" in server:
        if not 0 <= server["shutdown_timeout"] <= 3600:
            raise ConfigError(f"server.shutdown_timeout: must be between 0 and 3600 seconds, "
                              f"got {server['shutdown_timeout']!r}")
        kwargs["shutdown_timeout"] = float(server["shutdown_timeout"])
    for key, low, high in (("min_body_rate", 1, 10**9), ("max_connections", 1, 100_000),
                           ("max_connections_per_client", 1, 100_000)):
        if key in server:
            if not low <= server[key] <= high:
                raise ConfigError(f"server.{key}: must be between {low} and {high}, got {server[key]!r}")
            kwargs[key] = server[key]
    total = kwargs.get("max_connections", attrs.fields(Config).max_connections.default)
    if kwargs.get("max_connections_per_client", 0) > total:
        raise ConfigError(f"server.max_connections_per_client: must not exceed server.max_connections ({total})")

    http = data.get("http", {})
    if not isinstance(http, dict):
        raise ConfigError("http: must be a table")
    http_kwargs: dict[str, Any] = {}
    for key, value in http.items():
        if key not in _HTTP_KEYS:
            raise ConfigError(f"http.{key}: unknown key (known: {', '.join(sorted(_HTTP_KEYS))})")
        if key == "user_agent":
            _check_type(f"http.{key}", value, str)
            http_kwargs[key] = value
        elif key == "breaker_threshold":
            _check_type(f"http.{key}", value, int)
            if not 0 <= value <= 1000:
                raise ConfigError(f"http.{key}: must be between 0 (off) and 1000, got {value!r}")
            http_kwargs[key] = value
        elif key == "breaker_cooldown":
            _check_type(f"http.{key}", value, (int, float))
            http_kwargs[key] = _positive(f"http.{key}", value, upper=3600)
        elif key == "max_page_bytes":
            _check_type(f"http.{key}", value, int)
            http_kwargs[key] = int(_positive(f"http.{key}", value))
        else:
            _check_type(f"http.{key}", value, (int, float))
            # Bounded so pip (15 s default timeout) always gets an answer.
            http_kwargs[key] = _positive(f"http.{key}", value, upper=300)

    return Config(
        **kwargs,
        uploads=_uploads(data.get("uploads", {})),
        auth=_auth(data.get("auth", {})),
        prefetch=_prefetch(data.get("prefetch", {})),
        cache=_cache(data.get("cache", {})),
        monitoring=_monitoring(data.get("monitoring", {})),
        policy=_policy(data.get("policy", {})),
        storage=_provider(data.get("storage"), "storage", "filesystem"),
        index=_provider(data.get("index"), "index", "sqlite"),
        upstream=_provider(data.get("upstream"), "upstream", "simple"),
        http=HTTPSettings(**http_kwargs),
        source=source,
    )


def _public_url(value: str) -> str:
    """An absolute http(s) URL with a host, no credentials, query or
    fragment; returned ending in "/" (the root under which routes live)."""
    from urllib.parse import urlsplit

    where = "server.public_url"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  (raises ValueError for a port out of range)
    except ValueError as e:
        raise ConfigError(f"{where}: not a valid URL: {e}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}: expected an absolute http:// or https:// URL with a host, got {value!r}")
    if parts.username is not None or parts.query or parts.fragment or "#" in value or "?" in value:
        raise ConfigError(f"{where}: must not carry credentials, a query or a fragment, got {value!r}")
    if not value.isascii() or any(ch.isspace() or ord(ch) < 33 or ch in '"<>\\^`{|}' for ch in value):
        raise ConfigError(f"{where}: must be ASCII without spaces or quotes (percent-encode), got {value!r}")
    return value if value.endswith("/") else value + "/"


def _names(where: str, value: Any) -> frozenset[str]:
    from pypicache.model import InvalidName, normalize

    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: expected a list of project names")
    try:
        return frozenset(normalize(v) for v in value)
    except InvalidName as e:
        raise ConfigError(f"{where}: {e}") from None


def _uploads(table: Any) -> UploadConfig:
    if not isinstance(table, dict):
        raise ConfigError("uploads: must be a table")
    allowed = {"enabled", "max_size", "max_concurrent", "claim", "merge"}
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        if key not in allowed:
            raise ConfigError(f"uploads.{key}: unknown key (known: {', '.join(sorted(allowed))})")
        if key == "enabled":
            _check_type("uploads.enabled", value, bool)
            kwargs[key] = value
        elif key == "max_size":
            _check_type("uploads.max_size", value, int)
            kwargs[key] = int(_positive("uploads.max_size", value))
        elif key == "claim" and isinstance(value, dict):
            kwargs[key] = _owned_claims(value)
        elif key == "max_concurrent":
            _check_type("uploads.max_concurrent", value, int)
            if not 1 <= value <= 1000:
                raise ConfigError(f"uploads.max_concurrent: must be between 1 and 1000, got {value!r}")
            kwargs[key] = value
        else:
            kwargs[key] = _names(f"uploads.{key}", value)
    return UploadConfig(**kwargs)


def _owned_claims(table: dict[str, Any]) -> dict[str, frozenset[str]]:
    """``[uploads.claim]``: project name = [owner user names]."""
    from pypicache.services.accounts import AccountError, normalize_user
    from pypicache.model import InvalidName, normalize

    claims: dict[str, frozenset[str]] = {}
    for name, owners in table.items():
        where = f"uploads.claim.{name}"
        try:
            project = normalize(name)
        except InvalidName as e:
            raise ConfigError(f"{where}: {e}") from None
        if project in claims:
            raise ConfigError(f"{where}: {project} is claimed twice")
        if not isinstance(owners, list) or not all(isinstance(o, str) for o in owners):
            raise ConfigError(f"{where}: expected a list of user names (its owners)")
        try:
            claims[project] = frozenset(normalize_user(o) for o in owners)
        except AccountError as e:
            raise ConfigError(f"{where}: {e}") from None
    return claims


def _auth(table: Any) -> AuthConfig:
    if not isinstance(table, dict):
        raise ConfigError("auth: must be a table")
    known = ("failed_login_window", "max_failed_logins", "read")
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"auth.{key}: unknown key (known: {', '.join(known)})")
        if key == "read" and value not in ("anonymous", "authenticated"):
            raise ConfigError(f"auth.read: expected \"anonymous\" or \"authenticated\", got {value!r}")
        if key == "max_failed_logins":
            _check_type("auth.max_failed_logins", value, int)
            if not 1 <= value <= 10_000:
                raise ConfigError(f"auth.max_failed_logins: must be between 1 and 10000, got {value!r}")
        if key == "failed_login_window":
            _check_type("auth.failed_login_window", value, (int, float))
            value = _positive("auth.failed_login_window", value, upper=86400)
        kwargs[key] = value
    return AuthConfig(**kwargs)


def _prefetch(table: Any) -> PrefetchConfig:
    if not isinstance(table, dict):
        raise ConfigError("prefetch: must be a table")
    bounds = {"max_body": (1024, 64 * 1024 * 1024), "max_requirements": (1, 100_000),
              "job_threshold": (0, 100_000)}
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        where = f"prefetch.{key}"
        if key in ("python", "platforms"):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or len(value) > 16:
                raise ConfigError(f"{where}: expected a list of at most 16 strings")
            kwargs[key] = tuple(value)
        elif key == "open":
            _check_type(where, value, bool)
            kwargs[key] = value
        elif key in bounds:
            _check_type(where, value, int)
            if not bounds[key][0] <= value <= bounds[key][1]:
                raise ConfigError(f"{where}: must be between {bounds[key][0]} and {bounds[key][1]}, got {value!r}")
            kwargs[key] = value
        else:
            raise ConfigError(f"{where}: unknown key (known: job_threshold, max_body, max_requirements, "
                              "open, platforms, python)")
    if kwargs.get("python") or kwargs.get("platforms"):  # packaging.tags: imported only then
        from pypicache.services.environments import InvalidEnvironment, environments

        try:
            environments(kwargs.get("python", ()), kwargs.get("platforms", ()))
        except InvalidEnvironment as e:
            raise ConfigError(f"prefetch.{e}") from None
    return PrefetchConfig(**kwargs)


_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3,
               "gb": 1000**3, "t": 1000**4, "tb": 1000**4, "kib": 1024, "mib": 1024**2,
               "gib": 1024**3, "tib": 1024**4}


def parse_size(where: str, value: Any) -> int:
    """A byte count: an integer, or a string with a unit ("500 MB", "20 GiB", "1.5TB").

    Decimal units (kB, MB, GB, TB) are powers of 1000 and binary ones (KiB,
    MiB, GiB, TiB) of 1024, as in IEC 80000-13; units are case-insensitive.
    """
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a size such as 500000000 or \"20 GiB\", got {value!r}")
    if isinstance(value, int):
        number, unit = float(value), ""
    elif isinstance(value, str):
        text = value.strip()
        split = len(text) - len(text.lstrip("0123456789._"))
        number_text, unit = text[:split], text[split:].strip().lower()
        try:
            number = float(number_text)
        except ValueError:
            number = -1.0
        if number < 0 or unit not in _SIZE_UNITS:
            raise ConfigError(f"{where}: expected a size such as 500000000 or \"20 GiB\", got {value!r}")
    else:
        raise ConfigError(f"{where}: expected a size such as 500000000 or \"20 GiB\", got {value!r}")
    if number < 0:
        raise ConfigError(f"{where}: must not be negative, got {value!r}")
    return int(number * _SIZE_UNITS[unit])


def _table(section: str, table: Any, known: Mapping[str, Any]) -> dict[str, Any]:
    """A section as a dict, after checking it is a table with only known keys of the right types."""
    if not isinstance(table, dict):
        raise ConfigError(f"{section}: must be a table")
    for key, value in table.items():
        if key not in known:
            names = ", ".join(sorted(known)) or "none yet"
            raise ConfigError(f"{section}.{key}: unknown key (known: {names})")
        _check_type(f"{section}.{key}", value, known[key])
    return dict(table)


def _cache(table: Any) -> CacheConfig:
    table = _table("cache", table, {"max_size": (int, str), "low_water": (int, float),
                                    "access_flush": (int, float, str)})
    kwargs: dict[str, Any] = {}
    if "max_size" in table:
        kwargs["max_size"] = parse_size("cache.max_size", table["max_size"])
        if kwargs["max_size"] <= 0:
            raise ConfigError(f"cache.max_size: must be more than 0 bytes, got {table['max_size']!r}")
    if "low_water" in table:
        if not 0.5 <= table["low_water"] <= 1.0:
            raise ConfigError(f"cache.low_water: must be between 0.5 and 1.0, got {table['low_water']!r}")
        kwargs["low_water"] = float(table["low_water"])
    if "access_flush" in table:
        kwargs["access_flush"] = parse_duration("cache.access_flush", table["access_flush"])
        if not 0.01 <= kwargs["access_flush"] <= 3600:
            raise ConfigError(f"cache.access_flush: must be between 0.01 s and 1 h, got {table['access_flush']!r}")
    return CacheConfig(**kwargs)


def _monitoring(table: Any) -> MonitoringConfig:
    found = _table("monitoring", table, {"listen": (str, list), "on_main_listener": bool,
                                         "access_log_format": str})
    if "listen" in found:
        listen = [found["listen"]] if isinstance(found["listen"], str) else found["listen"]
        if not all(isinstance(x, str) and x for x in listen):
            raise ConfigError("monitoring.listen: expected an endpoint string or a list of them")
        found["listen"] = tuple(listen)
    if found.get("access_log_format", "combined") not in ("combined", "json"):
        raise ConfigError(f"monitoring.access_log_format: expected \"combined\" or \"json\", "
                          f"got {found['access_log_format']!r}")
    if found.get("on_main_listener") is False and not found.get("listen"):
        raise ConfigError("monitoring.on_main_listener: false needs monitoring.listen, "
                          "or /metrics, /health and /ready would be served nowhere")
    return MonitoringConfig(**found)


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(where: str, value: Any) -> float:
    """Seconds: a number, or a string with a unit ("90s", "30m", "12h", "3d", "1w")."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and value.strip()[-1:].lower() in _DURATION_UNITS:
        text = value.strip()
        try:
            seconds = float(text[:-1]) * _DURATION_UNITS[text[-1].lower()]
        except ValueError:
            seconds = -1.0
    else:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise ConfigError(f"{where}: expected a duration such as 3600 or \"3d\" (s, m, h, d, w), got {value!r}")
    return seconds


def _policy(table: Any) -> PolicyConfig:
    table = _table("policy", table, {"min_age": (int, float, str), "min_age_exempt": list,
                                     "min_age_overrides": dict, "missing_upload_time": str,
                                     "block": list, "allow_only": list})
    kwargs: dict[str, Any] = {}
    if "min_age" in table:
        kwargs["min_age"] = parse_duration("policy.min_age", table["min_age"])
    if "min_age_exempt" in table:
        kwargs["min_age_exempt"] = _names("policy.min_age_exempt", table["min_age_exempt"])
    if "min_age_overrides" in table:
        from pypicache.model import normalize

        overrides = table["min_age_overrides"]
        _names("policy.min_age_overrides", list(overrides))  # every key is a valid name
        kwargs["min_age_overrides"] = {
            normalize(name): parse_duration(f"policy.min_age_overrides.{name}", value)
            for name, value in overrides.items()}
    if "missing_upload_time" in table:
        if table["missing_upload_time"] not in ("allow", "hide"):
            raise ConfigError(f"policy.missing_upload_time: expected \"allow\" or \"hide\", "
                              f"got {table['missing_upload_time']!r}")
        kwargs["missing_upload_time"] = table["missing_upload_time"]
    if "block" in table:
        from packaging.requirements import InvalidRequirement, Requirement

        block = table["block"]
        for spec in block:
            if not isinstance(spec, str):
                raise ConfigError(f"policy.block: expected requirement strings, got {spec!r}")
            try:
                Requirement(spec)
            except InvalidRequirement as e:
                raise ConfigError(f"policy.block: {spec!r} is not a requirement specifier: {e}") from None
        kwargs["block"] = tuple(block)
    if "allow_only" in table:
        kwargs["allow_only"] = _names("policy.allow_only", table["allow_only"])
    return PolicyConfig(**kwargs)


def load(path: str | os.PathLike[str] | None) -> Config:
    """Read and validate a config file; None gives the embedded default."""
    if path is None:
        return Config()
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read config file: {e.strerror or e}") from e
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from e
    try:
        return parse(data, source=str(p), base_dir=p.resolve().parent)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from e
