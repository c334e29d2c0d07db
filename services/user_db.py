"""The MySQL user table: schema migrations, lookups, and the admin operations behind tools/users.

PyMySQL connections are not thread-safe (``threadsafety = 1``), so every call opens its own
short-lived connection with connect/read timeouts. All SQL is parametrized.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql
import pymysql.cursors

from services.errors import AuthUnavailable

SQL_DIR = Path(__file__).with_name("sql")


@dataclass(frozen=True)
class UserRecord:
    """One row of ``wecom_users``."""

    userid: str
    account: str
    display_name: str
    enabled: bool


@dataclass(frozen=True)
class MySQLConfig:
    """Where the user table lives."""

    host: str
    port: int
    user: str
    password: str
    database: str
    connect_timeout: float = 3.0
    read_timeout: float = 5.0


class UserDB:
    """Short-lived-connection access to ``wecom_users``."""

    def __init__(self, config: MySQLConfig) -> None:
        self.config = config

    @contextlib.contextmanager
    def connect(self, database: bool = True) -> Iterator[pymysql.connections.Connection[Any]]:
        """Open one connection; every PyMySQL failure becomes ``AuthUnavailable``."""
        c = self.config
        try:
            conn = pymysql.connect(host=c.host, port=c.port, user=c.user, password=c.password,
                                   database=c.database if database else None, charset="utf8mb4",
                                   connect_timeout=c.connect_timeout, read_timeout=c.read_timeout,
                                   write_timeout=c.read_timeout, autocommit=True)
        except pymysql.MySQLError as exc:
            raise AuthUnavailable(f"mysql connect to {c.host}:{c.port} failed: {_cause(exc)}") from exc
        try:
            yield conn
        except pymysql.MySQLError as exc:
            raise AuthUnavailable(f"mysql query failed: {type(exc).__name__}") from exc
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    def find(self, userid: str) -> UserRecord | None:
        """Return the user with WeCom ``userid``, or None."""
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT userid, account, display_name, enabled FROM wecom_users WHERE userid = %s",
                        (userid,))
            row = cur.fetchone()
        if row is None:
            return None
        return UserRecord(str(row[0]), str(row[1]), str(row[2]), bool(row[3]))

    def ping(self) -> None:
        """Run ``SELECT 1``; raises ``AuthUnavailable``."""
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")

    def migrate(self) -> list[str]:
        """Create the database if needed and apply pending ``sql/NNN_*.sql`` files; return their names."""
        with self.connect(database=False) as conn, conn.cursor() as cur:
            if not re.fullmatch(r"[A-Za-z0-9_]+", self.config.database):
                raise ValueError("MYSQL_DATABASE may only contain letters, digits and _")
            cur.execute(f"CREATE DATABASE IF NOT EXISTS `{self.config.database}` CHARACTER SET utf8mb4")
        applied: list[str] = []
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version VARCHAR(64) PRIMARY KEY, "
                        "applied_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)")
            cur.execute("SELECT version FROM schema_migrations")
            done = {str(r[0]) for r in cur.fetchall()}
            for path in sorted(SQL_DIR.glob("[0-9][0-9][0-9]_*.sql")):
                if path.stem in done:
                    continue
                for statement in filter(None, (s.strip() for s in _strip_comments(path.read_text()).split(";"))):
                    cur.execute(statement)
                cur.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (path.stem,))
                applied.append(path.stem)
        return applied

    def upsert(self, userid: str, account: str, display_name: str = "", enabled: bool = True) -> None:
        """Add a user, or update the account/name/enabled flag of an existing one."""
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute("INSERT INTO wecom_users (userid, account, display_name, enabled) VALUES (%s, %s, %s, %s) "
                        "ON DUPLICATE KEY UPDATE account = VALUES(account), display_name = VALUES(display_name), "
                        "enabled = VALUES(enabled)", (userid, account, display_name, int(enabled)))

    def set_enabled(self, userid: str, enabled: bool) -> bool:
        """Enable or disable a user; False if there is no such user."""
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute("UPDATE wecom_users SET enabled = %s WHERE userid = %s", (int(enabled), userid))
            cur.execute("SELECT COUNT(*) FROM wecom_users WHERE userid = %s", (userid,))
            row = cur.fetchone()
            return bool(row and row[0])

    def list(self) -> list[UserRecord]:
        """All users, ordered by userid."""
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT userid, account, display_name, enabled FROM wecom_users ORDER BY userid")
            return [UserRecord(str(r[0]), str(r[1]), str(r[2]), bool(r[3])) for r in cur.fetchall()]


def _strip_comments(sql: str) -> str:
    return "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))


CAUSES = {2003: "connection refused or host unreachable", 2005: "unknown host",
          1045: "access denied (check MYSQL_USER and MYSQL_PASSWORD)",
          1049: "unknown database (create it: python -m tools.users migrate)"}
"""What MySQL's client error codes mean to an operator (the messages never carry the password)."""


def _cause(exc: pymysql.MySQLError) -> str:
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    return CAUSES.get(code, f"{type(exc).__name__} {code}") if code is not None else type(exc).__name__
