"""The lease that elects the one replica holding a bot's long connection, with a fencing token.

WeCom keeps one live connection per bot and a new subscription kicks the old one, so two holders
would kick each other forever. Whoever takes the free lease gets a term, ``owner|fence``, whose
fence comes from a counter that only grows: a later term always has a larger fence, and anything
tagged with an older one is recognised as stale. The holder renews its term well before it lapses
and stops using the connection the moment it cannot prove the term is still its own.
"""

from __future__ import annotations

from services.streams.records import store_errors, text_of
from services.streams.store import StreamStore

TAKE = """
-- KEYS[1] = the holder lease, KEYS[2] = the fence counter; ARGV[1] = owner, ARGV[2] = lease (ms),
-- ARGV[3] = the counter's TTL (ms). Takes a free lease under a new term; returns {1, term} or {0, holder}.
local held = redis.call('GET', KEYS[1])
if held then return {0, held} end
local fence = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
local term = ARGV[1] .. '|' .. fence
redis.call('SET', KEYS[1], term, 'PX', ARGV[2])
return {1, term}
"""

RENEW = """
-- KEYS[1] = the holder lease; ARGV[1] = our term, ARGV[2] = lease (ms). 1 if the term is still ours.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

FENCE_TTL_MS = 30 * 86400 * 1000
"""The fence counter outlives any term by far (it is touched at every new term)."""


class HolderLease:
    """One bot's holder lease, as seen by one owner (a worker of a replica)."""

    def __init__(self, store: StreamStore, bot_id: str, owner: str, lease_ms: int) -> None:
        self.store, self.owner, self.lease_ms = store, owner, lease_ms
        self.key, self.fence_key = store.keys.ws_holder(bot_id), store.keys.ws_fence(bot_id)
        self.refused_key = store.keys.ws_refused(bot_id)
        self._take = store.redis.register_script(TAKE)
        self._renew = store.redis.register_script(RENEW)

    def take(self) -> str | None:
        """Our new term if the lease was free, else None (raises StoreUnavailable)."""
        with store_errors():
            taken, value = self._take(keys=[self.key, self.fence_key],
                                      args=[self.owner, self.lease_ms, FENCE_TTL_MS])
        return text_of(value) if int(taken) == 1 else None

    def renew(self, term: str) -> bool:
        """True if ``term`` still holds the lease (now extended); raises StoreUnavailable."""
        with store_errors():
            return int(self._renew(keys=[self.key], args=[term, self.lease_ms])) == 1

    def release(self, term: str) -> None:
        """Give the lease up at once, if ``term`` still holds it (a clean handover)."""
        self.store.release_lease(self.key, term)

    def mark_refused(self, seconds: float) -> None:
        """Remember for every replica that WeCom refused the credentials (no one hammers subscribe)."""
        self.store.put_lease(self.refused_key, "1", int(seconds * 1000))

    def refused(self) -> bool:
        """True while a refusal of the credentials is remembered."""
        return self.store.get_value(self.refused_key) is not None

    def holder(self) -> str | None:
        """The term holding the lease now, if any."""
        return self.store.get_value(self.key)


def fence_of(term: str) -> int:
    """The fencing number of a term (``owner|fence``)."""
    return int(term.rsplit("|", 1)[1])

