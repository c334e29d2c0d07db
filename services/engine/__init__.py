"""The answer engine: one event loop per worker process owns the life of every answer it admits."""

from __future__ import annotations

from services.engine.engine import Admission, Engine
from services.engine.job import Job, Outcome, State

__all__ = ["Admission", "Engine", "Job", "Outcome", "State"]
