"""`lineinspect audit`: the audit trail, read from its SQLite file (read-only, no service
needed), one JSON record a line, oldest first.

    lineinspect audit --config deploy/config.example.yaml          # the configured trail
    lineinspect audit --path var/audit.sqlite --action thresholds.set --since 1767225600
    lineinspect audit --path var/audit.sqlite --thresholds neu-cls-demo 7   # a verdict's thresholds
    lineinspect audit --path var/audit.sqlite --verify                       # the hash chain
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

from service import audit


def _trail(args: argparse.Namespace) -> Path:
    if args.path is not None:
        path: Path = args.path
        return path
    from service.config import load_settings

    s = load_settings(args.config, os.environ)
    return s.audit.path or s.outbox.path.parent / "audit.sqlite"


def cmd_audit(args: argparse.Namespace) -> int:
    try:
        db = audit.open_readonly(_trail(args))
    except FileNotFoundError as exc:
        print(f"lineinspect: error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.verify:
            checked, broken = audit.verify(db)
            if broken is not None:
                print(f"audit trail broken at record {broken} ({checked} records before it "
                      "follow the chain)", file=sys.stderr)  # fmt: skip
                return 1
            print(f"audit trail intact: {checked} records")
            return 0
        records: list[dict[str, Any]]
        if args.thresholds is not None:
            model, version = args.thresholds
            found = audit.thresholds_record(db, model, int(version))
            records = [found] if found is not None else []
            if not records:
                print(f"lineinspect: error: no thresholds version {version} of {model} on record",
                      file=sys.stderr)  # fmt: skip
                return 1
        else:
            records = audit.query(db, None, args.since, args.until, args.action, args.target,
                                  args.limit)  # fmt: skip
    except (sqlite3.Error, ValueError) as exc:
        print(f"lineinspect: error: {exc}", file=sys.stderr)
        return 2
    finally:
        db.close()
    for record in records:
        print(json.dumps(record, sort_keys=True))
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "audit",
        help="print the audit trail (JSON lines) or check its hash chain",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--config", type=Path, help="YAML config naming the trail (audit.path)")
    where.add_argument("--path", type=Path, help="the trail's SQLite file")
    p.add_argument("--since", type=float, help="from this Unix time (s)")
    p.add_argument("--until", type=float, help="before this Unix time (s)")
    p.add_argument("--action", help="only this action, e.g. thresholds.set, model.reload")
    p.add_argument("--target", help="only this target (a model, camera/item, recipe)")
    p.add_argument("--limit", type=int, default=audit.MAX_LIMIT, help="most records (<= 1000)")
    p.add_argument("--thresholds", nargs=2, metavar=("MODEL", "VERSION"),
                   help="the thresholds version a verdict names")  # fmt: skip
    p.add_argument("--verify", action="store_true", help="check the hash chain")
    p.set_defaults(func=cmd_audit)
