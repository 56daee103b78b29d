"""Django: ``protect_wsgi`` as a middleware, configured in settings.

::

    # settings.py
    MIDDLEWARE = [
        "fournines.wsgi.django.FourNinesMiddleware",  # first: before any other work
        ...
    ]
    FOURNINES = {"service": "orders", "version": "1.4.2"}  # protect_wsgi's keyword arguments

The middleware is a thin shell: it runs the rest of Django as the WSGI app of a
:func:`~fournines.wsgi.protect_wsgi`, so probes, ``/metrics``, sheds, 429s and
504s are answered before any other middleware or view runs, the view runs under
the caller's deadline, and the ``route`` label is the resolver's route template
(``request.resolver_match.route``, with a leading ``/``: ``/orders/<int:order_id>``).
``protected`` is the :class:`~fournines.wsgi.ProtectedWSGI` (its ``state``,
``shedder``, ``metrics``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings  # type: ignore[import-untyped]
from django.http import (  # type: ignore[import-untyped]
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
)

from ._protect import ROUTE_KEY, ProtectedWSGI, StartResponse, protect_wsgi

__all__ = ["FourNinesMiddleware"]

_REQUEST = "fournines.django.request"
_RESPONSE = "fournines.django.response"


def _write(data: bytes) -> None:  # pragma: no cover - Django apps never call write()
    raise RuntimeError("the FourNines middleware does not support write()")


class FourNinesMiddleware:
    """Django middleware around :func:`~fournines.wsgi.protect_wsgi` (``settings.FOURNINES``)."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        options: dict[str, Any] = dict(getattr(settings, "FOURNINES", {}) or {})
        self.get_response = get_response
        self.protected: ProtectedWSGI = protect_wsgi(self._inner, **options)

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        """Serve ``request`` through the protection."""
        environ: dict[str, Any] = request.environ
        environ[_REQUEST] = request
        captured: list[tuple[str, list[tuple[str, str]]]] = []

        def start_response(status: str, headers: list[tuple[str, str]],
                           exc_info: Any = None) -> Callable[[bytes], object]:
            captured.append((status, headers))
            return _write

        body: Iterable[bytes] = self.protected(environ, start_response)
        try:
            response: HttpResponseBase | None = environ.pop(_RESPONSE, None)
            if response is None:  # answered by fournines itself (probe, shed, 429, 504)
                status, headers = captured[-1]
                answer = HttpResponse(b"".join(body), status=int(status[:3]))
                for name, value in headers:
                    answer[name] = value
                return answer
            # The view answered: only the headers fournines adds (x-instance-id...).
            for name, value in captured[-1][1] if captured else ():
                response[name] = value
            return response
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()

    def _inner(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        request: HttpRequest = environ.pop(_REQUEST)
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        if match is not None and match.route is not None:
            environ[ROUTE_KEY] = "/" + str(match.route).lstrip("^/")
        environ[_RESPONSE] = response
        start_response(f"{response.status_code} {response.reason_phrase}", [])
        return ()
