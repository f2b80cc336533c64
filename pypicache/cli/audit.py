"""``pypicache audit``: the audit log (pypicache.services.audit), filtered.

Plain lines by default (time, actor, action, target, client, details);
``--json`` prints the stored JSON lines as they are, for scripts.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timedelta, timezone
from typing import Any

COMMANDS = ("audit",)


def add_parser(commands: Any) -> None:
    p = commands.add_parser("audit", help="show the audit log (uploads, yanks, accounts, policy, blocks)")
    p.add_argument("--since", metavar="TIME",
                   help='only events after TIME: RFC 3339 ("2026-01-31T12:00:00Z") or an age ("3d", "12h")')
    p.add_argument("--action", action="append", metavar="A", help="only this action (repeatable)")
    p.add_argument("--actor", metavar="U", help="only events by this user (or admin-cli, config-reload)")
    p.add_argument("--project", metavar="P", help="only events about this project")
    p.add_argument("--json", action="store_true", help="print JSON lines")


def _since(text: str) -> datetime:
    from pypicache.daemon.config import parse_duration
    from pypicache.errors import ConfigError

    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        try:
            return datetime.now(timezone.utc) - timedelta(seconds=parse_duration("--since", text))
        except ConfigError:
            raise ValueError(f"--since: expected an RFC 3339 time or an age such as 3d, got {text!r}") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


def _time(entry: dict[str, Any]) -> datetime | None:
    try:
        return datetime.fromisoformat(str(entry.get("time", "")).replace("Z", "+00:00"))
    except ValueError:
        return None


def run(cfg: Any, args: argparse.Namespace) -> int:
    from pypicache.cli.common import out as _out
    from pypicache.model import normalize
    from pypicache.services import audit

    for action in args.action or ():
        if action not in audit.ACTIONS:
            raise ValueError(f"--action: unknown action {action!r} (known: {', '.join(audit.ACTIONS)})")
    since = _since(args.since) if args.since else None
    project = normalize(args.project) if args.project else None
    for entry in audit.read(cfg.data_dir / audit.FILENAME):
        if args.action and entry.get("action") not in args.action:
            continue
        if args.actor and str(entry.get("actor", "")).lower() != args.actor.lower():
            continue
        target = str(entry.get("target", ""))
        if project and target != project and not target.startswith(project + "/"):
            continue
        if since is not None:
            when = _time(entry)
            if when is None or when < since:
                continue
        if args.json:
            _out(json.dumps(entry, separators=(",", ":")))
            continue
        extra = " ".join(f"{k}={v}" for k, v in entry.items()
                         if k not in ("time", "actor", "action", "target", "client"))
        _out(f"{entry.get('time')}\t{entry.get('actor')}\t{entry.get('action')}\t{target}\t"
             f"{entry.get('client') or '-'}" + (f"\t{extra}" if extra else ""))
    return 0
