"""Per-pool Redis users: each pool's workers get a Redis ACL user confined to the pool's queue.

The pool's own Redis URL (`spec.redis`) is the operator's credential: with it the operator
creates the user ``agentpool:<namespace>:<pool>:worker`` (rules from `agentpool.acl`) and writes
that user's URL into a Secret it owns, ``<pool>-redis-worker`` (key ``url``, garbage-collected
with the pool). The worker Deployment reads only that Secret. The user is applied again every
round (one command; Redis keeps ACL users in memory, so a restart without an ACL file loses
them), and deleted with the pool.

Rotation (annotation ``agentpool.dev/rotate-credentials`` on the pool, any value) fails no claim:
the user accepts the old and a new password, the Secret gets the new one and the pod template a
new credentials version (so the pods roll), and only when every pod of the pool that can still
connect (not Failed, not Succeeded) carries that version is the old password removed. The old
password's hash waits on the Secret meanwhile, so an operator restart resumes the rotation
where it was. A worker Secret that went missing (deleted by hand) while the user exists is
handled the same way: the new Secret gets a new password, and the passwords the user had stay
accepted until the pods rolled.

A request is first accepted, in one patch of the pool: the annotation is replaced by
``agentpool.dev/rotation-request``, which names it (the pool's resourceVersion where it was
seen), and, with `spec.redis.producerCredentials`, by ``agentpool.dev/rotate-producer-credentials``
with the same name. The worker Secret records the request its rotation served in the same
write as the new password, and so does the producer Secret: each rotation happens once per
request, whichever step an operator restart or a stale copy of the pool interrupts (accepting
the same copy again writes the same name). The producer's annotation stays until its
rotation started, so a failed round retries it. The producer's Secret gets the new one at once; the
services that submit are not the operator's to roll, so the old password stays accepted for a
grace period (`AGENTPOOL_OPERATOR_PRODUCER_PASSWORD_GRACE_SECONDS`, an hour by default), its
end written on the Secret, then it is removed.

A spec edit that takes rate limits or other queues (`spec.worker.submitsTo`) away leaves the
user those rights until every pod rolled (the pods of the spec before run with them to their
end; ``agentpool.dev/retiring-grants`` on the Secret keeps them across an operator restart),
and one that adds some gives them before the Deployment changes (the create/update handler
applies the user first).

A Redis that cannot have such a user (no ACL command, or the pool's credential may not manage
users) leaves the workers on the pool's URL, with the condition ``Credentials`` False, reason
``CredentialsShared``: visible, but not a degradation of the pool. Only a pool that never had
its own user starts so: once its worker Secret exists, a refusal (the pool's credential lost
``ACL SETUSER``, say) keeps the workers on their user and Secret (``CredentialsUnmanaged``:
rotations and changes of the user's rights wait); deleting the Secret is how a person moves
them to the pool's URL. A pool moved to another Redis (its Secret names another server or
database, `same_server`) has no user there: a refusal there moves its workers with it to the
pool's URL, as a new pool's, and the message says so.

A Secret of either name is the pool's only when it names an AgentPool of the pool's name as
its controller (`pool_owns`). Another's Secret of that name (the pool's own URL Secret, one of
an application) is neither read, written nor adopted, and no user is made for it: the
condition says ``CredentialsSecretConflict`` until a person renames or deletes it. A Secret the
API refuses to write (RBAC, a ResourceQuota, a namespace outside ``secretNamespaces``) says
``CredentialsSecretRefused`` with the API's answer, and the password drawn for it is taken off
the user again (and drawn no second time): a password is on the user only while a Secret
holds it, and a Secret holds only passwords the user has. Either problem, and
``CredentialsUnmanaged``, is a Warning Event once when it begins (`WARNING_REASONS`).

Redis checks a password when a connection authenticates, not afterwards: when a rotation
removes a password, the user's connections are closed (``CLIENT KILL USER``), and the pods,
which all hold the new one by then, reconnect with it.

Nothing here logs or reports a password: messages name users and Secrets only.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
import redis.exceptions
from kubernetes.client.exceptions import ApiException

from agentpool.acl import (
    Role,
    acl_rules,
    acl_username,
    delete_user,
    disconnect_user,
    password_hash,
    set_user,
)
from agentpool.models import GROUP, SecretKeyRef
from agentpool.redis_errors import REDIS_FAILURES
from agentpool.urls import redis_server, with_credentials

from .deployment import CREDENTIALS_VERSION, owner_reference, pool_labels
from .kube import api_error_message
from .status import ConditionUpdate, Problem, sanitize

ROTATE_ANNOTATION = "agentpool.dev/rotate-credentials"
"""On the pool, set by a person: rotate the pool's passwords (any value)."""
REQUEST_ANNOTATION = "agentpool.dev/rotation-request"
"""On the pool, set by the operator when it accepts a `ROTATE_ANNOTATION`: the name of the
latest request (the pool's resourceVersion where it was seen). The workers' rotation is owed
while the worker Secret's `ROTATION_ANNOTATION` names another."""
PRODUCER_ROTATE_ANNOTATION = "agentpool.dev/rotate-producer-credentials"
"""On the pool, set by the operator in the same patch as `REQUEST_ANNOTATION` (with a producer
user): the producer's rotation still owed for that request, removed once it started."""
ROTATION_ANNOTATION = "agentpool.dev/rotation"
"""On the worker and the producer Secret: the request whose rotation it last started, written
with the new password, so a request seen again (a stale copy of the pool, an operator restarted
between two writes) does not rotate twice."""
VERSION_ANNOTATION = CREDENTIALS_VERSION
"""On the pod template: changes with the password, so a new password rolls the pods."""
RETIRING_ANNOTATION = "agentpool.dev/retiring-password-sha256"
"""On the worker Secret during a rotation: the old password's SHA-256 (several, comma-separated,
when the Secret was re-created while a rotation ran), still accepted until the pods rolled."""
RETIRING_UNTIL_ANNOTATION = "agentpool.dev/retiring-password-until"
"""On the producer Secret during a rotation: when (Unix time, seconds) the old password goes."""
GRANTS_ANNOTATION = "agentpool.dev/grants"
"""On the worker Secret: the rate limits and other queues (`spec.rateLimits`,
`spec.worker.submitsTo`) the user was last given for the pods of the current spec."""
RETIRING_GRANTS_ANNOTATION = "agentpool.dev/retiring-grants"
"""On the worker Secret while the pods roll after a spec edit took limits or queues away:
those the pods of the spec before still use, kept until every pod rolled."""
CONDITION = "Credentials"
SHARED = "CredentialsShared"
CONFLICT = "CredentialsSecretConflict"
REFUSED = "CredentialsSecretRefused"
UNMANAGED = "CredentialsUnmanaged"
DEFAULT_OPEN = "RedisDefaultUserOpen"
DEFAULT_OPEN_NOTE = ("confined to nothing: Redis's default user needs no password, so any "
                     "client, an agent too, may switch to it (give it a password or turn it off: "
                     "docs/security.md)")
