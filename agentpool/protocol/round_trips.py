"""Several scripts, of one queue or of several on the same Redis, in one round trip."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from agentpool.connection import is_cluster, node_of_key
from agentpool.lua_source import script_source


class Scripted(Protocol):
    """What a trip needs of a queue (a TaskQueue): its key prefix and its scripts."""

    prefix: str

    def _script(self, name: str) -> AsyncScript: ...

    async def _run(self, name: str, *args: Any, client: Any = None) -> Any: ...


async def scripts_in_one_trip(redis: aioredis.Redis,
                               calls: Sequence[tuple[Scripted, str, Sequence[Any]]], *,
                               then: Sequence[Sequence[Any]] = ()) -> list[Any]:
    """Run scripts of queues on one Redis in one pipeline (no SCRIPT EXISTS trip: a script
    Redis does not know yet is loaded and only the calls it refused are sent again). On a
    cluster the pipeline sends each call to the node of its queue's slot. The commands of
    `then` follow the calls in every pipeline sent; their replies (of the last one) follow
    the calls' replies. A single call without `then` goes without a pipeline, which costs
    redis-py more than the command itself (a worker's flush of one completion, often).

    On a cluster the commands of `then` (a replicated write's WAIT) go to the node of
    the first call's queue, on the connection of its writes: redis-py would send a keyless
    WAIT to any node, whose answer says nothing of these writes. If that slot moved to
    another node during the trip (a failover, a reshard: redis-py followed the redirection),
    the WAIT answered for the old node, and its reply counts no replica."""
    if len(calls) == 1 and not then:
        queue, name, args = calls[0]
        return [await queue._run(name, *args, client=redis)]
    routed: dict[str, Any] = {}
    if then and is_cluster(redis):
        slot_key = calls[0][0].prefix + "queued"
        routed = {"target_nodes": await node_of_key(redis, slot_key)}
    replies: list[Any] = [NoScriptError()] * len(calls)
    after: list[Any] = []
    for _ in range(2):
        pending = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        async with redis.pipeline(transaction=False) as pipe:
            for i in pending:
                queue, name, args = calls[i]
                pipe.execute_command("EVALSHA", queue._script(name).sha, 1,
                                     queue.prefix + "queued", queue.prefix, *args)
            for command in then:
                pipe.execute_command(*command, **routed)
            sent = await pipe.execute(raise_on_error=False)
        after = sent[len(pending):]
        for i, reply in zip(pending, sent[:len(pending)], strict=True):
            replies[i] = reply
        missing = {calls[i][1] for i in pending if isinstance(replies[i], NoScriptError)}
        if not missing:
            break
        for name in missing:
            await redis.script_load(script_source(name))
    if routed and (await node_of_key(redis, slot_key)).name != routed["target_nodes"].name:
        after = [0 if command[0] == "WAIT" else reply
                 for command, reply in zip(then, after, strict=True)]
    for reply in (*replies, *after):
        if isinstance(reply, Exception):
            raise reply
    return [*replies, *after]
