"""The two asyncio questions the background samplers ask, asked safely and cheaply."""

from __future__ import annotations

import asyncio

__all__ = ["current_task", "running_loop"]

# asyncio's C accessor: the running loop or None, without raising (cheap per request).
running_loop = asyncio._get_running_loop


def current_task() -> asyncio.Task[object] | None:
    """The current task, or ``None`` where there is no running loop.

    That happens when the garbage collector closes a sampler's coroutine after its
    loop was closed without cancelling it.
    """
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None
