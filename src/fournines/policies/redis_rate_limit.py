"""Distributed rate limiters backed by Redis: GCRA and sliding window (counter and log).

Every process that points at the same Redis and uses the same key shares one
budget. Each decision is one atomic Lua script, sent with ``EVALSHA`` (the
script is loaded once with ``SCRIPT LOAD``; when Redis answers ``NOSCRIPT``,
e.g. after a restart or ``SCRIPT FLUSH``, the decision is made with ``EVAL``,
which caches the script again). The script reads the time from the Redis
server (``TIME``), so clients on machines with skewed clocks still agree, and
sets an expiry on its key so that idle keys vanish.

:class:`RedisGcra` and :class:`RedisSlidingWindow` take a ``redis.asyncio``
client and are awaited; :class:`SyncRedisGcra` and
:class:`SyncRedisSlidingWindow` take a blocking ``redis.Redis``. They share the
contract of the local limiters in :mod:`fournines.policies.rate_limit`:
``try_acquire(cost, key=...)`` decides at once or raises
:class:`~fournines.RateLimitedError` with ``retry_after``; ``acquire(...)``
waits up to ``max_wait`` seconds (never past the current deadline);
``acall``/``call`` make them policies.

Sync and async: each limiter decides with the one client it is given and
offers the shell of that client's kind. On a ``redis.asyncio`` client,
``acall`` works (so does a ``Pipeline``'s ``acall``, and decorating an
``async def``), while ``call`` raises ``TypeError`` naming the sync twin to
use; on a blocking client it is the other way round. Deciding in sync code
with an asyncio client would mean blocking on an event loop, and deciding in
async code with a blocking client would stall the loop for a network round
trip (or hide it in a thread pool that then caps throughput): neither is done
silently. A service with both kinds of code builds both limiters with the same
settings, prefix and key; they share one budget in Redis. Inside a ``Pipeline``
the key comes from ``key=``: a fixed string, or a function
``key(*args, **kwargs) -> str`` of the protected call's arguments.

The async shells are hand-written (:mod:`._redis_async`); the sync shells
(:mod:`._redis_sync`) are generated from them by ``scripts/unasync.py``, and
``make lint`` fails when the generated file is stale.

When Redis fails (unreachable, timed out, read-only, out of memory...), the
limiter does what ``on_redis_error`` says, and nothing else:

- ``"local"`` (the default): decide with a local rescue limiter, by default a
  local :class:`~fournines.policies.rate_limit.Gcra` (or ``SlidingWindow``) per
  key with the rate divided by ``instances``, the number of processes you run;
- ``"fail_open"``: let every call pass;
- ``"fail_closed"``: reject every call (``retry_after=None``).

After a failure the limiter keeps deciding locally for ``reconnect_after``
seconds before it asks Redis again, so that a dead Redis does not cost a
connection attempt per call. Failures are logged on the ``"fournines"``
logger, at most once every 10 seconds per limiter.

Configure the client for this: a short ``socket_timeout`` and
``socket_connect_timeout`` (tens of milliseconds on a LAN: a rate limit that
waits a second for Redis is worse than none) and few or no retries, e.g.
``redis.asyncio.Redis(..., socket_timeout=0.05, socket_connect_timeout=0.05,
retry=Retry(NoBackoff(), 1))``. redis-py's default retries with backoff can
hold a call for seconds when Redis is down. Size the connection pool for your
concurrency, or use a ``BlockingConnectionPool``: a full pool raises
``MaxConnectionsError``, which counts as a Redis error for that call.

Every limiter sharing a key must use the same settings: the state in Redis is
read with the settings of whoever reads it.
"""

from __future__ import annotations

from ._redis_async import RedisGcra, RedisSlidingWindow
from ._redis_core import DEFAULT_PREFIX, KeyFunc, OnRedisError
from ._redis_sync import SyncRedisGcra, SyncRedisSlidingWindow

__all__ = [
    "DEFAULT_PREFIX",
    "KeyFunc",
    "OnRedisError",
    "RedisGcra",
    "RedisSlidingWindow",
    "SyncRedisGcra",
    "SyncRedisSlidingWindow",
]
