"""aiohttp service protection: health probes, golden metrics, deadlines, shedding.

``protect_aiohttp(app)`` gives an ``aiohttp.web.Application`` what
:func:`fournines.asgi.protect` gives an ASGI app, by the same parts: it adds one
aiohttp middleware that runs each request through fournines' ASGI middleware
(health, metrics, deadline, shedding), whose innermost app is the aiohttp handler.
So the probes, the metric names, the deadline rules and the shedding decisions
are exactly the ASGI ones. It needs the ``aiohttp`` extra.

The client side is :class:`fournines.client.ResilientMiddleware`.
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

__getattr__, __dir__ = lazy_attributes("fournines.aiohttp", {
    "protect_aiohttp": ("fournines.aiohttp._protect", "pip install 'fournines[aiohttp]'"),
    "AiohttpProtection": ("fournines.aiohttp._protect", "pip install 'fournines[aiohttp]'"),
}, globals())

if TYPE_CHECKING:  # the real types for a user's type checker; never imported at run time
    from ._protect import AiohttpProtection, protect_aiohttp

__all__ = ["AiohttpProtection", "protect_aiohttp"]
