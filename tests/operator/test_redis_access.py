"""Resolving a pool's Redis URL, caching its client, reading its figures."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import pytest

from agentpool.models import RedisSpec
from agentpool.protocol import TaskQueue
from agentpool.redis_server import free_port
from agentpool_operator.redis_access import (
    QueueAccessError,
    RedisClients,
    read_figures,
    resolve_redis_url,
)


class Secrets:
    def __init__(self, secrets: Mapping[str, Mapping[str, Any]]) -> None:
        self.secrets = secrets

    async def get_secret(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return self.secrets.get(f"{namespace}/{name}")


def encoded(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def secret_spec(name: str = "agentpool-redis", key: str = "url") -> RedisSpec:
    return RedisSpec.model_validate({"urlSecretRef": {"name": name, "key": key}})


async def test_literal_url() -> None:
    spec = RedisSpec(url="redis://redis:6379/0")
    assert await resolve_redis_url(Secrets({}), "default", spec) == "redis://redis:6379/0"


async def test_url_from_secret() -> None:
    secrets = Secrets({"team/agentpool-redis": {"data": {"url": encoded("redis://:pw@r:6379/0")}}})
    assert await resolve_redis_url(secrets, "team", secret_spec()) == "redis://:pw@r:6379/0"


@pytest.mark.parametrize(("secrets", "reason", "message"), [
    ({}, "SecretNotFound", "Secret default/agentpool-redis not found"),
    ({"default/agentpool-redis": {"data": {"uri": encoded("redis://r")}}},
     "SecretKeyMissing", "Secret default/agentpool-redis has no key 'url'"),
    ({"default/agentpool-redis": {"data": {"url": encoded("http://:pw@r")}}},
     "SecretInvalid",
     "Secret default/agentpool-redis key 'url' does not hold a redis://, rediss://, "
     "redis+sentinel://, rediss+sentinel://, redis+cluster:// or rediss+cluster:// URL"),
    ({"default/agentpool-redis": {"data": {"url": "not base64!"}}},
     "SecretInvalid", "Secret default/agentpool-redis key 'url' is not valid base64 text"),
])
async def test_secret_problems(secrets: dict, reason: str, message: str) -> None:
    with pytest.raises(QueueAccessError) as caught:
        await resolve_redis_url(Secrets(secrets), "default", secret_spec())
    assert (caught.value.reason, caught.value.message) == (reason, message)
    assert "pw" not in caught.value.message


async def test_figures_from_a_real_redis(redis_url: str, queue_name: str) -> None:
    clients = RedisClients()
    try:
        client = await clients.client("ns", "pool", redis_url)
        queue = TaskQueue(client, queue_name)
        await queue.submit({"n": 1})
        assert (await read_figures(queue)).queued == 1
    finally:
        await clients.close()


async def test_unreachable_redis_is_a_clean_error(queue_name: str) -> None:
    clients = RedisClients()
    try:
        client = await clients.client(
            "ns", "pool", f"redis://user:hunter2@127.0.0.1:{free_port()}/0"
        )
        with pytest.raises(QueueAccessError) as caught:
            await read_figures(TaskQueue(client, queue_name))
        assert caught.value.reason == "RedisUnreachable"
        assert "hunter2" not in caught.value.message
    finally:
        await clients.close()


def test_address_map_rewrites_only_the_named_redis() -> None:
    from agentpool_operator.redis_access import rewrite_address

    mapping = {"agentpool-redis.agentpool.svc:6379": "127.0.0.1:16379"}
    assert (
        rewrite_address("redis://:pw@agentpool-redis.agentpool.svc:6379/0", mapping)
        == "redis://:pw@127.0.0.1:16379/0"
    )
    assert (
        rewrite_address("redis://agentpool-redis.agentpool.svc/1", mapping)
        == "redis://127.0.0.1:16379/1"
    )
    assert rewrite_address("redis://other:6379/0", mapping) == "redis://other:6379/0"


def test_address_map_setting_is_parsed_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from agentpool_operator.settings import OperatorSettings

    monkeypatch.setenv("AGENTPOOL_OPERATOR_REDIS_ADDRESS_MAP", "a.svc:6379=127.0.0.1:1, b:1=c:2")
    assert OperatorSettings().redis_address_map == {"a.svc:6379": "127.0.0.1:1", "b:1": "c:2"}
    monkeypatch.setenv("AGENTPOOL_OPERATOR_REDIS_ADDRESS_MAP", "nonsense")
    with pytest.raises(ValidationError):
        OperatorSettings()


@pytest.mark.parametrize("url", ["redis://:s3cr/etXYZ@redis:6379/0",
                                 "redis://default:abc#def@redis:6379/0"])
async def test_an_unparsable_url_is_reported_without_any_of_its_password(url: str) -> None:
    from agentpool_operator.redis_access import QueueAccessError, RedisClients

    clients = RedisClients()
    with pytest.raises(QueueAccessError) as excinfo:
        await clients.client("ns", "pool", url)
    message = excinfo.value.problem.message
    assert excinfo.value.problem.reason == "InvalidRedisURL"
    assert "s3cr" not in message and "abc" not in message
    await clients.close()
