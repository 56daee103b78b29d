"""Flask: ``FourNines(app)``, an extension that wraps ``app.wsgi_app`` in ``protect_wsgi``.

::

    from flask import Flask
    from fournines.wsgi.flask import FourNines

    app = Flask(__name__)
    FourNines(app, service="orders")  # or app.config["FOURNINES"] = {...}; FourNines(app)

Probes, ``/metrics``, sheds, 429s and 504s are answered before Flask sees the
request; views run under the caller's deadline; the ``route`` label is the url
rule (``/orders/<int:order_id>``). ``protected`` is the
:class:`~fournines.wsgi.ProtectedWSGI`.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, request

from ._protect import ROUTE_KEY, ProtectedWSGI, protect_wsgi

__all__ = ["FourNines"]


class FourNines:
    """Flask extension: ``protect_wsgi`` around ``app.wsgi_app``.

    Keyword arguments are :func:`~fournines.wsgi.protect_wsgi`'s; they override
    ``app.config["FOURNINES"]``. ``init_app`` supports the factory pattern.
    """

    def __init__(self, app: Flask | None = None, **options: Any) -> None:
        self.options = options
        self.protected: ProtectedWSGI | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Protect ``app``: wrap its ``wsgi_app`` and record each request's url rule."""
        options = {**(app.config.get("FOURNINES") or {}), **self.options}
        self.protected = protect_wsgi(app.wsgi_app, **options)
        app.wsgi_app = self.protected  # type: ignore[method-assign]
        app.extensions["fournines"] = self
        app.before_request(_record_route)


def _record_route() -> None:
    rule = request.url_rule
    if rule is not None:
        request.environ[ROUTE_KEY] = rule.rule
