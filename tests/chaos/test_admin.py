"""ChaosMiddleware and its admin API, against real uvicorn processes.

The service is ``examples/chaos/service.py``: ChaosMiddleware around a tiny app,
with health probes and metrics outside it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.asgi._uvicorn import UvicornProcess

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
APP = "examples.chaos.service:app"
PREFIX = "/chaos/faults"


@pytest.fixture(scope="module")
def server() -> Iterator[UvicornProcess]:
    with UvicornProcess(APP, env={"CHAOS_TOKEN": TOKEN, "CHAOS_SEED": "7"}) as proc:
        yield proc


@pytest.fixture
def client(server: UvicornProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c
        # Every test starts from no faults, whatever the last one left behind.
        c.delete(PREFIX, headers=AUTH)


def add(client: httpx.Client, **fault: object) -> dict[str, object]:
    response = client.post(PREFIX, json=fault, headers=AUTH)
    assert response.status_code == 201, response.text
    body: dict[str, object] = response.json()
    return body


def listed(client: httpx.Client) -> list[dict[str, object]]:
    response = client.get(PREFIX, headers=AUTH)
    assert response.status_code == 200
    faults: list[dict[str, object]] = response.json()["faults"]
    return faults


def statuses(client: httpx.Client, path: str, n: int, **kwargs: object) -> list[int]:
    return [client.get(path, **kwargs).status_code for _ in range(n)]  # type: ignore[arg-type]


def test_admin_api_is_off_without_a_token() -> None:
    with UvicornProcess(APP) as proc, httpx.Client(base_url=proc.url) as c:
        created = c.post(PREFIX, json={"kind": "error", "duration": 10}, headers=AUTH)
        listing = c.get(PREFIX, headers=AUTH)
        served = c.get("/")
    # The requests reached the app, which knows no such path.
    assert created.status_code == 404
    assert listing.status_code == 404
    assert served.status_code == 200


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", f"Basic {TOKEN}",
                                           TOKEN, "Bearer", f"Bearer {TOKEN}x"])
def test_request_without_the_token_gets_401_and_changes_nothing(
    client: httpx.Client, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    kept = add(client, kind="error", rate=1.0, duration=30)
    posted = client.post(PREFIX, json={"kind": "error", "duration": 30}, headers=headers)
    deleted_all = client.delete(PREFIX, headers=headers)
    deleted_one = client.delete(f"{PREFIX}/{kept['id']}", headers=headers)
    listing = client.get(PREFIX, headers=headers)
    assert [posted.status_code, deleted_all.status_code, deleted_one.status_code,
            listing.status_code] == [401] * 4
    assert posted.headers["www-authenticate"] == "Bearer"
    assert [f["id"] for f in listed(client)] == [kept["id"]]


def test_post_creates_a_fault_and_get_lists_it_with_remaining_seconds(
    client: httpx.Client,
) -> None:
    created = add(client, kind="latency", latency=0.05, jitter=0.01, correlation=0.5,
                  rate=0.25, duration=60, route="/status", header="x-chaos")
    assert created["kind"] == "latency"
    assert (created["latency"], created["jitter"], created["correlation"]) == (0.05, 0.01, 0.5)
    assert (created["rate"], created["route"], created["header"]) == (0.25, "/status", "x-chaos")
    [fault] = listed(client)
    assert fault["id"] == created["id"]
    remaining = fault["remaining"]
    assert isinstance(remaining, float) and 0 < remaining <= 60


def test_error_fault_answers_its_status_at_roughly_its_rate(client: httpx.Client) -> None:
    add(client, kind="error", rate=0.3, status=503, duration=60)
    n = 600
    seen = statuses(client, "/", n)
    assert set(seen) <= {200, 503}
    failed = seen.count(503)
    # 5 standard deviations either side: loose enough never to flake, tight enough to
    # catch a rate that is ignored (0 or 1) or misread.
    sd = math.sqrt(n * 0.3 * 0.7)
    assert n * 0.3 - 5 * sd < failed < n * 0.3 + 5 * sd


def test_error_fault_hits_only_its_route(client: httpx.Client) -> None:
    add(client, kind="error", status=500, duration=60, route="/status")
    assert statuses(client, "/status", 5) == [500] * 5
    assert statuses(client, "/", 5) == [200] * 5


def test_error_fault_hits_only_requests_carrying_its_header(client: httpx.Client) -> None:
    add(client, kind="error", status=502, duration=60, header="x-chaos")
    assert statuses(client, "/", 5, headers={"X-Chaos": "1"}) == [502] * 5
    assert statuses(client, "/", 5) == [200] * 5


def test_latency_fault_delays_requests(client: httpx.Client) -> None:
    add(client, kind="latency", latency=0.3, duration=60)
    for _ in range(3):
        start = time.monotonic()
        assert client.get("/").status_code == 200
        # A sleep is never shorter than asked; no upper bound (the machine is shared).
        assert time.monotonic() - start >= 0.3


def test_faults_remove_themselves_after_their_duration(client: httpx.Client) -> None:
    add(client, kind="error", status=500, duration=0.5)
    assert client.get("/").status_code == 500
    end = time.monotonic() + 10
    while listed(client) and time.monotonic() < end:
        time.sleep(0.1)
    assert listed(client) == []
    assert statuses(client, "/", 5) == [200] * 5


def test_delete_by_id_removes_one_fault(client: httpx.Client) -> None:
    first = add(client, kind="error", duration=60, route="/status")
    second = add(client, kind="latency", latency=0.01, duration=60)
    assert client.delete(f"{PREFIX}/{first['id']}", headers=AUTH).status_code == 204
    assert [f["id"] for f in listed(client)] == [second["id"]]
    assert client.delete(f"{PREFIX}/{first['id']}", headers=AUTH).status_code == 404


def test_delete_all_removes_every_fault(client: httpx.Client) -> None:
    add(client, kind="error", duration=60)
    add(client, kind="latency", latency=0.01, duration=60)
    assert client.get("/").status_code == 500
    assert client.delete(PREFIX, headers=AUTH).status_code == 204
    assert listed(client) == []
    assert client.get("/").status_code == 200


@pytest.mark.parametrize(("body", "field"), [
    ({"kind": "error"}, "duration"),
    ({"kind": "error", "duration": 0}, "duration"),
    ({"kind": "error", "duration": 3601}, "duration"),
    ({"kind": "error", "duration": "10"}, "duration"),
    ({"kind": "teleport", "duration": 10}, "kind"),
    ({"duration": 10}, "kind"),
    ({"kind": "error", "duration": 10, "rate": 1.5}, "rate"),
    ({"kind": "error", "duration": 10, "status": 200}, "status"),
    ({"kind": "latency", "duration": 10}, "latency"),
    ({"kind": "latency", "duration": 10, "latency": -1}, "latency"),
    ({"kind": "latency", "duration": 10, "latency": 1, "correlation": 2}, "correlation"),
    ({"kind": "error", "duration": 10, "route": "status"}, "route"),
    ({"kind": "error", "duration": 10, "header": 5}, "header"),
    ({"kind": "error", "duration": 10, "colour": "red"}, "colour"),
    ([1, 2], "body"),
    # hostile values: each is a 400 naming its field, never a 500 or a broken service
    ({"kind": "latency", "duration": 10, "latency": 10**400}, "latency"),
    ({"kind": "latency", "duration": 10, "latency": 1e308}, "latency"),
    ({"kind": "latency", "duration": 10, "jitter": 3601}, "jitter"),
    ({"kind": "error", "duration": 10, "rate": -(10**400)}, "rate"),
    ({"kind": "error", "duration": 10, "header": "bad header"}, "header"),
    ({"kind": "error", "duration": 10, "header": "\u00e9t\u00e9"}, "header"),
    ({"kind": "error", "duration": 10, "name": "a\r\nX-Evil: 1"}, "name"),
    ({"kind": "error", "duration": 10, "route": "/a\nb"}, "route"),
])
def test_bad_fields_get_400_naming_the_field(
    client: httpx.Client, body: object, field: str
) -> None:
    response = client.post(PREFIX, json=body, headers=AUTH)
    assert response.status_code == 400
    assert response.json()["field"] == field
    assert response.json()["error"].startswith(f"{field}:")
    assert listed(client) == []


@pytest.mark.parametrize(("raw", "field"), [
    (b'{"kind": "error", "duration": 10, "name": "\\ud800"}', "name"),
    (b'{"kind": "error", "duration": 10, "route": "/\\udfff"}', "route"),
    (b'{"kind": "latency", "duration": 10, "latency": NaN}', "latency"),
    (b'{"kind": "latency", "duration": 10, "latency": -Infinity}', "latency"),
])
def test_unencodable_strings_and_non_finite_numbers_get_400_and_add_nothing(
    client: httpx.Client, raw: bytes, field: str
) -> None:
    response = client.post(PREFIX, content=raw, headers=AUTH)
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field
    assert listed(client) == []
    assert client.get("/").status_code == 200


def test_a_fault_name_that_is_no_header_value_still_answers_its_status(
    client: httpx.Client,
) -> None:
    # The name goes into the x-chaos-fault header; a non-Latin-1 one must not break responses.
    add(client, kind="error", status=503, duration=30, name="\u2603 snow \u00e9")
    response = client.get("/")
    assert response.status_code == 503
    assert response.headers["x-chaos-fault"].isascii()


def test_a_body_over_64_kib_gets_413_and_adds_nothing(client: httpx.Client) -> None:
    body = b'{"kind": "error", "duration": 10, "name": "' + b"x" * 70_000 + b'"}'
    response = client.post(PREFIX, content=body, headers=AUTH)
    assert response.status_code == 413
    assert listed(client) == []


def test_deeply_nested_json_gets_400_not_500(client: httpx.Client) -> None:
    response = client.post(PREFIX, content=b"[" * 60_000, headers=AUTH)
    assert response.status_code == 400
    assert "not JSON" in response.json()["error"]


def test_malformed_json_gets_400(client: httpx.Client) -> None:
    response = client.post(PREFIX, content=b"{kind: error", headers=AUTH)
    assert response.status_code == 400
    assert "not JSON" in response.json()["error"]


def test_admin_requests_are_never_hit_by_faults(client: httpx.Client) -> None:
    add(client, kind="error", status=500, duration=60)
    assert client.get(PREFIX, headers=AUTH).status_code == 200


def test_client_outside_allow_from_gets_403_even_with_the_token() -> None:
    env = {"CHAOS_TOKEN": TOKEN, "CHAOS_ALLOW_FROM": "10.0.0.0/8,fd00::/8"}
    with UvicornProcess(APP, env=env) as proc, httpx.Client(base_url=proc.url) as c:
        posted = c.post(PREFIX, json={"kind": "error", "duration": 10}, headers=AUTH)
        listing = c.get(PREFIX, headers=AUTH)
        served = c.get("/")
    assert (posted.status_code, listing.status_code) == (403, 403)
    assert served.status_code == 200


@pytest.mark.parametrize("forwarding", [
    {"X-Forwarded-For": "10.1.2.3"},
    {"Forwarded": "for=10.1.2.3"},
    {"X-Real-IP": "10.1.2.3"},
])
def test_forwarding_headers_cannot_smuggle_a_client_into_allow_from(
    forwarding: dict[str, str],
) -> None:
    # uvicorn trusts X-Forwarded-For from 127.0.0.1 by default and rewrites the client
    # address from it; a local process (or a reverse proxy relaying anyone) must not get
    # an address of its choosing that way.
    env = {"CHAOS_TOKEN": TOKEN, "CHAOS_ALLOW_FROM": "10.0.0.0/8"}
    with UvicornProcess(APP, env=env) as proc, httpx.Client(base_url=proc.url) as c:
        posted = c.post(PREFIX, json={"kind": "error", "duration": 10},
                        headers={**AUTH, **forwarding})
        served = c.get("/")
    assert posted.status_code == 403
    assert served.status_code == 200


def test_crash_fault_ends_the_server_process() -> None:
    proc = UvicornProcess(APP, env={"CHAOS_TOKEN": TOKEN}).start()
    try:
        with httpx.Client(base_url=proc.url, timeout=5) as c:
            assert c.post(PREFIX, json={"kind": "crash", "duration": 30},
                          headers=AUTH).status_code == 201
            with pytest.raises(httpx.TransportError):
                c.get("/")
        assert proc.wait(10) == -9  # SIGKILL: no shutdown, no cleanup
    finally:
        proc.stop()
