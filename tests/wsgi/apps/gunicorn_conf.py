"""The gunicorn config of the WSGI tests: fournines' hooks, as the docs tell users."""

from fournines.wsgi.gunicorn import post_worker_init, worker_exit, worker_int  # noqa: F401

graceful_timeout = 10