WARNING_REASONS = frozenset({CONFLICT, REFUSED, UNMANAGED, DEFAULT_OPEN})
"""Reasons of the Events (and of the False condition) that need a person: post them as
Warnings. Each is reported once when it begins."""
SECRET_KEY = "url"
PASSWORD_BYTES = 32
SECRET_RECHECK_SECONDS = 300.0
"""A credential Secret the operator read or wrote is read again after this long (a hand edit
or deletion is put right then); in between a steady pool costs no Secret read."""


def worker_secret_name(pool: str) -> str:
    return f"{pool}-redis-worker"


def producer_secret_name(pool: str) -> str:
    return f"{pool}-redis-producer"


@dataclass(frozen=True)
class WorkerCredentials:
    """What the workers of a pool connect with: the pool's own user, or the shared URL."""

    secret: SecretKeyRef | None
    """The Secret of the pool's own user; None: the workers use `spec.redis`."""
    condition: ConditionUpdate
    version: str | None = None
    """The pod template's credentials version (None: not known, leave the template as is)."""
    usable: bool = True
    """False: the pool has no worker Secret of its own to give its workers (another's Secret
    holds the name, or the API refused it): no Deployment is to be made for them meanwhile,
    and one that exists keeps the credentials it has."""

    @property
    def problem(self) -> Problem | None:
        """What needs a person (for `Degraded`), or None; `CredentialsShared` is none."""
        if self.condition.status == "True" or self.condition.reason == SHARED:
            return None
        return Problem(self.condition.reason, self.condition.message)


def event_type(reason: str) -> Literal["Normal", "Warning"]:
    """The type of the Event of a round's (reason, message): "Warning" or "Normal"."""
    return "Warning" if reason in WARNING_REASONS else "Normal"


