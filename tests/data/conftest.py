"""The machine's PostgreSQL for the data tests: one database of its own per test module.

Unreachable, the tests fail saying so, unless FOURNINES_ALLOW_SKIP=1 (then they skip
with the same message). ``deadlock_timeout`` is lowered on the test database so the
deadlock tests do not wait the default second for detection.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

HOST = os.environ.get("FOURNINES_PGHOST", "127.0.0.1")
PORT = int(os.environ.get("FOURNINES_PGPORT", "5432"))
USER = os.environ.get("FOURNINES_PGUSER", "postgres")


def dsn(database: str) -> str:
    return f"postgresql://{USER}@{HOST}:{PORT}/{database}"


def _admin() -> psycopg.Connection[tuple[object, ...]]:
    try:
        return psycopg.connect(dsn("postgres"), autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        message = (f"PostgreSQL is not reachable at {HOST}:{PORT} as {USER!r} ({exc}); "
                   "start it (apt-get install -y postgresql; service postgresql start) "
                   "or point FOURNINES_PGHOST/FOURNINES_PGPORT at one")
        if os.environ.get("FOURNINES_ALLOW_SKIP") == "1":
            pytest.skip(message)
        pytest.fail(message, pytrace=False)


@pytest.fixture(scope="module")
def database(request: pytest.FixtureRequest) -> Iterator[str]:
    """The DSN of a database created for this test module alone, dropped after it."""
    module = re.sub(r"\W", "_", request.module.__name__.rpartition(".")[2])
    name = f"fournines_{module}_{uuid.uuid4().hex[:8]}"
    with _admin() as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        admin.execute(sql.SQL("ALTER DATABASE {} SET deadlock_timeout = '100ms'").format(
            sql.Identifier(name)))
    try:
        yield dsn(name)
    finally:
        with _admin() as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))


from ._amqp import amqp_url  # noqa: E402, F401 - the message tests' vhost fixture
from ._mariadb import mariadb_database  # noqa: E402, F401 - the MariaDB tests' database
from ._private_rabbit import private_rabbit  # noqa: E402, F401 - a private broker to restart
from ._tansu import tansu  # noqa: E402, F401 - the Kafka tests' broker fixture
