"""The long-connection holder lease: one term at a time, fences that only grow, renewals only by the holder."""

from __future__ import annotations

import time

import redis

from services.longconn.lease import HolderLease, fence_of
from services.streams.keys import Keys
from services.streams.store import StreamStore

KEYS = Keys("lc:")


def lease(redis_client: redis.Redis, owner: str, lease_ms: int = 1000) -> HolderLease:
    return HolderLease(StreamStore(redis_client, KEYS), "bot1", owner, lease_ms)


def test_one_holder_at_a_time_and_every_term_is_newer(redis_client: redis.Redis) -> None:
    a, b = lease(redis_client, "a"), lease(redis_client, "b")
    term_a = a.take()
    assert term_a is not None and term_a.startswith("a|") and b.take() is None
    assert a.holder() == term_a and a.renew(term_a) and not b.renew(term_a.replace("a|", "b|"))
    assert 0 < redis_client.pttl(KEYS.ws_holder("bot1")) <= 1000
    assert redis_client.ttl(KEYS.ws_fence("bot1")) > 86400  # the counter has a TTL too
    a.release(term_a)
    term_b = b.take()
    assert term_b is not None and fence_of(term_b) > fence_of(term_a)
    assert not a.renew(term_a)  # an old term can never be renewed back to life
    b.release(term_a)  # releasing someone else's term does nothing
    assert b.holder() == term_b


def test_a_lapsed_term_is_taken_by_another(redis_client: redis.Redis) -> None:
    a, b = lease(redis_client, "a", 200), lease(redis_client, "b", 200)
    term_a = a.take()
    assert term_a is not None
    time.sleep(0.3)  # the holder died: its lease lapses
    term_b = b.take()
    assert term_b is not None and fence_of(term_b) == fence_of(term_a) + 1
    assert not a.renew(term_a)  # it comes back: it learns it lost, and must let go
