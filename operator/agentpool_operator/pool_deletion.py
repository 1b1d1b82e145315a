"""What a pool's deletion does: with per-pool Redis users, delete them from its Redis (their
Secrets go with the pool, as its owner), or let the pool go with a Warning Event naming the
users left when its Redis does not answer for long enough."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from agentpool.acl import Role, acl_username
from agentpool.models import GROUP, PLURAL, VERSION
from agentpool.redis_errors import REDIS_FAILURES, describe_redis_error
from agentpool.urls import redis_server

from .context import OperatorContext
from .credentials import CONDITION as CREDENTIALS_CONDITION
from .credentials import UsersKept, pool_owns, remove_users, worker_secret_name
from .handlers import (
    Logger,
    context,
    known_redis_url,
    parse_spec,
    pool_key,
    post,
    spec_problem,
)
from .redis_access import QueueAccessError, resolve_redis_url
from .status import StatusEvent, sanitize


def _per_pool_credentials(memo: kopf.Memo, **_: Any) -> bool:
    return context(memo).settings.per_pool_credentials


CREDENTIALS_LEFT = "CredentialsLeft"
USER_REMOVAL_SECONDS = 300.0
"""How long the operator keeps trying to delete a deleted pool's Redis users while its Redis
fails, before it lets the pool go with them left (a Warning Event names them). Long enough
for a Redis restart, a Sentinel failover (30 s before the sentinels call a primary down by
default, then the promotion) or a Redis pod moved to another node; short enough that a Redis
gone for good (deleted with the pools, or in their namespace) holds a pool's or a namespace's
deletion up for minutes, not for ever."""
USER_REMOVAL_RETRY_SECONDS = 30.0
"""The longest wait between two tries (the first comes after 1 s, then twice as long each)."""
TRANSIENT_URL_FAILURES = frozenset({"SecretUnreadable"})
"""Reasons of `resolve_redis_url` that a later try may not meet (the API server failed)."""


def removal_retry(elapsed: float, retry: int, bound: float) -> float | None:
    """Seconds until the next try to remove a deleted pool's users, after try `retry` (0 for
    the first) failed for a reason a later try may not meet; None when `elapsed` (since the
    first try) reached `bound`: the users are left."""
    left = bound - elapsed
    if left <= 0:
        return None
    return max(1.0, min(USER_REMOVAL_RETRY_SECONDS, 2.0 ** min(retry, 6), left))


def had_own_users(status: Mapping[str, Any], worker_secret: bool) -> bool:
    """Whether a pool may have left Redis users: its status says its workers had one
    (condition `Credentials` True), or its worker Secret, written once the user was, exists.
    A pool whose Redis never answered has none, and its deletion waits for nothing."""
    return worker_secret or any(
        c.get("type") == CREDENTIALS_CONDITION and c.get("status") == "True"
        for c in status.get("conditions") or ())


def pool_users(namespace: str, name: str, spec: Mapping[str, Any]) -> list[str]:
    """The Redis users a pool of this spec has (the producer's only with
    `spec.redis.producerCredentials`)."""
    producer = bool((spec.get("redis") or {}).get("producerCredentials"))
    return [acl_username(namespace, name, role)
            for role in (Role.WORKER, *([Role.PRODUCER] if producer else []))]


def users_left_event(users: Sequence[str], where: str, why: str) -> StatusEvent:
    return StatusEvent("Warning", CREDENTIALS_LEFT, sanitize(
        f"Redis users {', '.join(users)} of this pool were left on {where} ({why}): "
        "delete them there with ACL DELUSER"))


async def removal_url(ctx: OperatorContext, body: kopf.Body, known: str | None) -> str:
    """The URL to remove a deleted pool's users with: the pool's own (its Secret read now),
    else the one its loop last used (`known`). Raises `QueueAccessError`."""
    namespace, _ = pool_key(body)
    try:
        return await resolve_redis_url(ctx.api, namespace, parse_spec(body).redis)
    except ValidationError as error:
        if known is None:
            raise QueueAccessError("InvalidSpec", spec_problem(error)) from None
    except QueueAccessError:
        if known is None:
            raise
    return known


@kopf.on.delete(GROUP, VERSION, PLURAL, when=_per_pool_credentials)
async def remove_credentials(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger,
                             retry: int, runtime: timedelta, **_: Any) -> None:
    """Delete the pool's Redis users (their Secrets go with the pool, as its owner). Their
    Redis is the pool's URL, or, with its URL Secret gone first (a namespace deleted whole),
    the one the operator last used for the pool. A Redis that does not answer is tried again
    for USER_REMOVAL_SECONDS; then the pool goes, with a Warning Event naming the users left.
    So it goes at once when the pool's credential may not delete users (a lasting refusal)."""
    ctx = context(memo)
    namespace, name = pool_key(body)
    known = known_redis_url(ctx, memo, namespace, name)
    url: str | None = None
    try:
        url = await removal_url(ctx, body, known)
        async with ctx.redis.own(url) as client:
            removed = await remove_users(client, namespace, name)
    except (QueueAccessError, UsersKept, *REDIS_FAILURES) as error:
        await removal_failed(ctx, body, url, error, retry, runtime.total_seconds(), logger)
        return
    finally:
        await ctx.redis.forget(namespace, name)
    if removed:
        logger.info(f"deleted the Redis user of pool {namespace}/{name}")


async def removal_failed(ctx: OperatorContext, body: kopf.Body, url: str | None,
                         error: Exception, retry: int, elapsed: float, logger: Logger) -> None:
    """Try again later (raises `kopf.TemporaryError`), or let the pool go: quietly when it
    had no users of its own, else with a Warning Event naming those left."""
    namespace, name = pool_key(body)
    worker_secret = True
    with contextlib.suppress(ApiException):
        secret = await ctx.api.get_secret(namespace, worker_secret_name(name))
        worker_secret = secret is not None and pool_owns(secret, body)
    if not had_own_users(dict(body.get("status") or {}), worker_secret):
        logger.info("the pool had no Redis user of its own: nothing to delete")
        return
    if isinstance(error, QueueAccessError):
        why, transient = error.message, error.reason in TRANSIENT_URL_FAILURES
    elif isinstance(error, UsersKept):
        why, transient = str(error), False
    else:
        why = f"Redis failed: {describe_redis_error(error)}"
        transient = True
    delay = removal_retry(elapsed, retry, USER_REMOVAL_SECONDS) if transient else None
    if delay is not None:
        raise kopf.TemporaryError(sanitize(
            f"cannot delete the pool's Redis users yet, trying again in {delay:g} s: {why}"),
            delay=delay)
    where = (redis_server(url, namespace) if url is not None
             else str((body.get("status") or {}).get("redis") or "the pool's Redis"))
    post(body, users_left_event(pool_users(namespace, name, dict(body.get("spec") or {})),
                                where, why), logger)
