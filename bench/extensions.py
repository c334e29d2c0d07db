"""Issue 16: what records, webhooks and moderation cost an answer, side by side in one run.

``python -m bench.extensions [--answers N] [--json PATH]`` starts a redis-server, a MariaDB, the
threaded Dify simulator, a webhook receiver and, for each configuration in turn, one gunicorn replica
of the bridge (the repo's gunicorn.conf.py, 1 worker x 8 threads). One client asks N questions one
after another and polls each answer to its end every 20 ms; the time from sending the message to
the final frame is the answer's latency. Configurations: all three off (the default); records with
MySQL up; records with MySQL stopped; webhooks to a receiver that answers at once; webhooks to one
that hangs every delivery past its timeout; moderation with a word list on questions and answers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from services.mysql import MySQLConfig
from services.records import RecordDB
from tests.conftest import AES_KEY, TOKEN
from tests.hook_servers import WebhookReceiver
from tests.procs import Replica
from tests.servers import MariaDBServer, RedisServer
from tools.dify_sim import DifySimulator, Script
from tools.wecom_client import WeComClient, WeComSigner, text_message

SECRET = "bench-webhook-secret-0123"


def latencies(url: str, n: int, tag: str) -> list[float]:
    """Seconds from each message to its final frame, one answer after another."""
    client = WeComClient(WeComSigner(TOKEN, AES_KEY))
    out = []
    for i in range(n):
        started = time.perf_counter()
        first = client.send(url, text_message("基准问题", userid=f"{tag}-{i}"))
        assert first is not None
        frame = first["stream"]
        while not frame["finish"]:
            time.sleep(0.02)
            frame = client.poll(url, first["stream"]["id"])["stream"]
        out.append(time.perf_counter() - started)
    return out


def summary(samples: list[float]) -> dict[str, float]:
    """p50, p90 and max in milliseconds."""
    ordered = sorted(samples)
    return {"p50_ms": round(statistics.median(ordered) * 1000, 1),
            "p90_ms": round(ordered[int(len(ordered) * 0.9) - 1] * 1000, 1),
            "max_ms": round(ordered[-1] * 1000, 1), "n": len(ordered)}


def main() -> None:
    """Measure every configuration in one run; print (and optionally write) the numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", type=int, default=60)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    redis_server, mariadb = RedisServer().start(), MariaDBServer().start()
    dify = DifySimulator().start()
    receiver = WebhookReceiver(SECRET)
    words = Path(tempfile.mkdtemp()) / "words.txt"
    words.write_text("机密\n内部代号\n", encoding="utf-8")
    results: dict[str, Any] = {}
    try:
        dify.script("基准问题", Script(answer="这是一个用于基准测试的回答，" * 20, delta_size=20, delay=0.01))
        database = f"bench_{uuid.uuid4().hex[:8]}"
        RecordDB(MySQLConfig("127.0.0.1", mariadb.port, "root", "", database)).migrate()
        base = {"WECOM_TOKEN": TOKEN, "WECOM_ENCODING_AES_KEY": AES_KEY, "REDIS_URL": redis_server.url,
                "DIFY_BASE_URL": dify.url, "DIFY_API_KEY": "app-bench", "LOG_LEVEL": "ERROR"}
        records = {"RECORDS": "mysql", "MYSQL_HOST": "127.0.0.1", "MYSQL_PORT": str(mariadb.port),
                   "MYSQL_USER": "root", "MYSQL_DATABASE": database, "MYSQL_CONNECT_TIMEOUT": "1"}
        hooks = {"WEBHOOK_URL": receiver.url, "WEBHOOK_SECRET": SECRET, "WEBHOOK_TIMEOUT": "2"}
        configurations: list[tuple[str, dict[str, str], Any]] = [
            ("all off (default)", {}, None),
            ("records, MySQL up", records, None),
            ("records, MySQL stopped", records, mariadb.stop),
            ("webhooks, receiver answers", hooks, None),
            ("webhooks, receiver hangs 3 s", hooks, lambda: setattr(receiver, "hang", 3.0)),
            ("moderation, words on questions and answers",
             {"MODERATION_WORDS_FILE": str(words), "MODERATION_ANSWERS": "true"}, None),
        ]
        for i, (name, extra, before) in enumerate(configurations):
            if before is not None:
                before()
            replica = Replica({**base, **extra}).start()
            try:
                latencies(replica.url, 5, f"warm{i}")
                results[name] = summary(latencies(replica.url, args.answers, f"c{i}"))
            finally:
                replica.stop()
            print(f"{name:45} p50 {results[name]['p50_ms']:7.1f} ms  p90 {results[name]['p90_ms']:7.1f} ms  "
                  f"max {results[name]['max_ms']:7.1f} ms", flush=True)
        results["webhook deliveries received"] = len(receiver.deliveries)
    finally:
        receiver.close()
        dify.stop()
        mariadb.close()
        redis_server.close()
    print(json.dumps(results, indent=2, ensure_ascii=False))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