def credentials_version(url: str) -> str:
    """The pod template's mark of the worker URL (its password and its Redis): a new password
    or another Redis rolls the pods."""
    return hashlib.sha256(f"agentpool-credentials:{url}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Grants:
    """What the workers' user may reach beyond its own queue: rate limits, other queues."""

    limits: tuple[str, ...] = ()
    queues: tuple[str, ...] = ()

    @classmethod
    def of(cls, limits: Iterable[str], queues: Iterable[str]) -> Grants:
        return cls(tuple(sorted(set(limits))), tuple(sorted(set(queues))))

    @classmethod
    def parse(cls, text: str | None) -> Grants | None:
        """An annotation's grants; None when it is missing or unreadable."""
        try:
            doc = json.loads(text or "")
            return cls.of(map(str, doc["limits"]), map(str, doc["queues"]))
        except (ValueError, TypeError, KeyError):
            return None

    def text(self) -> str:
        return json.dumps({"limits": list(self.limits), "queues": list(self.queues)},
                          separators=(",", ":"))

    def __or__(self, other: Grants) -> Grants:
        return Grants.of((*self.limits, *other.limits), (*self.queues, *other.queues))

    def __bool__(self) -> bool:
        return bool(self.limits or self.queues)


def spec_grants(spec: Mapping[str, Any]) -> Grants:
    """What a pool's spec (as the API has it) gives its workers beyond their queue."""
    return Grants.of((limit.get("name", "") for limit in spec.get("rateLimits") or ()),
                     (spec.get("worker") or {}).get("submitsTo") or ())


def retiring_grants(wanted: Grants, had: Grants | None, retiring: Grants | None, *,
                    rolled_out: bool) -> Grants:
    """The grants kept for pods of an earlier spec (see `RETIRING_GRANTS_ANNOTATION`): those
    the user had when the spec changed, until every pod carries the current one."""
    if rolled_out:
        return Grants()
    kept = retiring or Grants()
    if had is not None and had != wanted:
        kept = kept | had
    return kept


@dataclass(frozen=True)
class Rotation:
    """One round's passwords: the one the Secret holds after it, and those Redis accepts."""

    password: str
    accepted: tuple[str, ...]
    """SHA-256 hashes for ACL SETUSER."""
    retiring: str | None
    """The old password's hash (or comma-separated hashes) while the pods roll, kept on the
    Secret."""
    started: bool = False
    finished: bool = False


def retiring_hashes(value: str | None) -> tuple[str, ...]:
    """The password hashes of a retiring annotation (anything but SHA-256 hex is dropped)."""
    hashes = (part.strip() for part in (value or "").split(","))
    return tuple(dict.fromkeys(
        h for h in hashes if len(h) == 64 and all(c in "0123456789abcdef" for c in h)))


def plan_rotation(current: str | None, retiring: str | None, *, requested: bool,
                  rolled_out: bool, new_password: str, live: Sequence[str] = ()) -> Rotation:
    """What this round does with the passwords (see the module's docstring). `live` are the
    hashes the user has on Redis: those the Secret's password is not (the Secret went missing,
    was edited by hand, lost its retiring annotation) stay accepted while the pods roll to it."""
    if current is None:
        new = password_hash(new_password)
        kept = tuple(h for h in retiring_hashes(",".join(live)) if h != new)
        return Rotation(new_password, (new, *kept), ",".join(kept) or None)
    mine = password_hash(current)
    waiting = tuple(h for h in retiring_hashes(",".join((retiring or "", *live))) if h != mine)
    if waiting:
        if rolled_out:
            return Rotation(current, (password_hash(current),), None, finished=True)
        return Rotation(current, (password_hash(current), *waiting), ",".join(waiting))
    if requested:
        old = password_hash(current)
        return Rotation(new_password, (old, password_hash(new_password)), old, started=True)
    return Rotation(current, (password_hash(current),), None)


def plan_producer_rotation(current: str | None, retiring: str | None, until: float | None, *,
                           requested: bool, clock: float, grace: float,
                           new_password: str) -> tuple[Rotation, float | None]:
    """This round's passwords of a producer user, and when (Unix time) the retiring one goes.

    Producers are not the operator's to roll, so the old password is retired by the clock:
    `grace` seconds after the rotation began (`until`; a retiring password without one goes
    now). A rotation asked for during another one's grace starts over, dropping the oldest
    password at once: a password rotated twice (after a leak, say) must not wait out the
    first grace."""
    plan = plan_rotation(current, None if requested else retiring, requested=requested,
                         rolled_out=until is None or clock >= until, new_password=new_password)
    if plan.started:
        return plan, clock + grace
    return plan, until if plan.retiring else None


FINISHED_PHASES = frozenset({"Failed", "Succeeded"})
"""Pod phases whose containers all ended for good (evicted, shut down with its node, done):
such a pod connects to nothing, yet stays until deleted or garbage-collected."""


def rolled_out(pods: Sequence[Mapping[str, Any]] | None, version: str) -> bool:
    """Every pod of the pool that may still connect (terminating ones too; not one in phase
    Failed or Succeeded) started with this credentials version."""
    if pods is None:
        return False
    return all(
        ((p.get("metadata") or {}).get("annotations") or {}).get(VERSION_ANNOTATION) == version
        for p in pods
        if (p.get("status") or {}).get("phase") not in FINISHED_PHASES
    )


def per_pool(namespace: str, pool: str, queue: str,
             version: str | None = None, *, default_open: bool = False) -> WorkerCredentials:
    user = acl_username(namespace, pool, Role.WORKER)
    confined = DEFAULT_OPEN_NOTE if default_open else f"confined to queue {queue!r}"
    return WorkerCredentials(
        SecretKeyRef(name=worker_secret_name(pool), key=SECRET_KEY),
        ConditionUpdate(
            CONDITION, "True", "PerPoolUser",
            f"workers use Redis user {user}, {confined}, from Secret "
            f"{namespace}/{worker_secret_name(pool)}",
        ),
        version,
    )


async def default_user_open(admin: aioredis.Redis) -> bool:
    """Whether Redis's `default` user is on without a password: then `AUTH default <anything>`
    makes any connection the default user, and a pool's own user confines nothing."""
    try:
        reply: Any = await admin.execute_command("ACL GETUSER", "default")  # type: ignore[no-untyped-call]
    except redis.exceptions.ResponseError:
        return False
    replies = reply.values() if isinstance(reply, dict) and "flags" not in reply else [reply]
    return any({"on", "nopass"} <= {f.decode() if isinstance(f, bytes) else str(f)
                                     for f in r.get("flags") or ()}
               for r in replies if isinstance(r, dict))


def shared(why: str) -> WorkerCredentials:
    message = f"workers use the pool's Redis URL: {why}"
    return WorkerCredentials(None, ConditionUpdate(CONDITION, "False", SHARED, message))


def pool_owns(secret: Mapping[str, Any], pool: Mapping[str, Any]) -> bool:
    """Whether `secret` is the pool's own: an ownerReference names an AgentPool of the pool's
    name as its controller. Whatever its uid: a pool deleted and created again under the same
    name finds the Secret of the earlier one until the garbage collector removes it, holding
    the password of the same user (``agentpool:<namespace>:<pool>:worker``), and takes it
    over (its owner is put back to the new pool) instead of reporting a conflict with itself.
    No one else writes such a reference without the right to write the namespace's Secrets,
    which needs no pool to overwrite one."""
    name = (pool.get("metadata") or {}).get("name")
    return any(
        ref.get("kind") == "AgentPool" and ref.get("controller") is True
        and ref.get("name") == name
        and str(ref.get("apiVersion") or "").partition("/")[0] == GROUP
        for ref in (secret.get("metadata") or {}).get("ownerReferences") or ()
    )


def _conflict(namespace: str, secret_name: str, pool: str, role: Role) -> str:
    return (f"Secret {namespace}/{secret_name} exists and is not pool {pool}'s (no "
            f"ownerReference to AgentPool {pool} as controller): the operator leaves it alone "
            f"and makes no {role.value} Redis user for it; rename or delete that Secret (a "
            "URL Secret of the pool's own: copy it under another name for "
            "spec.redis.urlSecretRef)")


def conflicting(namespace: str, pool: str) -> WorkerCredentials:
    """Another's Secret holds the name of the pool's worker Secret."""
    name = worker_secret_name(pool)
    return WorkerCredentials(
        SecretKeyRef(name=name, key=SECRET_KEY),
        ConditionUpdate(CONDITION, "False", CONFLICT,
                        _conflict(namespace, name, pool, Role.WORKER)),
        usable=False)


def refused(namespace: str, pool: str, error: ApiException, *, reading: bool,
            exists: bool, version: str | None = None) -> WorkerCredentials:
    """The API refused to read or write the pool's worker Secret; `exists`: the Secret the
    workers read is there (as it was)."""
    name = worker_secret_name(pool)
    user = acl_username(namespace, pool, Role.WORKER)
    verb = "read" if reading else "write"
    message = (f"cannot {verb} Secret {namespace}/{name} of Redis user {user}: "
               f"{sanitize(api_error_message(error))}; the workers' password waits until "
               "it can (check the operator's rights on Secrets in this namespace: "
               "secretNamespaces; and any ResourceQuota on Secrets)")
    return WorkerCredentials(SecretKeyRef(name=name, key=SECRET_KEY),
                             ConditionUpdate(CONDITION, "False", REFUSED, message),
                             version, usable=exists)


def unmanaged(namespace: str, pool: str, why: str) -> WorkerCredentials:
    """Redis refuses the pool's user to a pool that has one: its workers keep it."""
    name = worker_secret_name(pool)
    user = acl_username(namespace, pool, Role.WORKER)
    message = (f"{why}: the workers keep Redis user {user} from Secret {namespace}/{name}, "
               "and its rotations and changes of its rights wait until the operator may "
               "manage it again (deleting that Secret moves the workers to the pool's URL)")
    return WorkerCredentials(SecretKeyRef(name=name, key=SECRET_KEY),
                             ConditionUpdate(CONDITION, "False", UNMANAGED, message))


def moved(namespace: str, pool: str, why: str, held: str, pool_url: str) -> WorkerCredentials:
    """The pool moved to another Redis (`pool_url`; its worker Secret still holds `held`),
    which refuses it a user: it has none there, and its workers go where the pool went."""
    user = acl_username(namespace, pool, Role.WORKER)
    return shared(
        f"the pool moved to {redis_server(pool_url, namespace)}, where {why}; its workers "
        f"moved with it from Redis user {user} on {redis_server(held, namespace)} (Secret "
        f"{namespace}/{worker_secret_name(pool)}, left as it is)")


def lasting(error: ApiException) -> bool:
    """A refusal that the next round meets again (forbidden, over quota, invalid), not a
    race or an API server's hiccup (a round later tries again, unreported)."""
    status = int(error.status or 0)
    return 400 <= status < 500 and status not in (404, 409, 429)


def url_of(secret: Mapping[str, Any] | None) -> str | None:
    """The URL a worker Secret holds, or None when it has none that parses."""
    raw = ((secret or {}).get("data") or {}).get(SECRET_KEY)
    if not raw:
        return None
    try:
        url = base64.b64decode(raw).decode()
        urlsplit(url)
    except (ValueError, UnicodeDecodeError):
        return None
    return url


def password_of(secret: Mapping[str, Any] | None) -> str | None:
    """The password in the URL of a worker Secret, or None when there is none to reuse."""
    url = url_of(secret)
    password = urlsplit(url).password if url is not None else None
    return unquote(password) if password else None


def same_server(url: str, other: str, namespace: str) -> bool:
    """Whether two Redis URLs used from `namespace` name the same server (or Sentinel group,
    or Cluster) and database (`redis_server`), TLS or not: there a pool has the same users."""
    def server(of: str) -> str:
        named = redis_server(of, namespace)
        return "redis" + named.removeprefix("rediss") if named.startswith("rediss") else named
    return server(url) == server(other)


def desired_worker_secret(namespace: str, pool: str, owner: Mapping[str, Any],
                          url: str, retiring: str | None = None,
                          role: Role = Role.WORKER,
                          retiring_until: float | None = None,
                          rotation: str | None = None,
                          grants: Grants | None = None,
                          retiring_grants: Grants | None = None) -> dict[str, Any]:
    """The Secret holding the URL of the pool's worker (or producer) user, owned by (and
    deleted with) the pool."""
    name = worker_secret_name(pool) if role is Role.WORKER else producer_secret_name(pool)
    annotations = {RETIRING_ANNOTATION: retiring} if retiring else {}
    if retiring and retiring_until is not None:
        annotations[RETIRING_UNTIL_ANNOTATION] = str(int(retiring_until))
    if rotation:
        annotations[ROTATION_ANNOTATION] = rotation
    if grants is not None:
        annotations[GRANTS_ANNOTATION] = grants.text()
    if retiring_grants:
        annotations[RETIRING_GRANTS_ANNOTATION] = retiring_grants.text()
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**pool_labels(pool), "app.kubernetes.io/component": "redis-credentials"},
            "ownerReferences": [owner_reference(owner)],
            "annotations": annotations,
        },
        "data": {SECRET_KEY: base64.b64encode(url.encode()).decode()},
    }


