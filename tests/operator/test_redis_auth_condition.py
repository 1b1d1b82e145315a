"""What a pool's QueueReachable condition says when its Redis wants a password: which Redis
(host:port) and, when a Secret holds the URL, which Secret (never the password)."""

from __future__ import annotations

import json

import pytest
import redis.asyncio as aioredis
from operator_harness import NAMESPACE, Cluster, OperatorThread, eventually, pool_manifest

from agentpool.models import RedisSpec
from agentpool.protocol import TaskQueue
from agentpool.redis_server import RedisServer
from agentpool_operator.redis_access import QueueAccessError, read_figures, url_origin

FROM_SECRET = RedisSpec.model_validate({"urlSecretRef": {"name": "team-redis", "key": "url"}})


@pytest.mark.parametrize(("userinfo", "spec", "said"), [
    ("", RedisSpec(url="redis://r"), "requires a password: put it in the pool's Redis URL: "
     "spec.redis.url, or the Secret named by spec.redis.urlSecretRef"),
    ("", FROM_SECRET, "requires a password: put it in the URL in Secret team/team-redis key "
     "'url'"),
    (":not-it@", RedisSpec(url="redis://r"), "refused the password"),
    (":not-it@", FROM_SECRET, "refused the password of the URL in Secret team/team-redis key "
     "'url'"),
], ids=["no-password", "no-password-in-secret", "wrong-password", "wrong-password-in-secret"])
async def test_a_refused_password_is_one_plain_line(
    protected_redis: RedisServer, queue_name: str, userinfo: str, spec: RedisSpec, said: str,
) -> None:
    client = aioredis.Redis.from_url(f"redis://{userinfo}127.0.0.1:{protected_redis.port}/0")
    try:
        with pytest.raises(QueueAccessError) as caught:
            await read_figures(TaskQueue(client, queue_name), origin=url_origin("team", spec))
    finally:
        await client.aclose()
    assert (caught.value.reason, caught.value.message) == (
        "RedisAuthFailed", f"Redis at 127.0.0.1:{protected_redis.port} {said}")
    assert "not-it" not in caught.value.message


async def test_a_pool_whose_secret_holds_a_wrong_password_names_that_secret(
    cluster: Cluster, operator: OperatorThread, protected_redis: RedisServer,
) -> None:
    """The pool's loop tells where to mend the password: the Secret its URL came from."""
    await cluster.create_secret(
        "upsilon-redis", {"url": f"redis://:not-it@127.0.0.1:{protected_redis.port}/0"})
    await cluster.create_pool(pool_manifest("upsilon", secret="upsilon-redis"))
    reachable = await eventually(
        lambda: (c := cluster.condition("upsilon", "QueueReachable"))["status"] == "False" and c)
    assert reachable["reason"] == "RedisAuthFailed"
    assert reachable["message"].endswith(
        f"Redis at 127.0.0.1:{protected_redis.port} refused the password of the URL in Secret "
        f"{NAMESPACE}/upsilon-redis key 'url'")
    assert "not-it" not in json.dumps(cluster.pool("upsilon")["status"])
