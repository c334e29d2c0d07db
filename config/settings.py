"""The one settings object: built from the environment (and ``.env``), validated at start-up.

Every problem raises :class:`ConfigError` naming the variable, so a bad deployment fails
fast instead of serving 500s. Nothing else in the project reads ``os.environ``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from config.redis_url import parse_redis_url
from crypto import IllegalAesKeyError, decode_aes_key
from utils.urls import host_of


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the variable."""

    def __init__(self, variable: str, problem: str, *, missing: bool = False) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem
        self.missing = missing  # the value is required and was not given at all


def _env(name: str, default: Any = MISSING) -> Any:
    """Declare a field read from environment variable ``name`` (no default: required)."""
    return field(default=default, metadata={"env": name})


@dataclass(frozen=True)
class Settings:
    """All configuration of the bridge; field metadata names the environment variable."""

    # required, unless a bots file (BOTS_FILE) gives each bot its own; then they are the bots' defaults
    wecom_token: str = _env("WECOM_TOKEN", "")
    wecom_encoding_aes_key: str = _env("WECOM_ENCODING_AES_KEY", "")
    dify_base_url: str = _env("DIFY_BASE_URL", "")
    dify_api_key: str = _env("DIFY_API_KEY", "")
    bots_file: str = _env("BOTS_FILE", "")
    wecom_receive_id: str = _env("WECOM_RECEIVE_ID", "")
    wecom_transport: str = _env("WECOM_TRANSPORT", "callback")
    wecom_bot_id: str = _env("WECOM_BOT_ID", "")
    wecom_ws_secret: str = _env("WECOM_WS_SECRET", "")
    wecom_ws_url: str = _env("WECOM_WS_URL", "wss://openws.work.weixin.qq.com")
    ws_lease_seconds: float = _env("WS_LEASE_SECONDS", 6.0)
    wecom_timestamp_window_seconds: int = _env("WECOM_TIMESTAMP_WINDOW_SECONDS", 3600)
    max_request_bytes: int = _env("MAX_REQUEST_BYTES", 262144)
    metrics_port: int = _env("METRICS_PORT", 0)  # 0: /metrics on the app's own port
    log_level: str = _env("LOG_LEVEL", "INFO")
    log_user_ids: str = _env("LOG_USER_IDS", "hash")
    log_content: bool = _env("LOG_CONTENT", False)
    redis_url: str = _env("REDIS_URL", "redis://127.0.0.1:6379/0")
    redis_socket_timeout: float = _env("REDIS_SOCKET_TIMEOUT", 0.4)
    redis_key_prefix: str = _env("REDIS_KEY_PREFIX", "wecomdify:")
    dify_response_mode: str = _env("DIFY_RESPONSE_MODE", "streaming")
    dify_connect_timeout: float = _env("DIFY_CONNECT_TIMEOUT", 5.0)
    dify_read_timeout: float = _env("DIFY_READ_TIMEOUT", 60.0)
    dify_total_timeout: float = _env("DIFY_TOTAL_TIMEOUT", 300.0)
    dify_idle_timeout: float = _env("DIFY_IDLE_TIMEOUT", 120.0)
    dify_first_output_seconds: float = _env("DIFY_FIRST_OUTPUT_SECONDS", 20.0)
    dify_max_retries: int = _env("DIFY_MAX_RETRIES", 3)
    conversation_scope: str = _env("CONVERSATION_SCOPE", "user")
    conversation_idle_seconds: int = _env("CONVERSATION_IDLE_SECONDS", 1800)
    wecom_bot_names: str = _env("WECOM_BOT_NAMES", "")
    engine_capacity: int = _env("ENGINE_CAPACITY", 512)
    stream_ttl_seconds: int = _env("STREAM_TTL_SECONDS", 7200)
    queued_note_after_seconds: float = _env("QUEUED_NOTE_AFTER_SECONDS", 1.0)
    msg_queued: str = _env("MSG_QUEUED", "排队中，请稍候…")
    msg_waiting_previous: str = _env("MSG_WAITING_PREVIOUS", "正在回答你的上一条消息，完成后马上处理这一条…")
    msg_expired: str = _env("MSG_EXPIRED", "这条回复已过期，请重新发送你的问题。")
    msg_busy: str = _env("MSG_BUSY", "服务繁忙，请稍后重试。")
    msg_dify_failed: str = _env("MSG_DIFY_FAILED", "抱歉，生成回答时出错了，请稍后重试。")
    msg_empty_query: str = _env("MSG_EMPTY_QUERY", "请输入你的问题。")
    progress: str = _env("PROGRESS", "think")
    msg_progress_tool: str = _env("MSG_PROGRESS_TOOL", "正在使用工具：{name}")
    msg_progress_node: str = _env("MSG_PROGRESS_NODE", "正在处理：{name}")
    msg_progress_thinking: str = _env("MSG_PROGRESS_THINKING", "正在思考…")
    welcome_text: str = _env("WELCOME_TEXT", "")
    msg_welcome: str = _env("MSG_WELCOME", "你好！直接提问就行，也可以发图片、文件或语音给我。")
    suggestions: bool = _env("SUGGESTIONS", True)
    suggestions_timeout: float = _env("SUGGESTIONS_TIMEOUT", 3.0)
    card_ttl_seconds: int = _env("CARD_TTL_SECONDS", 3 * 86400)
    msg_suggestions_title: str = _env("MSG_SUGGESTIONS_TITLE", "你可以这样问我")
    msg_asked: str = _env("MSG_ASKED", "已提问：{question}")
    msg_chosen: str = _env("MSG_CHOSEN", "已选择：{choice}")
    msg_done: str = _env("MSG_DONE", "（已完成。）")
    msg_form_unsupported: str = _env("MSG_FORM_UNSUPPORTED",
                                     "（这一步需要在 Dify 网页中填写表单，无法在企业微信里完成。）")
    msg_form_closed: str = _env("MSG_FORM_CLOSED", "这个表单已经提交过或已过期。")
    msg_unsupported: str = _env("MSG_UNSUPPORTED", "这类消息我还看不懂：请发文字、语音、图片、文件或视频。")
    quote_template: str = _env("QUOTE_TEMPLATE", "「{quote}」\n{query}")
    wecom_media_hosts: str = _env("WECOM_MEDIA_HOSTS", "*.qq.com,*.myqcloud.com")
    media_max_bytes: int = _env("MEDIA_MAX_BYTES", 20 * 1024 * 1024)
    media_timeout: float = _env("MEDIA_TIMEOUT", 30.0)
    media_query: str = _env("MEDIA_QUERY", "请看附件。")
    msg_attaching: str = _env("MSG_ATTACHING", "正在读取你发的文件…")
    msg_media_expired: str = _env("MSG_MEDIA_EXPIRED", "文件已过期，请重新发送。")
    msg_media_failed: str = _env("MSG_MEDIA_FAILED", "没能读取你发的文件，请重新发送。")
    msg_media_not_accepted: str = _env("MSG_MEDIA_NOT_ACCEPTED", "这个机器人不能读这类文件。")
    msg_media_too_large: str = _env("MSG_MEDIA_TOO_LARGE", "文件太大了（上限 {limit} MB）。")
    msg_media_too_many: str = _env("MSG_MEDIA_TOO_MANY", "一次最多发 {limit} 个文件。")
    dify_file_hosts: str = _env("DIFY_FILE_HOSTS", "")
    answer_images_max_bytes: int = _env("ANSWER_IMAGES_MAX_BYTES", 10 * 1024 * 1024)
    msg_answer_file_failed: str = _env("MSG_ANSWER_FILE_FAILED", "（这个文件没能取回，请点链接查看：{link}）")
    stream_window_seconds: float = _env("STREAM_WINDOW_SECONDS", 330.0)
    wecom_response_url_hosts: str = _env("WECOM_RESPONSE_URL_HOSTS", "qyapi.weixin.qq.com")
    response_url_timeout: float = _env("RESPONSE_URL_TIMEOUT", 5.0)
    producer_lease_seconds: float = _env("PRODUCER_LEASE_SECONDS", 15.0)
    shutdown_drain_seconds: float = _env("SHUTDOWN_DRAIN_SECONDS", 20.0)
    stop_commands: str = _env("STOP_COMMANDS", "/stop,停止")
    msg_interrupted: str = _env("MSG_INTERRUPTED", "回答被中断了，请重新发送你的问题。")
    msg_window: str = _env("MSG_WINDOW", "（回答时间较长，完整回答稍后会单独发给你。）")
    msg_window_no_followup: str = _env("MSG_WINDOW_NO_FOLLOWUP", "（回答超时，请稍后重新提问。）")
    msg_overflow: str = _env("MSG_OVERFLOW", "（内容较长，其余部分稍后会单独发给你。）")
    msg_overflow_no_followup: str = _env("MSG_OVERFLOW_NO_FOLLOWUP", "（内容过长，后面的部分已省略。）")
    msg_truncated: str = _env("MSG_TRUNCATED", "（内容过长，后面的部分已省略。）")
    msg_dify_timeout: str = _env("MSG_DIFY_TIMEOUT", "抱歉，回答超时了，请稍后重试。")
    msg_dify_busy: str = _env("MSG_DIFY_BUSY", "当前提问的人太多了，请稍后重试。")
    msg_stopped: str = _env("MSG_STOPPED", "（已停止）")
    msg_stop_ack: str = _env("MSG_STOP_ACK", "已停止当前回答。")
    msg_nothing_to_stop: str = _env("MSG_NOTHING_TO_STOP", "当前没有正在进行的回答。")
    new_commands: str = _env("NEW_COMMANDS", "/new,新对话")
    feedback_ttl_seconds: int = _env("FEEDBACK_TTL_SECONDS", 7 * 86400)
    msg_new_ack: str = _env("MSG_NEW_ACK", "好的，我们重新开始：下一条消息开始新的对话。")
    auth_mode: str = _env("AUTH_MODE", "none")
    mysql_host: str = _env("MYSQL_HOST", "127.0.0.1")
    mysql_port: int = _env("MYSQL_PORT", 3306)
    mysql_user: str = _env("MYSQL_USER", "root")
    mysql_password: str = _env("MYSQL_PASSWORD", "")
    mysql_database: str = _env("MYSQL_DATABASE", "wecom_bridge")
    mysql_connect_timeout: float = _env("MYSQL_CONNECT_TIMEOUT", 3.0)
    mysql_read_timeout: float = _env("MYSQL_READ_TIMEOUT", 5.0)
    auth_service_url: str = _env("AUTH_SERVICE_URL", "")
    auth_service_secret: str = _env("AUTH_SERVICE_SECRET", "")
    auth_service_timeout: float = _env("AUTH_SERVICE_TIMEOUT", 5.0)
    auth_token_ttl_seconds: int = _env("AUTH_TOKEN_TTL_SECONDS", 7200)
    auth_negative_ttl_seconds: int = _env("AUTH_NEGATIVE_TTL_SECONDS", 300)
    auth_redis_wechatid_key: str = _env("AUTH_REDIS_WECHATID_KEY", "authorization:wechatid:{userid}")
    auth_redis_token_key: str = _env("AUTH_REDIS_TOKEN_KEY", "authorization:token:{token}")
    dify_inputs_from_user: str = _env("DIFY_INPUTS_FROM_USER", "token=token")
    dify_auth_source: str = _env("DIFY_AUTH_SOURCE", "app_key")
    msg_unauthorized: str = _env("MSG_UNAUTHORIZED", "你还没有使用该机器人的权限，请联系管理员开通。")
    msg_auth_unavailable: str = _env("MSG_AUTH_UNAVAILABLE", "身份验证服务暂时不可用，请稍后再发一次消息。")
    msg_authenticating: str = _env("MSG_AUTHENTICATING", "正在验证身份…")
    # Records, webhooks and moderation (README "Records, webhooks and moderation"); all off by default.
    records: str = _env("RECORDS", "off")
    records_plain_users: bool = _env("RECORDS_PLAIN_USERS", False)
    records_retention_days: int = _env("RECORDS_RETENTION_DAYS", 0)
    records_buffer_max: int = _env("RECORDS_BUFFER_MAX", 100_000)
    records_buffer_ttl_seconds: int = _env("RECORDS_BUFFER_TTL_SECONDS", 7 * 86400)
    webhook_url: str = _env("WEBHOOK_URL", "")
    webhook_secret: str = _env("WEBHOOK_SECRET", "")
    webhook_hosts: str = _env("WEBHOOK_HOSTS", "")
    webhook_events: str = _env("WEBHOOK_EVENTS", "message.received,answer.finished,feedback")
    webhook_timeout: float = _env("WEBHOOK_TIMEOUT", 5.0)
    webhook_deadline_seconds: int = _env("WEBHOOK_DEADLINE_SECONDS", 3600)
    moderation_words_file: str = _env("MODERATION_WORDS_FILE", "")
    moderation_url: str = _env("MODERATION_URL", "")
    moderation_api_key: str = _env("MODERATION_API_KEY", "")
    moderation_timeout: float = _env("MODERATION_TIMEOUT", 2.0)
    moderation_fail: str = _env("MODERATION_FAIL", "open")
    moderation_answers: bool = _env("MODERATION_ANSWERS", False)
    moderation_replacement: str = _env("MODERATION_REPLACEMENT", "***")
    msg_moderation_refused: str = _env("MSG_MODERATION_REFUSED", "抱歉，这个问题我无法回答。")

    def __post_init__(self) -> None:
        _validate(self)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, dotenv: str | Path | None = ".env"
    ) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``) over an optional ``.env`` file."""
        values = read_environment(environ, dotenv)
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            name = f.metadata["env"]
            if name in values:
                kwargs[f.name] = _convert(name, values[name], f.type)
            elif name in PER_BOT_REQUIRED and not values.get("BOTS_FILE") and \
                    not (name in CALLBACK_ONLY and values.get("WECOM_TRANSPORT") == "websocket"):
                raise ConfigError(name, "is required but not set")
        return cls(**kwargs)

    @property
    def inputs_from_user(self) -> dict[str, str]:
        """Dify input name → identity source (``token``, ``userid`` or a user-info field)."""
        return _parse_mapping(self.dify_inputs_from_user)

    @property
    def response_url_hosts(self) -> list[str]:
        """Hosts (``host`` or ``host:port``) that ``response_url`` may point to."""
        return _items(self.wecom_response_url_hosts)

    @property
    def media_hosts(self) -> list[str]:
        """Hosts (``host``, ``host:port`` or ``*.domain``) that a message's media may be downloaded from."""
        return _items(self.wecom_media_hosts)

    @property
    def file_hosts(self) -> list[str]:
        """Hosts besides Dify's own that the files of its answers may be downloaded from (https only)."""
        return _items(self.dify_file_hosts)

    @property
    def stop_words(self) -> frozenset[str]:
        """Messages that stop the user's running answer."""
        return frozenset(w.lower() for w in _items(self.stop_commands))

    @property
    def new_words(self) -> frozenset[str]:
        """Messages that end the conversation with Dify: the next message starts a new one."""
        return frozenset(w.lower() for w in _items(self.new_commands))

    @property
    def bot_names(self) -> list[str]:
        """The bot's display names, for stripping @-mentions in group chats."""
        return _items(self.wecom_bot_names)

    @property
    def webhook_urls(self) -> list[str]:
        """Where the bot's events are POSTed (none: no webhooks)."""
        return _items(self.webhook_url)

    @property
    def webhook_kinds(self) -> frozenset[str]:
        """The events the bot's webhooks get (``WEBHOOK_EVENTS``)."""
        return frozenset(_items(self.webhook_events))

    @property
    def webhook_allowed_hosts(self) -> list[str]:
        """Hosts (``host`` or ``host:port``) webhooks may go to: ``WEBHOOK_HOSTS``, else the URLs' own."""
        return [h.lower() for h in _items(self.webhook_hosts)] or sorted({host_of(u) for u in self.webhook_urls})

    @property
    def moderated(self) -> bool:
        """True when questions (and, with ``MODERATION_ANSWERS``, answers) are checked."""
        return bool(self.moderation_words_file or self.moderation_url)

    def replace(self, **changes: Any) -> Settings:
        """Return a copy with some fields changed (validated again)."""
        current = {f.name: getattr(self, f.name) for f in fields(self)}
        current.update(changes)
        return Settings(**current)


