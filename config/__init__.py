"""Typed, validated configuration built once from the environment (and the bots file)."""

from config.bots import DEFAULT_BOT, BotConfig, load_bots, parse_bots
from config.settings import ConfigError, Settings, load_settings

__all__ = ["DEFAULT_BOT", "BotConfig", "ConfigError", "Settings", "load_bots", "load_settings", "parse_bots"]
