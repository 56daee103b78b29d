"""Settings of the tiny Django project the WSGI tests run under gunicorn."""

import os

from fournines.asgi import GracefulShutdown
from fournines.policies.adaptive import FixedLimit

SECRET_KEY = "tests-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "tests.wsgi.apps.djangoapp.urls"
INSTALLED_APPS: list[str] = []
DATABASES: dict[str, object] = {}
USE_TZ = True
MIDDLEWARE = [
    "fournines.wsgi.django.FourNinesMiddleware",
    "django.middleware.common.CommonMiddleware",
]
FOURNINES = {
    "service": "django-demo",
    "concurrency_limit": FixedLimit(int(os.environ.get("LIMIT", "100"))),
    "request_start_header": os.environ.get("REQUEST_START_HEADER") or None,
    "shutdown": GracefulShutdown(drain_delay=float(os.environ.get("DRAIN_DELAY", "1.0")),
                                 drain_timeout=5.0, grace_period=None),
}
