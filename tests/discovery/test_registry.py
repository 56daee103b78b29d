"""Instance records (key layout, value format) and the in-memory StaticRegistry."""

from __future__ import annotations

import asyncio
import json

import pytest

from fournines import ConfigurationError
from fournines.client import EndpointSource
from fournines.discovery import (
    DEFAULT_PREFIX,
    Instance,
    ServiceRegistry,
    StaticRegistry,
    default_instance_id,
    instance_key,
    service_prefix,
)


def payment(n: int, **kwargs: object) -> Instance:
    return Instance(service="payment", id=f"p{n}", address=f"http://10.0.0.{n}:8000",
                    **kwargs)  # type: ignore[arg-type]


def test_the_key_is_prefix_service_and_instance_id() -> None:
    assert DEFAULT_PREFIX == "fournines/services"
    assert payment(1).key() == "/fournines/services/payment/p1"
    assert instance_key("payment", "p1", "/custom/") == "/custom/payment/p1"


def test_a_service_prefix_ends_with_a_slash_so_similar_names_do_not_mix() -> None:
    assert service_prefix("pay") == "/fournines/services/pay/"
    assert not payment(1).key().startswith(service_prefix("pay"))


def test_the_value_is_the_documented_json_object() -> None:
    instance = payment(1, metadata={"zone": "a"}, version="1.4.2")

    assert json.loads(instance.to_json()) == {
        "service": "payment", "id": "p1", "address": "http://10.0.0.1:8000",
        "metadata": {"zone": "a"}, "version": "1.4.2"}


def test_a_record_round_trips_and_unknown_fields_are_ignored() -> None:
    instance = payment(2, metadata={"zone": "b"})
    data = json.loads(instance.to_json())
    data["weight"] = 3

    assert Instance.from_json(json.dumps(data)) == instance


@pytest.mark.parametrize("value", [b"not json", b"[1, 2]", b'{"service": "payment"}',
                                   b'{"service": "payment", "id": "x", "address": "ftp://h"}'])
def test_a_bad_record_is_refused_with_a_configuration_error(value: bytes) -> None:
    with pytest.raises(ConfigurationError):
        Instance.from_json(value)


@pytest.mark.parametrize("field", ["service", "id"])
def test_a_name_with_a_slash_is_refused(field: str) -> None:
    kwargs = {"service": "payment", "id": "p1", field: "a/b"}
    with pytest.raises(ConfigurationError, match=rf"Instance\.{field}"):
        Instance(address="http://h:1", **kwargs)


def test_the_address_must_be_a_base_url() -> None:
    with pytest.raises(ConfigurationError, match=r"Instance\.address"):
        Instance(service="payment", id="p1", address="http://h:1/path")


def test_the_metadata_is_copied_so_later_changes_do_not_leak_in() -> None:
    labels = {"zone": "a"}
    instance = payment(1, metadata=labels)
    labels["zone"] = "b"
    assert instance.metadata == {"zone": "a"}


def test_the_instance_id_comes_from_fournines_instance_id_then_pod_name_then_host_pid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("POD_NAME", "payment-7d9f")
    monkeypatch.setenv("FOURNINES_INSTANCE_ID", "explicit")
    assert default_instance_id() == "explicit"
    monkeypatch.delenv("FOURNINES_INSTANCE_ID")
    assert default_instance_id() == "payment-7d9f"
    assert Instance(service="payment", address="http://h:1").id == "payment-7d9f"
    monkeypatch.delenv("POD_NAME")
    assert default_instance_id().endswith(f"-{__import__('os').getpid()}")


def test_the_static_registry_is_a_service_registry() -> None:
    assert isinstance(StaticRegistry(), ServiceRegistry)


async def test_a_static_watch_yields_the_current_set_then_each_change() -> None:
    registry = StaticRegistry([payment(1)])
    seen: list[tuple[str, ...]] = []

    async def follow() -> None:
        async for instances in registry.watch("payment"):
            seen.append(tuple(i.id for i in instances))
            if len(seen) == 3:
                return

    task = asyncio.create_task(follow())
    await asyncio.sleep(0)
    await registry.register(payment(2))
    await asyncio.sleep(0)
    await registry.deregister(payment(1))
    await asyncio.wait_for(task, 5)

    assert seen == [("p1",), ("p1", "p2"), ("p2",)]


async def test_static_endpoints_keep_one_tuple_until_the_set_changes() -> None:
    registry = StaticRegistry([payment(1)])
    source = registry.endpoints("payment")
    first = source.endpoints()

    await registry.register(Instance(service="other", id="o1", address="http://h:1"))
    assert source.endpoints() is first
    await registry.register(payment(2))

    assert isinstance(source, EndpointSource)
    assert source.endpoints() == ("http://10.0.0.1:8000", "http://10.0.0.2:8000")


async def test_deregistering_everything_removes_only_what_this_registry_registered() -> None:
    registry = StaticRegistry([payment(1)])
    await registry.register(payment(2))

    await registry.deregister()

    assert [i.id for i in registry.instances("payment")] == ["p1"]
