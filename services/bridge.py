"""The per-app runtime: settings plus the clients built from them, attached to the Flask app."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from flask import Flask, current_app
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from config import Settings
from crypto import WeComCrypto
from services.auth_api import AuthAPI
from services.delivery import ResponseURL
from services.dify import DifyClient
from services.engine import Engine
from services.messages import MessageHandler
from services.streams.keys import Keys
from services.streams.store import StreamStore
from services.user_auth import Authenticator
from services.user_db import MySQLConfig, UserDB

EXTENSION = "wecom_dify"


@dataclass
class Bridge:
    """Everything a request handler needs; built once per app, never at import time."""

    settings: Settings
    crypto: WeComCrypto
    redis: redis.Redis
    store: StreamStore
    engine: Engine
    handler: MessageHandler
    users: UserDB | None = None

    @classmethod
    def build(cls, settings: Settings, *, dify: DifyClient | None = None) -> Bridge:
        """Create the clients (lazily connecting) and the engine (started by the first message or post_fork)."""
        crypto = WeComCrypto(settings.wecom_token, settings.wecom_encoding_aes_key,
                             settings.wecom_receive_id,
                             timestamp_window=settings.wecom_timestamp_window_seconds or None)
        # Request handlers must answer WeCom fast: one quick retry, never seconds of backoff.
        # Replayed writes are harmless because every write script checks its sequence number.
        client = redis.Redis.from_url(
            settings.redis_url,
            socket_timeout=settings.redis_socket_timeout,
            socket_connect_timeout=settings.redis_socket_timeout,
            retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), 1),
            # no health_check_interval: its PING would add its own timeout and retry to a callback
            # on a hung Redis; a dead pooled connection fails fast and is retried once anyway
        )
        keys = Keys(settings.redis_key_prefix, settings.auth_redis_wechatid_key, settings.auth_redis_token_key)
        store = StreamStore(client, keys, stream_ttl=settings.stream_ttl_seconds,
                            owner_lease_ms=int(settings.producer_lease_seconds * 1000))
        users = auth = None
        if settings.auth_mode == "mysql":
            users = UserDB(MySQLConfig(settings.mysql_host, settings.mysql_port, settings.mysql_user,
                                       settings.mysql_password, settings.mysql_database,
                                       settings.mysql_connect_timeout, settings.mysql_read_timeout))
            api = AuthAPI(settings.auth_service_url, settings.auth_service_secret,
                          timeout=settings.auth_service_timeout)
            budget = (settings.mysql_connect_timeout + settings.mysql_read_timeout
                      + (api.retries + 1) * 2 * settings.auth_service_timeout)
            auth = Authenticator(store, users, api, token_ttl=settings.auth_token_ttl_seconds,
                                 negative_ttl=settings.auth_negative_ttl_seconds, refresh_budget=budget)
        if dify is None:
            dify = DifyClient(
                settings.dify_base_url, settings.dify_api_key,
                response_mode="blocking" if settings.dify_response_mode == "blocking" else "streaming",
                connect_timeout=settings.dify_connect_timeout, read_timeout=settings.dify_read_timeout,
                total_timeout=settings.dify_total_timeout, idle_timeout=settings.dify_idle_timeout,
                max_retries=settings.dify_max_retries, max_connections=settings.engine_capacity)
        delivery = ResponseURL(settings.response_url_hosts, timeout=settings.response_url_timeout)
        engine = Engine(store, dify, settings, delivery, auth=auth)
        handler = MessageHandler(settings, store, engine, delivery)
        return cls(settings=settings, crypto=crypto, redis=client, store=store, engine=engine,
                   handler=handler, users=users)

    def init_app(self, app: Flask) -> None:
        """Attach this runtime to ``app``."""
        app.extensions[EXTENSION] = self


def get_bridge() -> Bridge:
    """Return the runtime of the current app."""
    bridge: Bridge = current_app.extensions[EXTENSION]
    return bridge