def secret_drift(desired: Mapping[str, Any], actual: Mapping[str, Any]) -> dict[str, Any] | None:
    """A merge patch putting back the data, owner and rotation state of the worker Secret
    (None: nothing to change). A None annotation value means: absent."""
    patch: dict[str, Any] = {}
    if (actual.get("data") or {}).get(SECRET_KEY) != desired["data"][SECRET_KEY]:
        patch["data"] = desired["data"]
    meta = actual.get("metadata") or {}
    wanted = desired["metadata"]
    metadata: dict[str, Any] = {}
    if meta.get("ownerReferences") != wanted["ownerReferences"]:
        metadata["ownerReferences"] = wanted["ownerReferences"]
    have = meta.get("annotations") or {}
    annotations = {key: wanted["annotations"].get(key)
                   for key in (RETIRING_ANNOTATION, RETIRING_UNTIL_ANNOTATION,
                               ROTATION_ANNOTATION, GRANTS_ANNOTATION,
                               RETIRING_GRANTS_ANNOTATION)
                   if have.get(key) != wanted["annotations"].get(key)}
    if annotations:
        metadata["annotations"] = annotations
    if metadata:
        patch["metadata"] = metadata
    return patch or None


def _restores(patch: Mapping[str, Any]) -> bool:
    """The Secret's patch puts back something a person changed, not only the grants a spec
    edit moved."""
    meta = patch.get("metadata") or {}
    changed = set(meta.get("annotations") or {}) - {GRANTS_ANNOTATION,
                                                   RETIRING_GRANTS_ANNOTATION}
    return "data" in patch or "ownerReferences" in meta or bool(changed)


