"""MySQL for the bridge's tables: short-lived connections with timeouts, and the schema migrations.

PyMySQL connections are not thread-safe (``threadsafety = 1``), so every call opens its own
connection with connect/read timeouts; a failure is re-raised as the caller's own error type, naming
the server and the cause, never the password. All SQL is parametrized.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql
from pymysql.constants import CLIENT

SQL_DIR = Path(__file__).with_name("sql")


@dataclass(frozen=True)
class MySQLConfig:
    """Where the bridge's tables live."""

    host: str
    port: int
    user: str
    password: str
    database: str
    connect_timeout: float = 3.0
    read_timeout: float = 5.0


@contextlib.contextmanager
def mysql_connection(c: MySQLConfig, error: type[Exception], *, database: bool = True,
                     found_rows: bool = False) -> Iterator[pymysql.connections.Connection[Any]]:
    """One autocommit connection; every PyMySQL failure becomes ``error``.

    With ``found_rows`` an UPDATE reports the rows it matched, not only those it changed.
    """
    try:
        conn = pymysql.connect(host=c.host, port=c.port, user=c.user, password=c.password,
                               database=c.database if database else None, charset="utf8mb4",
                               connect_timeout=c.connect_timeout, read_timeout=c.read_timeout,
                               write_timeout=c.read_timeout, autocommit=True,
                               client_flag=CLIENT.FOUND_ROWS if found_rows else 0)
    except pymysql.MySQLError as exc:
        raise error(f"mysql connect to {c.host}:{c.port} failed: {_cause(exc)}") from exc
    try:
        yield conn
    except pymysql.MySQLError as exc:
        raise error(f"mysql query failed: {_cause(exc)}") from exc
    finally:
        with contextlib.suppress(Exception):
            conn.close()


def migrate(c: MySQLConfig, pattern: str, error: type[Exception]) -> list[str]:
    """Create the database if needed and apply the pending ``sql/`` files matching ``pattern``; their names."""
    if not re.fullmatch(r"[A-Za-z0-9_]+", c.database):
        raise ValueError("MYSQL_DATABASE may only contain letters, digits and _")
    with mysql_connection(c, error, database=False) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE IF NOT EXISTS `{c.database}` CHARACTER SET utf8mb4")
    applied: list[str] = []
    with mysql_connection(c, error) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version VARCHAR(64) PRIMARY KEY, "
                    "applied_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)")
        cur.execute("SELECT version FROM schema_migrations")
        done = {str(r[0]) for r in cur.fetchall()}
        for path in sorted(SQL_DIR.glob(pattern)):
            if path.stem in done:
                continue
            for statement in filter(None, (s.strip() for s in _strip_comments(path.read_text()).split(";"))):
                cur.execute(statement)
            cur.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (path.stem,))
            applied.append(path.stem)
    return applied


def _strip_comments(sql: str) -> str:
    return "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))


CAUSES = {2003: "connection refused or host unreachable", 2005: "unknown host",
          1045: "access denied (check MYSQL_USER and MYSQL_PASSWORD)",
          1049: "unknown database (create it: python -m tools.users migrate, or tools.records migrate)",
          1146: "a table is missing (create it: python -m tools.users migrate, or tools.records migrate)"}
"""What MySQL's client error codes mean to an operator (the messages never carry the password)."""


def _cause(exc: pymysql.MySQLError) -> str:
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    return CAUSES.get(code, f"{type(exc).__name__} {code}") if code is not None else type(exc).__name__
