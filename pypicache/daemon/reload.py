"""Changing the policy of a running server: SIGHUP, and ``pypicache policy``.

On SIGHUP the config file is read again and its ``[policy]`` table (block,
allow_only, and the cooldown's keys) replaces the running one at once,
pages already cached included (their cache keys carry the policy's
generation).  Every other key needs a restart: a changed one is named in a
warning and not applied.  A config that does not load keeps the running one
and logs the ConfigError's line.

``pypicache policy`` writes its additions to ``<data_dir>/policy.json``
(pypicache.services.blocklist); the server looks at that file's identity
(a ``stat``) every ``WATCH_EVERY`` seconds and on SIGHUP, and applies it
when it changed: the command needs no signal and no pid.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import attrs
from twisted.logger import Logger

from pypicache.services.blocklist import RUNTIME_FILE, compile_rules, load_runtime

log = Logger()

#: Seconds between two looks at the runtime policy file.
WATCH_EVERY = 2.0


def apply_policy(app: Any, policy: Any) -> None:
    """Make ``policy`` (a PolicyConfig) and the runtime policy file the
    server's policy, effective for the next request.  ValueError (naming
    the file) when the runtime policy file is not readable: nothing changes."""
    rules = compile_rules(policy, load_runtime(app.config.data_dir))
    app.policy = policy
    blocklist = app.mirror.blocklist
    blocklist.update(rules)
    if blocklist.on_denied is None and app.audit is not None:
        def denied(project: str, filename: str, reason: str, client: str) -> None:
            app.audit("blocked", "anonymous", f"{project}/{filename}", client=client or None, reason=reason)

        blocklist.on_denied = denied


def changed_keys(old: Any, new: Any) -> list[str]:
    """The config's top-level fields (sections, or server keys) that differ,
    other than the policy: what a reload cannot apply."""
    return [f.name for f in attrs.fields(type(old))
            if f.name not in ("policy", "source") and getattr(old, f.name) != getattr(new, f.name)]


def reload_config(app: Any, baseline: Any = None) -> Any:
    """Re-read the config file and apply its policy.  Returns the file's
    config (the next reload's ``baseline``: what the file said last, before
    command-line options such as ``--listen`` were applied), or None when it
    did not load."""
    from pypicache.daemon import config as configuration
    from pypicache.errors import ConfigError

    old = app.config
    baseline = baseline if baseline is not None else old
    if old.source.startswith("<"):  # the embedded default: nothing to re-read
        new = old
    else:
        try:
            new = configuration.load(old.source)
        except ConfigError as e:
            log.error("config reload failed, the running config stays: {error}", error=str(e))
            return None
    try:
        apply_policy(app, new.policy)
    except ValueError as e:
        log.error("config reload failed, the running policy stays: {error}", error=str(e))
        return None
    skipped = changed_keys(baseline, new)
    if skipped:
        log.warn("config reload: changed but not applied until a restart: {keys}", keys=", ".join(skipped))
    if new.policy != old.policy:
        app.config = attrs.evolve(old, policy=new.policy)
        if app.audit is not None:
            app.audit("policy.change", "config-reload", old.source, block=list(new.policy.block),
                      allow_only=sorted(new.policy.allow_only) if new.policy.allow_only is not None else None)
    log.info("config reloaded from {source}: policy applied", source=old.source)
    return new


def _load_quietly(config: Any) -> Any:
    """The config file as it reads now (``config`` itself if it cannot be read)."""
    from pypicache.daemon import config as configuration
    from pypicache.errors import ConfigError

    if config.source.startswith("<"):
        return config
    try:
        return configuration.load(config.source)
    except ConfigError:
        return config


class Reloader:
    """SIGHUP and the runtime policy file's watch, for one running App."""

    def __init__(self, app: Any, reactor: Any, *, every: float = WATCH_EVERY) -> None:
        self.app = app
        self.reactor = reactor
        self.every = every
        self._path = app.config.data_dir / RUNTIME_FILE
        self._seen = self._identity()
        self._baseline = _load_quietly(app.config)
        self._loop: Any = None
        self._previous: Any = None

    def _identity(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self._path)
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def start(self) -> None:
        from twisted.internet import task

        try:
            self._previous = signal.signal(signal.SIGHUP, self._on_signal)
        except ValueError:  # not the main thread (an embedding): no signal, the watch still runs
            self._previous = None
        self._loop = task.LoopingCall(self.check)
        self._loop.clock = self.reactor
        self._loop.start(self.every, now=False)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self.hangup)

    def hangup(self) -> None:
        log.info("SIGHUP: reloading the config")
        self._seen = self._identity()
        self._baseline = reload_config(self.app, self._baseline) or self._baseline

    def check(self) -> None:
        """Apply the runtime policy file if it changed since last seen."""
        now = self._identity()
        if now == self._seen:
            return
        self._seen = now
        try:
            apply_policy(self.app, self.app.policy)
        except ValueError as e:
            log.error("runtime policy not applied, the running policy stays: {error}", error=str(e))
            return
        log.info("runtime policy {path} applied", path=str(self._path))