def denied(error: redis.exceptions.ResponseError) -> bool:
    """Redis refused the command to the pool's credential (NOPERM)."""
    return isinstance(error, redis.exceptions.NoPermissionError) or "NOPERM" in str(error)


def refusal(error: redis.exceptions.ResponseError) -> str | None:
    """Why this Redis cannot have per-pool users, from its answer to ACL SETUSER; None when
    the error says nothing about that (try again next round)."""
    text = str(error)
    if denied(error):
        return "the pool's Redis credential may not manage ACL users (it needs ACL SETUSER)"
    if "unknown command" in text.lower():
        return "this Redis has no ACLs (Redis 6 or later has them)"
    if "modifier '(" in text:
        return ("this Redis cannot give the workers' user rights on the queues of "
                "spec.worker.submitsTo (ACL selectors need Redis 7 or later)")
    return None


class SecretStore(Protocol):
    """The Kubernetes calls this module needs (KubeApi has them)."""

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    async def create_secret(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]: ...
    async def patch_secret(self, namespace: str, name: str,
                           patch: Mapping[str, Any]) -> dict[str, Any]: ...


class ProducerSecretStore(SecretStore, Protocol):
    async def delete_secret(self, namespace: str, name: str) -> bool: ...


@dataclass
class KnownSecrets:
    """A pool's credential Secrets as last read or written, by name (None: there is none),
    and what the pool's rounds keep between them about each."""

    bodies: dict[str, Mapping[str, Any] | None] = field(default_factory=dict)
    read_at: dict[str, float] = field(default_factory=dict)
    drawn: dict[str, str] = field(default_factory=dict)
    """The password drawn for a Secret the API refused to write: the next try writes it,
    instead of drawing (and giving the user) one more."""
    reported: dict[str, str] = field(default_factory=dict)
    """The reason of the problem last reported about a Secret, while it lasts."""
    default_open: bool = False
    """Redis's default user was on without a password when last asked (with the Secret)."""
    closed: dict[str, frozenset[str]] = field(default_factory=dict)
    """The password hashes whose removal closed the user's connections, until the Secret is
    written: a round that removes them again (the write was refused) closes none again."""

    async def get(self, kube: SecretStore, namespace: str, name: str,
                  now: float) -> Mapping[str, Any] | None:
        if name in self.bodies and now - self.read_at[name] < SECRET_RECHECK_SECONDS:
            return self.bodies[name]
        body = await kube.get_secret(namespace, name)
        self.remember(name, body, now)
        return body

    def remember(self, name: str, body: Mapping[str, Any] | None, now: float) -> None:
        self.bodies[name], self.read_at[name] = body, now

    def forget(self, name: str) -> None:
        """Read the Secret again next round (a person is to mend it, or a write failed)."""
        self.bodies.pop(name, None)
        self.read_at.pop(name, None)

    def report(self, name: str, reason: str, message: str) -> tuple[tuple[str, str], ...]:
        """The Event of a problem with the Secret, once when it begins."""
        if self.reported.get(name) == reason:
            return ()
        self.reported[name] = reason
        return ((reason, message),)

    def new_password(self, name: str) -> str:
        return self.drawn.get(name) or secrets.token_urlsafe(PASSWORD_BYTES)

    def written(self, name: str) -> None:
        """The Secret holds what the user has: nothing of a refused write is left to keep."""
        self.drawn.pop(name, None)
        self.reported.pop(name, None)
        self.closed.pop(name, None)


