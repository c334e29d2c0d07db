"""The allowlist check for every outbound URL that arrives in a message (``response_url``, media and Dify file URLs)."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from urllib.parse import SplitResult, urlsplit

from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def host_set(hosts: Iterable[str]) -> frozenset[str]:
    """An allowlist as ``allowed_url`` compares it: stripped, lower case, without empty entries."""
    return frozenset(h.strip().lower() for h in hosts if h.strip())


def allowed_url(url: str, hosts: Collection[str]) -> bool:
    """True for an https URL whose host is in ``hosts`` (``host``, ``host:port`` or ``*.domain``, lower case).

    Plain http is allowed only on loopback, for local test servers. A URL with user info, a
    backslash, whitespace or a control character is refused, and the host must be the one the HTTP
    client (urllib3) will connect to: where parsers disagree, an allowlist can be walked around.
    """
    parts = _plain(url)
    if parts is None:
        return False
    host, port = (parts.hostname or "").lower(), parts.port
    if not (parts.scheme == "https" or (parts.scheme == "http" and host in LOOPBACK)):
        return False
    return host in hosts or f"{host}:{port}" in hosts or any(
        entry.startswith("*.") and host.endswith(entry[1:]) for entry in hosts)


def host_of(url: str) -> str:
    """``host`` or ``host:port`` of ``url``, lower-cased, as an allowlist lists it ("" when it has none).

    For URLs an operator configured (webhooks), which may be plain http on a private network.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return ""
    host = (parts.hostname or "").lower()
    return f"{host}:{port}" if port else host


def same_origin(url: str, base: str) -> bool:
    """True when ``url`` has the scheme, host and port of ``base`` (an operator's URL) and is plain (see above)."""
    parts, origin = _plain(url), _plain(base)
    if parts is None or origin is None:
        return False
    return (parts.scheme, (parts.hostname or "").lower(), parts.port or _PORTS.get(parts.scheme)) == (
        origin.scheme, (origin.hostname or "").lower(), origin.port or _PORTS.get(origin.scheme))


_PORTS = {"http": 80, "https": 443}


def _plain(url: str) -> SplitResult | None:
    """``url`` split, when it is an http(s) URL with a host that every parser reads alike, else None."""
    if not url.isprintable() or any(c in url for c in "\\ \t"):  # parsers disagree on these (SSRF)
        return None
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        _ = parts.port  # raises on a bad port
        seen_by_requests = parse_url(url)
    except (ValueError, LocationParseError):
        return None
    seen_host = (seen_by_requests.host or "").lower().removeprefix("[").removesuffix("]")  # urllib3 keeps IPv6 brackets
    if parts.username is not None or parts.password is not None or seen_host != host:
        return None
    if not host or parts.scheme not in _PORTS:
        return None
    return parts