def read_environment(environ: Mapping[str, str] | None = None, dotenv: str | Path | None = ".env") -> dict[str, str]:
    """``environ`` (default ``os.environ``) over the values of an optional ``.env`` file."""
    values: dict[str, str] = {}
    if dotenv is not None and Path(dotenv).is_file():
        from dotenv import dotenv_values

        values.update({k: v for k, v in dotenv_values(dotenv).items() if v is not None})
    values.update(os.environ if environ is None else environ)
    return values


PER_BOT_REQUIRED = frozenset({"WECOM_TOKEN", "WECOM_ENCODING_AES_KEY", "DIFY_BASE_URL", "DIFY_API_KEY"})
"""Required for the single bot of an environment-only configuration; a bots file sets them per bot."""
CALLBACK_ONLY = frozenset({"WECOM_TOKEN", "WECOM_ENCODING_AES_KEY"})
"""What only a callback bot needs: a long-connection bot has its BotID and Secret instead."""


def load_settings() -> Settings:
    """Load settings from the process environment and ``./.env``."""
    return Settings.from_env()


_CONVERTERS: dict[str, Callable[[str], Any]] = {
    "str": str,
    "int": int,
    "float": float,
    "bool": lambda s: {"1": True, "true": True, "yes": True, "on": True,
                       "0": False, "false": False, "no": False, "off": False}[s.strip().lower()],
}


