"""Route templates: the bounded ``route`` label of metrics and spans."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx
from fastapi import APIRouter, FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from fournines.asgi._types import ASGIApp, Receive, Scope, Send
from fournines.asgi.routes import UNMATCHED, RouteTemplates, route_template


async def ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def plain_asgi(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"static"})


def recording(app: ASGIApp, resolve: Callable[[Scope], str] = route_template
              ) -> tuple[Callable[[Scope, Receive, Send], Awaitable[None]], list[str]]:
    """Wrap ``app``; after each request, record its route template."""
    seen: list[str] = []

    async def wrapper(scope: Scope, receive: Receive, send: Send) -> None:
        await app(scope, receive, send)
        if scope["type"] == "http":
            seen.append(resolve(scope))

    return wrapper, seen


async def templates(app: ASGIApp, *paths: str, method: str = "GET",
                    root_path: str = "") -> list[str]:
    wrapper, seen = recording(app)
    transport = httpx.ASGITransport(app=wrapper, root_path=root_path)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for path in paths:
            await client.request(method, root_path + path)
    return seen


async def test_path_parameters_become_the_template() -> None:
    app = Starlette(routes=[Route("/orders/{order_id}", ok)])
    assert await templates(app, "/orders/1", "/orders/2") == ["/orders/{order_id}"] * 2


async def test_converters_are_dropped_from_the_template() -> None:
    app = Starlette(routes=[Route("/items/{item_id:int}", ok)])
    assert await templates(app, "/items/42") == ["/items/{item_id}"]


async def test_unmatched_paths_resolve_to_the_fixed_label() -> None:
    app = Starlette(routes=[Route("/orders/{order_id}", ok)])
    assert await templates(app, "/wp-admin.php", "/.env", "/x/y/z") == [UNMATCHED] * 3


async def test_wrong_method_keeps_the_route_template() -> None:
    app = Starlette(routes=[Route("/orders/{order_id}", ok, methods=["GET"])])
    assert await templates(app, "/orders/1", method="DELETE") == ["/orders/{order_id}"]


async def test_mounted_router_joins_the_mount_prefix() -> None:
    app = Starlette(routes=[Mount("/api", routes=[Route("/orders/{order_id}", ok)])])
    assert await templates(app, "/api/orders/9") == ["/api/orders/{order_id}"]


async def test_nested_mounts_with_parameters_keep_templates_not_values() -> None:
    inner = Mount("/v1", routes=[Route("/orders/{order_id}", ok)])
    app = Starlette(routes=[Mount("/tenants/{tenant}", routes=[inner])])
    found = await templates(app, "/tenants/acme/v1/orders/1", "/tenants/globex/v1/orders/2")
    assert found == ["/tenants/{tenant}/v1/orders/{order_id}"] * 2


async def test_mounted_starlette_app_joins_the_mount_prefix() -> None:
    sub = Starlette(routes=[Route("/users/{user_id}", ok)])
    app = Starlette(routes=[Mount("/accounts", app=sub)])
    assert await templates(app, "/accounts/users/5") == ["/accounts/users/{user_id}"]


async def test_mounted_plain_asgi_app_uses_the_mount_template() -> None:
    app = Starlette(routes=[Mount("/static", app=plain_asgi)])
    assert await templates(app, "/static/a.css", "/static/img/b.png") == ["/static/{path}"] * 2


async def test_no_match_inside_a_mounted_router_is_unmatched() -> None:
    app = Starlette(routes=[Mount("/api", routes=[Route("/orders/{order_id}", ok)])])
    assert await templates(app, "/api/nothing/here") == [UNMATCHED]


async def test_root_path_is_not_part_of_the_template() -> None:
    app = Starlette(routes=[Mount("/api", routes=[Route("/orders/{order_id}", ok)])])
    found = await templates(app, "/api/orders/1", root_path="/svc")
    assert found == ["/api/orders/{order_id}"]


async def test_fastapi_routes_and_router_prefixes() -> None:
    app = FastAPI()
    router = APIRouter(prefix="/users")

    @router.get("/{user_id}")
    async def get_user(user_id: int) -> dict[str, int]:
        return {"user_id": user_id}

    @app.get("/orders/{order_id}")
    async def get_order(order_id: str) -> dict[str, str]:
        return {"order_id": order_id}

    app.include_router(router, prefix="/api")
    found = await templates(app, "/orders/1", "/api/users/7", "/nope")
    assert found == ["/orders/{order_id}", "/api/users/{user_id}", UNMATCHED]


async def test_fastapi_mounted_sub_application() -> None:
    sub = FastAPI()

    @sub.get("/items/{item_id}")
    async def get_item(item_id: str) -> dict[str, str]:
        return {"item_id": item_id}

    app = FastAPI()
    app.mount("/sub", sub)
    assert await templates(app, "/sub/items/3") == ["/sub/items/{item_id}"]


async def test_plain_asgi_app_without_routes_is_unmatched() -> None:
    assert await templates(plain_asgi, "/anything") == [UNMATCHED]


async def test_routes_added_after_the_first_request_are_found() -> None:
    app = Starlette(routes=[Route("/a", ok)])
    resolver = RouteTemplates()
    wrapper, seen = recording(app, resolver)
    transport = httpx.ASGITransport(app=wrapper)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        await client.get("/a")
        app.router.routes.append(Mount("/late", routes=[Route("/b/{b_id}", ok)]))
        await client.get("/late/b/1")
    assert seen == ["/a", "/late/b/{b_id}"]


async def test_fastapi_router_included_twice_keeps_each_prefix() -> None:
    router = APIRouter(prefix="/users")

    @router.get("/{user_id}")
    async def get_user(user_id: int) -> dict[str, int]:
        return {"user_id": user_id}

    app = FastAPI()
    app.include_router(router, prefix="/v1")
    app.include_router(router, prefix="/v2")
    found = await templates(app, "/v1/users/1", "/v2/users/2")
    assert found == ["/v1/users/{user_id}", "/v2/users/{user_id}"]


async def test_fastapi_included_router_inside_a_mount() -> None:
    router = APIRouter(prefix="/users")

    @router.get("/{user_id}")
    async def get_user(user_id: int) -> dict[str, int]:
        return {"user_id": user_id}

    sub = FastAPI()
    sub.include_router(router, prefix="/api")
    app = Starlette(routes=[Mount("/tenants/{tenant}", app=sub)])
    found = await templates(app, "/tenants/a/api/users/1", "/tenants/b/api/users/2")
    assert found == ["/tenants/{tenant}/api/users/{user_id}"] * 2
