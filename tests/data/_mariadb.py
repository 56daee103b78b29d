"""The machine's MariaDB for the data tests: one database of its own per test module.

Unreachable, the tests fail saying so, unless FOURNINES_ALLOW_SKIP=1 (then they skip).
``mariadb_database`` is a SQLAlchemy URL without the driver (``mysql://...``); the tests
put in ``+pymysql`` or ``+aiomysql``.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pymysql
import pytest

HOST = os.environ.get("FOURNINES_MYSQL_HOST", "127.0.0.1")
PORT = int(os.environ.get("FOURNINES_MYSQL_PORT", "3306"))
USER = os.environ.get("FOURNINES_MYSQL_USER", "root")


def admin(database: str | None = None) -> Any:
    """A pymysql connection in autocommit mode, to set up and to look."""
    try:
        return pymysql.connect(host=HOST, port=PORT, user=USER, password="", database=database,
                               autocommit=True, connect_timeout=5)
    except pymysql.err.OperationalError as exc:
        message = (f"MariaDB is not reachable at {HOST}:{PORT} as {USER!r} ({exc}); start it "
                   "(apt-get install -y mariadb-server; service mariadb start) or point "
                   "FOURNINES_MYSQL_HOST/FOURNINES_MYSQL_PORT at one")
        if os.environ.get("FOURNINES_ALLOW_SKIP") == "1":
            pytest.skip(message)
        pytest.fail(message, pytrace=False)


def url(database: str, driver: str) -> str:
    """The SQLAlchemy URL of ``database`` (from ``mariadb_database``) with ``driver``."""
    return database.replace("mysql://", f"mysql+{driver}://", 1)


@pytest.fixture(scope="module")
def mariadb_database(request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of a MariaDB database created for this test module alone, dropped after it."""
    module = re.sub(r"\W", "_", request.module.__name__.rpartition(".")[2])
    name = f"fournines_{module}_{uuid.uuid4().hex[:8]}"
    with admin() as conn, conn.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE `{name}`")
    try:
        yield f"mysql://{USER}@{HOST}:{PORT}/{name}"
    finally:
        with admin() as conn, conn.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
