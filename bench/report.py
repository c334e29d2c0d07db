"""The report: the table of rows, and the issue's goals each with its measured value."""

from __future__ import annotations

from typing import Any

from bench.measure import Bench

MIXED_P99_GOALS = ((500, 50.0), (2000, 200.0))  # conversations -> poll p99 limit in ms


def mark(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def stack_p99(facts: dict[str, Any], n: int, limit: float) -> str:
    """The pollers scenario's p99 at ``n`` (floor, and ours on a finished stream), or "" when it did not run."""
    pollers = facts.get(f"pollers_{n}")
    if not pollers:
        return ""
    floor, ours = pollers["floor"]["p99_ms"], pollers["ours"]["p99_ms"]
    return (f";  the stack itself, {n} pollers of a finished stream: floor p99 {floor:.1f} ms "
            f"({'within' if floor <= limit else 'OVER'} {limit:.0f}), ours {ours:.1f} ms")


def goals(bench: Bench) -> list[str]:
    """The issue's goals, each with the measured value."""
    facts = bench.facts
    out = []
    mixed_ns = [n for n in bench.profile.mixed if f"mixed_{n}" in facts]  # all of them, unless --skip mixed
    for n, limit in MIXED_P99_GOALS:
        stack = stack_p99(facts, n, limit)
        if f"mixed_{n}" in facts:
            p99 = facts[f"mixed_{n}"]["poll_p99_ms"]
            out.append(f"poll p99 at {n} conversations <= {limit:.0f} ms: {p99:.1f} ms  {mark(p99 <= limit)}{stack}")
        elif stack:
            out.append(f"poll p99 at {n} conversations <= {limit:.0f} ms: (mixed not run){stack}")
    if len(mixed_ns) >= 2:
        first, last = facts[f"mixed_{mixed_ns[0]}"], facts[f"mixed_{mixed_ns[-1]}"]
        growth = last["poll_p50_ms"] / first["poll_p50_ms"] if first["poll_p50_ms"] else 0.0
        facts["poll p50 growth first->last mixed"] = round(growth, 2)
        out.append(f"poll p50 from {mixed_ns[0]} to {mixed_ns[-1]} conversations within 2x: "
                   f"{first['poll_p50_ms']:.2f} -> {last['poll_p50_ms']:.2f} ms = {growth:.2f}x  {mark(growth <= 2)}")
    if mixed_ns:
        counts = [(facts[f"mixed_{n}"]["answers_started"], facts[f"mixed_{n}"]["answers_finished"],
                   facts[f"mixed_{n}"]["answers_complete"]) for n in mixed_ns]
        ok = all(s == f == c and s > 0 for s, f, c in counts)
        out.append("every answer finished (started/finished/complete): "
                   + ", ".join(f"{n}: {s}/{f}/{c}" for n, (s, f, c) in zip(mixed_ns, counts, strict=True))
                   + f"  {mark(ok)}")
        last_n = mixed_ns[-1]
        rss = max(facts[f"mixed_{last_n}"]["peak_rss_mb_per_worker"])
        out.append(f"RSS per worker at {last_n} conversations <= 150 MB: {rss:.0f} MB  {mark(rss <= 150)}")
        threads = [max(facts[f"mixed_{n}"]["threads_per_worker"]) for n in mixed_ns]
        out.append("threads per worker (peak) at " + "/".join(map(str, mixed_ns)) + " conversations: "
                   + "/".join(map(str, threads)) + f"  {mark(len(set(threads)) == 1)} (constant)")
    for size in bench.profile.sizes:
        label = f"poll {round(size / 1024)} KB"
        peer, floor = facts.get(f"{label} ours/peer"), facts.get(f"{label} cost/floor")
        if peer is not None and floor is not None:
            out.append(f"{label}: ours/peer {peer:.2f}x (>= 1.0)  {mark(peer >= 1.0)};  cost vs floor {floor:.2f}x "
                       f"(<= 1.5)  {mark(floor <= 1.5)};  per round {facts[f'{label} ours/peer per round']} / "
                       f"{facts[f'{label} cost/floor per round']}")
    if "ttft_added_ms" in facts:
        t = facts["ttft_added_ms"]
        out.append(f"Dify first token added by the bridge <= 150 ms over the poll interval: median {t['median']:.1f} ms"
                   f"  {mark(t['median'] <= 150)}, p99 {t['p99']:.1f} ms  {mark(t['p99'] <= 150)}")
    if "bots" in facts:
        b = facts["bots"]
        fair, unfair = b["a_flooded_fair"], b["a_flooded_a takes all"]
        alone, during = b["b_alone"]["added_ms"], fair["b"]["added_ms"]
        ok = fair["b"]["busy"] == 0 and fair["a_busy"] > 0 and during["p99"] <= 150
        out.append(f"bot b while bot a is flooded past its share (issue 11): a {fair['a_admitted']} admitted / "
                   f"{fair['a_busy']} busy; b {fair['b']['answered']}/{b['probes']} answered, first token added "
                   f"p50 {during['p50']:.1f} / p99 {during['p99']:.1f} ms (alone {alone['p50']:.1f} / "
                   f"{alone['p99']:.1f})  {mark(ok)};  with all but one answer per worker given to a: b busy "
                   f"{unfair['b']['busy']}/{b['probes']}")
    return out


def report(bench: Bench) -> str:
    """The table plus the goals."""
    lines = [f"{'scenario':<34} {'impl':<6} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>6}"]
    for r in bench.rows:
        lines.append(f"{r.scenario:<34} {r.impl:<6} {r.rps:8.0f} {r.p50:8.2f} {r.p95:8.2f} {r.p99:8.2f} "
                     f"{r.errors:6d}  {r.note}".rstrip())
    lines += ["", "goals (issues 10, 11):"] + [f"  {line}" for line in goals(bench)]
    return "\n".join(lines)
