"""The allowlist check for every outbound URL that arrives in a message (``response_url``, media URLs)."""

from __future__ import annotations

from collections.abc import Collection
from urllib.parse import urlsplit

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def allowed_url(url: str, hosts: Collection[str]) -> bool:
    """True for an https URL whose host is in ``hosts`` (``host``, ``host:port`` or ``*.domain``, lower case).

    Plain http is allowed only on loopback, for local test servers.
    """
    try:
        parts = urlsplit(url)
        host, port = (parts.hostname or "").lower(), parts.port
    except ValueError:
        return False
    if not host or not (parts.scheme == "https" or (parts.scheme == "http" and host in LOOPBACK)):
        return False
    return host in hosts or f"{host}:{port}" in hosts or any(
        entry.startswith("*.") and host.endswith(entry[1:]) for entry in hosts)
