"""Route templates for metric labels and span names, with bounded cardinality.

A metric labelled with the raw path grows one time series per distinct URL: a
scanner probing 10 000 random paths makes 10 000 series and can take the
Prometheus server down with it. Labels therefore carry the *route template*
(``/orders/{order_id}``), and everything that no route matched shares the one
label :data:`UNMATCHED`.

How the template is found, after the app ran (the middleware passes the scope
object on, and the framework writes into it):

- Starlette records the matched route in ``scope["route"]``; its
  ``path_format`` is the template without converters (``{id:int}`` → ``{id}``).
  No route (404, slash redirect) → :data:`UNMATCHED`.
- FastAPI ≥ 0.120 includes routers without copying their routes; the route
  then only knows its own path, and the full one (with every
  ``include_router`` prefix) is in ``scope["fastapi"]["effective_route_context"]``.
- Mounts append what they matched to ``root_path`` (the value before the first
  mount is kept in ``app_root_path``). That literal prefix
  (``/tenants/acme/v1``) is matched once against the app's mounts
  (``scope["router"]``) to get its template (``/tenants/{tenant}/v1``), and
  cached; a prefix no mount chain explains resolves to :data:`UNMATCHED`
  rather than to raw text.
- A mount of a plain ASGI app (static files) is its own route:
  ``/static/{path}``. Reaching a mount of a router means nothing inside
  matched: :data:`UNMATCHED`.

Per request that is a few dictionary look-ups and no regex work. Plain ASGI
apps have no such record: pass a ``route_of(scope) -> str`` callable to the
middleware instead. It runs after the app and must return values from a small
fixed set.

A request answered before the app ran (a 504 for an expired deadline, a 429, a
503 shed below the metrics) has no such record either: the router never saw it
(``scope["router"]`` is unset). Given the app (``RouteTemplates(app)``, which
finds the Starlette or FastAPI router under any middleware with an ``app``
attribute), the resolver then asks the router's routes which one would have
matched (``route.matches``, the router's own rule: first full match, else the
first partial one; FastAPI's included routers through their effective routes),
so these answers keep their template too. That costs what the router's own
matching would have, and only on such answers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ._types import Scope

__all__ = ["UNMATCHED", "RouteOf", "RouteTemplates", "find_router", "route_template"]

UNMATCHED = "<unmatched>"
"""The template of every request that no route matched (404s, redirects, scanners)."""

RouteOf = Callable[[Scope], str]
"""A function from a request's scope (after the app ran) to its route template."""

# Starlette's Mount compiles ``path + "/{path:path}"``; its path_format ends in this.
_MOUNT_TAIL = "/{path}"
# Mount trees are shallow; a deeper one is a cycle (an app mounted inside itself).
_MAX_DEPTH = 32
# Literal prefixes of mounts with parameters are as many as the values; past this
# many the cache stops growing (the answer is still computed, just not kept).
_MAX_PREFIXES = 4096


class RouteTemplates:
    """Resolves a request's scope to its full route template, after the app ran.

    Returns the matched route's template including mount and ``include_router``
    prefixes (``/api/v1/orders/{order_id}``), a mounted plain app's template
    (``/static/{path}``), or :data:`UNMATCHED`. Never the raw request path.
    One instance serves any number of apps; it caches mount prefixes.
    """

    __slots__ = ("_prefixes", "_router")

    def __init__(self, app: object = None) -> None:
        # literal mount prefix (root_path minus app_root_path) -> its template, or
        # None when no mount chain explains it.
        self._prefixes: dict[str, str | None] = {}
        self._router = find_router(app)

    def __call__(self, scope: Scope) -> str:
        """The route template of the request ``scope`` described (after the app ran)."""
        route = scope.get("route")
        if route is None:
            if self._router is None or "router" in scope:
                return UNMATCHED  # no router to ask, or it ran and matched nothing
            return self._predict(scope)
        return self._template(scope, route)

    def _predict(self, scope: Scope) -> str:
        """The template of the route the router would have chosen for ``scope``."""
        # A copy: the matching writes into it (path params, mount root paths).
        probe: dict[str, Any] = dict(scope)
        probe.setdefault("root_path", "")
        probe["router"] = self._router
        routes = getattr(self._router, "routes", None)
        for _ in range(_MAX_DEPTH):
            found = _first_match(routes, probe)
            if found is None:
                return UNMATCHED
            route, child, context = found
            probe.update(child)
            if context is not None:
                probe["fastapi"] = {**(probe.get("fastapi") or {}),
                                    "effective_route_context": context}
                return self._template(probe, context.original_route)
            probe["route"] = route
            inner = getattr(route, "routes", None)
            if not inner:
                return self._template(probe, route)
            routes = inner  # a mount of a router, or a host: its router matches next
        return UNMATCHED

    def _template(self, scope: Scope, route: Any) -> str:
        template = getattr(route, "path_format", None)
        fastapi = scope.get("fastapi")
        if fastapi:
            context = fastapi.get("effective_route_context")
            if context is not None and getattr(context, "original_route", None) is route:
                effective = getattr(context, "starlette_route", None) or context
                template = getattr(effective, "path_format", None) or template
        if not isinstance(template, str):
            return UNMATCHED
        mount = template.endswith(_MOUNT_TAIL) and hasattr(route, "routes")
        app_root = scope.get("app_root_path")
        if app_root is None:
            # No mount on the way. A mount reached without a mount prefix cannot be.
            return template if not mount else UNMATCHED
        root_path = str(scope.get("root_path", ""))
        if not root_path.startswith(app_root):
            return UNMATCHED
        literal = root_path[len(app_root):]
        if literal in self._prefixes:
            prefix = self._prefixes[literal]
        else:
            prefix = self._learn(scope, literal)
        if prefix is None:
            return UNMATCHED
        if mount:
            # root_path already holds what the mount itself matched, so the prefix
            # template ends with the mount's own path. A mount of a router reached
            # as the route means no route inside it matched.
            return UNMATCHED if getattr(route, "routes", None) else prefix + _MOUNT_TAIL
        return prefix + template

    def _learn(self, scope: Scope, literal: str) -> str | None:
        root = scope.get("router")
        if root is None:
            root = scope.get("app")
        prefix = _mount_template(getattr(root, "routes", None), literal, 0)
        if len(self._prefixes) < _MAX_PREFIXES:
            self._prefixes[literal] = prefix
        return prefix


