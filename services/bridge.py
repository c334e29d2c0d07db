"""The per-app runtime: the configured bots and what they share, attached to the Flask app."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from flask import Flask, current_app

from config import BotConfig, Settings
from services.auth_api import AuthAPI
from services.bot import Bot
from services.dify import DifyClient
from services.engine import Engine
from services.longconn.bot import LongConnectionBot
from services.messages import MessageHandler
from services.mysql import MySQLConfig
from services.records import RecordDB, RecordWriter
from services.streams.connection import RedisClient, connect
from services.user_db import UserDB
from services.webhooks import WebhookSender

EXTENSION = "wecom_dify"


@dataclass
class Bridge:
    """Everything a request handler needs; built once per app, never at import time."""

    settings: Settings
    redis: RedisClient
    bots: dict[str, Bot]
    handlers: dict[str, MessageHandler]
    engine: Engine
    users: UserDB | None = None

    @classmethod
    def build(cls, settings: Settings, bots: Mapping[str, BotConfig], *,
              dify: Mapping[str, DifyClient] | None = None) -> Bridge:
        """Create the clients (lazily connecting) and the engine (started by the first message or post_fork)."""
        client = connect(settings.redis_url, settings.redis_socket_timeout)
        users = api = None
        if any(b.settings.auth_mode == "mysql" for b in bots.values()):
            users = UserDB(mysql_config(settings))
            api = AuthAPI(settings.auth_service_url, settings.auth_service_secret,
                          timeout=settings.auth_service_timeout)
        runtime = {bot_id: Bot.build(config, client, users=users, api=api, dify=(dify or {}).get(bot_id))
                   for bot_id, config in bots.items()}
        engine = Engine(settings, runtime)
        handlers = {bot_id: MessageHandler(bot, engine) for bot_id, bot in runtime.items()}
        for bot_id, bot in runtime.items():
            if bot.settings.wecom_transport == "websocket":  # held by one worker of one replica at a time
                engine.background.add_service(LongConnectionBot(bot, handlers[bot_id], engine, engine.owner))
        if settings.records == "mysql":  # records and webhooks have their own threads: only when configured
            engine.background.add_service(RecordWriter(engine, runtime, RecordDB(mysql_config(settings)),
                                                       retention_days=settings.records_retention_days))
        if any(bot.webhooks is not None for bot in runtime.values()):
            engine.background.add_service(WebhookSender(engine, runtime))
        return cls(settings=settings, redis=client, bots=runtime, handlers=handlers, engine=engine, users=users)

    def init_app(self, app: Flask) -> None:
        """Attach this runtime to ``app``."""
        app.extensions[EXTENSION] = self


def mysql_config(settings: Settings) -> MySQLConfig:
    """The MySQL of the user table and the records (``MYSQL_*``)."""
    return MySQLConfig(settings.mysql_host, settings.mysql_port, settings.mysql_user, settings.mysql_password,
                       settings.mysql_database, settings.mysql_connect_timeout, settings.mysql_read_timeout)


def get_bridge() -> Bridge:
    """Return the runtime of the current app."""
    bridge: Bridge = current_app.extensions[EXTENSION]
    return bridge
