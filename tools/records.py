"""The conversation records (``RECORDS=mysql``): create their table, export them, delete old ones.

    python -m tools.records migrate                                   # create/upgrade the table (idempotent)
    python -m tools.records export --since 2026-11-01 [--until 2026-12-01] [--format jsonl|csv] [--output FILE]
    python -m tools.records purge --days 90                           # delete records older than 90 days

Connection settings come from MYSQL_HOST, MYSQL_PORT, MYSQL_USER, MYSQL_PASSWORD and MYSQL_DATABASE
(environment, then ./.env), as for tools.users. Dates are UTC, ``YYYY-MM-DD`` or ISO 8601 times.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import sys
from collections.abc import Iterator
from decimal import Decimal
from typing import Any, TextIO

from services.errors import RecordsUnavailable
from services.records import RecordDB
from services.records.db import EXPORTED
from tools.users import mysql_config


def _when(text: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date or ISO 8601 time: {text!r}") from None
    return value.astimezone(dt.UTC).replace(tzinfo=None) if value.tzinfo else value


def _plain(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=dt.UTC).isoformat(timespec="milliseconds")
    if isinstance(value, Decimal):
        return str(value)
    return value


def write(rows: Iterator[dict[str, Any]], fmt: str, out: TextIO) -> int:
    """Write ``rows`` as JSON lines or CSV (with a header); how many."""
    count = 0
    writer = csv.DictWriter(out, fieldnames=EXPORTED) if fmt == "csv" else None
    if writer is not None:
        writer.writeheader()
    for row in rows:
        plain = {k: _plain(v) for k, v in row.items()}
        if writer is not None:
            writer.writerow(plain)
        else:
            out.write(json.dumps(plain, ensure_ascii=False) + "\n")
        count += 1
    return count


def main(argv: list[str] | None = None) -> int:
    """Run one records command."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="create or upgrade the records table")
    export = sub.add_parser("export", help="write the records created in [since, until)")
    export.add_argument("--since", type=_when, required=True)
    export.add_argument("--until", type=_when)
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    export.add_argument("--output", help="a file (default: standard output)")
    purge = sub.add_parser("purge", help="delete records older than --days days")
    purge.add_argument("--days", type=int, required=True)
    args = parser.parse_args(argv)
    db = RecordDB(mysql_config())
    try:
        if args.command == "migrate":
            applied = db.migrate()
            print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
        elif args.command == "export":
            rows = db.export(args.since, args.until)
            if args.output:
                with open(args.output, "w", encoding="utf-8", newline="") as out:
                    count = write(rows, args.format, out)
            else:
                count = write(rows, args.format, sys.stdout)
            print(f"exported {count} records", file=sys.stderr)
        else:
            if args.days < 1:
                parser.error("--days must be 1 or more")
            print(f"deleted {db.purge(args.days)} records")
    except RecordsUnavailable as exc:
        print(f"MySQL unavailable: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
