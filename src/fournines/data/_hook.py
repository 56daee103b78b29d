"""Consumers that follow the service's life: :class:`ConsumerHook` for ``protect(hooks=)``.

The consumer starts once the service turns ready and stops first thing on drain
(stop fetching, let the deliveries in flight commit and be acked, close), so a
SIGTERM under :func:`fournines.asgi.serve` never cuts a handler off mid-way
unless it outlives ``GracefulShutdown.hook_timeout``; and even then the
delivery is unacked, so the broker redelivers it and the inbox dedupes it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from .._errors import ConfigurationError

__all__ = ["ConsumerHook"]


class ConsumerHook:
    """Start ``consumer`` when the service is ready; stop it gracefully on drain.

    A lifecycle hook for :func:`fournines.asgi.protect` (``hooks=[...]``), for a
    RabbitMQ :class:`~fournines.data.Consumer` or a
    :class:`~fournines.data.KafkaConsumer`::

        app = protect(app, hooks=[ConsumerHook(handle, pool_factory=make_pool,
                                               url="amqp://guest:guest@127.0.0.1/")])

    :param consumer: the consumer (anything with ``start(pool, url)`` and ``stop()``).
    :param pool: the database pool its handlers' transactions use; or
    :param pool_factory: an async callable that makes the pool on ready (a pool
        such as asyncpg's must be made in the running event loop; it is closed
        after the consumer stops, if it has ``close()``).
    :param url: the AMQP URL, or the Kafka bootstrap servers.

    Give ``GracefulShutdown(hook_timeout=...)`` at least the time the slowest
    handler takes: past it, the drain goes on and the process may exit with
    deliveries unacked (redelivered later, never applied twice).
    """

    __slots__ = ("_made", "consumer", "pool", "pool_factory", "url")

    def __init__(self, consumer: Any, pool: Any = None, url: str | None = None, *,
                 pool_factory: Callable[[], Awaitable[Any]] | None = None) -> None:
        if not (callable(getattr(consumer, "start", None))
                and callable(getattr(consumer, "stop", None))):
            raise ConfigurationError(
                f"ConsumerHook.consumer must have start(pool, url) and stop(), got {consumer!r}")
        if (pool is None) == (pool_factory is None):
            raise ConfigurationError("ConsumerHook needs exactly one of pool and pool_factory")
        if pool_factory is not None and not callable(pool_factory):
            raise ConfigurationError(
                f"ConsumerHook.pool_factory must be an async callable, got {pool_factory!r}")
        if url is not None and (not isinstance(url, str) or not url):
            raise ConfigurationError(f"ConsumerHook.url must be a non-empty str, got {url!r}")
        self.consumer = consumer
        self.pool = pool
        self.pool_factory = pool_factory
        self.url = url
        self._made: Any = None

    async def on_ready(self, state: object) -> None:
        """Make the pool (with ``pool_factory``) and start consuming."""
        pool = self.pool
        if pool is None:
            assert self.pool_factory is not None
            pool = self._made = await self.pool_factory()
        if self.url is None:
            await self.consumer.start(pool)
        else:
            await self.consumer.start(pool, self.url)

    async def on_drain(self, state: object) -> None:
        """Stop fetching, finish and ack what is in flight, close (and the pool made)."""
        try:
            await self.consumer.stop()
        finally:
            made, self._made = self._made, None
            close = getattr(made, "close", None)
            if callable(close):
                result = close()
                if hasattr(result, "__await__"):
                    await result

    def __repr__(self) -> str:
        return f"ConsumerHook({getattr(self.consumer, 'name', self.consumer)!r})"
