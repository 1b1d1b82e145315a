"""A deleted pool's Redis users go with it: also when its URL Secret went first (the operator
uses the URL it last used for the pool), and when its Redis is down at that moment (tried
again, for a bounded time, then the pool goes with a Warning Event naming the users left)."""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from operator_harness import NAMESPACE, Cluster, OperatorThread, eventually, pool_manifest

from agentpool.redis_server import RedisServer, free_port
from agentpool.urls import with_credentials
from agentpool_operator import pool_deletion
from agentpool_operator.settings import OperatorSettings

SECRETS_PATH = f"/api/v1/namespaces/{NAMESPACE}/secrets"
CREDENTIALS_LEFT = "CredentialsLeft"


@pytest.fixture
def operator_settings(per_pool_settings: OperatorSettings) -> OperatorSettings:
    return per_pool_settings


@pytest.fixture
def acl_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis that keeps its ACL users in a file (`ACL SAVE`), as one restarted with an ACL
    file has them back: a Redis restarted without one forgets them by itself."""
    acl_file = tmp_path / "users.acl"
    acl_file.touch()
    server = RedisServer(port=free_port(), extra_args=("--aclfile", str(acl_file))).start()
    yield server
    server.close()


@pytest.fixture
async def admin(acl_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(acl_server.url)
    yield client
    await client.aclose()


def users_of(pool: str) -> list[str]:
    return [f"agentpool:{NAMESPACE}:{pool}:{role}" for role in ("worker", "producer")]


def manifest(pool: str, *, url: str | None = None, secret: str | None = None) -> dict:
    body = pool_manifest(pool, redis_url=url, secret=secret)
    body["spec"]["redis"]["producerCredentials"] = True
    return body


async def existing(client: aioredis.Redis, users: list[str]) -> list[str]:
    return [u for u in users if await client.execute_command("ACL", "GETUSER", u) is not None]


def gone(cluster: Cluster, pool: str) -> bool:
    try:
        cluster.pool(pool)
    except KeyError:
        return True
    return False


def left_warnings(cluster: Cluster, pool: str) -> list[dict]:
    """The pool's CredentialsLeft Events (kopf posts them later than the handler runs)."""
    return [e for e in cluster.events(CREDENTIALS_LEFT) if e["involvedObject"]["name"] == pool]


def tried_once(cluster: Cluster, pool: str) -> bool:
    """The delete handler failed once and waits to try again (kopf's progress annotation), or
    the pool is gone already."""
    try:
        annotations = cluster.pool(pool)["metadata"].get("annotations") or {}
    except KeyError:
        return True
    return any(key.endswith("remove_credentials") and json.loads(value).get("retries", 0) >= 1
               for key, value in annotations.items())


async def start_pool(cluster: Cluster, admin: aioredis.Redis, pool: str, *,
                     url: str | None = None, secret: str | None = None) -> list[str]:
    """The pool, with its worker and producer users on Redis; their names."""
    await cluster.create_pool(manifest(pool, url=url, secret=secret))
    users = users_of(pool)

    async def all_there() -> bool:
        return await existing(admin, users) == users

    await eventually(all_there, within=10)
    await eventually(lambda: cluster.condition(pool, "Credentials")["status"] == "True")
    return users


async def test_a_pool_whose_url_secret_was_deleted_first_still_loses_its_users(
    cluster: Cluster, operator: OperatorThread, acl_server: RedisServer,
    admin: aioredis.Redis, pool_name: str,
) -> None:
    """A namespace deleted whole deletes the URL Secret and the pool together; a person may
    delete the Secret first. The operator removes the users with the URL it last used."""
    await cluster.create_secret(f"{pool_name}-url", {"url": acl_server.url})
    users = await start_pool(cluster, admin, pool_name, secret=f"{pool_name}-url")
    await cluster.delete(f"{SECRETS_PATH}/{pool_name}-url")
    await cluster.delete_pool(pool_name)

    await eventually(lambda: gone(cluster, pool_name), within=10)
    assert await existing(admin, users) == [], "the deleted pool's users are still on Redis"
    assert not cluster.events(CREDENTIALS_LEFT)


@pytest.mark.parametrize("url_secret_deleted", [False, True], ids=["url", "secret-gone"])
async def test_a_redis_down_at_the_deletion_and_back_soon_loses_the_users(
    cluster: Cluster, operator: OperatorThread, acl_server: RedisServer, tmp_path: Path,
    pool_name: str, url_secret_deleted: bool,
) -> None:
    """Redis is restarted (with its ACL file) while the pool is deleted: the operator tries
    again until Redis answers, then deletes the users; the pool waits for that. With the URL
    Secret gone too, the retry (after the pool's loop ended) still knows the URL."""
    admin = aioredis.Redis.from_url(acl_server.url)
    try:
        if url_secret_deleted:
            await cluster.create_secret(f"{pool_name}-url", {"url": acl_server.url})
            users = await start_pool(cluster, admin, pool_name, secret=f"{pool_name}-url")
            await cluster.delete(f"{SECRETS_PATH}/{pool_name}-url")
        else:
            users = await start_pool(cluster, admin, pool_name, url=acl_server.url)
        await admin.execute_command("ACL", "SAVE")
    finally:
        await admin.aclose()
    saved = (tmp_path / "users.acl").read_text()
    assert all(f"user {user} " in saved for user in users), "the restarted Redis lacks them"

    acl_server.stop()
    await cluster.delete_pool(pool_name)
    await eventually(lambda: tried_once(cluster, pool_name), within=15)
    acl_server.start()

    await eventually(lambda: gone(cluster, pool_name), within=15)
    admin = aioredis.Redis.from_url(acl_server.url)
    try:
        assert await existing(admin, users) == [], "the deleted pool's users are still on Redis"
    finally:
        await admin.aclose()
    assert not cluster.events(CREDENTIALS_LEFT)


