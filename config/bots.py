"""The bots a deployment serves: read from ``BOTS_FILE`` (TOML), or the one bot of the environment.

Each bot overrides some settings (its WeCom credentials, its Dify app, its texts…) over the global
environment ones; what it leaves unset falls back to them. A string may refer to environment
variables (``"${DIFY_KEY_HR}"``), so the file can live in a ConfigMap and the secrets in a Secret.
Every problem raises :class:`ConfigError` naming the bot and the field (``bots.hr.dify_api_key``),
and never shows a secret's value.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config.settings import ConfigError, Settings, env_name, read_environment

BOT_ID = re.compile(r"[a-z0-9-]{1,32}")
DEFAULT_BOT = "default"
"""The bot of an environment-only configuration; ``/wecom/callback`` serves the bot of this id."""

RESERVED_PART = 0.5
"""Of each worker's ENGINE_CAPACITY, the part kept for the bots without a ``capacity_share`` of
their own, split evenly among them; the rest is shared by all bots, first come first served.
Every bot keeps at least one answer per worker (services/engine/capacity.py)."""

FIELDS: dict[str, str] = {
    "wecom_token": "wecom_token",
    "wecom_encoding_aes_key": "wecom_encoding_aes_key",
    "wecom_receive_id": "wecom_receive_id",
    "transport": "wecom_transport",
    "bot_id": "wecom_bot_id",
    "ws_secret": "wecom_ws_secret",
    "ws_url": "wecom_ws_url",
    "bot_names": "wecom_bot_names",
    "dify_base_url": "dify_base_url",
    "dify_api_key": "dify_api_key",
    "dify_response_mode": "dify_response_mode",
    "dify_inputs_from_user": "dify_inputs_from_user",
    "dify_auth_source": "dify_auth_source",
    "conversation_scope": "conversation_scope",
    "conversation_idle_seconds": "conversation_idle_seconds",
    "response_url_hosts": "wecom_response_url_hosts",
    "auth_mode": "auth_mode",
    "stop_commands": "stop_commands",
    "new_commands": "new_commands",
    "quote_template": "quote_template",
    "media_hosts": "wecom_media_hosts",
    "dify_file_hosts": "dify_file_hosts",
    "media_query": "media_query",
    "webhook_url": "webhook_url",
    "webhook_secret": "webhook_secret",
    "webhook_hosts": "webhook_hosts",
    "webhook_events": "webhook_events",
    "webhook_timeout": "webhook_timeout",
    "webhook_deadline_seconds": "webhook_deadline_seconds",
    "moderation_words_file": "moderation_words_file",
    "moderation_url": "moderation_url",
    "moderation_api_key": "moderation_api_key",
    "moderation_fail": "moderation_fail",
    "moderation_timeout": "moderation_timeout",
    "moderation_answers": "moderation_answers",
    "moderation_replacement": "moderation_replacement",
}
"""A bot's keys in the file → the setting each one overrides."""

LISTS = frozenset({"bot_names", "response_url_hosts", "stop_commands", "new_commands", "media_hosts",
                   "dify_file_hosts", "webhook_url", "webhook_hosts", "webhook_events"})
"""Keys that may be written as a list of strings (or as one comma-separated string)."""

SECRETS = frozenset({"wecom_token", "wecom_encoding_aes_key", "dify_api_key", "ws_secret", "webhook_secret",
                     "moderation_api_key"})
MESSAGES = {f.removeprefix("msg_"): f for f in Settings.__dataclass_fields__ if f.startswith("msg_")}
"""``[bots.<id>.messages]`` keys → the user-facing text each one overrides (``busy`` → ``msg_busy``)."""

OWN_KEYS = frozenset({"name", "capacity_share", "messages"})
REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
MALFORMED = re.compile(r"\$[A-Za-z_][A-Za-z0-9_]*")  # a whole value like "$DIFY_KEY": a shell-style reference
MAX_BOTS = 100


@dataclass(frozen=True)
class BotConfig:
    """One bot: its id, its settings (the global ones with its own values laid over) and its share."""

    id: str
    settings: Settings
    namespace: str
    """Prefix of its Redis keys and Dify user ids; empty only for the environment-only bot, whose
    names stay as they were before bots files existed (a rolling upgrade keeps its live streams)."""
    capacity_share: float
    """The part of each worker's answer capacity kept for this bot alone."""
    name: str = ""


