"""``make bench``: measure the bridge on loopback against the bare-Flask floor and a peer.

Starts a real redis-server, a simulated Dify (``bench/dify.py``, asyncio, in its own process) and
gunicorn, drives the apps with correctly signed and encrypted WeCom callbacks, prints a table and
the issue's goals, and writes everything as JSON. ``--smoke`` is a seconds-long version for the
tests; ``--set FIELD=VALUE`` changes one Profile field (e.g. ``--set sizes= --set mixed=2000``).

Same settings for every app: the repo's gunicorn.conf.py with ``WORKERS`` gthread workers x
``THREADS`` threads, plus ``GUNICORN_ARGS``. ``--reuse-port`` gives each worker its own listening
socket, so the kernel spreads new connections over the workers; without it a keep-alive load
generator can land all its connections on one worker and halve any app's throughput by chance.
Every run prints how its connections split over the workers, the CPU each worker used, and the
CPU used elsewhere on the machine (neither the workers, the load generator, Redis nor Dify: it
shows when something else disturbed a run).

Scenarios:
- poll N KB: stream refreshes of live streams holding N KB; floor, ours and peer; ``rounds`` rounds,
  the order of the apps rotating between rounds; ratios are medians of the per-round ratios.
  The streams are created through ours itself (a message whose Dify answer is N KB, then held
  open with pings), so ours serves them exactly as in production. All three apps answer the same
  poll with byte-identical HTTP bodies (see ``bench/apps.py``), asserted before the rounds.
- new message: text messages with unique msgids (Dify holds the answers: the callback is measured).
- mixed N: N conversations, each polling once a second while Dify streams a 3 KB answer, then
  sending the next message; every answer is polled to its end; RSS, threads and connections per
  worker are read from /proc.
- first token: the latency the bridge adds to Dify's first token (see ``bench.mixed.first_token``).
- pollers N: N keep-alive pollers, one refresh a second each, of one finished 3 KB stream: the floor
  and ours side by side, to show what the gunicorn/Flask stack itself carries at each N of mixed.
- bots: two bots on one node; bot b's first token alone, and while bot a is flooded past what the
  node holds, with the default shares and with everything given to a (``bench/bots.py``).

Modules: ``profiles`` (settings, Profile), ``servers`` (gunicorn apps, Dify), ``measure`` (results,
closed-loop runs), ``throughput``, ``mixed``, ``pollers`` (the scenarios), ``loadgen``/``openloop``
(the load generators), ``bots`` (several bots), ``report`` (table and goals); ``--skip`` leaves out a scenario.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from dataclasses import asdict
from pathlib import Path

from bench import loadgen
from bench.bots import bots
from bench.measure import Bench
from bench.mixed import mixed
from bench.pollers import pollers
from bench.profiles import FULL, GUNICORN_ARGS, SCENARIOS, SMOKE, THREADS, WORKERS, Profile, override
from bench.report import report
from bench.servers import dify_process
from bench.throughput import crypto, throughput
from tests.servers import RedisServer


def run(profile: Profile, use_wrk: bool, threaded_dify: bool = False, skip: tuple[str, ...] = ()) -> Bench:
    """Run every scenario but those in ``skip``; return the bench with its rows and facts."""
    bench = Bench(profile, use_wrk)
    print(f"every app: gunicorn.conf.py --workers {WORKERS} --threads {THREADS} {' '.join(GUNICORN_ARGS)}")
    skipped = f"; not declared by config.Settings, so not passed: {', '.join(bench.not_declared)}"
    print(f"ours also gets {' '.join(f'{k}={v}' for k, v in bench.node_env.items())}"
          f"{skipped if bench.not_declared else ''}", flush=True)
    bench.facts["gunicorn"] = f"--workers {WORKERS} --threads {THREADS} {' '.join(GUNICORN_ARGS)}"
    bench.facts["node_settings"] = bench.node_env
    redis_server = RedisServer().start()
    try:
        with dify_process(profile, threaded_dify) as (dify_url, dify_pid):
            assert redis_server.proc is not None
            bench.aux_pids = [redis_server.proc.pid, dify_pid]
            if "crypto" not in skip:
                print("crypto alone", flush=True)
                crypto(bench)
            if "poll" not in skip:
                throughput(bench, redis_server.url, dify_url)
            if "mixed" not in skip:
                mixed(bench, redis_server.url, dify_url)
            if "pollers" not in skip:
                pollers(bench, redis_server.url, dify_url)
            if "bots" not in skip:
                bots(bench, redis_server.url, dify_url)
    finally:
        redis_server.close()
    return bench


def raise_fd_limit() -> None:
    """2000 pollers need 2000 sockets here and about as many per gunicorn worker (which inherit this)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a seconds-long run (for tests)")
    parser.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--dify", choices=["asyncio", "threaded"], default="asyncio",
                        help="bench.dify (default), or tools.dify_sim (a thread per stream: saturates near 1000)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a Profile field, e.g. --set mixed=2000 --set sizes= (empty: skip)")
    parser.add_argument("--skip", action="append", default=[], choices=SCENARIOS,
                        help="leave out a scenario (poll: the poll sizes and new message; mixed: also first token)")
    args = parser.parse_args(argv)
    try:
        profile = override(SMOKE if args.smoke else FULL, args.set)
    except (AttributeError, KeyError, ValueError) as exc:
        parser.error(f"--set: {exc}")
    use_wrk = args.loadgen == "wrk" or (args.loadgen == "auto" and loadgen.wrk_available())
    if args.loadgen == "wrk" and not loadgen.wrk_available():
        parser.error("wrk is not installed (apt-get install wrk)")
    raise_fd_limit()
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)  # each server gets its own
    started = time.monotonic()
    bench = run(profile, use_wrk, args.dify == "threaded", tuple(args.skip))
    table = report(bench)
    print("\n" + table)
    print(f"\nload generator: {'wrk' if use_wrk else 'python asyncio'}; total {time.monotonic() - started:.0f} s")
    if args.json:
        data = {"rows": [asdict(r) for r in bench.rows], "runs": [asdict(r) for r in bench.runs], "facts": bench.facts}
        args.json.write_text(json.dumps(data, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