@dataclass(frozen=True)
class CredentialsRound:
    credentials: WorkerCredentials
    events: tuple[tuple[str, str], ...] = ()
    """(reason, message) of what changed, or of a problem that began (see `event_type`)."""


def accept_rotation(annotations: Mapping[str, str], resource_version: str,
                    producer_wanted: bool) -> dict[str, str | None] | None:
    """The pool's annotations that accept a person's rotation request (None: there is none):
    the request gone, named by the resourceVersion of the copy of the pool that carried it, and
    owed to the producer too when the pool has a producer user. The same copy seen again gives
    the same name, which the Secrets already record: a request rotates once."""
    if ROTATE_ANNOTATION not in annotations:
        return None
    accepted: dict[str, str | None] = {ROTATE_ANNOTATION: None,
                                       REQUEST_ANNOTATION: resource_version}
    if producer_wanted:
        accepted[PRODUCER_ROTATE_ANNOTATION] = resource_version
    return accepted



async def _close_connections(admin: aioredis.Redis, user: str, known: KnownSecrets,
                             secret_name: str, removed: frozenset[str]) -> bool:
    """Close the connections of `user` once the passwords `removed` are gone from it (the
    pods hold the one that stays); False when the pool's credential may not (NOPERM)."""
    if known.closed.get(secret_name) == removed:
        return True
    try:
        await disconnect_user(admin, user)
    except redis.exceptions.ResponseError as error:
        if refusal(error) is None:
            raise
        return False
    known.closed[secret_name] = removed
    return True


async def _withdraw(admin: aioredis.Redis, user: str, rules: list[str]) -> None:
    """Apply `rules` (the user's without a password its Secret did not get), as far as Redis
    answers: a password left over is drawn no second time (`KnownSecrets.drawn`)."""
    with contextlib.suppress(*REDIS_FAILURES):
        await set_user(admin, user, rules)


def _without(accepted: Sequence[str], password: str) -> tuple[str, ...]:
    drawn = password_hash(password)
    return tuple(h for h in accepted if h != drawn)


