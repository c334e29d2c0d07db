"""METRICS_PORT: /metrics served by the gunicorn master on a port of its own (every worker's samples), and a
404 on the app's port, which the Ingress exposes; a bad value or a taken port stops gunicorn in one line."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from config import Settings
from tests.conftest import AES_KEY, TOKEN
from tests.procs import Replica
from tests.servers import free_port
from tests.test_replicas import replica_env
from tools.dify_sim import DifySimulator

ROOT = Path(__file__).resolve().parent.parent
ENV = {"WECOM_TOKEN": TOKEN, "WECOM_ENCODING_AES_KEY": AES_KEY, "DIFY_BASE_URL": "http://127.0.0.1:1/v1",
       "DIFY_API_KEY": "k"}


def test_default_keeps_metrics_on_the_app_port() -> None:
    assert Settings.from_env(ENV, dotenv=None).metrics_port == 0
    assert Settings.from_env({**ENV, "METRICS_PORT": "9102"}, dotenv=None).metrics_port == 9102


def test_gunicorn_stops_on_a_bad_metrics_port(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no .env
    for name, value in {**ENV, "METRICS_PORT": "9102x"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit, match="^configuration error: METRICS_PORT: expected int"):
        runpy.run_path(str(ROOT / "gunicorn.conf.py"))


@pytest.fixture
def replica(redis_url: str, redis_client: redis.Redis, dify: DifySimulator) -> Iterator[Replica]:
    r = Replica(replica_env(redis_url, dify, METRICS_PORT=str(free_port()), ENGINE_CAPACITY="7"), workers=2)
    yield r.start()
    r.stop()


@pytest.mark.process
def test_metrics_on_the_metrics_port_and_404_on_the_app_port(replica: Replica) -> None:
    metrics_url = f"http://127.0.0.1:{replica.env['METRICS_PORT']}/metrics"
    deadline = time.monotonic() + 15
    while "wecom_dify_engine_capacity 14.0" not in (text := requests.get(metrics_url, timeout=5).text):
        assert time.monotonic() < deadline, text  # until both workers have booted: 2 × ENGINE_CAPACITY
        time.sleep(0.2)
    assert "wecom_dify_callbacks_total" in text or "wecom_dify_unknown_bot_total" in text
    public = requests.get(f"{replica.url}/metrics", timeout=5)
    assert public.status_code == 404 and "wecom_dify" not in public.text
    assert requests.get(f"{replica.url}/livez", timeout=5).status_code == 200  # the app itself is unchanged
    listening = {line.split()[9] for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
                 if line.split()[1].endswith(f":{int(replica.env['METRICS_PORT']):04X}") and line.split()[3] == "0A"}
    assert len(listening) == 1  # one listening socket
    for pid in replica.worker_pids():  # held by the master alone: the workers closed their copy after the fork
        held = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        assert not {f"socket:[{inode}]" for inode in listening} & held


@pytest.mark.process
def test_a_taken_metrics_port_stops_gunicorn_in_one_line(tmp_path: Path) -> None:
    port = free_port()
    env = {"PATH": os.environ.get("PATH", ""), **ENV, "METRICS_PORT": str(port)}
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        done = subprocess.run([sys.executable, "-m", "gunicorn", "--config", str(ROOT / "gunicorn.conf.py"),
                               "app:create_app()", "--bind", f"127.0.0.1:{free_port()}"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == \
        f"configuration error: METRICS_PORT: cannot listen on 127.0.0.1:{port} (Address already in use)"
