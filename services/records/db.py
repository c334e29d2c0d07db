"""The ``conversation_records`` table: batched upserts, feedback, retention and export. All SQL is parametrized."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal, InvalidOperation
from typing import Any

import pymysql

from services.errors import RecordsUnavailable
from services.mysql import MySQLConfig, migrate, mysql_connection

COLUMNS = ("bot", "msgid", "sid", "user_hash", "userid", "chat", "query", "answer", "note", "status", "moderation",
           "dify_conversation_id", "dify_message_id", "prompt_tokens", "completion_tokens", "total_tokens",
           "total_price", "currency", "dify_latency_ms", "first_content_ms", "created_at", "finished_at")
"""What a record sets, in the INSERT's order (feedback comes later, by its own UPDATE)."""
EXPORTED = ("id", *COLUMNS, "feedback", "feedback_text", "feedback_at")
# A record written twice (a retried batch) stays the first. The column names are the fixed ones above.
UPSERT = (f"INSERT INTO conversation_records ({', '.join(COLUMNS)}) "  # noqa: S608
          f"VALUES ({', '.join(['%s'] * len(COLUMNS))}) ON DUPLICATE KEY UPDATE id = id")
FEEDBACK = ("UPDATE conversation_records SET feedback = %s, feedback_text = %s, feedback_at = %s "
            "WHERE bot = %s AND sid = %s AND (feedback_at IS NULL OR feedback_at <= %s)")  # a later rating wins


class RecordDB:
    """Short-lived-connection access to ``conversation_records``."""

    def __init__(self, config: MySQLConfig) -> None:
        self.config = config

    def migrate(self) -> list[str]:
        """Create the database if needed and apply pending ``sql/records_NNN_*.sql`` files."""
        return migrate(self.config, "records_[0-9][0-9][0-9]_*.sql", RecordsUnavailable)

    def write(self, records: list[dict[str, Any]]) -> int:
        """Insert ``records`` in one transaction (duplicates by bot + msgid are left as they are).

        If MySQL refuses the batch's data, each record is written alone and those it refuses are
        skipped: one bad record must not hold back the others forever. Returns how many were skipped.
        """
        if not records:
            return 0
        rows = [tuple(_column(r, name) for name in COLUMNS) for r in records]
        with mysql_connection(self.config, RecordsUnavailable) as conn:
            try:
                conn.begin()
                with conn.cursor() as cur:
                    cur.executemany(UPSERT, rows)
                conn.commit()
                return 0
            except (pymysql.DataError, pymysql.IntegrityError):
                conn.rollback()
            skipped = 0
            for row in rows:
                try:
                    with conn.cursor() as cur:
                        cur.execute(UPSERT, row)
                except (pymysql.DataError, pymysql.IntegrityError):
                    skipped += 1
            return skipped

    def rate(self, bot: str, sid: str, rating: str | None, text: str, at_ms: int) -> bool:
        """Set an answer's feedback unless a later one is set; False when its record is not there (yet)."""
        at = _time(at_ms)
        with mysql_connection(self.config, RecordsUnavailable, found_rows=True) as conn, conn.cursor() as cur:
            if cur.execute(FEEDBACK, (rating or "withdrawn", text[:1024], at, bot, sid, at)):
                return True
            # not updated: no record yet, or it holds a later rating already (then this one is done)
            return bool(cur.execute("SELECT 1 FROM conversation_records WHERE bot = %s AND sid = %s", (bot, sid)))

    def purge(self, older_than_days: int, now: dt.datetime | None = None) -> int:
        """Delete the records created more than ``older_than_days`` ago, in chunks; how many."""
        cutoff = (now or dt.datetime.now(dt.UTC).replace(tzinfo=None)) - dt.timedelta(days=older_than_days)
        deleted = 0
        with mysql_connection(self.config, RecordsUnavailable) as conn, conn.cursor() as cur:
            while n := cur.execute("DELETE FROM conversation_records WHERE created_at < %s LIMIT 5000", (cutoff,)):
                deleted += n
        return deleted

    def export(self, since: dt.datetime, until: dt.datetime | None = None) -> Iterator[dict[str, Any]]:
        """The records created in [since, until), oldest first, read in pages."""
        last = 0
        with mysql_connection(self.config, RecordsUnavailable) as conn, conn.cursor() as cur:
            while True:
                cur.execute(f"SELECT {', '.join(EXPORTED)} FROM conversation_records "  # noqa: S608 - fixed names
                            "WHERE id > %s AND created_at >= %s AND created_at < %s ORDER BY id LIMIT 1000",
                            (last, since, until or dt.datetime(9999, 1, 1)))
                rows = cur.fetchall()
                if not rows:
                    return
                for row in rows:
                    yield dict(zip(EXPORTED, row, strict=True))
                last = int(rows[-1][0])


def _column(record: dict[str, Any], name: str) -> Any:
    value = record.get(name)
    if name in ("created_at", "finished_at"):
        return _time(int(value or 0))
    if name == "total_price":
        try:
            return Decimal(str(value)) if value not in (None, "") else None
        except InvalidOperation:
            return None
    if name in ("prompt_tokens", "completion_tokens", "total_tokens", "dify_latency_ms", "first_content_ms"):
        return int(value) if isinstance(value, int | float) and value >= 0 else None
    if name in ("userid", "currency"):
        return str(value) if value is not None else None
    return "" if value is None else str(value)  # the NOT NULL text columns


def _time(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).replace(tzinfo=None)