async def test_a_redis_gone_for_good_lets_the_pool_go_with_a_warning_naming_the_users(
    cluster: Cluster, operator: OperatorThread, acl_server: RedisServer,
    admin: aioredis.Redis, pool_name: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pool_deletion, "USER_REMOVAL_SECONDS", 3.0)
    users = await start_pool(cluster, admin, pool_name, url=acl_server.url)
    acl_server.stop()
    await cluster.delete_pool(pool_name)

    await eventually(lambda: gone(cluster, pool_name), within=20)
    # kopf posts Events from a queue of its own: the Warning may come after the pool went
    [event] = await eventually(lambda: left_warnings(cluster, pool_name))
    assert event["type"] == "Warning"
    message = event["message"]
    assert all(user in message for user in users), message
    assert f"127.0.0.1:{acl_server.port}" in message and "ACL DELUSER" in message
    assert "password" not in message.lower() and "@" not in message


async def test_a_credential_that_may_not_delete_users_lets_the_pool_go_with_a_warning(
    cluster: Cluster, operator: OperatorThread, acl_server: RedisServer,
    admin: aioredis.Redis, pool_name: str,
) -> None:
    """The pool's credential lost its ACL rights before the pool was deleted: Redis refuses
    to delete its users, which no retry changes; the pool goes at once, with a Warning Event
    naming the users left."""
    name, password = f"op-{uuid.uuid4().hex[:6]}", secrets.token_urlsafe(16)
    await admin.execute_command("ACL", "SETUSER", name, "on", f">{password}", "~*", "&*",
                                "+@all")
    await cluster.create_secret(f"{pool_name}-url",
                                {"url": with_credentials(acl_server.url, name, password)})
    users = await start_pool(cluster, admin, pool_name, secret=f"{pool_name}-url")
    await admin.execute_command("ACL", "SETUSER", name, "-acl")
    await cluster.delete_pool(pool_name)

    await eventually(lambda: gone(cluster, pool_name), within=10)
    assert await existing(admin, users) == users
    # kopf may run a delete handler once more for a stale event of the pool (it did in one
    # run of 25 here): the same Warning then comes twice
    left = await eventually(lambda: left_warnings(cluster, pool_name))
    assert {e["type"] for e in left} == {"Warning"}
    [message] = {e["message"] for e in left}
    assert all(user in message for user in users), message
    assert f"127.0.0.1:{acl_server.port}" in message and "may not run ACL DELUSER" in message
    assert password not in message and "@" not in message


async def test_a_pool_that_never_had_a_user_goes_at_once_when_its_redis_does_not_answer(
    cluster: Cluster, operator: OperatorThread, pool_name: str,
) -> None:
    """Its Redis never answered (the pool is CredentialsPending): nothing to delete, and its
    deletion does not wait out USER_REMOVAL_SECONDS."""
    await cluster.create_pool(manifest(pool_name, url=f"redis://127.0.0.1:{free_port()}/0"))
    await eventually(
        lambda: cluster.condition(pool_name, "Degraded")["reason"] == "CredentialsPending")
    await cluster.delete_pool(pool_name)
    await eventually(lambda: gone(cluster, pool_name), within=10)
    assert not cluster.events(CREDENTIALS_LEFT)


@pytest.mark.parametrize(("elapsed", "retry", "expected"), [
    (0.0, 0, 1.0), (3.0, 2, 4.0), (100.0, 9, 30.0),
    (295.0, 9, 5.0), (300.0, 10, None), (400.0, 12, None),
])
def test_removal_is_tried_again_ever_less_often_until_the_bound(
    elapsed: float, retry: int, expected: float | None,
) -> None:
    assert pool_deletion.removal_retry(elapsed, retry, 300.0) == expected


def test_only_a_pool_that_had_its_own_user_is_waited_for() -> None:
    own = {"conditions": [{"type": "Credentials", "status": "True"}]}
    shared = {"conditions": [{"type": "Credentials", "status": "False"}]}
    assert pool_deletion.had_own_users(own, worker_secret=False)
    assert pool_deletion.had_own_users(shared, worker_secret=True)
    assert not pool_deletion.had_own_users(shared, worker_secret=False)
    assert not pool_deletion.had_own_users({}, worker_secret=False)