async def ensure_worker_credentials(
    kube: SecretStore, admin: aioredis.Redis, pool: Mapping[str, Any], queue: str,
    pool_url: str, *, known: KnownSecrets, now: float, request: str | None = None,
    pods: Sequence[Mapping[str, Any]] | None = None,
) -> CredentialsRound:
    """Make the pool's worker user and Secret exist and match, and move a rotation on;
    `request` names the latest accepted rotation request (`REQUEST_ANNOTATION`), done unless
    the Secret records it; `pods` are the pool's pods (None: unknown, a rotation waits);
    `known` keeps the Secret between rounds (`now` is monotonic time).

    Raises `redis.exceptions.RedisError` (other than a refusal) and `ApiException` (other
    than a lasting refusal, see `lasting`).
    """
    namespace, name = pool["metadata"]["namespace"], pool["metadata"]["name"]
    secret_name = worker_secret_name(name)
    user = acl_username(namespace, name, Role.WORKER)

    def trouble(credentials: WorkerCredentials) -> CredentialsRound:
        condition = credentials.condition
        return CredentialsRound(credentials,
                                known.report(secret_name, condition.reason, condition.message))

    try:
        existing = await known.get(kube, namespace, secret_name, now)
    except ApiException as error:
        if not lasting(error):
            raise
        return trouble(refused(namespace, name, error, reading=True, exists=False))
    if existing is not None and not pool_owns(existing, pool):
        known.forget(secret_name)
        return trouble(conflicting(namespace, name))
    read_now = known.read_at.get(secret_name) == now
    current = password_of(existing)
    annotations = ((existing or {}).get("metadata") or {}).get("annotations") or {}
    retiring = annotations.get(RETIRING_ANNOTATION) or None
    served = annotations.get(ROTATION_ANNOTATION) or None
    wanted = spec_grants(pool.get("spec") or {})

    def version_of(password: str) -> str:
        return credentials_version(f"{with_credentials(pool_url, user, password)} "
                                   f"{wanted.text()}")

    current_rolled_out = current is not None and rolled_out(pods, version_of(current))
    kept_grants = retiring_grants(
        wanted, Grants.parse(annotations.get(GRANTS_ANNOTATION)),
        Grants.parse(annotations.get(RETIRING_GRANTS_ANNOTATION)),
        rolled_out=current_rolled_out)
    granted = wanted | kept_grants
    try:
        # The passwords the user has, asked for when the Secret was read from the API (a
        # change by hand shows then; ACL GETUSER costs Redis 300 µs, too much for every round)
        live = await user_password_hashes(admin, user) if read_now or current is None else ()
        plan = plan_rotation(
            current, retiring,
            requested=pods is not None and request is not None and request != served,
            rolled_out=current_rolled_out,
            new_password=known.new_password(secret_name), live=live,
        )
        await set_user(admin, user, acl_rules(queue, Role.WORKER, plan.accepted,
                                              granted.limits, granted.queues))
    except redis.exceptions.ResponseError as error:
        why = refusal(error)
        if why is None:
            raise
        held = url_of(existing)
        if existing is not None and (held is None or same_server(held, pool_url, namespace)):
            return trouble(unmanaged(namespace, name, why))
        known.reported.pop(secret_name, None)
        if held is not None:
            return CredentialsRound(moved(namespace, name, why, held, pool_url))
        return CredentialsRound(shared(why))
    closed = True
    if plan.finished:
        mine = password_hash(plan.password)
        removed = frozenset(h for h in retiring_hashes(",".join((retiring or "", *live)))
                            if h != mine)
        closed = await _close_connections(admin, user, known, secret_name, removed)
    if plan.started or existing is None:
        served = request
    url = with_credentials(pool_url, user, plan.password)
    desired = desired_worker_secret(namespace, name, pool, url, plan.retiring, rotation=served,
                                    grants=wanted, retiring_grants=kept_grants)
    patch = None if existing is None else secret_drift(desired, existing)
    try:
        if existing is None:
            written: Mapping[str, Any] | None = await kube.create_secret(namespace, desired)
        elif patch is not None:
            written = await kube.patch_secret(namespace, secret_name, patch)
        else:
            written = None
    except ApiException as error:
        known.forget(secret_name)
        if plan.password != current:
            known.drawn[secret_name] = plan.password
            await _withdraw(admin, user, acl_rules(
                queue, Role.WORKER, _without(plan.accepted, plan.password),
                granted.limits, granted.queues))
        if not lasting(error):
            raise
        return trouble(refused(namespace, name, error, reading=False,
                               exists=existing is not None,
                               version=version_of(current) if current is not None else None))
    known.written(secret_name)
    if written is not None:
        known.remember(secret_name, written, now)
    events: list[tuple[str, str]] = []
    if existing is None:
        if plan.retiring:
            events.append(("CredentialsRestored",
                           f"Secret {namespace}/{secret_name} was missing: created it with a "
                           f"new password for Redis user {user}; the old one is accepted "
                           "until every pod rolled"))
        else:
            events.append(("CredentialsCreated", f"created Redis user {user} and Secret "
                                                 f"{namespace}/{secret_name} for the workers"))
    elif (patch is not None and not plan.started and not plan.finished
          and _restores(patch)):
        events.append(("CredentialsRestored",
                       f"put back Secret {namespace}/{secret_name} of Redis user {user}"))
    if plan.started:
        events.append(("CredentialsRotating", f"new password for Redis user {user}; the old "
                                              "one is accepted until every pod rolled"))
    if plan.finished:
        events.append(("CredentialsRotated",
                       f"every pod uses the new password of Redis user {user}; the old one "
                       "is removed" + _closed_note(closed, "pods reconnect with the new one")))
    if read_now or existing is None:
        was_open, known.default_open = known.default_open, await default_user_open(admin)
        if known.default_open and not was_open:
            events.append((DEFAULT_OPEN, f"Redis user {user} is {DEFAULT_OPEN_NOTE}"))
    credentials = per_pool(namespace, name, queue, version_of(plan.password),
                           default_open=known.default_open)
    return CredentialsRound(credentials, tuple(events))


def _closed_note(closed: bool, then: str) -> str:
    if closed:
        return f" and the user's connections closed ({then})"
    return (", but connections opened with it stay open: the pool's Redis credential may not "
            "run CLIENT KILL")


