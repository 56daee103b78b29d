"""Hand-written minimal policies: the floor of what pure Python can do.

Each floor keeps the same calling convention as the fournines shell it is
compared to (``call(fn, *args, **kwargs)``, a decorator wrapper forwarding
``*args, **kwargs``); the ``call0`` variants call ``fn()`` with no argument
forwarding at all, the bare minimum (reported as an information row).

They do the essential work only: no events, no configuration checks, no
deadlines, no generations, no half-open probe accounting beyond a state flag.
A thread lock appears only where the fournines claim is thread-safe and the
state is a read-modify-write (the token bucket: explicit ``acquire``/``release``,
cheaper than ``with``); the bulkhead floor counts slots in a deque whose
``pop``/``append`` are atomic under the GIL; the closed breaker path takes no
lock, as in fournines.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from time import monotonic
from typing import Any

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


class FloorOpenError(Exception):
    """The floor breaker rejects (a fresh instance per rejection)."""


class FloorRateLimitedError(Exception):
    """The floor limiter rejects."""


class FloorFullError(Exception):
    """The floor bulkhead rejects."""


# --- breaker -----------------------------------------------------------------------------


class FloorBreaker:
    """Consecutive-failures breaker: the closed path tests one attribute, stores one."""

    __slots__ = ("failures", "open_until", "reset_timeout", "state", "threshold")

    def __init__(self, threshold: int = 5, reset_timeout: float = 60.0) -> None:
        self.threshold = threshold
        self.reset_timeout = reset_timeout
        self.state = CLOSED
        self.failures = 0
        self.open_until = 0.0

    def _half_open(self) -> None:
        self.state = HALF_OPEN

    def _failure(self) -> None:
        self.failures += 1
        if self.state is HALF_OPEN or self.failures >= self.threshold:
            self.state = OPEN
            self.open_until = monotonic() + self.reset_timeout

    def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        if self.state is not CLOSED:
            now = monotonic()
            if now < self.open_until:
                raise FloorOpenError(self.open_until - now)
            self._half_open()
        try:
            r = fn(*args, **kwargs)
        except Exception:
            self._failure()
            raise
        self.failures = 0
        if self.state is HALF_OPEN:
            self.state = CLOSED
        return r

    def call0(self, fn: Callable[[], Any]) -> Any:
        if self.state is not CLOSED:
            now = monotonic()
            if now < self.open_until:
                raise FloorOpenError(self.open_until - now)
            self._half_open()
        try:
            r = fn()
        except Exception:
            self._failure()
            raise
        self.failures = 0
        if self.state is HALF_OPEN:
            self.state = CLOSED
        return r

    async def acall(self, fn: Callable[..., Awaitable[Any]], /, *args: Any, **kwargs: Any) -> Any:
        if self.state is not CLOSED:
            now = monotonic()
            if now < self.open_until:
                raise FloorOpenError(self.open_until - now)
            self._half_open()
        try:
            r = await fn(*args, **kwargs)
        except Exception:
            self._failure()
            raise
        self.failures = 0
        if self.state is HALF_OPEN:
            self.state = CLOSED
        return r

    async def acall0(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        if self.state is not CLOSED:
            now = monotonic()
            if now < self.open_until:
                raise FloorOpenError(self.open_until - now)
            self._half_open()
        try:
            r = await fn()
        except Exception:
            self._failure()
            raise
        self.failures = 0
        if self.state is HALF_OPEN:
            self.state = CLOSED
        return r

    def decorate(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        b = self

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if b.state is not CLOSED:
                now = monotonic()
                if now < b.open_until:
                    raise FloorOpenError(b.open_until - now)
                b._half_open()
            try:
                r = fn(*args, **kwargs)
            except Exception:
                b._failure()
                raise
            b.failures = 0
            if b.state is HALF_OPEN:
                b.state = CLOSED
            return r

        return wrapper

    def adecorate(self, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        b = self

        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            if b.state is not CLOSED:
                now = monotonic()
                if now < b.open_until:
                    raise FloorOpenError(b.open_until - now)
                b._half_open()
            try:
                r = await fn(*args, **kwargs)
            except Exception:
                b._failure()
                raise
            b.failures = 0
            if b.state is HALF_OPEN:
                b.state = CLOSED
            return r

        return wrapper


# --- retry --------------------------------------------------------------------------------


class FloorRetry:
    """Retry up to ``attempts`` times with capped exponential backoff and full jitter."""

    __slots__ = ("attempts", "cap", "initial", "on")

    def __init__(self, attempts: int = 3, on: type[BaseException] = Exception,
                 initial: float = 0.1, cap: float = 10.0) -> None:
        self.attempts = attempts
        self.on = on
        self.initial = initial
        self.cap = cap

    def _delay(self, attempt: int) -> float:
        import random

        return random.uniform(0.0, min(self.cap, self.initial * 2 ** (attempt - 1)))

    def _again(self, fn: Callable[..., Any], args: Any, kwargs: Any, exc: BaseException) -> Any:
        for attempt in range(1, self.attempts):
            time.sleep(self._delay(attempt))
            try:
                return fn(*args, **kwargs)
            except self.on as e:
                exc = e
        raise exc

    async def _aagain(self, fn: Callable[..., Awaitable[Any]], args: Any, kwargs: Any,
                      exc: BaseException) -> Any:
        for attempt in range(1, self.attempts):
            await asyncio.sleep(self._delay(attempt))
            try:
                return await fn(*args, **kwargs)
            except self.on as e:
                exc = e
        raise exc

    def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except self.on as exc:
            return self._again(fn, args, kwargs, exc)

    def call0(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except self.on as exc:
            return self._again(fn, (), {}, exc)

    async def acall(self, fn: Callable[..., Awaitable[Any]], /, *args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except self.on as exc:
            return await self._aagain(fn, args, kwargs, exc)

    async def acall0(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        try:
            return await fn()
        except self.on as exc:
            return await self._aagain(fn, (), {}, exc)

    def decorate(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        r = self

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except r.on as exc:
                return r._again(fn, args, kwargs, exc)

        return wrapper

    def adecorate(self, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        r = self

        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return await fn(*args, **kwargs)
            except r.on as exc:
                return await r._aagain(fn, args, kwargs, exc)

        return wrapper


# --- token bucket -----------------------------------------------------------------------


class FloorBucket:
    """Thread-safe token bucket: one lock, one clock read, float arithmetic."""

    __slots__ = ("capacity", "last", "lock", "rate", "tokens")

    def __init__(self, rate: float, capacity: float) -> None:
        # floats: int/float mixed arithmetic and comparisons cost ~90 ns more per call
        self.rate = float(rate)
        self.capacity = float(capacity)
        self.tokens = self.capacity
        self.last = monotonic()
        self.lock = threading.Lock()

    def try_acquire(self) -> None:
        # explicit acquire/release: ~40 ns cheaper than `with lock:` on CPython 3.11
        self.lock.acquire()
        try:
            now = monotonic()
            tokens = self.tokens + (now - self.last) * self.rate
            if tokens > self.capacity:
                tokens = self.capacity
            self.last = now
            if tokens >= 1.0:
                self.tokens = tokens - 1.0
                return
            self.tokens = tokens
        finally:
            self.lock.release()
        raise FloorRateLimitedError((1.0 - tokens) / self.rate)

    def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        self.try_acquire()
        return fn(*args, **kwargs)

    async def acall(self, fn: Callable[..., Awaitable[Any]], /, *args: Any, **kwargs: Any) -> Any:
        self.try_acquire()
        return await fn(*args, **kwargs)


class FloorBucketNoLock:
    """The same bucket without the lock (enough for one asyncio thread, not thread-safe)."""

    __slots__ = ("capacity", "last", "rate", "tokens")

    def __init__(self, rate: float, capacity: float) -> None:
        self.rate = float(rate)
        self.capacity = float(capacity)
        self.tokens = self.capacity
        self.last = monotonic()

    def try_acquire(self) -> None:
        now = monotonic()
        tokens = self.tokens + (now - self.last) * self.rate
        if tokens > self.capacity:
            tokens = self.capacity
        self.last = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return
        self.tokens = tokens
        raise FloorRateLimitedError((1.0 - tokens) / self.rate)


# --- pipeline ------------------------------------------------------------------------------


class FloorPipeline:
    """retry(breaker(limiter(bulkhead(fn)))), all inlined in one frame; ``acall`` adds a timeout.

    The limiter is the locked token bucket (explicit acquire/release); the bulkhead
    is a deque of free slots (``pop``/``append`` are atomic under the GIL, no lock).
    The timeout is ``call_at(deadline, task.cancel)`` plus the cancel bookkeeping;
    unlike fournines it sets no deadline context for inner code.
    """

    __slots__ = ("attempts", "breaker", "bucket", "free", "retry", "timeout")

    def __init__(self, *, timeout: float = 10.0, attempts: int = 3, rate: float = 1e9,
                 capacity: float = 1e9, max_concurrent: int = 10) -> None:
        self.timeout = timeout
        self.attempts = attempts
        self.retry = FloorRetry(attempts=attempts)
        self.breaker = FloorBreaker()
        self.bucket = FloorBucket(rate, capacity)
        self.free = deque([None] * max_concurrent)

    def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        attempt = 0
        b = self.breaker
        tb = self.bucket
        while True:
            attempt += 1
            try:
                if b.state is not CLOSED:
                    now = monotonic()
                    if now < b.open_until:
                        raise FloorOpenError(b.open_until - now)
                    b._half_open()
                try:
                    tb.lock.acquire()
                    try:
                        now = monotonic()
                        tokens = tb.tokens + (now - tb.last) * tb.rate
                        if tokens > tb.capacity:
                            tokens = tb.capacity
                        tb.last = now
                        tb.tokens = tokens - 1.0 if tokens >= 1.0 else tokens
                    finally:
                        tb.lock.release()
                    if tokens < 1.0:
                        raise FloorRateLimitedError()
                    try:
                        self.free.pop()
                    except IndexError:
                        raise FloorFullError() from None
                    try:
                        r = fn(*args, **kwargs)
                    finally:
                        self.free.append(None)
                except Exception:
                    b._failure()
                    raise
                b.failures = 0
                if b.state is HALF_OPEN:
                    b.state = CLOSED
                return r
            except Exception:
                if attempt >= self.attempts:
                    raise
                time.sleep(self.retry._delay(attempt))

    async def acall(self, fn: Callable[..., Awaitable[Any]], /, *args: Any, **kwargs: Any) -> Any:
        task = asyncio.current_task()
        assert task is not None
        loop = task.get_loop()
        deadline = loop.time() + self.timeout
        handle = loop.call_at(deadline, task.cancel)
        try:
            attempt = 0
            b = self.breaker
            tb = self.bucket
            while True:
                attempt += 1
                try:
                    if b.state is not CLOSED:
                        now = monotonic()
                        if now < b.open_until:
                            raise FloorOpenError(b.open_until - now)
                        b._half_open()
                    try:
                        tb.lock.acquire()
                        try:
                            now = monotonic()
                            tokens = tb.tokens + (now - tb.last) * tb.rate
                            if tokens > tb.capacity:
                                tokens = tb.capacity
                            tb.last = now
                            tb.tokens = tokens - 1.0 if tokens >= 1.0 else tokens
                        finally:
                            tb.lock.release()
                        if tokens < 1.0:
                            raise FloorRateLimitedError()
                        try:
                            self.free.pop()
                        except IndexError:
                            raise FloorFullError() from None
                        try:
                            r = await fn(*args, **kwargs)
                        finally:
                            self.free.append(None)
                    except Exception:
                        b._failure()
                        raise
                    b.failures = 0
                    if b.state is HALF_OPEN:
                        b.state = CLOSED
                    return r
                except Exception:
                    if attempt >= self.attempts:
                        raise
                    await asyncio.sleep(self.retry._delay(attempt))
        except asyncio.CancelledError:
            if loop.time() >= deadline and task.uncancel() == 0:
                raise TimeoutError("floor timeout") from None
            raise
        finally:
            handle.cancel()
