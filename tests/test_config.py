"""``pypicache.daemon.config``: the embedded default, every key, and one clear
ConfigError per mistake (the daemon prints that message as its only line, so
each must name the key at fault)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from pypicache.daemon import config as configuration
from pypicache import providers
from pypicache.daemon.config import Config, ProviderConfig, load, parse
from pypicache.errors import ConfigError
from pypicache.providers import HTTPSettings, ProviderContext


def _error(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse(data)
    message = str(info.value)
    assert "\n" not in message, "a ConfigError is printed as one line"
    return message


# ------------------------------------------------------------ the default


def test_embedded_default(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    cfg = load(None)
    assert cfg.listen == (configuration.DEFAULT_LISTEN,)
    assert cfg.listen == ("tcp:8141:interface=127.0.0.1",)  # loopback only
    assert cfg.data_dir == tmp_path / "xdg" / "pypicache"
    assert cfg.storage == ProviderConfig("filesystem", {})
    assert cfg.index == ProviderConfig("sqlite", {})
    assert cfg.upstream == ProviderConfig("simple", {})
    assert cfg.offline is False
    assert cfg.access_log is True
    assert cfg.http == HTTPSettings()
    assert cfg.source == "<embedded default>"


def test_empty_document_is_the_default(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    cfg = parse({}, source="x.toml")
    assert cfg == Config(source="x.toml")


def test_default_data_dir_without_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert configuration.default_data_dir() == tmp_path / ".local" / "share" / "pypicache"
    # An empty XDG_DATA_HOME means "unset" (XDG base directory spec).
    monkeypatch.setenv("XDG_DATA_HOME", "")
    assert configuration.default_data_dir() == tmp_path / ".local" / "share" / "pypicache"


def test_example_config_loads():
    example = Path(__file__).parent.parent / "etc" / "pypicache.toml"
    if not example.exists():
        pytest.skip("no etc/pypicache.toml")
    cfg = load(example)
    assert cfg.source == str(example)


# ------------------------------------------------------------ every key


def test_every_server_and_http_key(tmp_path):
    cfg = parse({
        "server": {
            "listen": ["tcp:8080:interface=0.0.0.0", "unix:/tmp/pypicache.sock"],
            "data_dir": str(tmp_path / "d"),
            "offline": True,
            "page_ttl": 5,
            "root_ttl": 7.5,
            "threads": 9,
            "access_log": False,
        },
        "http": {
            "connect_timeout": 1,
            "read_timeout": 2.5,
            "page_timeout": 3,
            "user_agent": "me/1.0",
            "max_page_bytes": 1000,
        },
    }, source="f.toml")
    assert cfg.listen == ("tcp:8080:interface=0.0.0.0", "unix:/tmp/pypicache.sock")
    assert cfg.data_dir == tmp_path / "d"
    assert cfg.offline is True
    assert cfg.page_ttl == 5.0 and isinstance(cfg.page_ttl, float)
    assert cfg.root_ttl == 7.5
    assert cfg.threads == 9
    assert cfg.access_log is False
    assert cfg.http == HTTPSettings(connect_timeout=1.0, read_timeout=2.5, page_timeout=3.0,
                                    user_agent="me/1.0", max_page_bytes=1000)
    assert cfg.source == "f.toml"


def test_listen_as_one_string():
    assert parse({"server": {"listen": "tcp:1234"}}).listen == ("tcp:1234",)


def test_zero_ttl_is_allowed():
    cfg = parse({"server": {"page_ttl": 0, "root_ttl": 0.0}})
    assert (cfg.page_ttl, cfg.root_ttl) == (0.0, 0.0)


def test_provider_tables_pass_options_on():
    cfg = parse({
        "storage": {"provider": "memory"},
        "index": {"path": "x.sqlite3"},
        "upstream": {"provider": "simple", "url": "http://127.0.0.1:1/simple/", "headers": {"A": "b"}},
    })
    assert cfg.storage == ProviderConfig("memory", {})
    assert cfg.index == ProviderConfig("sqlite", {"path": "x.sqlite3"})  # provider defaults
    assert cfg.upstream == ProviderConfig("simple", {"url": "http://127.0.0.1:1/simple/",
                                                     "headers": {"A": "b"}})


def test_relative_data_dir_is_relative_to_the_config_file(tmp_path, monkeypatch):
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    path = conf_dir / "pypicache.toml"
    path.write_text('[server]\ndata_dir = "var/data"\n')
    monkeypatch.chdir(tmp_path)  # not the file's directory
    cfg = load(Path("etc/pypicache.toml"))
    assert cfg.data_dir == conf_dir.resolve() / "var" / "data"
    assert cfg.data_dir.is_absolute()
    assert cfg.source == "etc/pypicache.toml"


def test_data_dir_expands_the_home_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    path = tmp_path / "c.toml"
    path.write_text('[server]\ndata_dir = "~/cache"\n')
    assert load(path).data_dir == tmp_path / "cache"


def test_absolute_data_dir_is_kept(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(f'[server]\ndata_dir = "{tmp_path / "abs"}"\n')
    assert load(str(path)).data_dir == tmp_path / "abs"


# ------------------------------------------------------------ errors


def test_unknown_section():
    message = _error({"sever": {"listen": "tcp:1"}})
    assert message.startswith("sever: unknown section")
    assert "server" in message  # lists the known ones


@pytest.mark.parametrize("section, key", [("server", "page_tll"), ("http", "timeout")])
def test_unknown_key(section, key):
    message = _error({section: {key: 1}})
    assert message.startswith(f"{section}.{key}: unknown key")


@pytest.mark.parametrize("section, key, value", [
    ("server", "threads", "4"),
    ("server", "threads", 4.5),
    ("server", "data_dir", 3),
    ("server", "offline", "yes"),
    ("server", "access_log", 1),
    ("server", "listen", 8141),
    ("server", "page_ttl", "600"),
    ("http", "user_agent", 1),
    ("http", "max_page_bytes", 1.5),
    ("http", "connect_timeout", "5"),
])
def test_wrong_type(section, key, value):
    message = _error({section: {key: value}})
    assert message.startswith(f"{section}.{key}: ")
    assert repr(value) in message


@pytest.mark.parametrize("section, key", [
    ("server", "page_ttl"),
    ("server", "root_ttl"),
    ("server", "threads"),
    ("http", "connect_timeout"),
    ("http", "read_timeout"),
    ("http", "page_timeout"),
    ("http", "max_page_bytes"),
])
def test_bool_is_not_a_number(section, key):
    # TOML booleans are Python bools, and bool is a subclass of int.
    message = _error({section: {key: True}})
    assert message.startswith(f"{section}.{key}: ")
    assert "True" in message


@pytest.mark.parametrize("key", ["page_ttl", "root_ttl"])
def test_negative_ttl(key):
    message = _error({"server": {key: -1}})
    assert message.startswith(f"server.{key}: ")
    assert "-1" in message


@pytest.mark.parametrize("value", [0, 65])
def test_threads_out_of_range(value):
    assert _error({"server": {"threads": value}}).startswith("server.threads: ")


@pytest.mark.parametrize("key, value", [
    ("connect_timeout", 0), ("read_timeout", -1), ("page_timeout", 301), ("max_page_bytes", 0),
])
def test_http_limits(key, value):
    assert _error({"http": {key: value}}).startswith(f"http.{key}: ")


@pytest.mark.parametrize("listen", [[], [""], ["tcp:1", 2]])
def test_bad_listen_list(listen):
    assert _error({"server": {"listen": listen}}).startswith("server.listen: ")


@pytest.mark.parametrize("section", ["server", "http", "storage", "index", "upstream"])
def test_section_must_be_a_table(section):
    assert _error({section: "x"}).startswith(f"{section}: ")


@pytest.mark.parametrize("name", [3, ""])
def test_bad_provider_name(name):
    assert _error({"storage": {"provider": name}}).startswith("storage.provider: ")


def test_load_names_the_file_and_the_key(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[server]\npage_ttl = -5\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value).startswith(f"{path}: server.page_ttl: ")


def test_bad_toml(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[server\nlisten = 1\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: not valid TOML")
    assert "line 1" in message  # tomllib says where
    assert isinstance(info.value.__cause__, tomllib.TOMLDecodeError)


def test_not_utf8(tmp_path):
    path = tmp_path / "c.toml"
    path.write_bytes(b'[server]\ndata_dir = "\xff"\n')
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(path)


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_unreadable_file(tmp_path, kind):
    path = tmp_path / "nope.toml"
    if kind == "directory":
        path.mkdir()
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: cannot read config file")
    assert "\n" not in message


# ------------------------------------------------------------ providers by name


@pytest.fixture
def bare_context(tmp_path):
    # Loading a factory never touches the reactor or the thread pool.
    return ProviderContext(reactor=None, threadpool=None, data_dir=tmp_path)


@pytest.mark.parametrize("kind, installed", [
    ("storage", ["filesystem", "memory"]),
    ("index", ["memory", "sqlite"]),
    ("upstream", ["simple"]),
])
def test_unknown_provider_lists_installed_names(bare_context, kind, installed):
    with pytest.raises(ConfigError) as info:
        providers.create(kind, "nosuch", {}, bare_context)
    message = str(info.value)
    assert message.startswith(f"{kind}.provider: ")
    assert "'nosuch'" in message
    listed = message.split("(installed: ", 1)[1].rstrip(")").split(", ")
    assert set(installed) <= set(listed)
    assert listed == sorted(listed)


def test_unknown_provider_kind(bare_context):
    with pytest.raises(ConfigError, match="unknown provider kind 'bucket'"):
        providers.create("bucket", "memory", {}, bare_context)


def test_provider_of_the_wrong_kind(bare_context, monkeypatch):
    # A storage factory registered under the index group is refused by name.
    monkeypatch.setattr(providers, "available",
                        lambda kind: {"odd": "pypicache.providers.storage.memory:factory"})
    with pytest.raises(ConfigError) as info:
        providers.create("index", "odd", {}, bare_context)
    assert str(info.value) == "index.provider: 'odd' makes 'storage' providers"


def test_provider_that_fails_to_import(bare_context, monkeypatch):
    monkeypatch.setattr(providers, "available",
                        lambda kind: {"broken": "pypicache_no_such_module:factory"})
    with pytest.raises(ConfigError) as info:
        providers.create("storage", "broken", {}, bare_context)
    assert str(info.value).startswith("storage.provider: 'broken' failed to import: ")


def test_provider_breaking_its_interface_gives_one_line(bare_context, monkeypatch):
    from zope.interface import implementer

    from pypicache.interfaces import IProviderFactory

    @implementer(IProviderFactory)
    class Factory:
        kind = "storage"

        def create(self, options, context):
            return object()

    monkeypatch.setattr(providers, "_load", lambda ref: Factory())
    monkeypatch.setattr(providers, "available", lambda kind: {"hollow": "x:y"})
    with pytest.raises(ConfigError) as info:
        providers.create("storage", "hollow", {}, bare_context)
    message = str(info.value)
    assert message.startswith("storage.provider: 'hollow' built an object that does not provide IStorage")
    assert "\n" not in message



def test_public_url():
    assert parse({}).public_url is None
    cfg = parse({"server": {"public_url": "https://pkgs.example.com/py"}})
    assert cfg.public_url == "https://pkgs.example.com/py/"
    assert parse({"server": {"public_url": "http://[::1]:8141/"}}).public_url == "http://[::1]:8141/"
    for bad in ("pkgs.example.com", "ftp://pkgs.example.com/", "https://", "https://x/?a=1", "https://x/#f",
                "https://user:pw@x/", "https://x/a b", "https://x:99999/", "https://x/\r\n"):
        message = _error({"server": {"public_url": bad}})
        assert message.startswith("server.public_url:"), message


def test_claim_table_names_owners_and_the_list_form_still_works():
    doc = tomllib.loads('[uploads.claim]\n"Acme_Requests" = ["Alice", "bob"]\nempty = []\n')
    claim = parse(doc, source="<test>").uploads.claim
    assert dict(claim) == {"acme-requests": frozenset({"alice", "bob"}), "empty": frozenset()}
    listed = parse({"uploads": {"claim": ["Acme.Tools"]}}, source="<test>").uploads.claim
    assert dict(listed) == {"acme-tools": frozenset()}  # claimed, no owner: granted users only
    assert dict(Config().uploads.claim) == {}


@pytest.mark.parametrize("claim, where, what", [
    ({"acme": "alice"}, "uploads.claim.acme", "list of user names"),
    ({"acme": [1]}, "uploads.claim.acme", "list of user names"),
    ({"acme": ["no spaces"]}, "uploads.claim.acme", "invalid user name"),
    ({"bad name!": ["alice"]}, "uploads.claim.bad name!", "not a valid project name"),
    ({"Acme": ["alice"], "acme": ["bob"]}, "uploads.claim.acme", "claimed twice"),
    ("acme", "uploads.claim", "list of project names"),
])
def test_bad_claim_names_the_key(claim, where, what):
    message = _error({"uploads": {"claim": claim}})
    assert message.startswith(f"{where}: ") and what in message


def test_request_limit_keys():
    cfg = parse({"server": {"header_timeout": 2.5, "min_body_rate": 10, "max_connections": 50,
                            "max_connections_per_client": 5},
                 "uploads": {"max_concurrent": 2}, "auth": {"max_failed_logins": 3, "failed_login_window": 30}})
    assert (cfg.header_timeout, cfg.min_body_rate, cfg.max_connections, cfg.max_connections_per_client) == \
        (2.5, 10, 50, 5)
    assert cfg.uploads.max_concurrent == 2
    assert (cfg.auth.max_failed_logins, cfg.auth.failed_login_window) == (3, 30.0)


@pytest.mark.parametrize("document, key", [
    ({"server": {"header_timeout": 0}}, "server.header_timeout"),
    ({"server": {"min_body_rate": 0}}, "server.min_body_rate"),
    ({"server": {"max_connections": 0}}, "server.max_connections"),
    ({"server": {"max_connections_per_client": 1.5}}, "server.max_connections_per_client"),
    ({"server": {"max_connections": 10, "max_connections_per_client": 11}}, "server.max_connections_per_client"),
    ({"uploads": {"max_concurrent": 0}}, "uploads.max_concurrent"),
    ({"auth": {"max_failed_logins": 0}}, "auth.max_failed_logins"),
    ({"auth": {"failed_login_window": -1}}, "auth.failed_login_window"),
    ({"auth": {"max_failed_logins": True}}, "auth.max_failed_logins"),
])
def test_request_limit_errors_name_the_key(document, key):
    assert _error(document).startswith(f"{key}: ")


@pytest.mark.parametrize("value, expected", [
    (0, 0), (1234, 1234), ("1234", 1234), ("500 MB", 500_000_000), ("20 GiB", 20 * 1024**3),
    ("1.5TB", 1_500_000_000_000), ("64kib", 65536),
])
def test_sizes_take_decimal_and_binary_units(value, expected):
    assert configuration.parse_size("cache.max_size", value) == expected


@pytest.mark.parametrize("value", ["-1", "abc", "5 XB", "", True, 1.5, [1]])
def test_a_bad_size_names_the_key(value):
    with pytest.raises(ConfigError, match=r"^cache\.max_size: expected a size"):
        configuration.parse_size("cache.max_size", value)


@pytest.mark.parametrize("section", ["cache", "monitoring", "policy"])
def test_new_sections_refuse_unknown_keys(section):
    with pytest.raises(ConfigError, match=rf"^{section}\.nonsense: unknown key"):
        configuration.parse({section: {"nonsense": 1}})


def test_cache_table_sizes_fractions_and_durations():
    cfg = parse({"cache": {"max_size": "20 GiB", "low_water": 0.8, "access_flush": "1m"}})
    assert (cfg.cache.max_size, cfg.cache.low_water, cfg.cache.access_flush) == (20 * 1024**3, 0.8, 60.0)
    assert parse({"cache": {"max_size": 5000}}).cache.max_size == 5000
    assert (Config().cache.max_size, Config().cache.low_water, Config().cache.access_flush) == (None, 0.9, 10.0)


@pytest.mark.parametrize("table, message", [
    ({"max_size": "lots"}, r"^cache\.max_size: expected a size"),
    ({"max_size": 0}, r"^cache\.max_size: must be more than 0 bytes"),
    ({"max_size": 1.5}, r"^cache\.max_size: expected int or str"),
    ({"low_water": 0.2}, r"^cache\.low_water: must be between 0.5 and 1.0"),
    ({"low_water": True}, r"^cache\.low_water: expected"),
    ({"access_flush": "soon"}, r"^cache\.access_flush: expected a duration"),
    ({"access_flush": 0}, r"^cache\.access_flush: must be between"),
])
def test_a_bad_cache_key_is_named(table, message):
    with pytest.raises(ConfigError, match=message):
        parse({"cache": table})


def test_policy_table_is_validated_into_seconds_and_names():
    cfg = parse({"policy": {"min_age": "3d", "min_age_exempt": ["Foo_Bar"],
                            "min_age_overrides": {"Slow.Pkg": "12h"}, "missing_upload_time": "hide",
                            "block": ["evil", "requests>=2,<2.3"], "allow_only": ["Requests"]}})
    assert cfg.policy.min_age == 3 * 86400
    assert cfg.policy.min_age_exempt == {"foo-bar"}
    assert dict(cfg.policy.min_age_overrides) == {"slow-pkg": 12 * 3600}
    assert cfg.policy.missing_upload_time == "hide"
    assert cfg.policy.block == ("evil", "requests>=2,<2.3")
    assert cfg.policy.allow_only == {"requests"}
    assert Config().policy.allow_only is None and Config().policy.min_age == 0


@pytest.mark.parametrize("table, message", [
    ({"min_age": "3 days"}, r"^policy\.min_age: expected a duration"),
    ({"min_age": -1}, r"^policy\.min_age: expected a duration"),
    ({"min_age_overrides": {"x": "soon"}}, r"^policy\.min_age_overrides\.x: expected a duration"),
    ({"missing_upload_time": "maybe"}, r"^policy\.missing_upload_time: expected"),
    ({"block": ["not a requirement!!"]}, r"^policy\.block: 'not a requirement!!' is not a requirement"),
    ({"allow_only": "requests"}, r"^policy\.allow_only: expected"),
])
def test_a_bad_policy_names_the_key(table, message):
    with pytest.raises(ConfigError, match=message):
        parse({"policy": table})


def test_monitoring_table():
    assert Config().monitoring.listen == () and Config().monitoring.on_main_listener
    assert Config().monitoring.access_log_format == "combined"
    cfg = parse({"monitoring": {"listen": "tcp:9141:interface=127.0.0.1", "access_log_format": "json"}})
    assert cfg.monitoring.listen == ("tcp:9141:interface=127.0.0.1",)
    assert cfg.monitoring.access_log_format == "json"
    cfg = parse({"monitoring": {"listen": ["tcp:9141", "unix:/run/m.sock"], "on_main_listener": False}})
    assert cfg.monitoring.listen == ("tcp:9141", "unix:/run/m.sock") and not cfg.monitoring.on_main_listener


@pytest.mark.parametrize("table, message", [
    ({"listen": 9141}, r"^monitoring\.listen: expected str or list"),
    ({"listen": ["tcp:9141", ""]}, r"^monitoring\.listen: expected an endpoint string"),
    ({"access_log_format": "xml"}, r"^monitoring\.access_log_format: expected \"combined\" or \"json\""),
    ({"on_main_listener": "no"}, r"^monitoring\.on_main_listener: expected bool"),
    ({"on_main_listener": False}, r"^monitoring\.on_main_listener: false needs monitoring\.listen"),
])
def test_a_bad_monitoring_key_is_named(table, message):
    with pytest.raises(ConfigError, match=message):
        parse({"monitoring": table})

def test_shutdown_timeout():
    assert Config().shutdown_timeout == 30.0
    assert parse({"server": {"shutdown_timeout": 5}}).shutdown_timeout == 5.0
    assert parse({"server": {"shutdown_timeout": 0}}).shutdown_timeout == 0.0
    for bad in (-1, 3601, "30s", True):
        assert _error({"server": {"shutdown_timeout": bad}}).startswith("server.shutdown_timeout: ")
