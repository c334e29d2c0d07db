"""Closed-loop scenarios: crypto alone, polls of live N KB streams (floor, ours, peer), new messages."""

from __future__ import annotations

import json
import time
import uuid

from bench import loadgen
from bench.apps import filler
from bench.measure import Bench
from bench.profiles import AES_KEY, NEW_QUERY, TOKEN, TRIO
from bench.servers import Server, flush, serving
from crypto import WeComCrypto
from tools.wecom_client import stream_refresh, text_message


def crypto(bench: Bench) -> None:
    """Verify+decrypt and encrypt+sign per second in this process, without any server."""
    wecom = WeComCrypto(TOKEN, AES_KEY, "")
    req = bench.signer.callback(stream_refresh("0" * 32))
    q = req.query
    n = bench.profile.crypto_ops
    started = time.perf_counter()
    for _ in range(n):
        wecom.decrypt_json(q["msg_signature"], q["timestamp"], q["nonce"], req.body)
    decrypt = n / (time.perf_counter() - started)
    frame = json.dumps({"msgtype": "stream", "stream": {"id": "0" * 32, "finish": False,
                                                        "content": filler(1024)}}, ensure_ascii=False)
    started = time.perf_counter()
    for _ in range(n):
        wecom.encrypt_json(frame, q["nonce"])
    encrypt = n / (time.perf_counter() - started)
    bench.facts["crypto_verify_decrypt_per_s"] = round(decrypt)
    bench.facts["crypto_encrypt_sign_1kb_per_s"] = round(encrypt)
    print(f"  crypto: verify+decrypt {decrypt:,.0f}/s, encrypt+sign (1 KB frame) {encrypt:,.0f}/s", flush=True)


def throughput(bench: Bench, redis_url: str, dify_url: str) -> None:
    """Polls of live N KB streams (floor, ours, peer; rotating order), then new messages (ours, peer)."""
    profile = bench.profile
    for i, size in enumerate(profile.sizes):
        label = f"poll {round(size / 1024)} KB"
        print(label, flush=True)
        flush(redis_url)
        env = bench.env(redis_url, dify_url, BENCH_CONTENT_BYTES=str(size), BENCH_PIN="1")
        with serving(TRIO, env) as servers:
            streams = seed_streams(bench, servers["ours"], size)
            reqs = []
            for k in range(profile.requests):
                sid, user = streams[k % len(streams)]
                req = bench.pinned.callback(stream_refresh(sid, userid=user))
                reqs.append((loadgen.target(req), req.body))
            nbytes = identical(bench, servers, reqs[0], size)
            print(f"  replies byte-identical across floor, ours, peer ({nbytes} bytes, {size} bytes of content)",
                  flush=True)
            bench.facts[f"{label} identical reply bytes"] = nbytes
            for server in servers.values():  # not timed
                loadgen.send_all(server.port, reqs[: profile.warmup])
            names = list(TRIO)
            for rnd in range(profile.rounds):
                for name in names[rnd % 3:] + names[: rnd % 3]:
                    bench.run_load(label, servers[name], rnd, reqs)
            bench.summarise(label, names)
            if i == len(profile.sizes) - 1:
                new_messages(bench, servers)