def find_router(app: object) -> object | None:
    """The Starlette/FastAPI router under ``app`` and the middleware wrapping it, if any.

    Follows ``.app`` attributes (how ASGI middleware, fournines' included, hold the
    app they wrap) to an object with a ``router`` that has ``routes`` (a Starlette or
    FastAPI app) or with ``routes`` itself (a bare ``Router``).
    """
    node = app
    for _ in range(_MAX_DEPTH):
        if node is None:
            return None
        router: object = getattr(node, "router", None)
        if router is not None and isinstance(getattr(router, "routes", None), list):
            return router
        if isinstance(getattr(node, "routes", None), list) and hasattr(node, "url_path_for"):
            return node
        node = getattr(node, "app", None)
    return None


def _first_match(routes: Iterable[Any] | None,
                 scope: Scope) -> tuple[Any, dict[str, Any], Any] | None:
    """(route, child scope, FastAPI route context or None) the router would choose."""
    partial = None
    for route in routes or ():
        contexts = getattr(route, "effective_route_contexts", None)
        # A FastAPI included router: its routes with their full paths.
        candidates = ((c, c) for c in contexts()) if callable(contexts) else ((route, None),)
        for candidate, context in candidates:
            try:
                match, child = candidate.matches(scope)
            except Exception:  # a route that cannot judge this scope does not match it
                continue
            kind = getattr(match, "name", "NONE")
            if kind == "FULL":
                return route, dict(child or {}), context
            if kind == "PARTIAL" and partial is None:
                partial = route, dict(child or {}), context
    return partial


def _mount_template(routes: Iterable[Any] | None, literal: str, depth: int) -> str | None:
    """The template of the mount chain under ``routes`` that matched ``literal``."""
    if not literal:
        return ""
    if routes is None or depth > _MAX_DEPTH:
        return None
    try:
        candidates = list(routes)
    except TypeError:
        return None
    # Mount regexes match "<mount path>/<rest>"; the trailing slash lets a mount
    # that consumed all of ``literal`` match with an empty rest.
    subject = literal + "/"
    for route in candidates:
        path_format = getattr(route, "path_format", None)
        children = getattr(route, "routes", None)
        if isinstance(path_format, str):
            regex = getattr(route, "path_regex", None)
            if not path_format.endswith(_MOUNT_TAIL) or regex is None:
                continue
            match = regex.match(subject)
            if match is None or "path" not in match.groupdict():
                continue
            consumed = len(subject) - len(match.group("path")) - 1
            rest = _mount_template(children, literal[consumed:], depth + 1)
            if rest is not None:
                return path_format[: -len(_MOUNT_TAIL)] + rest
        elif children:
            # A Host route: no path of its own; its mounts keep the prefix.
            found = _mount_template(children, literal, depth + 1)
            if found is not None:
                return found
    return None


_default = RouteTemplates()


def route_template(scope: Scope) -> str:
    """The route template of the request ``scope`` (read after the app ran).

    Uses a process-wide :class:`RouteTemplates`; see there for what it returns.
    """
    return _default(scope)
