"""How every relay process reaches Redis: one client maker, for a plain URL or a primary that
Redis Sentinel manages.

`redis+sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT…]/SERVICE_NAME[/DB]` names the sentinels to
ask for the current primary of SERVICE_NAME; the password (and user, if given) is the data
nodes'. The client asks them again whenever it opens a connection, so after a failover it
follows the new primary by itself: the calls that meet the old one fail, and the next connection
goes to the new one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.connection import BlockingConnectionPool, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff

SENTINEL_SCHEME = "redis+sentinel"
_SCHEMES = ("redis", "rediss", "unix")  # what redis-py connects to by itself
SENTINEL_PORT = 26379
# Every Redis call gives up after this long instead of hanging while Redis is down or paused:
# the API answers 503 within 2 s, and no relay command blocks for longer.
CALL_TIMEOUT = 1.5
# Connections to Redis a process holds at most. Past them a call waits for one (up to its
# timeout, then fails as Redis being away does) rather than open another: a flood of requests
# must not open a connection each, as Redis counts every client against one limit for all of
# relay. A worker's 100 attempts in flight settle on fewer than this.
MAX_CONNECTIONS = 256
# A sentinel that does not answer this quickly is skipped for the next one.
_SENTINEL_TIMEOUT = 0.5


@dataclass(frozen=True, slots=True)
class SentinelAddress:
    """The sentinels to ask, the service they watch, and how to speak to its data nodes."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None


def _host_port(item: str) -> tuple[str, int]:
    host, port = item, ""
    if item.startswith("["):  # an IPv6 address, e.g. [::1]:26379
        host, _, rest = item[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise ValueError(f"{item!r} is not HOST:PORT")
        port = rest[1:]
    elif ":" in item:
        host, _, port = item.rpartition(":")
    if not host:
        raise ValueError("every sentinel needs a host, as HOST:PORT")
    if not port:
        return host, SENTINEL_PORT
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"sentinel port {port!r} is not a port number")
    return host, int(port)


def parse_sentinel_url(url: str) -> SentinelAddress:
    """The parts of a `redis+sentinel://` URL; ValueError saying what is wrong (never the
    password)."""
    parts = urlsplit(url)
    if parts.scheme != SENTINEL_SCHEME:
        raise ValueError(f"a Sentinel URL starts with {SENTINEL_SCHEME}://")
    if parts.query or parts.fragment:
        raise ValueError("a Sentinel URL takes no query or fragment")
    userinfo, at, hosts = parts.netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    if at and not colon:
        raise ValueError("give the data nodes' password as :PASSWORD@ before the sentinels")
    sentinels = tuple(_host_port(item) for item in hosts.split(","))
    path = parts.path.split("/")[1:]
    if not path or not path[0] or len(path) > 2:
        raise ValueError("name the service after the sentinels: /SERVICE_NAME[/DB]")
    db = path[1] if len(path) == 2 else "0"
    if not db.isdigit():
        raise ValueError(f"the database {db!r} is not a number")
    return SentinelAddress(
        sentinels=sentinels,
        service=unquote(path[0]),
        db=int(db),
        username=unquote(user) or None,
        password=unquote(password) if colon else None,
    )


def check_redis_url(url: str) -> None:
    """Raise ValueError saying what is wrong with a Redis URL (never its password)."""
    if url.startswith(f"{SENTINEL_SCHEME}:"):
        parse_sentinel_url(url)
        return
    if urlsplit(url).scheme not in _SCHEMES:
        raise ValueError(
            f"give a {', '.join(f'{s}://' for s in _SCHEMES)} or {SENTINEL_SCHEME}:// URL"
        )
    parse_url(url)  # the port and options, as redis-py reads them
    parts = urlsplit(url)
    db = parts.path.strip("/")
    # redis-py ignores a database it cannot read and uses database 0: say so instead.
    if parts.scheme != "unix" and db and not db.isdigit():
        raise ValueError(f"the database {db!r} is not a number")


class _SentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """The pool of the primary the sentinels name, bounded as the plain URL's is."""


class _SentinelManaged(Redis):
    """A client of the primary the sentinels name; it also closes its connections to them."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        owner = close_connection_pool or (
            close_connection_pool is None and self.auto_close_connection_pool
        )
        await super().aclose(close_connection_pool)
        # Only the client that owns the pool: `client()` makes clients over the same pool.
        if owner and isinstance(self.connection_pool, SentinelConnectionPool):
            for sentinel in self.connection_pool.sentinel_manager.sentinels:
                await sentinel.aclose()


def connect_redis(url: str, timeout: float = CALL_TIMEOUT) -> Redis:
    """A Redis client for `url` whose calls fail fast (after `timeout` s) instead of hanging.

    Failed calls are not tried again by the client: relay's callers ride out outages
    themselves (503, or backoff), and a WAIT sent again on a new connection would count the
    replicas of nothing this connection wrote.

    The pool is redis-py's blocking one, at most MAX_CONNECTIONS. In redis-py 5.3 (the line
    arq allows) the default pool also holds one lock while it checks the connection it hands
    out, a check that waits a turn of the event loop: every call of the process then waited
    for the calls before it, one a turn however long the turn (a batch of events being
    validated made each of its script calls wait 150 ms). The blocking pool checks with no
    lock held.
    """
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": min(timeout, 1.0),
        "retry": Retry(NoBackoff(), 0),
        "retry_on_timeout": False,
        "health_check_interval": 15,
        "max_connections": MAX_CONNECTIONS,
        "timeout": timeout,  # the longest a call waits for a free connection
    }
    if not url.startswith(f"{SENTINEL_SCHEME}:"):
        return Redis.from_pool(BlockingConnectionPool.from_url(url, **options))
    address = parse_sentinel_url(url)
    ask = {"socket_timeout": _SENTINEL_TIMEOUT, "socket_connect_timeout": _SENTINEL_TIMEOUT}
    sentinel = Sentinel(list(address.sentinels), sentinel_kwargs=ask)  # type: ignore[no-untyped-call]
    primary: Redis = sentinel.master_for(
        address.service,
        redis_class=_SentinelManaged,
        connection_pool_class=_SentinelPool,
        db=address.db,
        username=address.username,
        password=address.password,
        **options,
    )
    return primary
