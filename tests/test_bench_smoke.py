"""A seconds-long run of ``make bench``: every scenario runs end to end (no timing assertions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.process


def test_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--smoke", "--loadgen", "python", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ours/peer throughput" in proc.stdout and "cost vs bare-Flask floor" in proc.stdout
    data = json.loads(out.read_text())
    rows = {(r["scenario"], r["impl"]): r for r in data["rows"]}
    assert set(rows) == {("poll 1 KB", "floor"), ("poll 1 KB", "ours"), ("poll 1 KB", "peer"),
                         ("new message", "ours"), ("new message", "peer"), ("mixed 5 conversations", "ours")}
    for key, row in rows.items():
        assert row["rps"] > 0 and row["errors"] == 0, (key, row)
    assert data["facts"]["mixed_5_answers_finished"] >= 1
    assert data["facts"]["crypto_verify_decrypt_per_s"] > 0
