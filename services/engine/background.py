"""A worker's work beside its answers, on the engine's loop: long-running services (a long connection's
holder), short tasks (sending a rating), and calls a request thread waits for (the welcome)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from services.bot import Bot
from services.engine.loop import LoopThread
from utils.logging import BOT

log = logging.getLogger(__name__)

T = TypeVar("T")


class Service(Protocol):
    """Long-running work of a worker, started with the engine and stopped first at the drain."""

    async def run(self) -> None:
        """Work until stopped."""

    async def stop(self) -> None:
        """Stop at once, handing over what can be."""


class Background:
    """Services and tasks beside the answers; the engine starts it and drains it."""

    def __init__(self, thread: LoopThread, start: Callable[[], None]) -> None:
        self._thread, self._start = thread, start  # the engine's loop, and how to start the engine
        self.services: list[Service] = []
        self.tasks: set[asyncio.Task[None]] = set()  # short tasks: the drain waits for them

    def add_service(self, service: Service) -> None:
        """Run ``service`` from the engine's start until its drain (which stops it first: a handover)."""
        self.services.append(service)

    def launch_services(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start every service (the engine's start does this once)."""
        for service in self.services:
            asyncio.run_coroutine_threadsafe(self._serve(service), loop)

    def stop_services_soon(self) -> None:
        """Ask every service to stop (SIGTERM: a long connection goes to a standby at once)."""
        loop = self._thread.loop
        if loop is not None:
            for service in self.services:
                asyncio.run_coroutine_threadsafe(service.stop(), loop)

    async def stop_services(self) -> None:
        """Stop every service and wait for it (the drain's first step)."""
        for service in self.services:
            try:
                await service.stop()
            except Exception:  # noqa: BLE001 - the drain goes on
                log.exception("stopping a service failed")

    def call(self, bot: Bot, work: Callable[[], Awaitable[T]], timeout: float) -> T:
        """Run ``work`` on the loop for ``bot``; wait ``timeout`` s for its result (TimeoutError: it goes on alone)."""
        self._start()
        return asyncio.run_coroutine_threadsafe(self._result(bot, work), self._thread.start()).result(timeout)

    def run_soon(self, bot: Bot, work: Callable[[], Awaitable[None]]) -> None:
        """Run ``work`` (e.g. sending a rating) on the loop for ``bot``, apart from any stream; the drain waits."""
        self._start()
        self._thread.start().call_soon_threadsafe(self._launch_work, bot, work)

    def _launch_work(self, bot: Bot, work: Callable[[], Awaitable[None]]) -> None:
        task = asyncio.get_running_loop().create_task(self._work(bot, work))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    @staticmethod
    async def _result(bot: Bot, work: Callable[[], Awaitable[T]]) -> T:
        BOT.set(bot.id)
        return await work()

    @staticmethod
    async def _work(bot: Bot, work: Callable[[], Awaitable[None]]) -> None:
        BOT.set(bot.id)
        try:
            await work()
        except Exception:  # noqa: BLE001 - background work: say what went wrong, in full
            log.exception("background work failed")

    @staticmethod
    async def _serve(service: Service) -> None:
        try:
            await service.run()
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a service must say, in full, why it ended
            log.exception("service ended")
