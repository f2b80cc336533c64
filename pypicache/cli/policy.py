"""``pypicache policy``: show and change the block and allow lists of a
running server without a restart.

The config file stays the source of truth for what an operator writes by
hand (``[policy] block``, ``allow_only``; applied on SIGHUP).  This command
keeps its additions apart, in ``<data_dir>/policy.json``
(pypicache.services.blocklist), written atomically; the server merges both
and notices the file within seconds (pypicache.daemon.reload), so neither
a signal nor a restart is needed.  Entries of the config file cannot be
removed here: the command says so and names the key.  Every change is
written to the audit log.
"""

from __future__ import annotations

import argparse
import getpass
from typing import Any

COMMANDS = ("policy",)


def add_parser(commands: Any) -> None:
    policy = commands.add_parser("policy", help="show or change the block and allow lists").add_subparsers(
        dest="action", metavar="ACTION")
    policy.required = True
    policy.add_parser("show", help="the block and allow lists in force (config file and runtime)")
    p = policy.add_parser("block", help='refuse a project or releases: "name", "name==1.1", "name>=2,<2.3"')
    p.add_argument("spec")
    p.add_argument("--reason", default=None, help="why (shown to clients with the refusal)")
    p = policy.add_parser("unblock", help="remove a block added with `policy block`")
    p.add_argument("spec")
    p = policy.add_parser("allow", help="add a project to [policy] allow_only")
    p.add_argument("name")
    p = policy.add_parser("disallow", help="remove a project added with `policy allow`")
    p.add_argument("name")


def run(cfg: Any, args: argparse.Namespace) -> int:
    from pypicache.cli.common import CommandError, out as _out
    from pypicache.model import normalize
    from pypicache.services import audit
    from pypicache.services.blocklist import RuntimePolicy, load_runtime, parse_rule, save_runtime

    data_dir = cfg.data_dir
    runtime = load_runtime(data_dir)  # ValueError: one line
    policy = cfg.policy
    if args.action == "show":
        for spec in policy.block:
            _out(f"block\t{spec}\tconfig")
        for spec, note in runtime.block:
            _out(f"block\t{spec}\truntime" + (f"\t{note}" if note else ""))
        if policy.allow_only is None:
            _out("allow_only\t*\t(not set: every project is proxied)")
        else:
            for name in sorted(policy.allow_only):
                _out(f"allow_only\t{name}\tconfig")
            for name in sorted(runtime.allow - policy.allow_only):
                _out(f"allow_only\t{name}\truntime")
        return 0

    if args.action in ("block", "unblock"):
        spec = args.spec.strip()
        parse_rule(spec)  # ValueError names the problem
        specs = [s for s, _ in runtime.block]
        if args.action == "block":
            if spec in specs or spec in policy.block:
                raise CommandError(f"{spec!r} is blocked already")
            new = RuntimePolicy(block=runtime.block + ((spec, args.reason),), allow=runtime.allow)
        else:
            if spec not in specs:
                where = " (it is in the config file: remove it from policy.block and send SIGHUP)" \
                    if spec in policy.block else ""
                raise CommandError(f"{spec!r} was not blocked with `pypicache policy block`{where}")
            new = RuntimePolicy(block=tuple(b for b in runtime.block if b[0] != spec), allow=runtime.allow)
        target, details = spec, {"reason": args.reason} if args.action == "block" else {}
    else:
        name = normalize(args.name)
        if policy.allow_only is None:
            raise CommandError(f"policy.allow_only is not set in {cfg.source}: every project is proxied "
                               "(set it there to make a curated mirror)")
        if args.action == "allow":
            if name in policy.allow_only or name in runtime.allow:
                raise CommandError(f"{name} is allowed already")
            new = RuntimePolicy(block=runtime.block, allow=runtime.allow | {name})
        else:
            if name not in runtime.allow:
                where = " (it is in the config file: remove it from policy.allow_only and send SIGHUP)" \
                    if name in policy.allow_only else ""
                raise CommandError(f"{name} was not allowed with `pypicache policy allow`{where}")
            new = RuntimePolicy(block=runtime.block, allow=runtime.allow - {name})
        target, details = name, {}
    data_dir.mkdir(0o700, parents=True, exist_ok=True)
    save_runtime(data_dir, new)
    audit.append(data_dir / audit.FILENAME,
                 audit.event(f"policy.{args.action}", "admin-cli", target, user=_login(), **details))
    _out(f"{args.action}: {target} (the server applies it within seconds)")
    return 0


def _login() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None
