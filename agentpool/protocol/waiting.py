"""Waiting on Redis: for a queue's finishes (its ``done`` channel), after lost connections, and
the backoff between a task's attempts."""

from __future__ import annotations

import asyncio
import random
import time
import weakref
from collections.abc import Mapping
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from agentpool.connection import is_cluster
from agentpool.protocol.bounds import NEWS_AT_ONCE, SUBSCRIBED_WAITS
from agentpool.protocol.replies import as_text
from agentpool.seconds import seconds_text


def worth_retrying(error: BaseException, *, reached: bool = True, failing_for: float = 0.0,
                   patience: float = float("inf")) -> bool:
    """Whether a caller that waits on Redis (`TaskQueue.wait`, `TaskQueue.events`) should try
    again after `error`: a lost connection (a failover) is worth it once Redis was reached, for
    up to `patience` seconds in a row. A Redis never reached, refused credentials and a
    deadline (the builtin TimeoutError, an OSError too) are not: retrying mends none."""
    if not isinstance(error, RedisConnectionError | RedisTimeoutError | OSError):
        return False
    if isinstance(error, AuthenticationError | TimeoutError):
        return False
    return reached and failing_for <= patience


def retry_delay(attempt: int, *, base: float = 1.0, cap: float = 300.0,
                rng: random.Random | None = None) -> float:
    """Exponential backoff with "equal jitter": half fixed, half random, capped."""
    step = min(cap, base * 2.0 ** min(max(0, attempt - 1), 1023))
    return step / 2 + (rng or random).uniform(0, step / 2)


async def news_of(done: DoneSignal, pending: Mapping[str, object], deadline: float | None,
                   until: float) -> set[str]:
    """The ids of `pending` published as finished once one is, or every one of them after a
    second without a finish or once `until` (monotonic) passed (the caller then reads them
    again); TimeoutError once `deadline` passed. Messages already received are taken along,
    so that a burst of finishes is read in one round trip."""
    while True:
        published = await done.next(timeout=time_left(deadline, 1.0))
        if published is None or time.monotonic() >= until:
            return set(pending)
        if published in pending:
            news = {published}
            for _ in range(NEWS_AT_ONCE):
                more = await done.next(timeout=0)
                if more is None:
                    break
                if more in pending:
                    news.add(more)
            return news


waits_subscribed: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
"""Waits holding a subscription, per client; `TaskQueue.as_finished` keeps it under
`subscriptions_allowed`."""

BLOCKING_FOLLOWS = 16
"""`TaskQueue.events` followers of one client that wait for new events in a blocking XREAD;
more read without blocking once per `block_seconds`."""


def subscriptions_allowed(max_connections: int | None) -> int:
    """How many waits of a client whose pool holds at most `max_connections` (None: a
    Cluster client's, whose per-node pools have no cap) may hold a subscription:
    SUBSCRIBED_WAITS, and at most half the pool. A subscription holds a pooled connection
    while its wait reads the task on another: with the pool's every connection subscribed (a
    client made with ``max_connections=20`` and 20 waits), no wait could read, and each
    waited for its timeout, or for ever. Followers' blocking reads do not count against it:
    they have `follows_allowed` of their own."""
    if max_connections is None:
        return SUBSCRIBED_WAITS
    return min(SUBSCRIBED_WAITS, max_connections // 2)


def follows_allowed(max_connections: int | None) -> int:
    """How many `TaskQueue.events` followers of a client whose pool holds at most
    `max_connections` may block in an XREAD, each holding a pooled connection until its read
    returns: BLOCKING_FOLLOWS, and at most a quarter of the pool. A follower asks again as soon
    as its read returns and redis-py's pool lets it take its connection straight back, so
    followers sharing the waits' half took it whole (a wait then polled). A half and a quarter
    leave at least a quarter of the pool, and one connection however small it is, to other
    calls: a subscribed wait's reads and a follower's between its blocking ones among them."""
    if max_connections is None:
        return BLOCKING_FOLLOWS
    return min(BLOCKING_FOLLOWS, max_connections // 4)


UNANSWERED_SECONDS = 1.0
"""A read that Redis had not answered for this long when a wait's time ran out is told in
the wait's TimeoutError (a shorter one is a read the deadline happened to cut)."""


def silence(reached: bool, unanswered_for: float | None) -> str:
    """What a wait's TimeoutError says of Redis: nothing when it answered the wait's reads,
    else that it did not answer any (`reached` False), or not the last one, that had waited
    `unanswered_for` seconds (None: no read was waiting)."""
    if not reached:
        return "Redis did not answer"
    if unanswered_for is not None and unanswered_for >= UNANSWERED_SECONDS:
        return f"Redis did not answer for the last {seconds_text(round(unanswered_for, 1))}s"
    return ""


def not_final(left: int, total: int, queue: str, timeout: float | None,
              redis_silence: str = "") -> TimeoutError:
    """The error of a wait for `total` tasks of `queue` that ended at its `timeout` with
    `left` of them not final yet, for a person to read (the builtin one says nothing);
    `redis_silence` from `silence`."""
    after = "" if timeout is None else f" after {seconds_text(timeout)}s"
    said = f"; {redis_silence}" if redis_silence else ""
    return TimeoutError(f"{left} of {total} tasks of queue {queue!r} not final{after}{said}")


def time_left(deadline: float | None, at_most: float) -> float:
    """Seconds until `deadline` (monotonic), at most `at_most`; TimeoutError once it passed."""
    if deadline is None:
        return at_most
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return min(left, at_most)


class DoneSignal:
    """The ids of a queue's tasks as they reach a final state, from its ``done`` channel.

    The scripts publish on a shard channel (SPUBLISH, Redis 7+), so on a cluster the
    subscription is held by the node of the queue's slot and a message crosses no other
    shard. On a server without sharded pub/sub (Redis 6, whose scripts PUBLISH) `next`
    returns None after each `timeout` and the caller polls.
    """

    def __init__(self, redis: aioredis.Redis, channel: str, *, poll: bool = False) -> None:
        """`poll`: no subscription (no connection held); `next` only waits out its timeout."""
        self._redis = redis
        self._pubsub: Any = None if poll else redis.pubsub()
        self._channel = channel
        self._cluster = is_cluster(redis)
        self._state = "polling" if poll else "new"

    async def subscribe(self) -> None:
        """Subscribe now (else the first `next` does): ids published from here on arrive."""
        if self._state == "new":
            if self._cluster:  # a cluster client learns the slot map on its first command
                await cast(Any, self._redis).initialize()
            try:
                await self._pubsub.ssubscribe(self._channel)
                self._state = "subscribed"
            except ResponseError:
                self._state = "polling"

    @property
    def subscribed(self) -> bool:
        """Messages arrive (else `next` only waits out its timeout)."""
        return self._state == "subscribed"

    async def next(self, timeout: float) -> str | None:
        """The next task id published, or None after `timeout` seconds without one."""
        await self.subscribe()
        if self._state == "polling":
            await asyncio.sleep(timeout)
            return None
        try:
            if self._cluster:
                message = await self._pubsub.get_sharded_message(
                    ignore_subscribe_messages=True, timeout=timeout)
            else:
                message = await self._pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=timeout)
        except ResponseError:
            self._state = "polling"
            return None
        return None if message is None else as_text(message["data"])

    async def aclose(self) -> None:
        if self._pubsub is not None:
            await self._pubsub.aclose()