def _convert(name: str, raw: str, type_name: Any) -> Any:
    kind = str(type_name)
    try:
        return _CONVERTERS[kind](raw.strip() if kind != "str" else raw)
    except (ValueError, KeyError):
        raise ConfigError(name, f"expected {kind}, got {raw!r}") from None


def env_name(field_name: str) -> str:
    """The environment variable of setting ``field_name``."""
    for f in fields(Settings):
        if f.name == field_name:
            return str(f.metadata["env"])
    raise KeyError(field_name)  # pragma: no cover - programming error


def _items(text: str) -> list[str]:
    """The non-empty, stripped items of a comma-separated setting."""
    return [item.strip() for item in text.split(",") if item.strip()]


def _parse_mapping(text: str) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, source = (x.strip() for x in item.partition("="))
        if not sep or not name or not source:
            raise ConfigError("DIFY_INPUTS_FROM_USER", f"expected input=source pairs, got {item!r}")
        mapping[name] = source
    return mapping


_TYPES: dict[str, type | tuple[type, ...]] = {"str": str, "int": int, "float": (int, float), "bool": bool}


def _require(condition: bool, field_name: str, problem: str) -> None:
    if not condition:
        raise ConfigError(env_name(field_name), problem, missing=problem.startswith("is required"))


def _validate(s: Settings) -> None:
    for f in fields(s):
        value = getattr(s, f.name)
        expected = _TYPES[str(f.type)]
        _require(isinstance(value, expected) and not (isinstance(value, bool) and expected is int),
                 f.name, f"expected {f.type}, got {value!r}")
        if isinstance(value, float):
            _require(math.isfinite(value) and value <= 86400, f.name, "must be a finite number of seconds <= 86400")
    if not s.bots_file:  # with a bots file, each bot's own settings are checked as it is loaded
        _validate_bot(s)
    _require(s.wecom_timestamp_window_seconds >= 0, "wecom_timestamp_window_seconds",
             "must be >= 0 (0 disables the replay window)")
    _require(1024 <= s.max_request_bytes <= 16 * 1024 * 1024, "max_request_bytes",
             "must be between 1024 and 16777216")
    _require(0 <= s.metrics_port <= 65535, "metrics_port",
             "must be 0 (/metrics on the app's port) or a TCP port (1-65535) for /metrics alone")
    _require(s.log_level.upper() in logging.getLevelNamesMapping(), "log_level",
             "must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    try:
        parse_redis_url(s.redis_url)
    except ValueError as exc:
        _require(False, "redis_url", str(exc))
    _require(0 < s.redis_socket_timeout <= 30, "redis_socket_timeout", "must be in (0, 30] seconds")
    _require(s.dify_response_mode in {"streaming", "blocking"}, "dify_response_mode",
             "must be 'streaming' or 'blocking'")
    for name in ("dify_connect_timeout", "dify_read_timeout", "dify_total_timeout", "dify_idle_timeout",
                 "dify_first_output_seconds",
                 "queued_note_after_seconds"):
        _require(getattr(s, name) > 0, name, "must be > 0 seconds")
    _require(0 <= s.dify_max_retries <= 10, "dify_max_retries", "must be between 0 and 10")
    _require(s.conversation_scope in {"user", "chat"}, "conversation_scope", "must be 'user' or 'chat'")
    _require(s.conversation_idle_seconds > 0, "conversation_idle_seconds", "must be > 0")
    _require(1 <= s.engine_capacity <= 20000, "engine_capacity", "must be between 1 and 20000 answers per worker")
    _require(s.stream_ttl_seconds >= 600, "stream_ttl_seconds",
             "must be >= 600 (streams must outlive WeCom's 6-minute polling window)")
    _require(3 <= s.stream_window_seconds <= 355, "stream_window_seconds",
             "must be between 3 and 355 (WeCom stops polling 360 s after the message)")
    _require(2 <= s.producer_lease_seconds <= 300, "producer_lease_seconds", "must be between 2 and 300")
    _require(0 <= s.shutdown_drain_seconds <= 600, "shutdown_drain_seconds", "must be between 0 and 600")
    _require(s.response_url_timeout > 0, "response_url_timeout", "must be > 0 seconds")
    _require(bool(s.response_url_hosts), "wecom_response_url_hosts", "needs at least one host")
    _require(s.log_user_ids in {"hash", "mask", "plain"}, "log_user_ids", "must be 'hash', 'mask' or 'plain'")
    _require(s.auth_mode in {"none", "mysql"}, "auth_mode", "must be 'none' or 'mysql'")
    _require(s.dify_auth_source in {"app_key", "user_token"}, "dify_auth_source",
             "must be 'app_key' or 'user_token'")
    _require(s.dify_auth_source == "app_key" or s.auth_mode == "mysql", "dify_auth_source",
             "user_token needs AUTH_MODE=mysql")
    _require(1024 <= s.media_max_bytes <= 200 * 1024 * 1024, "media_max_bytes", "must be between 1024 and 209715200")
    _require(s.media_timeout > 0, "media_timeout", "must be > 0 seconds")
    _require(bool(s.media_query.strip()), "media_query", "must not be empty (Dify needs a question with the file)")
    _require(s.progress in {"off", "steps", "think"}, "progress", "must be 'off', 'steps' or 'think'")
    _require(0 < s.suggestions_timeout <= 30, "suggestions_timeout", "must be between 0 and 30 seconds")
    _validate_extensions(s)
    _require(s.card_ttl_seconds >= 60, "card_ttl_seconds", "must be >= 60")
    _require(s.feedback_ttl_seconds >= 60, "feedback_ttl_seconds", "must be >= 60")
    _require(0 <= s.answer_images_max_bytes <= 20 * 1024 * 1024, "answer_images_max_bytes",
             "must be between 0 (images as links) and 20971520 (they travel base64 in one poll's reply)")
    _require("{link}" in s.msg_answer_file_failed, "msg_answer_file_failed", "must contain {link}")
    _require("{query}" in s.quote_template, "quote_template",
             "must contain {query} (the question) and may contain {quote} (the quoted message)")
    _require("{userid}" in s.auth_redis_wechatid_key, "auth_redis_wechatid_key", "must contain {userid}")
    _require("{token}" in s.auth_redis_token_key, "auth_redis_token_key", "must contain {token}")
    _parse_mapping(s.dify_inputs_from_user)
    for name in ("mysql_connect_timeout", "mysql_read_timeout", "auth_service_timeout"):
        _require(getattr(s, name) > 0, name, "must be > 0 seconds")
    _require(s.auth_token_ttl_seconds > 0, "auth_token_ttl_seconds", "must be > 0")
    _require(s.auth_negative_ttl_seconds > 0, "auth_negative_ttl_seconds", "must be > 0")
    if s.auth_mode == "mysql":
        _require(_is_http_url(s.auth_service_url), "auth_service_url",
                 "must be an http(s) URL when AUTH_MODE=mysql")
        _require(bool(s.auth_service_secret), "auth_service_secret", "is required when AUTH_MODE=mysql")
        _require(bool(s.mysql_host) and bool(s.mysql_database), "mysql_database",
                 "MYSQL_HOST and MYSQL_DATABASE are required when AUTH_MODE=mysql")
        _require(0 < s.mysql_port < 65536, "mysql_port", "must be a TCP port")
    _require(bool(s.redis_key_prefix) and not set(s.redis_key_prefix) & set(" {}"), "redis_key_prefix",
             "must be non-empty, without spaces or braces (a brace would change Redis Cluster hash tags)")


def _validate_bot(s: Settings) -> None:
    """The values every bot needs: its WeCom credentials and its Dify app."""
    _require(s.wecom_transport in {"callback", "websocket"}, "wecom_transport", "must be 'callback' or 'websocket'")
    if s.wecom_transport == "websocket":
        _require(bool(s.wecom_bot_id.strip()), "wecom_bot_id", "is required for a long-connection bot (its BotID)")
        _require(bool(s.wecom_ws_secret.strip()), "wecom_ws_secret",
                 "is required for a long-connection bot (its long-connection Secret)")
        _require(urlsplit(s.wecom_ws_url).scheme in {"ws", "wss"} and bool(urlsplit(s.wecom_ws_url).hostname),
                 "wecom_ws_url", "must be a ws:// or wss:// URL")
        _require(3 <= s.ws_lease_seconds <= 60, "ws_lease_seconds", "must be between 3 and 60")
    else:
        _require(bool(s.wecom_token), "wecom_token", "is required but empty")
        _require(s.wecom_token.isascii() and s.wecom_token.isalnum() and len(s.wecom_token) <= 32,
                 "wecom_token", "must be 1-32 letters or digits (as shown in the WeCom admin console)")
        _require(bool(s.wecom_encoding_aes_key), "wecom_encoding_aes_key", "is required but empty")
        try:
            decode_aes_key(s.wecom_encoding_aes_key)
        except IllegalAesKeyError:
            raise ConfigError(
                "WECOM_ENCODING_AES_KEY", "must be 43 letters/digits that base64-decode to 32 bytes"
            ) from None
    _require(_is_http_url(s.dify_base_url), "dify_base_url",
             "must be an http(s) URL including /v1, e.g. https://api.dify.ai/v1")
    _require(bool(s.dify_api_key.strip()), "dify_api_key", "is required but empty")


def _is_http_url(url: str) -> bool:
    """True for an http(s) URL with a host and, if any, a valid port."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        return False
    return parts.scheme in {"http", "https"} and bool(parts.hostname)


WEBHOOK_EVENTS = frozenset({"message.received", "answer.finished", "feedback"})
MAX_BLOCKED_WORDS = 10_000
"""A word list's size at most: it is matched on the engine's loop, for every delta of an answer."""



def _validate_extensions(s: Settings) -> None:
    """Records, webhooks and moderation: each is off until configured, and checked when it is."""
    _require(s.records in {"off", "mysql"}, "records", "must be 'off' or 'mysql'")
    _require(s.records_retention_days >= 0, "records_retention_days", "must be >= 0 (0 keeps every record)")
    _require(100 <= s.records_buffer_max <= 10_000_000, "records_buffer_max", "must be between 100 and 10000000")
    _require(s.records_buffer_ttl_seconds >= 3600, "records_buffer_ttl_seconds", "must be >= 3600")
    for url in s.webhook_urls:
        _require(_is_http_url(url) and not urlsplit(url).username, "webhook_url",
                 "must be http(s) URLs without user:password@, separated by commas")
        _require(host_of(url) in s.webhook_allowed_hosts, "webhook_url",
                 f"host {host_of(url)!r} is not in WEBHOOK_HOSTS")
    if s.webhook_urls:
        _require(len(s.webhook_secret) >= 16, "webhook_secret", "is required with WEBHOOK_URL (16 characters or more)")
    _require(set(_items(s.webhook_events)) <= WEBHOOK_EVENTS and bool(_items(s.webhook_events)), "webhook_events",
             f"must list some of {', '.join(sorted(WEBHOOK_EVENTS))}")
    _require(0 < s.webhook_timeout <= 60, "webhook_timeout", "must be in (0, 60] seconds")
    _require(60 <= s.webhook_deadline_seconds <= 7 * 86400, "webhook_deadline_seconds",
             "must be between 60 and 604800 seconds")
    if s.moderation_words_file:
        try:
            lines = Path(s.moderation_words_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            problem = f"must be a readable UTF-8 file ({type(exc).__name__})"
            raise ConfigError("MODERATION_WORDS_FILE", problem) from None
        _require(len(lines) <= MAX_BLOCKED_WORDS, "moderation_words_file",
                 f"may list at most {MAX_BLOCKED_WORDS} words")
    _require(not s.moderation_url or _is_http_url(s.moderation_url), "moderation_url", "must be an http(s) URL")
    _require(0 < s.moderation_timeout <= 30, "moderation_timeout", "must be in (0, 30] seconds")
    _require(s.moderation_fail in {"open", "closed"}, "moderation_fail", "must be 'open' or 'closed'")
