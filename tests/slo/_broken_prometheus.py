"""An HTTP server that answers Prometheus' query API with malformed success bodies.

Stands for a broken proxy or a half-compatible server in front of Prometheus:
``/CASE/api/v1/query`` answers the body of ``CASE`` with status 200. Run by uvicorn.
"""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
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


async def query(request: Request) -> JSONResponse:
    return JSONResponse(BODIES[request.path_params["case"]])


app = Starlette(routes=[Route("/{case}/api/v1/query", query)])
