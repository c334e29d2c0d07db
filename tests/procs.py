"""Real gunicorn replicas of the bot for process-level tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from tests.servers import free_port, terminate

ROOT = Path(__file__).resolve().parent.parent


class Replica:
    """One gunicorn master (gthread workers, the checkout's gunicorn.conf.py) serving ``app`` on a free port."""

    def __init__(self, env: dict[str, str], *, workers: int = 1, threads: int = 8,
                 args: tuple[str, ...] = (), app: str = "app:create_app()", root: Path = ROOT) -> None:
        self.port = free_port()
        self.env = {**os.environ, **env}
        self.workers = workers
        self.threads = threads
        self.args = args
        self.app = app
        self.root = root  # the checkout to run: this one, or an earlier release's
        self.log = tempfile.NamedTemporaryFile(prefix="replica-", suffix=".log", delete=False)  # noqa: SIM115
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL of this replica."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> Replica:
        """Start gunicorn and wait until ``/livez`` answers."""
        cmd = [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", self.app,
               "--bind", f"127.0.0.1:{self.port}", "--workers", str(self.workers), "--threads", str(self.threads),
               *self.args]
        self.proc = subprocess.Popen(cmd, cwd=self.root, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"replica exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if requests.get(f"{self.url}/livez", timeout=0.5).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        output = self.output()
        self.stop()  # never leave a half-started server behind
        raise TimeoutError(f"replica did not become live:\n{output}")

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the gunicorn master."""
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill_all(self) -> None:
        """SIGKILL the master and every worker at once, as when a node or pod dies."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        """Stop the master (SIGTERM, then SIGKILL) and its workers."""
        terminate(self.proc, timeout=20)
        self.log.close()

    def worker_pids(self) -> list[int]:
        """The worker processes of this master."""
        assert self.proc is not None
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return [int(pid) for pid in children]

    def output(self) -> str:
        """Everything the replica printed so far."""
        if not self.log.closed:
            self.log.flush()
        return Path(self.log.name).read_text(errors="replace")