def load_bots(settings: Settings, environ: Mapping[str, str] | None = None) -> dict[str, BotConfig]:
    """The configured bots: ``settings.bots_file`` if set, else the environment's single bot.

    ``${VAR}`` references resolve against ``environ``, by default the process environment over
    ``./.env``: the same values the settings were read from.
    """
    if not settings.bots_file:
        bot = BotConfig(DEFAULT_BOT, settings, "", RESERVED_PART)
        return {bot.id: bot}
    path = Path(settings.bots_file)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("BOTS_FILE", f"cannot read {path}: {type(exc).__name__}") from None
    return parse_bots(text, settings, read_environment() if environ is None else environ)


def parse_bots(text: str, settings: Settings, environ: Mapping[str, str]) -> dict[str, BotConfig]:
    """Parse and validate a bots file's ``text`` against the global ``settings``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("BOTS_FILE", f"is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"bots"})
    if unknown:
        raise ConfigError(unknown[0], "unknown top-level key (the file has one table, [bots.<id>])")
    tables = data.get("bots")
    if not isinstance(tables, dict) or not tables:
        raise ConfigError("bots", "the file lists no bots (add a [bots.<id>] table)")
    if len(tables) > MAX_BOTS:
        raise ConfigError("bots", f"lists {len(tables)} bots; at most {MAX_BOTS} (each adds metric series and a pool)")
    if settings.engine_capacity < len(tables):
        raise ConfigError("ENGINE_CAPACITY", f"is {settings.engine_capacity}, fewer than the {len(tables)} bots of "
                                             "BOTS_FILE: each bot keeps at least one answer per worker")
    parsed: dict[str, tuple[Settings, float | None, str]] = {}
    for bot_id, table in tables.items():
        if not BOT_ID.fullmatch(bot_id):
            raise ConfigError(f"bots.{bot_id}", "a bot id is 1-32 characters of a-z, 0-9 and '-'")
        if not isinstance(table, dict):
            raise ConfigError(f"bots.{bot_id}", "must be a table of settings")
        parsed[bot_id] = _BotReader(bot_id, settings, environ).read(table)
    _check_distinct_tokens({bot_id: s for bot_id, (s, _, _) in parsed.items()})
    return _with_shares(parsed)


class _BotReader:
    """Reads one ``[bots.<id>]`` table; remembers what references resolved to, to keep it out of errors."""

    def __init__(self, bot_id: str, base: Settings, environ: Mapping[str, str]) -> None:
        self.where = f"bots.{bot_id}"
        self.base = base
        self.environ = environ
        self.resolved: dict[str, str] = {}  # value → the reference it came from

    def read(self, table: dict[str, Any]) -> tuple[Settings, float | None, str]:
        """The bot's settings, its explicit capacity share (or None) and its name."""
        where = self.where
        changes: dict[str, Any] = {}
        origin: dict[str, str] = {}  # setting → the key in the file that set it
        for key, raw in table.items():
            if key in OWN_KEYS:
                continue
            if key not in FIELDS:
                known = ", ".join(sorted([*FIELDS, *OWN_KEYS]))
                raise ConfigError(f"{where}.{key}", f"unknown setting (known: {known})")
            origin[FIELDS[key]] = f"{where}.{key}"
            changes[FIELDS[key]] = self._value(origin[FIELDS[key]], raw, FIELDS[key], listed=key in LISTS,
                                               secret=key in SECRETS)
        messages = table.get("messages", {})
        if not isinstance(messages, dict):
            raise ConfigError(f"{where}.messages", "must be a table of texts ([bots.<id>.messages])")
        for key, raw in messages.items():
            if key not in MESSAGES:
                raise ConfigError(f"{where}.messages.{key}", f"unknown text (known: {', '.join(sorted(MESSAGES))})")
            origin[MESSAGES[key]] = f"{where}.messages.{key}"
            changes[MESSAGES[key]] = self._value(origin[MESSAGES[key]], raw, MESSAGES[key], listed=False, secret=False)
        name = table.get("name", "")
        if not isinstance(name, str) or len(name) > 64:
            raise ConfigError(f"{where}.name", "must be a string of at most 64 characters")
        share = table.get("capacity_share")
        if share is not None and (isinstance(share, bool) or not isinstance(share, int | float)
                                  or not math.isfinite(share) or not 0 < share <= 1):
            raise ConfigError(f"{where}.capacity_share", "must be a number in (0, 1]: the part of each worker's "
                                                         "ENGINE_CAPACITY kept for this bot")
        try:
            settings = self.base.replace(bots_file="", **changes)  # each bot's settings are complete on their own
        except ConfigError as exc:
            raise self._blame(exc, changes, origin) from None
        return settings, (float(share) if share is not None else None), name

    def _blame(self, exc: ConfigError, changes: dict[str, Any], origin: dict[str, str]) -> ConfigError:
        """``exc`` (named after an environment variable) renamed after the bot's key that caused it."""
        problem = self._scrub(exc.problem)
        own = next((f for f in changes if env_name(f) == exc.variable), None)
        if own is not None:
            return ConfigError(origin[own], problem)
        key = next((k for k, f in FIELDS.items() if env_name(f) == exc.variable), None)
        if key is None:  # a global setting this bot's own values need, e.g. AUTH_SERVICE_URL for auth_mode
            return ConfigError(self.where, f"{exc.variable}: {problem}")
        if exc.missing:  # a per-bot value left to its global variable, which is not set either
            return ConfigError(f"{self.where}.{key}", f"is required but not set (here or in {exc.variable})")
        return ConfigError(f"{self.where}.{key}", f"{problem} (from {exc.variable})")

    def _value(self, where: str, raw: Any, field: str, *, listed: bool, secret: bool) -> Any:
        """One value from the file, type-checked against the setting it overrides, references resolved."""
        kind = type(getattr(self.base, field))
        referenced = False
        if listed and isinstance(raw, list):
            if not all(isinstance(item, str) for item in raw):
                raise ConfigError(where, "must be a list of strings")
            referenced = any(REF.search(item) for item in raw)
            raw = ",".join(self._resolve(where, item) for item in raw)
        elif isinstance(raw, str):
            referenced = bool(REF.search(raw))
            raw = self._resolve(where, raw)
        hidden = secret or referenced  # a value that may be a secret is never shown
        if isinstance(raw, str) and kind is not str:
            try:
                return kind(raw.strip())
            except ValueError:
                raise ConfigError(where, f"expected {kind.__name__}" + ("" if hidden else f", got {raw!r}")) from None
        if not (isinstance(raw, kind) or (kind is float and isinstance(raw, int))) or \
                isinstance(raw, bool) != (kind is bool):
            shown = "" if hidden else f", got {raw!r}"
            raise ConfigError(where, f"expected {'a list of strings or ' if listed else ''}{kind.__name__}{shown}")
        return float(raw) if kind is float else raw

    def _resolve(self, where: str, text: str) -> str:
        """Replace ``${NAME}`` with environment variable NAME; an unset one or a malformed one is an error."""
        def lookup(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in self.environ:
                raise ConfigError(where, f"refers to ${{{name}}}, which is not set in the environment")
            value = self.environ[name]
            if value:
                self.resolved[value] = f"${{{name}}}"
            return value
        rest = REF.sub("", text)
        if "${" in rest or MALFORMED.fullmatch(text.strip()):
            raise ConfigError(where, "looks like a malformed reference: write \"${NAME}\", NAME of letters, "
                                     "digits and '_'")
        return REF.sub(lookup, text)

    def _scrub(self, problem: str) -> str:
        """``problem`` with every value a reference resolved to replaced by the reference."""
        for value, ref in sorted(self.resolved.items(), key=lambda item: -len(item[0])):
            problem = problem.replace(value, ref)
        return problem


def _check_distinct_tokens(bots: dict[str, Settings]) -> None:
    """Two bots with one Token would accept each other's callbacks, two with one BotID would kick each
    other's long connection: refuse, naming the second."""
    seen: dict[str, str] = {}
    held: dict[str, str] = {}
    for bot_id, s in bots.items():
        if s.wecom_transport != "callback":
            if s.wecom_bot_id in held:
                raise ConfigError(f"bots.{bot_id}.bot_id", f"is the BotID of bots.{held[s.wecom_bot_id]} too; "
                                                           "WeCom keeps one long connection per bot")
            held[s.wecom_bot_id] = bot_id
            continue
        if s.wecom_token in seen:
            raise ConfigError(f"bots.{bot_id}.wecom_token", f"is the Token of bots.{seen[s.wecom_token]} too; each "
                                                            "WeCom bot needs its own, or one would accept the other's "
                                                            "callbacks")
        seen[s.wecom_token] = bot_id


def _with_shares(parsed: dict[str, tuple[Settings, float | None, str]]) -> dict[str, BotConfig]:
    explicit = sum(share for _, share, _ in parsed.values() if share is not None)
    if explicit > 1 + 1e-9:
        raise ConfigError("bots.*.capacity_share", f"the shares add up to {explicit:g}; they must add up to at most 1")
    unset = [bot_id for bot_id, (_, share, _) in parsed.items() if share is None]
    default = min(RESERVED_PART, 1 - explicit) / len(unset) if unset else 0.0
    return {bot_id: BotConfig(bot_id, settings, bot_id, default if share is None else share, name)
            for bot_id, (settings, share, name) in parsed.items()}
