"""The versioned test app under :func:`fournines.asgi.protect` (health, metrics, instance id)."""

from __future__ import annotations

from fournines.asgi import protect

from .versioned import app as _app

app = protect(_app, service="serve-test")
