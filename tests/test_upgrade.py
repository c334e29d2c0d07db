"""Rolling upgrade: the previous release (from git history) and this one serve one Redis side by side.

During a deploy, WeCom's polls land on old and new replicas alike. Each must finish the other's
streams, re-deliveries must find the other's claims, and a stream whose old replica is stopped
mid-answer must be finished correctly when polled on the new one (README "Upgrades").
"""

from __future__ import annotations

import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from services.streams.keys import KEY_LAYOUT
from tests.procs import ROOT, Replica
from tests.test_replicas import replica_env, wecom
from tools.dify_sim import DifySimulator, Script
from tools.wecom_client import WeComClient, text_message

pytestmark = pytest.mark.process

__all__ = ["wecom"]
PREVIOUS_RELEASE = "d1b0f37c3838475d709f17bfb2f3f696b7a2b741"
"""The last commit before key layout 2 (issue 15): its key names are layout 1's."""
PREVIOUS_LAYOUT = 1


@pytest.fixture(scope="module")
def previous_release() -> Iterator[Path]:
    """The previous release's files, exported from git history into a temporary directory."""
    def present() -> bool:
        return subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{PREVIOUS_RELEASE}^{{commit}}"],
                              capture_output=True).returncode == 0

    if not present():  # a shallow clone: fetch the history it left out
        subprocess.run(["git", "-C", str(ROOT), "fetch", "-q", "--unshallow"], capture_output=True, timeout=120)
    assert present(), (f"git history lacks the previous release {PREVIOUS_RELEASE}: "
                       "run the tests in a full clone (not --depth)")
    with tempfile.TemporaryDirectory(prefix="previous-release-") as tmp:
        archive = Path(tmp) / "release.tar"
        subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), PREVIOUS_RELEASE], check=True)
        with tarfile.open(archive) as tar:
            tar.extractall(Path(tmp) / "release", filter="data")
        yield Path(tmp) / "release"


@pytest.fixture
def old_and_new(previous_release: Path, redis_url: str, dify: DifySimulator,
                redis_client: redis.Redis) -> Iterator[tuple[Replica, Replica]]:
    env = replica_env(redis_url, dify, SHUTDOWN_DRAIN_SECONDS="5")
    old, new = Replica(env, root=previous_release), Replica(env)
    try:
        old.start()
        new.start()
        yield old, new
    finally:
        old.stop()
        new.stop()


def finish(client: WeComClient, url: str, sid: str) -> dict[str, object]:
    """Poll ``sid`` on ``url`` until its stream finishes; the last frame's stream."""
    deadline = time.monotonic() + 30
    while not (frame := client.poll(url, sid)["stream"])["finish"]:
        assert time.monotonic() < deadline, "the stream did not finish"
        time.sleep(0.05)
    return dict(frame)


def test_this_release_declares_the_layout_the_upgrade_rule_covers() -> None:
    assert KEY_LAYOUT == PREVIOUS_LAYOUT + 1  # a new layout needs a new PREVIOUS_RELEASE and README entry
    assert f"| {KEY_LAYOUT} |" in (ROOT / "README.md").read_text()


def test_each_release_finishes_the_others_streams(old_and_new: tuple[Replica, Replica], wecom: WeComClient,
                                                  dify: DifySimulator) -> None:
    old, new = old_and_new
    for i, (start, poll) in enumerate([(old, new), (new, old)]):
        answer = f"滚动升级中的第 {i} 个回答。" * 40
        dify.script(f"升级 {i}", Script(answer=answer, delta_size=7, delay=0.01))
        payload = text_message(f"升级 {i}", msgid=f"upgrade-{i}", userid=f"user-{i}")
        first = wecom.send(start.url, payload)
        assert first is not None
        sid = first["stream"]["id"]
        seen = [wecom.poll(url, sid)["stream"]["content"] for url in (poll.url, start.url, poll.url)]
        assert all(later.startswith(earlier) for earlier, later in zip(seen, seen[1:], strict=False))
        assert finish(wecom, poll.url, sid)["content"] == answer
        again = wecom.send(poll.url, payload)  # a re-delivery to the other release finds the claim
        assert again is not None and again["stream"]["id"] == sid
    assert [r.json["query"] for r in dify.chat_requests()] == ["升级 0", "升级 1"]


def test_a_stream_whose_old_replica_is_stopped_mid_answer_finishes_on_the_new(
        old_and_new: tuple[Replica, Replica], wecom: WeComClient, dify: DifySimulator) -> None:
    old, new = old_and_new
    answer = "旧副本停机时仍在生成的回答。" * 60  # about 2 s of deltas: inside the old replica's drain
    dify.script("停机", Script(answer=answer, delta_size=6, delay=0.01))
    first = wecom.send(old.url, text_message("停机", userid="deploy"))
    assert first is not None
    sid = first["stream"]["id"]
    while not wecom.poll(new.url, sid)["stream"]["content"]:
        time.sleep(0.02)
    old.signal(signal.SIGTERM)  # what the rollout does to the old pod
    assert finish(wecom, new.url, sid)["content"] == answer
    assert old.proc is not None and old.proc.wait(timeout=15) == 0
    frames = wecom.converse([new.url], text_message("之后", userid="deploy"), interval=0.05)
    assert frames[-1]["stream"]["content"] == "echo: 之后"  # the conversation goes on, on the new release
