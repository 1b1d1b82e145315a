"""Per-pool Redis users: each pool's workers get a Redis ACL user confined to the pool's queue.

The pool's own Redis URL (`spec.redis`) is the operator's credential: with it the operator
creates the user ``agentpool:<namespace>:<pool>:worker`` (rules from `agentpool.acl`) and writes
that user's URL into a Secret it owns, ``<pool>-redis-worker`` (key ``url``, garbage-collected
with the pool). The worker Deployment reads only that Secret. The user is applied again every
round (one command; Redis keeps ACL users in memory, so a restart without an ACL file loses
them), and deleted with the pool.

A Redis that cannot have such a user (no ACL command, or the pool's credential may not manage
users) leaves the workers on the pool's URL, with the condition ``Credentials`` False, reason
``CredentialsShared``: visible, but not a degradation of the pool.

Nothing here logs or reports a password: messages name users and Secrets only.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
import redis.exceptions

from agentpool.acl import Role, acl_rules, acl_username, delete_user, password_hash, set_user
from agentpool.models import SecretKeyRef
from agentpool.urls import with_credentials

from .deployment import owner_reference, pool_labels
from .status import ConditionUpdate

CONDITION = "Credentials"
SHARED = "CredentialsShared"
SECRET_KEY = "url"
PASSWORD_BYTES = 32


def worker_secret_name(pool: str) -> str:
    return f"{pool}-redis-worker"


@dataclass(frozen=True)
class WorkerCredentials:
    """What the workers of a pool connect with: the pool's own user, or the shared URL."""

    secret: SecretKeyRef | None
    """The Secret of the pool's own user; None: the workers use `spec.redis`."""
    condition: ConditionUpdate


def per_pool(namespace: str, pool: str, queue: str) -> WorkerCredentials:
    user = acl_username(namespace, pool, Role.WORKER)
    return WorkerCredentials(
        SecretKeyRef(name=worker_secret_name(pool), key=SECRET_KEY),
        ConditionUpdate(
            CONDITION, "True", "PerPoolUser",
            f"workers use Redis user {user}, confined to queue {queue!r}, from Secret "
            f"{namespace}/{worker_secret_name(pool)}",
        ),
    )


def shared(why: str) -> WorkerCredentials:
    message = f"workers use the pool's Redis URL: {why}"
    return WorkerCredentials(None, ConditionUpdate(CONDITION, "False", SHARED, message))


def password_of(secret: Mapping[str, Any] | None) -> str | None:
    """The password in the URL of a worker Secret, or None when there is none to reuse."""
    if not secret:
        return None
    raw = (secret.get("data") or {}).get(SECRET_KEY)
    if not raw:
        return None
    try:
        password = urlsplit(base64.b64decode(raw).decode()).password
    except (ValueError, UnicodeDecodeError):
        return None
    return unquote(password) if password else None


def desired_worker_secret(namespace: str, pool: str, owner: Mapping[str, Any],
                          url: str) -> dict[str, Any]:
    """The Secret holding the pool's worker URL, owned by (and deleted with) the pool."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": worker_secret_name(pool),
            "namespace": namespace,
            "labels": {**pool_labels(pool), "app.kubernetes.io/component": "redis-credentials"},
            "ownerReferences": [owner_reference(owner)],
        },
        "data": {SECRET_KEY: base64.b64encode(url.encode()).decode()},
    }


def secret_drift(desired: Mapping[str, Any], actual: Mapping[str, Any]) -> dict[str, Any] | None:
    """A merge patch putting back the data and owner of the worker Secret, or None."""
    patch: dict[str, Any] = {}
    if actual.get("data") != desired["data"]:
        patch["data"] = desired["data"]
    owners = (actual.get("metadata") or {}).get("ownerReferences")
    if owners != desired["metadata"]["ownerReferences"]:
        patch["metadata"] = {"ownerReferences": desired["metadata"]["ownerReferences"]}
    return patch or None


def refusal(error: redis.exceptions.ResponseError) -> str | None:
    """Why this Redis cannot have per-pool users, from its answer to ACL SETUSER; None when
    the error says nothing about that (try again next round)."""
    text = str(error)
    if isinstance(error, redis.exceptions.NoPermissionError) or "NOPERM" in text:
        return "the pool's Redis credential may not manage ACL users (it needs ACL SETUSER)"
    if "unknown command" in text.lower():
        return "this Redis has no ACLs (Redis 6 or later has them)"
    return None


class SecretStore(Protocol):
    """The Kubernetes calls this module needs (KubeApi has them)."""

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    async def create_secret(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]: ...
    async def patch_secret(self, namespace: str, name: str,
                           patch: Mapping[str, Any]) -> dict[str, Any]: ...


async def ensure_worker_credentials(
    kube: SecretStore, admin: aioredis.Redis, pool: Mapping[str, Any], queue: str,
    pool_url: str,
) -> tuple[WorkerCredentials, str | None]:
    """Make the pool's worker user and Secret exist and match; returns the credentials and,
    when something was created or changed, a message for an Event.

    Raises `redis.exceptions.RedisError` (other than a refusal) and `ApiException`.
    """
    namespace, name = pool["metadata"]["namespace"], pool["metadata"]["name"]
    secret_name = worker_secret_name(name)
    existing = await kube.get_secret(namespace, secret_name)
    password = password_of(existing) or secrets.token_urlsafe(PASSWORD_BYTES)
    user = acl_username(namespace, name, Role.WORKER)
    try:
        await set_user(admin, user, acl_rules(queue, Role.WORKER, [password_hash(password)]))
    except redis.exceptions.ResponseError as error:
        why = refusal(error)
        if why is None:
            raise
        return shared(why), None
    desired = desired_worker_secret(namespace, name, pool,
                                    with_credentials(pool_url, user, password))
    note = None
    if existing is None:
        await kube.create_secret(namespace, desired)
        note = f"created Redis user {user} and Secret {namespace}/{secret_name} for the workers"
    else:
        patch = secret_drift(desired, existing)
        if patch is not None:
            await kube.patch_secret(namespace, secret_name, patch)
            note = f"updated Secret {namespace}/{secret_name} of Redis user {user}"
    return per_pool(namespace, name, queue), note


async def remove_worker_user(admin: aioredis.Redis, namespace: str, pool: str) -> bool:
    """Delete the pool's worker user (Redis closes its connections); False if it was gone."""
    try:
        return await delete_user(admin, acl_username(namespace, pool, Role.WORKER))
    except redis.exceptions.ResponseError as error:
        if refusal(error) is None:
            raise
        return False

