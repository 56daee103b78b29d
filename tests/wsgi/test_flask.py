"""The Flask extension in-process, through Flask's own test client (a WSGI caller)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask
from prometheus_client import CollectorRegistry

from fournines import current_deadline
from fournines.wsgi import ProtectedWSGI
from fournines.wsgi.flask import FourNines


@pytest.fixture
def app() -> Iterator[Flask]:
    app = Flask(__name__)
    app.config["FOURNINES"] = {"service": "from-config", "registry": CollectorRegistry()}

    @app.get("/orders/<int:order_id>")
    def order(order_id: int) -> dict[str, object]:
        deadline = current_deadline()
        return {"order": order_id, "budget": None if deadline is None else deadline.remaining()}

    yield app
    extension = app.extensions.get("fournines")
    if extension is not None and extension.protected is not None:
        extension.protected.close()


def test_the_extension_wraps_wsgi_app_with_the_configured_options(app: Flask) -> None:
    extension = FourNines(app)
    assert isinstance(app.wsgi_app, ProtectedWSGI)
    assert extension.protected is app.wsgi_app
    assert extension.protected.state.service == "from-config"


def test_keyword_options_override_the_config(app: Flask) -> None:
    extension = FourNines(app, service="orders")
    assert extension.protected is not None and extension.protected.state.service == "orders"


def test_init_app_supports_the_factory_pattern(app: Flask) -> None:
    extension = FourNines()
    extension.init_app(app)
    assert app.extensions["fournines"] is extension


def test_the_route_label_is_the_url_rule(app: Flask) -> None:
    extension = FourNines(app)
    client = app.test_client()
    for path, status in (("/orders/7", 200), ("/nowhere", 404)):
        response = client.get(path)
        assert response.status_code == status
        response.close()  # as every WSGI server does: the request ends here
    assert extension.protected is not None
    registry = extension.protected.metrics.registry
    assert registry.get_sample_value("http_requests_total", {
        "method": "GET", "route": "/orders/<int:order_id>", "status": "200"}) == 1
    assert registry.get_sample_value("http_requests_total", {
        "method": "GET", "route": "<unmatched>", "status": "404"}) == 1


def test_the_view_runs_under_the_callers_deadline(app: Flask) -> None:
    FourNines(app)
    body = app.test_client().get("/orders/7", headers={"x-request-timeout-ms": "800"}).json
    assert body is not None and 0 < body["budget"] <= 0.8


def test_probes_are_answered_before_flask(app: Flask) -> None:
    FourNines(app)
    client = app.test_client()
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").json["status"] == "pass"  # type: ignore[index]
