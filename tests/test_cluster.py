"""Redis Cluster: the process tests of multi-replica streaming, dedupe, queues, leases and auth, on 3 masters.

The tests imported below run here a second time with this module's ``redis_url`` and ``redis_client``:
every replica and in-process app then talks to a real 3-master cluster through ``redis+cluster://``.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest
from redis.crc import key_slot

from app import create_app
from config import Settings
from services.errors import StoreUnavailable
from services.longconn.lease import HolderLease, fence_of
from services.streams.connection import LazyCluster, connect
from services.streams.keys import Keys, group_of, new_sid
from services.streams.records import Lease
from services.streams.store import StreamStore
from tests.helpers import InProcessWeCom
from tests.redis_topologies import Cluster
from tests.servers import free_port
from tests.test_auth_processes import seeded, test_twenty_simultaneous_messages_on_two_replicas_refresh_once
from tests.test_engine_processes import test_queued_messages_of_a_conversation_run_in_arrival_order_across_replicas
from tests.test_replicas import (
    replicas,
    test_fifty_concurrent_conversations_through_two_replicas,
    test_polls_alternating_between_replicas,
    wecom,
)
from tests.test_resilience_processes import (
    start_pair,
    test_every_key_has_a_ttl_after_full_conversations,
    test_sigkill_of_the_producer_replica,
    test_window_finishes_in_time_and_the_answer_arrives_once,
)
from tools.wecom_client import WeComSigner, text_message

pytestmark = pytest.mark.process

__all__ = [  # run here against the cluster, with the fixtures they need
    "replicas", "seeded", "start_pair", "wecom",
    "test_every_key_has_a_ttl_after_full_conversations",
    "test_fifty_concurrent_conversations_through_two_replicas",
    "test_polls_alternating_between_replicas",
    "test_queued_messages_of_a_conversation_run_in_arrival_order_across_replicas",
    "test_sigkill_of_the_producer_replica",
    "test_twenty_simultaneous_messages_on_two_replicas_refresh_once",
    "test_window_finishes_in_time_and_the_answer_arrives_once",
]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    started = Cluster().start()
    yield started
    started.close()


@pytest.fixture(scope="module")
def redis_url(cluster: Cluster) -> str:
    return cluster.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[LazyCluster]:
    client = connect(redis_url, 5.0)
    assert isinstance(client, LazyCluster)
    client.flushdb()  # every master
    yield client
    client.flushdb()
    client.close()


def test_the_keys_of_one_script_share_a_slot_and_conversations_spread() -> None:
    keys = Keys("wecomdify:", cluster=True)
    slots = set()
    for i in range(200):
        scope = f"user:u{i}"
        sid = new_sid(scope)
        claim = [keys.msg(f"m{i}", sid), keys.stream_meta(sid), keys.stream_text(sid), keys.stream_owner(sid),
                 keys.stream_images(sid), keys.queue(scope)]
        assert len({key_slot(k.encode()) for k in claim}) == 1, claim
        slots.add(key_slot(keys.stream_meta(sid).encode()))
        lease = [keys.ws_holder(f"bot{i}"), keys.ws_fence(f"bot{i}"), keys.ws_inbox(f"bot{i}")]
        assert len({key_slot(k.encode()) for k in lease}) == 1
    assert len(slots) > 150  # 200 conversations over 16384 slots: hardly any two share one
    assert keys.auth_wechatid("u1") == "authorization:wechatid:u1"  # shared with other systems: never tagged
    assert keys.auth_token("t1") == "authorization:token:t1"
    assert new_sid("user:u1")[:8] == group_of("user:u1") != group_of("user:u2")


def test_renewing_leases_of_many_conversations_in_one_round_trip(redis_client: LazyCluster) -> None:
    store = StreamStore(redis_client, Keys("t:", cluster=True))
    sids = [new_sid(f"user:{i}") for i in range(60)]
    for i, sid in enumerate(sids):
        store.claim(f"m{i}", sid, "me", {}, scope=f"user:{i}")
    store.set_status(sids[0], "done")
    found = store.renew_owners([*sids, new_sid("user:gone")], "me")
    assert found == [Lease.FINISHED, *[Lease.HELD] * 59, Lease.LOST]


def test_the_long_connection_lease_takes_terms_with_growing_fences(redis_client: LazyCluster) -> None:
    store = StreamStore(redis_client, Keys("t:", cluster=True))
    first = HolderLease(store, "aibBOT", "replica-a", 5000)
    second = HolderLease(store, "aibBOT", "replica-b", 5000)
    term = first.take()
    assert term is not None and second.take() is None and first.renew(term)
    first.release(term)
    later = second.take()
    assert later is not None and fence_of(later) == fence_of(term) + 1 and not first.renew(term)


def test_a_cluster_that_is_away_is_a_busy_frame_and_a_503_never_a_crash(settings: Settings,
                                                                          signer: WeComSigner) -> None:
    nowhere = f"redis+cluster://127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    app = create_app(settings.replace(redis_url=nowhere, redis_socket_timeout=0.2))  # starts all the same
    try:
        client = app.test_client()
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json["checks"]["redis"].startswith("unavailable")
        wecom = InProcessWeCom(client, signer)
        frame = wecom.send(text_message("有人吗"))
        assert frame is not None and frame["stream"]["content"] == settings.msg_busy
        assert wecom.poll(new_sid("user:zhangsan"))["stream"]["content"] == settings.msg_busy
    finally:
        app.extensions["wecom_dify"].engine.drain(1)


def test_a_poll_of_a_hung_master_costs_one_timeout(cluster: Cluster, redis_client: LazyCluster) -> None:
    store = StreamStore(connect(cluster.url, 0.4), Keys("t:", cluster=True))
    sid = new_sid("user:hung")
    store.claim("m", sid, "me", {}, scope="user:hung")
    port = redis_client.get_node_from_key(store.keys.stream_meta(sid)).port
    node = next(n for n in cluster.nodes if n.port == port)
    assert node.proc is not None
    node.proc.send_signal(signal.SIGSTOP)  # well under the cluster's node timeout: no failover starts
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            store.snapshot(sid, poll=True)
        took = time.monotonic() - started
    finally:
        node.proc.send_signal(signal.SIGCONT)
    assert took < 1.0, took  # one socket timeout (0.4 s), not one per command and retry
    snap = store.snapshot(sid, poll=True)
    assert snap is not None and snap.status == "queued"
