"""What the benchmark reads about gunicorn workers from /proc (Linux only), without touching the apps.

- ``connections``: the established TCP connections each worker holds on the server port. An
  accepted socket lives in the process that accepted it, so matching socket inodes in
  ``/proc/net/tcp{,6}`` (local port = server port) with ``/proc/<pid>/fd`` tells how the load
  generator's connections split over the workers. Read while the connections are open.
- ``listening``: which workers hold their own listening socket (gunicorn ``reuse_port``).
- ``status``: threads, current and peak RSS (VmRSS, VmHWM) of one process.
- ``cpu_seconds``: user + system CPU time of one process, to show how the work split.
- ``machine_busy_seconds``: CPU time of the whole machine, to show how much went elsewhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_ESTABLISHED, _LISTEN = "01", "0A"
_TICK = os.sysconf("SC_CLK_TCK")


def _sockets(port: int, state: str) -> set[int]:
    """Inodes of TCP sockets whose local port is ``port`` and whose state is ``state``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and parts[3] == state and int(parts[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(int(parts[9]))
    return inodes


def _owned(pid: int, inodes: set[int]) -> int:
    """How many of ``inodes`` are open in process ``pid``."""
    count = 0
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return 0
    for fd in fds:
        try:
            link = os.readlink(f"{fd_dir}/{fd}")
        except OSError:
            continue
        if link.startswith("socket:[") and int(link[8:-1]) in inodes:
            count += 1
    return count


def connections(pids: list[int], port: int) -> dict[int, int]:
    """Established connections on ``port`` held by each of ``pids``."""
    inodes = _sockets(port, _ESTABLISHED)
    return {pid: _owned(pid, inodes) for pid in pids}


def listening(pids: list[int], port: int) -> dict[int, bool]:
    """Whether each of ``pids`` holds a listening socket on ``port``."""
    inodes = _sockets(port, _LISTEN)
    return {pid: _owned(pid, inodes) > 0 for pid in pids}


@dataclass(frozen=True)
class Status:
    """A few lines of /proc/<pid>/status (memory in MB)."""

    threads: int
    rss_mb: float
    hwm_mb: float


def status(pid: int) -> Status:
    """Threads, VmRSS and VmHWM of ``pid``."""
    fields: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        fields[name] = value.strip()

    def mb(name: str) -> float:
        return int(fields.get(name, "0 kB").split()[0]) / 1024

    return Status(int(fields.get("Threads", "0")), mb("VmRSS"), mb("VmHWM"))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used by ``pid`` so far (0 when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14 and 15 of stat)


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle since boot (from /proc/stat)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    guest = sum(ticks[8:10])  # already counted in user and nice
    return (sum(ticks) - guest - idle) / _TICK
