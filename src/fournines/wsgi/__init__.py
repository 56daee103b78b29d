"""WSGI service protection (Django, Flask, any PEP 3333 app), for gunicorn and others.

``protect_wsgi(app)`` gives a WSGI app what :func:`fournines.asgi.protect` gives
an ASGI one: health probes, golden metrics, deadlines, shedding, rate limits,
and, with :mod:`fournines.wsgi.gunicorn`, a draining shutdown. The Django
middleware (:mod:`fournines.wsgi.django`) and the Flask extension
(:mod:`fournines.wsgi.flask`) are thin wrappers around it.
"""

from ._arrival import ARRIVAL_KEY, mark_arrival
from ._checks import blocking_check
from ._protect import (
    ROUTE_KEY,
    ProtectedWSGI,
    RouteOf,
    StartResponse,
    WSGIApp,
    protect_wsgi,
    protected_apps,
    route_of_environ,
)

__all__ = [
    "ARRIVAL_KEY",
    "ROUTE_KEY",
    "ProtectedWSGI",
    "RouteOf",
    "StartResponse",
    "WSGIApp",
    "blocking_check",
    "mark_arrival",
    "protect_wsgi",
    "protected_apps",
    "route_of_environ",
]
