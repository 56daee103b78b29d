"""The payment service's write path: transfers on PostgreSQL, confirmed through RabbitMQ.

Mounted by the payment service when ``FOURNINES_LAB_DATABASE_URL`` is set (a
scenario with a database or consumer step, see :mod:`fournines.lab.steps`):
``POST /pay/{id}?from=A&to=B&amount=N`` moves ``N`` from account ``A`` to ``B``
in one SERIALIZABLE transaction that first inserts the payment's id (a payment
sent again is recognised and not applied twice), updates both balances in the
order given (A then B: two opposite transfers at once deadlock) and writes two
ledger entries. With ``FOURNINES_LAB_AMQP_URL`` it also asks for a confirmation
message:

- protected: :func:`fournines.data.transaction` retries the whole transaction on
  serialization failures, deadlocks and connections lost before COMMIT, and the
  confirmation goes into the transactional outbox (:func:`fournines.data.outbox.add`),
  published by a :class:`~fournines.data.Relay` running in this process;
- unprotected: one attempt, and the confirmation is published to the queue after
  COMMIT, as plain aio-pika code does (lost if the process or the broker fails in
  between).

The answer is JSON: ``result`` (``applied`` or ``duplicate``) and ``retries``
(the transaction's own retries) on 200; on 503 the error and the retries made.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from typing import Any

from .._events import Event, RetryScheduled
from ..asgi._types import ASGIApp, Receive, Scope, Send

__all__ = ["LEDGER_SCHEMA", "PAY_PREFIX", "with_payments"]

PAY_PREFIX = "/pay/"

LEDGER_SCHEMA = """
CREATE TABLE IF NOT EXISTS lab_accounts (id text PRIMARY KEY, balance bigint NOT NULL);
CREATE TABLE IF NOT EXISTS lab_payments (
    id text PRIMARY KEY, src text NOT NULL, dst text NOT NULL, amount bigint NOT NULL,
    confirm boolean NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS lab_entries (payment_id text NOT NULL, account text NOT NULL,
                                        delta bigint NOT NULL);
CREATE TABLE IF NOT EXISTS lab_confirmations (payment_id text NOT NULL,
                                              at timestamptz NOT NULL DEFAULT now());
"""
"""The lab's ledger: accounts, payments, entries (no unique key, so a payment applied
twice would show as four entries) and confirmations (none either, so a confirmation
handled twice shows as two rows)."""


async def _reply(send: Send, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


class _Writes:
    def __init__(self, dsn: str, protected: bool, amqp_url: str | None, queue: str) -> None:
        self.dsn = dsn
        self.protected = protected
        self.amqp_url = amqp_url
        self.queue = queue
        self.pool: Any = None
        self.lock = asyncio.Lock()
        self.tasks: list[asyncio.Task[None]] = []
        self.channel: Any = None
        self.connection: Any = None

    async def ready(self) -> Any:
        # Lazily, on the first write: the service starts (and serves reads) even while
        # its database is down, as the read path never needs it.
        async with self.lock:
            if self.pool is None:
                import asyncpg  # type: ignore[import-untyped]  # noqa: PLC0415

                self.pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=10,
                                                      timeout=2.0, command_timeout=5.0)
                if self.amqp_url and self.protected:
                    from ..data import RabbitPublisher, Relay  # noqa: PLC0415

                    relay = Relay(self.pool, RabbitPublisher(self.amqp_url),
                                  poll_interval=0.2, retry_delay=0.2, retention=0)
                    self.tasks.append(asyncio.create_task(relay.run()))
            return self.pool

    async def publish(self, body: bytes) -> None:
        import aio_pika  # noqa: PLC0415

        async with self.lock:
            if self.channel is None or self.channel.is_closed:
                self.connection = await aio_pika.connect(self.amqp_url)
                self.channel = await self.connection.channel()
        try:
            await self.channel.default_exchange.publish(
                aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=self.queue)
        except Exception:
            self.channel = None
            raise

    async def pay(self, pid: str, src: str, dst: str, amount: int) -> tuple[int, dict[str, Any]]:
        retries = 0
        confirm = bool(self.amqp_url)
        body = json.dumps({"payment": pid, "amount": amount}).encode()

        def count(event: Event) -> None:
            nonlocal retries
            if isinstance(event, RetryScheduled):
                retries += 1

        async def work(conn: Any) -> str:
            fresh = await conn.fetchval(
                "INSERT INTO lab_payments (id, src, dst, amount, confirm) "
                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING RETURNING true",
                pid, src, dst, amount, confirm)
            if not fresh:
                return "duplicate"
            await conn.execute("UPDATE lab_accounts SET balance = balance - $2 WHERE id = $1",
                               src, amount)
            await conn.execute("UPDATE lab_accounts SET balance = balance + $2 WHERE id = $1",
                               dst, amount)
            await conn.execute("INSERT INTO lab_entries (payment_id, account, delta) "
                               "VALUES ($1, $2, $3), ($1, $4, $5)",
                               pid, src, -amount, dst, amount)
            if confirm and self.protected:
                from ..data import outbox  # noqa: PLC0415

                await outbox.add(conn, self.queue, key=pid, body=body, message_id=pid)
            return "applied"

        try:
            pool = await self.ready()
            if self.protected:
                from ..data import transaction  # noqa: PLC0415

                result = await transaction(pool, work, isolation="serializable", attempts=10,
                                           listeners=[count], name="lab-payment")
            else:
                async with pool.acquire() as conn, conn.transaction(isolation="serializable"):
                    result = await work(conn)
                if confirm and result == "applied":
                    await self.publish(body)
        except Exception as exc:  # the client sends the payment again later
            return 503, {"error": f"{type(exc).__name__}: {exc}"[:200], "retries": retries}
        return 200, {"result": result, "retries": retries}

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        if self.connection is not None:
            with contextlib.suppress(Exception):
                await self.connection.close()
        if self.pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.pool.close(), 2.0)


def with_payments(app: ASGIApp, protected: bool) -> ASGIApp:
    """``app`` with ``POST /pay/{id}`` when ``FOURNINES_LAB_DATABASE_URL`` is set."""
    dsn = os.environ.get("FOURNINES_LAB_DATABASE_URL")
    if not dsn:
        return app
    writes = _Writes(dsn, protected, os.environ.get("FOURNINES_LAB_AMQP_URL") or None,
                     os.environ.get("FOURNINES_LAB_QUEUE", "lab-confirmations"))

    async def payments(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(PAY_PREFIX):
            from urllib.parse import parse_qs  # noqa: PLC0415

            query = {k: v[0] for k, v in parse_qs(scope.get("query_string", b"").decode())
                     .items()}
            try:
                src, dst, amount = query["from"], query["to"], int(query["amount"])
            except (KeyError, ValueError):
                await _reply(send, 400, {"error": "POST /pay/{id}?from=A&to=B&amount=N"})
                return
            if scope["method"] != "POST" or not 0 < amount < 1_000_000:
                await _reply(send, 400, {"error": "POST with 0 < amount < 1000000"})
                return
            status, body = await writes.pay(scope["path"][len(PAY_PREFIX):], src, dst, amount)
            await _reply(send, status, body)
            return
        await app(scope, receive, send)

    return payments
