"""The apps bench/wsgi_overhead.py serves under gunicorn, chosen by ``BENCH_VARIANT``.

``flask`` / ``django``: the bare framework; ``fournines_flask`` / ``fournines_django``:
the same app with fournines' protection (health, metrics, deadlines, shedding and a
rate limit that is never reached); ``wsgi`` / ``fournines_wsgi``: a plain WSGI callable.
Every variant answers ``GET /orders/<id>`` with the same small JSON body.
"""

from __future__ import annotations

import os
import time
from typing import Any

from fournines import TokenBucket
from fournines.asgi import GracefulShutdown

VARIANT = os.environ.get("BENCH_VARIANT", "flask")
FRAMEWORK = VARIANT.removeprefix("fournines_")
PROTECTED = VARIANT.startswith("fournines_")
OPTIONS: dict[str, Any] = {
    "service": "bench",
    "rate_limit": lambda: TokenBucket(rate=1e9, capacity=1e9),
    # A short drain: the bench stops each server after its run.
    "shutdown": GracefulShutdown(drain_delay=0.2, drain_timeout=5.0),
}
app: Any


def work() -> None:
    """The overload bench's handler: about 1 ms of CPU and 5 ms of blocking I/O."""
    end = time.perf_counter() + 0.001
    while time.perf_counter() < end:
        pass
    time.sleep(0.005)


if FRAMEWORK == "flask":
    from flask import Flask

    app = Flask(__name__)

    @app.get("/orders/<int:order_id>")
    def order(order_id: int) -> dict[str, object]:
        return {"order": order_id, "status": "ok"}

    @app.get("/work")
    def flask_work() -> dict[str, object]:
        work()
        return {"ok": True}

    if PROTECTED:
        from fournines.wsgi.flask import FourNines

        FourNines(app, **OPTIONS)

elif FRAMEWORK == "django":
    import django
    from django.conf import settings
    from django.core.wsgi import get_wsgi_application
    from django.http import HttpRequest, JsonResponse
    from django.urls import path

    def django_order(request: HttpRequest, order_id: int) -> JsonResponse:
        return JsonResponse({"order": order_id, "status": "ok"})

    urlpatterns = [path("orders/<int:order_id>", django_order)]
    settings.configure(
        DEBUG=False, SECRET_KEY="bench", ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__,
        MIDDLEWARE=(["fournines.wsgi.django.FourNinesMiddleware"] if PROTECTED else []),
        FOURNINES=OPTIONS,
    )
    django.setup()
    app = get_wsgi_application()

else:
    import json

    def plain(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        order_id = environ["PATH_INFO"].rsplit("/", 1)[-1]
        body = json.dumps({"order": int(order_id), "status": "ok"}).encode()
        start_response("200 OK", [("content-type", "application/json"),
                                  ("content-length", str(len(body)))])
        return [body]

    app = plain
    if PROTECTED:
        from fournines.wsgi import protect_wsgi

        app = protect_wsgi(plain, **OPTIONS)
