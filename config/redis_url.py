"""``REDIS_URL`` read as one of three deployments: one server, a Redis Cluster, or a Sentinel-watched master.

- ``redis://``, ``rediss://``, ``unix://``: one server, as redis-py's ``from_url`` reads it.
- ``redis+cluster://[[user]:password@]host:port[,host:port…]``: a Redis Cluster; any reachable node
  is enough to find the others (list several). ``rediss+cluster://`` uses TLS.
- ``redis+sentinel://[[user]:password@]host:port[,host:port…]/service[/db][?sentinel_password=…]``: the
  master that the sentinels name ``service``. The user and password are the data nodes'; sentinels
  that require their own password get ``sentinel_password``. ``rediss+sentinel://`` uses TLS to the
  data nodes.

Passwords and parameters are percent-encoded (``/``, ``?``, ``@``, ``%`` and ``,`` as ``%2F`` …). On
``rediss+…`` URLs, ``ssl_ca_certs=/path/ca.pem`` names the CA bundle to verify the servers with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

SINGLE_SCHEMES = {"redis", "rediss", "unix"}
MULTI_SCHEMES = {"redis+cluster", "rediss+cluster", "redis+sentinel", "rediss+sentinel"}


@dataclass(frozen=True)
class RedisTarget:
    """Where the bridge's Redis is: ``kind`` is ``single``, ``cluster`` or ``sentinel``."""

    kind: str
    url: str = field(repr=False)
    nodes: tuple[tuple[str, int], ...] = ()
    service: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)
    ssl: bool = False
    ssl_ca_certs: str | None = None


def parse_redis_url(url: str) -> RedisTarget:
    """Read ``url``; raises ValueError saying what is wrong (never echoing a password)."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in SINGLE_SCHEMES | MULTI_SCHEMES:
        raise ValueError("must be a redis://, rediss://, unix://, redis+cluster:// or redis+sentinel:// URL")
    if scheme in SINGLE_SCHEMES:
        try:
            urlsplit(url).port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise ValueError("has a port that is not a number from 1 to 65535") from None
        return RedisTarget("single", url)
    rest, _, query = rest.partition("?")
    netloc, _, tail = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        userinfo, hosts = "", netloc
    user, _, password = userinfo.partition(":")
    nodes = tuple(_node(item) for item in hosts.split(","))
    params = _params(query, scheme)
    kind = scheme.split("+")[1]
    service, db = "", 0
    if kind == "sentinel":
        parts = [unquote(p) for p in tail.split("/") if p]
        if not parts:
            raise ValueError("needs the sentinels' service name: redis+sentinel://host:port,…/service")
        service = parts[0]
        if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
            raise ValueError("must end in /service or /service/db (db a number)")
        db = int(parts[1]) if len(parts) == 2 else 0
    elif tail.strip("/"):
        raise ValueError("a Redis Cluster has only database 0: drop the path after the nodes")
    return RedisTarget(kind, url, nodes, service, db, unquote(user) or None, unquote(password) or None,
                       params.get("sentinel_password") or None, scheme.startswith("rediss"),
                       params.get("ssl_ca_certs") or None)


def _params(query: str, scheme: str) -> dict[str, str]:
    known = {"sentinel_password"} if "sentinel" in scheme else set()
    if scheme.startswith("rediss"):
        known.add("ssl_ca_certs")
    params: dict[str, str] = {}
    for item in filter(None, query.split("&")):
        name, _, value = item.partition("=")
        if name not in known:
            allowed = ", ".join(sorted(known)) or "none"
            raise ValueError(f"has an unknown parameter {name[:40]!r} (known here: {allowed})")
        params[name] = unquote(value)  # percent-encoded; a '+' stays a '+'
    return params


def _node(item: str) -> tuple[str, int]:
    host, colon, port = item.strip().rpartition(":")
    if not colon or not host:
        raise ValueError("lists nodes as host:port, separated by commas")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("has a port that is not a number from 1 to 65535")
    return host.strip("[]"), int(port)
