"""Who holds a bot's long connection: one worker of one replica, elected by the holder lease.

Every worker runs a ``Holder`` per long-connection bot. A standby looks at the lease every
``standby_poll`` seconds and takes it when it is free (the holder died, or let go). The holder
subscribes, renews its term every third of the lease, and closes the connection the moment it cannot
prove the term is still its own: the renewal failed, or Redis did not answer before the term could
have lapsed. A connection that drops is reopened with exponential backoff (1 s … 30 s) while the term
holds. Kicked by another subscription (``disconnected_event``), it lets go of its term and backs
off: two replicas never kick each other in a loop. Bad credentials are not retried for a minute.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable

from services.errors import StoreUnavailable
from services.longconn.connection import BadCredentials, Kicked, LinkLost, LongConnection, LongConnError
from services.longconn.lease import HolderLease

log = logging.getLogger(__name__)

BACKOFF_FIRST, BACKOFF_MAX = 1.0, 30.0
BAD_CREDENTIALS_PAUSE = 60.0


class RecentlyRefused(LongConnError):
    """Another worker was refused the credentials moments ago (remembered in Redis): don't ask again yet."""


class Holder:
    """Keeps (or stands by for) one bot's long connection on this worker."""

    def __init__(self, lease: HolderLease, connect: Callable[[], LongConnection],
                 redis: Callable[..., Awaitable[object]], *, standby_poll: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None) -> None:
        self.lease, self.connect, self.redis = lease, connect, redis
        self.standby_poll = standby_poll
        self.clock = clock
        self.rng = rng or random.Random()
        self.term: str | None = None  # ours while we hold the lease
        self.connection: LongConnection | None = None
        self._stopping = False

    async def run(self) -> None:
        """Stand by, hold, reconnect, hand over: until ``stop``."""
        backoff = BACKOFF_FIRST
        while not self._stopping:
            if not self.holding and not await self._take():
                await asyncio.sleep(self.standby_poll)
                continue
            try:
                await self._hold()
                backoff = BACKOFF_FIRST
            except RecentlyRefused:  # another worker was refused just now: wait, without renewing the verdict
                await self._let_go()
                await asyncio.sleep(BAD_CREDENTIALS_PAUSE)
            except BadCredentials as exc:
                log.error("long connection refused: check the bot's BotID and Secret", extra={"reason": str(exc)})
                try:
                    await self.redis(self.lease.mark_refused, 2 * BAD_CREDENTIALS_PAUSE)
                except StoreUnavailable:
                    pass
                await self._let_go()
                await asyncio.sleep(BAD_CREDENTIALS_PAUSE)
            except Kicked:
                log.warning("long connection: another subscription took over; letting go")
                await self._let_go()
                await asyncio.sleep(backoff + self.rng.uniform(0, backoff))
                backoff = min(BACKOFF_MAX, backoff * 2)
            except LongConnError as exc:
                if not self.holding:  # the term was lost: stand by again
                    continue
                log.warning("long connection lost; reconnecting", extra={"reason": str(exc), "in": backoff})
                await asyncio.sleep(backoff)
                backoff = min(BACKOFF_MAX, backoff * 2)

    @property
    def holding(self) -> bool:
        """True while this worker holds the bot's lease."""
        return self.term is not None

    async def _take(self) -> bool:
        try:
            term = await self.redis(self.lease.take)
        except StoreUnavailable:
            return False
        self.term = term if isinstance(term, str) else None
        if self.term is not None:
            log.info("long connection: this worker holds the bot", extra={"term": self.term})
        return self.term is not None

    async def stop(self) -> None:
        """Hand over at once (SIGTERM): close the connection and free the lease for a standby."""
        self._stopping = True
        if self.connection is not None:
            await self.connection.close()
        await self._let_go()

    async def _hold(self) -> None:
        """Subscribe and keep the connection while the term is provably ours."""
        try:
            refused = await self.redis(self.lease.refused)
        except StoreUnavailable:
            refused = False
        if refused:  # another replica was refused just now: don't ask again yet
            raise RecentlyRefused("refused recently (remembered in Redis)")
        term = self.term
        try:  # never subscribe on a term that may have lapsed (a reconnect after a backoff): it would kick
            renewed = term is not None and bool(await self.redis(self.lease.renew, term))
        except StoreUnavailable:
            renewed = False
        if not renewed:
            self.term = None
            raise LongConnError("the lease was lost before subscribing")
        connection = self.connect()
        renewer = asyncio.get_running_loop().create_task(self._renew())
        try:
            await asyncio.wait_for(connection.open(), self.lease.lease_ms / 2000)  # within the term
        except BaseException as exc:
            renewer.cancel()
            await connection.close()
            if isinstance(exc, TimeoutError):
                raise LinkLost("subscribing took longer than half the lease") from None
            raise
        self.connection = connection
        reader = asyncio.get_running_loop().create_task(connection.run())
        try:
            done, _ = await asyncio.wait({reader, renewer}, return_when=asyncio.FIRST_COMPLETED)
            if renewer in done:  # the term is no longer provably ours: not one more frame on this connection
                await connection.close()
                self.term = None
                raise LongConnError("the lease was lost")
            reader.result()  # raises how the connection ended
        finally:
            renewer.cancel()
            reader.cancel()
            await connection.close()
            self.connection = None

    async def _renew(self) -> None:
        """Return when the term cannot be proved ours any more."""
        every = self.lease.lease_ms / 3000
        proved = self.clock()
        while True:
            await asyncio.sleep(every)
            term = self.term
            if term is None:
                return
            try:
                if not await self.redis(self.lease.renew, term):
                    log.warning("long connection: the lease is someone else's now")
                    return
                proved = self.clock()
            except StoreUnavailable:
                if self.clock() - proved > self.lease.lease_ms / 1000 - every:  # it may lapse before we know
                    log.warning("long connection: cannot prove the lease (redis unavailable)")
                    return

    async def _let_go(self) -> None:
        term, self.term = self.term, None
        if term is not None:
            try:
                await self.redis(self.lease.release, term)
            except StoreUnavailable:
                pass  # it lapses on its own
