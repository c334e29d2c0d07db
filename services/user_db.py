"""The MySQL user table: schema migrations, lookups, and the admin operations behind tools/users.

PyMySQL connections are not thread-safe (``threadsafety = 1``), so every call opens its own
short-lived connection with connect/read timeouts. All SQL is parametrized.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import pymysql

from services.errors import AuthUnavailable
from services.mysql import CAUSES, MySQLConfig, migrate, mysql_connection

__all__ = ["CAUSES", "MySQLConfig", "UserDB", "UserRecord"]


@dataclasses.dataclass(frozen=True)
class UserRecord:
    """One row of ``wecom_users``."""

    userid: str
    account: str
    display_name: str
    enabled: bool


class UserDB:
    """Short-lived-connection access to ``wecom_users``."""

    def __init__(self, config: MySQLConfig) -> None:
        self.config = config

    @contextlib.contextmanager
    def connect(self, database: bool = True) -> Iterator[pymysql.connections.Connection[Any]]:
        """Open one connection; every PyMySQL failure becomes ``AuthUnavailable``."""
        with mysql_connection(self.config, AuthUnavailable, database=database) as conn:
            yield conn

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
        return migrate(self.config, "[0-9][0-9][0-9]_*.sql", AuthUnavailable)

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
