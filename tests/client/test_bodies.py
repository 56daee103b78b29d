"""Which request bodies may be sent again: decided from public httpx types only."""

from __future__ import annotations

import io
import pathlib

import pytest

import fournines.client._core as core
from fournines.client import ClientPolicy
from fournines.policies.backoff import Backoff

from ._helpers import control, seen
from ._shells import Shell

FAST = Backoff(initial=0.001, cap=0.005)


async def test_a_multipart_upload_is_retried_whole(shell: Shell, host_a: str) -> None:
    client, _ = shell.client(config=ClientPolicy(backoff=FAST, attempts=3))
    control(host_a, mode="fail", status=503)
    upload = io.BytesIO(b"receipt bytes")
    response = await client.put(host_a + "/receipts/1", files={"file": ("r.txt", upload)},
                                data={"order": "1"})
    assert response.status_code == 503
    requests = seen(host_a)
    assert [r["attempt"] for r in requests] == ["1", "2", "3"]
    # Every attempt carried the whole body: the file was read from its start each time.
    assert len({r["length"] for r in requests}) == 1 and requests[0]["length"] > 0


async def test_a_form_and_json_body_are_retried(shell: Shell, host_a: str) -> None:
    client, _ = shell.client(config=ClientPolicy(backoff=FAST, attempts=2))
    control(host_a, mode="fail", status=503)
    await client.put(host_a + "/a", data={"k": "v"})
    await client.put(host_a + "/b", json={"k": "v"})
    assert [r["path"] for r in seen(host_a)] == ["/a", "/a", "/b", "/b"]


async def test_a_generator_body_is_never_retried(shell: Shell, host_a: str) -> None:
    client, _ = shell.client(config=ClientPolicy(backoff=FAST, attempts=3))
    control(host_a, mode="fail", status=503)
    # The generator is spent after the first attempt: a retry could only fail or send
    # an empty body, so the first answer is the answer.
    body = shell.one_shot_body(b'{"state": ', b'"paid"}')
    assert (await client.put(host_a + "/orders/1", content=body)).status_code == 503
    assert [r["method"] for r in seen(host_a)] == ["PUT"]


async def test_a_generator_body_with_a_content_length_is_never_retried(
        shell: Shell, host_a: str) -> None:
    client, _ = shell.client(config=ClientPolicy(backoff=FAST, attempts=3))
    control(host_a, mode="fail", status=503)
    body = shell.one_shot_body(b"0123456789")
    response = await client.put(host_a + "/orders/1", content=body,
                                headers={"content-length": "10"})
    assert response.status_code == 503
    assert len(seen(host_a)) == 1


@pytest.mark.parametrize("module", ["_core.py", "transport.py", "balancing.py", "_errors.py"])
def test_the_client_uses_no_private_httpx_module(module: str) -> None:
    source = (pathlib.Path(core.__file__).parent / module).read_text()
    assert "httpx._" not in source