def seed_streams(bench: Bench, server: Server, size: int) -> list[tuple[str, str]]:
    """Create ``profile.streams`` live streams holding ``size`` bytes through ours; return (sid, user) pairs.

    Each is a message whose Dify answer is ``size`` bytes at once, then held open with pings, so
    every stream is running (not finished) and shows exactly ``filler(size)``.
    """
    tag = uuid.uuid4().hex[:8]
    users = [f"seed-{size}-{tag}-{k}" for k in range(bench.profile.streams)]
    msgs = [bench.pinned.callback(text_message(f"seed {size}", userid=u, msgid=f"{u}-m")) for u in users]
    replies = loadgen.send_all(server.port, [(loadgen.target(m), m.body) for m in msgs])
    streams = []
    for user, msg, (status, body) in zip(users, msgs, replies, strict=True):
        assert status == 200, (status, body[:200])
        streams.append((bench.pinned.open_reply(body, msg)["stream"]["id"], user))
    want, pending, deadline = filler(size), streams, time.monotonic() + 30
    while pending:
        polls = [bench.pinned.callback(stream_refresh(sid, userid=user)) for sid, user in pending]
        replies = loadgen.send_all(server.port, [(loadgen.target(p), p.body) for p in polls])
        left = []
        for stream, poll, (status, body) in zip(pending, polls, replies, strict=True):
            frame = bench.pinned.open_reply(body, poll)["stream"] if status == 200 else {}
            if frame.get("finish") or frame.get("content") != want:
                left.append((stream, frame))
        if left and time.monotonic() > deadline:
            frame = left[0][1]
            raise AssertionError(f"{len(left)} of {len(streams)} streams never showed {size} bytes and stayed open; "
                                 f"e.g. finish={frame.get('finish')} content={str(frame.get('content'))[:80]!r}")
        pending = [stream for stream, _ in left]
        if pending:
            time.sleep(0.2)
    return streams


def identical(bench: Bench, servers: dict[str, Server], req: tuple[str, bytes], size: int,
              finish: bool = False) -> int:
    """Send the same poll to every app: the replies must be byte-identical valid frames of ``size`` bytes."""
    import requests

    tgt, body = req
    bodies = {}
    for name, server in servers.items():
        resp = requests.post(f"{server.url}{tgt}", data=body, timeout=10)
        assert resp.status_code == 200, (name, resp.status_code, resp.text[:200])
        bodies[name] = resp.content
    crypto = bench.pinned.crypto
    texts = {}
    for name, raw in bodies.items():
        env = json.loads(raw)
        texts[name] = crypto.decrypt(env["msgsignature"], str(env["timestamp"]), env["nonce"], env["encrypt"])
    frame = json.loads(texts["ours"])["stream"]
    assert frame["finish"] == finish and len(frame["content"].encode()) == size, "unequal work: wrong frame"
    if len(set(bodies.values())) != 1:
        detail = "\n".join(f"  {name}: {len(raw)} bytes {raw[:60]!r}... plaintext {texts[name][:100]!r}"
                           for name, raw in bodies.items())
        raise AssertionError(f"the apps' replies to the same poll differ:\n{detail}")
    return len(bodies["ours"])


def new_messages(bench: Bench, servers: dict[str, Server]) -> None:
    """New text messages (unique msgids): the callback's claim, stream creation and hand-off.

    Dify holds its answer for the whole run, so this measures the callback, not Dify traffic (which
    the peer does not have at all). One run per app (ours, then peer), on the last poll size's servers.
    """
    print("new message", flush=True)
    tag = uuid.uuid4().hex[:8]
    reqs = []
    for k in range(bench.profile.requests):
        req = bench.pinned.callback(text_message(NEW_QUERY, userid=f"nm-{tag}-{k}", msgid=f"nm-{tag}-{k}"))
        reqs.append((loadgen.target(req), req.body))
    for name in ("ours", "peer"):
        server = servers[name]
        accepted = [accepts_message(bench, server, f"{tag}-before")]
        bench.run_load("new message", server, 0, reqs)
        accepted.append(accepts_message(bench, server, f"{tag}-after"))
        bench.facts[f"new message {name} accepts a message before/after the run"] = accepted
        print(f"  {name} answers a new message with an open stream (not a refusal) before/after the run: "
              f"{'/'.join('yes' if a else 'NO' for a in accepted)}", flush=True)
    bench.summarise("new message", ["ours", "peer"])


def accepts_message(bench: Bench, server: Server, tag: str) -> bool:
    """Send one message; True when the reply is an open stream (not a refusal such as busy)."""
    import requests

    req = bench.pinned.callback(text_message(NEW_QUERY, userid=f"check-{tag}-{server.name}"))
    resp = requests.post(f"{server.url}{loadgen.target(req)}", data=req.body, timeout=10)
    assert resp.status_code == 200, (resp.status_code, resp.text[:200])
    frame = bench.pinned.open_reply(resp.content, req)
    assert frame["msgtype"] == "stream", frame
    return not frame["stream"]["finish"]
