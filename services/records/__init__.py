"""Conversation records (``RECORDS=mysql``): one MySQL row per answered message, written off the answer's path."""

from services.records.db import RecordDB
from services.records.writer import RecordWriter

__all__ = ["RecordDB", "RecordWriter"]
