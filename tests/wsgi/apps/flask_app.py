"""A Flask app protected by the FourNines extension, for tests under real gunicorn."""

from __future__ import annotations

import os
import time

from flask import Flask, jsonify, request

from fournines import current_deadline
from fournines.asgi import GracefulShutdown
from fournines.policies.adaptive import FixedLimit
from fournines.wsgi.flask import FourNines

app = Flask(__name__)
FourNines(app, service="flask-demo",
          concurrency_limit=FixedLimit(int(os.environ.get("LIMIT", "100"))),
          request_start_header=os.environ.get("REQUEST_START_HEADER") or None,
          shutdown=GracefulShutdown(drain_delay=float(os.environ.get("DRAIN_DELAY", "1.0")),
                                    drain_timeout=5.0, grace_period=None))


@app.get("/orders/<int:order_id>")
def order(order_id: int) -> object:
    deadline = current_deadline()
    return jsonify(order=order_id,
                   remaining=None if deadline is None else deadline.remaining())


@app.get("/work")
def work() -> object:
    # CPU or a blocking call, as a view does: holds its thread.
    time.sleep(float(request.args.get("ms", "20")) / 1000)
    return jsonify(ok=True)
