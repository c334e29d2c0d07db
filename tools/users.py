"""Manage the users allowed to talk to the bot (the MySQL ``wecom_users`` table).

    python -m tools.users migrate                         # create the database/tables (idempotent)
    python -m tools.users add USERID ACCOUNT [--name N]   # add or update a user (enabled)
    python -m tools.users disable USERID | enable USERID
    python -m tools.users list

Connection settings come from MYSQL_HOST, MYSQL_PORT, MYSQL_USER, MYSQL_PASSWORD and
MYSQL_DATABASE (environment, then ./.env). A disabled or removed user is refused within
AUTH_NEGATIVE_TTL_SECONDS at the latest once their cached token expires; to cut access at once,
also delete their ``authorization:wechatid:<userid>`` key in Redis.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from services.errors import AuthUnavailable
from services.user_db import MySQLConfig, UserDB


def mysql_config() -> MySQLConfig:
    """The tools' MySQL: ``MYSQL_*`` from the environment, then ./.env (a bad port is one line)."""
    values: dict[str, str] = {}
    if Path(".env").is_file():
        from dotenv import dotenv_values

        values.update({k: v for k, v in dotenv_values(".env").items() if v is not None})
    values.update(os.environ)
    port = values.get("MYSQL_PORT", "3306")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise SystemExit(f"MYSQL_PORT: must be a TCP port (1-65535), not {port!r}")
    return MySQLConfig(host=values.get("MYSQL_HOST", "127.0.0.1"), port=int(port),
                       user=values.get("MYSQL_USER", "root"), password=values.get("MYSQL_PASSWORD", ""),
                       database=values.get("MYSQL_DATABASE", "wecom_bridge"))


def main(argv: list[str] | None = None) -> int:
    """Run one user-table command."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="create the database and apply pending schema files")
    add = sub.add_parser("add", help="add or update a user (enabled)")
    add.add_argument("userid")
    add.add_argument("account")
    add.add_argument("--name", default="")
    for name in ("disable", "enable"):
        sub.add_parser(name).add_argument("userid")
    sub.add_parser("list")
    args = parser.parse_args(argv)
    db = UserDB(mysql_config())
    try:
        if args.command == "migrate":
            applied = db.migrate()
            print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
        elif args.command == "add":
            db.upsert(args.userid, args.account, args.name)
            print(f"{args.userid}: enabled, account {args.account}")
        elif args.command in ("disable", "enable"):
            if not db.set_enabled(args.userid, args.command == "enable"):
                print(f"{args.userid}: no such user", file=sys.stderr)
                return 1
            print(f"{args.userid}: {args.command}d")
        else:
            for user in db.list():
                print(f"{user.userid}\t{user.account}\t{user.display_name}\t"
                      f"{'enabled' if user.enabled else 'disabled'}")
    except AuthUnavailable as exc:
        print(f"MySQL unavailable: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
