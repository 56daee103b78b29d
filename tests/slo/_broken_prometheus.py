"""An HTTP server that answers Prometheus' query API with malformed success bodies.

Stands for a broken proxy or a half-compatible server in front of Prometheus:
``/CASE/api/v1/query`` answers the body of ``CASE`` with status 200. Run by uvicorn.
"""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


def _vector(*items: Any) -> dict[str, Any]:
    return {"status": "success", "data": {"resultType": "vector", "result": list(items)}}


BODIES: dict[str, Any] = {
    "value-not-a-number": _vector({"metric": {}, "value": [1, "many"]}),
    "no-value": _vector({"metric": {}}),
    "data-is-a-list": {"status": "success", "data": []},
    "result-is-a-number": {"status": "success", "data": {"resultType": "vector", "result": 5}},
    "metric-is-a-number": _vector({"metric": 5, "value": [1, "1"]}),
    "scalar-is-a-string": {"status": "success", "data": {"resultType": "scalar", "result": "1"}},
}


RAW: dict[str, bytes] = {
    # A hostile or broken server: JSON nested 100,000 levels deep, and 17 MiB of it.
    "nested-100000-deep": b'{"status": "success", "data": ' + b"[" * 100_000 + b"]" * 100_000
                          + b"}",
    "17-mib": b'{"status": "success", "data": "' + b"x" * (17 << 20) + b'"}',
}


async def query(request: Request) -> Response:
    case = request.path_params["case"]
    if case in RAW:
        return Response(RAW[case], media_type="application/json")
    return JSONResponse(BODIES[case])


app = Starlette(routes=[Route("/{case}/api/v1/query", query)])
