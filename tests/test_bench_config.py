"""The benchmark harness's config template still makes a valid config.

../shared/bench replaces {listen}, {host}, {port}, {upstream} and {data_dir}
in bench/pypicache.toml; a template that stopped parsing would make the
harness skip pypicache silently.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from pypicache.daemon import config

TEMPLATE = Path(__file__).resolve().parent.parent / "bench" / "pypicache.toml"


def test_bench_template_gives_a_valid_config(tmp_path):
    words = {"{listen}": "tcp:18141:interface=127.0.0.1", "{host}": "127.0.0.1", "{port}": "18141",
             "{upstream}": "http://127.0.0.1:18080/simple/", "{data_dir}": str(tmp_path / "data")}
    text = TEMPLATE.read_text()
    for word, value in words.items():
        text = text.replace(word, value)
    cfg = config.parse(tomllib.loads(text))
    assert cfg.listen == ("tcp:18141:interface=127.0.0.1",)
    assert cfg.upstream.options["url"] == "http://127.0.0.1:18080/simple/"
    assert not cfg.access_log and cfg.fast_path