async def ensure_producer_credentials(
    kube: ProducerSecretStore, admin: aioredis.Redis, pool: Mapping[str, Any], queue: str,
    pool_url: str, *, wanted: bool, known: KnownSecrets, now: float,
    rotation: str | None = None, clock: float, grace: float,
) -> tuple[str, str] | None:
    """Make the pool's producer user and Secret exist (`wanted`) or go, and move a rotation
    on (`rotation`: the request owed, see `PRODUCER_ROTATE_ANNOTATION`; one the Secret
    already served is not done again; `clock` is Unix time, `grace` how long the old password
    stays accepted); returns (reason, message) for an Event when something changed or a
    problem began (see `event_type`). A Redis that refuses users to a pool without a producer
    Secret is left alone: the workers' credentials report that; one that refuses them to a
    pool with one raises (a rotation owed waits)."""
    namespace, name = pool["metadata"]["namespace"], pool["metadata"]["name"]
    secret_name = producer_secret_name(name)
    user = acl_username(namespace, name, Role.PRODUCER)
    existing = await known.get(kube, namespace, secret_name, now)
    if existing is not None and not pool_owns(existing, pool):
        known.forget(secret_name)
        if not wanted:
            return None
        begun = known.report(secret_name, CONFLICT,
                             _conflict(namespace, secret_name, name, Role.PRODUCER))
        return begun[0] if begun else None
    known.reported.pop(secret_name, None)
    if not wanted:
        if existing is None:
            return None
        await remove_user(admin, namespace, name, Role.PRODUCER)
        await kube.delete_secret(namespace, secret_name)
        known.remember(secret_name, None, now)
        return ("CredentialsRemoved",
                f"deleted producer Redis user {user} and Secret {namespace}/{secret_name}")
    annotations = ((existing or {}).get("metadata") or {}).get("annotations") or {}
    served = annotations.get(ROTATION_ANNOTATION) or None
    requested = rotation is not None and existing is not None and rotation != served
    current = password_of(existing)
    retiring = annotations.get(RETIRING_ANNOTATION) or None
    plan, until = plan_producer_rotation(
        current, retiring, _seconds(annotations.get(RETIRING_UNTIL_ANNOTATION)),
        requested=requested, clock=clock, grace=grace,
        new_password=known.new_password(secret_name),
    )
    if plan.started or existing is None:
        served = rotation
    try:
        await set_user(admin, user, acl_rules(queue, Role.PRODUCER, plan.accepted))
    except redis.exceptions.ResponseError as error:
        if refusal(error) is None or existing is not None:
            raise
        return None
    closed = True
    # a password goes: the retiring one at its grace's end, or at once when a new rotation
    # starts during the grace; every password but the new one when the Secret was missing
    removed = (set() if existing is not None else {"*"}) | (
        set(retiring_hashes(retiring)) if plan.finished or plan.started else set())
    if removed:
        closed = await _close_connections(admin, user, known, secret_name, frozenset(removed))
    desired = desired_worker_secret(namespace, name, pool,
                                    with_credentials(pool_url, user, plan.password),
                                    plan.retiring, Role.PRODUCER, until, served)
    try:
        if existing is None:
            known.remember(secret_name, await kube.create_secret(namespace, desired), now)
        else:
            patch = secret_drift(desired, existing)
            if patch is not None:
                known.remember(secret_name,
                               await kube.patch_secret(namespace, secret_name, patch), now)
    except ApiException:
        known.forget(secret_name)
        if plan.password != current:
            known.drawn[secret_name] = plan.password
            await _withdraw(admin, user, acl_rules(
                queue, Role.PRODUCER, _without(plan.accepted, plan.password)))
        raise
    known.written(secret_name)
    if existing is None:
        return ("CredentialsCreated", f"created producer Redis user {user} and Secret "
                                      f"{namespace}/{secret_name}")
    if plan.started:
        ends = datetime.fromtimestamp(int(until or clock), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return ("CredentialsRotating", f"new password for producer Redis user {user} in Secret "
                                       f"{namespace}/{secret_name}; the old one is accepted "
                                       f"until {ends}")
    if plan.finished:
        return ("CredentialsRotated", f"the old password of producer Redis user {user} is "
                                      "removed" + _closed_note(
                                          closed, "producers reconnect with the new one"))
    return None


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


async def user_password_hashes(admin: aioredis.Redis, username: str) -> tuple[str, ...]:
    """The SHA-256 hashes of the passwords the user has on Redis (none: no such user)."""
    reply: Any = await admin.execute_command("ACL GETUSER", username)  # type: ignore[no-untyped-call]
    replies = reply.values() if isinstance(reply, dict) and "passwords" not in reply else [reply]
    hashes = (h.decode() if isinstance(h, bytes) else str(h)
              for r in replies if isinstance(r, dict) for h in r.get("passwords") or ())
    return tuple(dict.fromkeys(hashes))


async def remove_user(admin: aioredis.Redis, namespace: str, pool: str,
                      role: Role = Role.WORKER) -> bool:
    """Delete one of the pool's users (Redis closes its connections); False if it was gone."""
    try:
        return await delete_user(admin, acl_username(namespace, pool, role))
    except redis.exceptions.ResponseError as error:
        if refusal(error) is None:
            raise
        return False


class UsersKept(Exception):
    """Redis refused to delete a pool's users: the pool's credential may not (NOPERM)."""


async def remove_users(admin: aioredis.Redis, namespace: str, pool: str) -> bool:
    """Delete the pool's worker and producer users (Redis closes their connections); whether
    the worker's was there. A Redis without ACLs has none to delete. Raises `UsersKept`
    when the pool's credential may not delete users."""
    removed: list[bool] = []
    for role in (Role.WORKER, Role.PRODUCER):
        try:
            removed.append(await delete_user(admin, acl_username(namespace, pool, role)))
        except redis.exceptions.ResponseError as error:
            if denied(error):
                raise UsersKept("the pool's Redis credential may not run ACL DELUSER") from None
            if refusal(error) is None:
                raise
            return False
    return removed[0]
