"""kopf handlers: gather inputs, call the pure decisions, apply their outputs.

- create/update/resume of an AgentPool: make its Deployment match the spec;
- one daemon per pool: every pollSeconds (or at once when its Deployment changes) observe the
  Deployment and the queue, put back hand edits, let `actions.act` scale and recover, and write
  the status when `status.status_write_needed` says so. The Deployment and the pods come from
  the watch (the Deployment is read once, when the pool has no copy yet), so a pool where
  nothing changes costs no API request. Its first round that reaches the queue starts by
  requeueing the tasks of pods that went away while no operator ran (`recover_gone_pods_once`);
- events of the pools' Deployments: remember the newest copy and wake the pool's daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from agentpool.models import GROUP, PLURAL, VERSION, AgentPoolSpec
from agentpool.protocol import ProtocolError, QueueFigures, TaskQueue
from agentpool.redis_errors import REDIS_FAILURES
from agentpool.scaling.policy import MIN_POLL_SECONDS

from . import actions, metrics, recovery_actions
from .context import LeftQueue, OperatorContext, PoolPods, PoolState, ServedQueue, pods_of
from .credentials import CONDITION as CREDENTIALS_CONDITION
from .credentials import (
    PRODUCER_ROTATE_ANNOTATION,
    REQUEST_ANNOTATION,
    accept_rotation,
    ensure_producer_credentials,
    ensure_worker_credentials,
    event_type,
    per_pool,
    pool_owns,
    spec_grants,
    worker_secret_name,
)
from .credentials import WARNING_REASONS as CREDENTIALS_WARNINGS
from .deployment import (
    POOL_LABEL,
    borrowed_account,
    controlled_by,
    deployment_drift,
    desired_deployment,
    replayed,
    runs_as_protected,
)
from .disruption_actions import ensure_budget
from .kube import KubeApi, api_error_message
from .observation import ActionResult, PoolObservation
from .queue_loss import data_lost, loss_event, marks_of, queue_identity
from .queue_moves import follow, judge_left_queue, queue_change_refused
from .queue_sharing import queue_address, server_of, sharing_problem, unserved_problem
from .redis_access import QueueAccessError, read_figures, resolve_redis_url, url_origin
from .schedule_actions import upcoming_times
from .schedules import seconds_until_next
from .status import (
    DeploymentView,
    Problem,
    StatusEvent,
    build_status,
    condition_events,
    invalid_spec_status,
    mask_urls,
    sanitize,
    status_write_needed,
)
from .workload import workload_problems

MAX_RETRY_SECONDS = 60.0
CONFLICT_RETRY_SECONDS = 60.0
trace_log = logging.getLogger("agentpool.operator")


def log_traceback(what: str) -> None:
    """The current exception's traceback, credentials masked, to the operator's own log:
    for whoever runs the operator, never in the pool's Events or status."""
    trace_log.error("%s\n%s", what, mask_urls(traceback.format_exc(), every_query_value=True))


SERVICE_ACCOUNT_REFUSED = "ServiceAccountRefused"


class DeploymentRefused(Exception):
    """The operator does not write the pool's Deployment; `reason` (a `Degraded` reason)
    says why: another owner controls one of its name, or the spec asks for what no pool
    may have. `serving`: the pool's own Deployment that serves on meanwhile, if any."""

    def __init__(self, reason: str, message: str,
                 serving: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.serving = serving


def context(memo: Any) -> OperatorContext:
    ctx = memo["context"]
    if not isinstance(ctx, OperatorContext):
        raise RuntimeError("the operator was started without its context")
    return ctx


def pool_key(body: Mapping[str, Any]) -> tuple[str, str]:
    return body["metadata"]["namespace"], body["metadata"]["name"]


def generation_of(body: Mapping[str, Any]) -> int:
    return int(body["metadata"].get("generation") or 0)


def parse_spec(body: Mapping[str, Any]) -> AgentPoolSpec:
    return AgentPoolSpec.model_validate(dict(body.get("spec") or {}))


Logger = logging.Logger | logging.LoggerAdapter[Any]


def post(body: Any, event: StatusEvent, logger: Logger) -> None:
    if event.type == "Warning":
        logger.warning(f"{event.reason}: {event.message}")
        kopf.warn(body, reason=event.reason, message=event.message)
    else:
        logger.info(f"{event.reason}: {event.message}")
        kopf.info(body, reason=event.reason, message=event.message)


def patch_paths(patch: Mapping[str, Any], prefix: str = "", depth: int = 4) -> list[str]:
    """Readable names of what a patch changes, e.g. spec.template.spec.containers."""
    paths: list[str] = []
    for key, value in patch.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, Mapping) and value and depth > 1:
            paths.extend(patch_paths(value, path, depth - 1))
        else:
            paths.append(path)
    return paths


async def ensure_deployment(
    kube: KubeApi,
    state: PoolState,
    body: Any,
    spec: AgentPoolSpec,
    generation: int,
    logger: Logger,
    protected_accounts: Collection[str] = (),
) -> dict[str, Any] | None:
    """Create the pool's Deployment if missing, patch it if owned fields drifted; else no write.

    `spec` is the pool's spec at `generation`. A caller that read it before a newer one was
    applied (a round that waited for the lock while the spec changed) writes nothing: it
    would put the older spec back. Call with `state.lock` held. Raises `DeploymentRefused`
    (another owner's Deployment, a ServiceAccount in `protected_accounts`) and `ApiException`.
    """
    namespace, name = pool_key(body)
    if state.newer_spec_applied(generation):
        return state.deployment
    refusal = borrowed_account(namespace, spec, protected_accounts)
    if refusal is not None:
        raise DeploymentRefused(SERVICE_ACCOUNT_REFUSED, refusal, await stop_borrowing(
            kube, state, body, protected_accounts, logger))
    if not state.deployment_known:
        state.remember_deployment(await kube.get_deployment(namespace, name))
    credentials = state.worker_credentials
    desired = desired_deployment(
        name, namespace, spec, owner=body, initial_replicas=spec.scaling.min_replicas,
        worker_redis_secret=credentials.secret if credentials is not None else None,
        credentials_version=credentials.version if credentials is not None else None,
    )

    actual = state.deployment
    if actual is None:
        try:
            created = await kube.create_deployment(namespace, desired)
        except ApiException as error:
            if error.status != 409:
                raise
            actual = await kube.get_deployment(namespace, name)
            state.remember_deployment(actual)
            if actual is None:
                raise
        else:
            state.remember_deployment(created)
            state.reconciled_generation = generation
            metrics.DEPLOYMENT_WRITES.labels("created").inc()
            post(body, StatusEvent(
                "Normal", "DeploymentCreated",
                f"created Deployment {namespace}/{name} ({spec.worker.image})",
            ), logger)
            return created

    if not controlled_by(actual, body):
        raise DeploymentRefused("DeploymentConflict", (
            f"Deployment {namespace}/{name} exists and is not controlled by this pool; "
            "delete or rename it"))
    patch = deployment_drift(desired, actual)
    if patch is None:
        state.reconciled_generation = generation
        return actual

    patched = await kube.patch_deployment(namespace, name, patch)
    state.remember_deployment(patched)
    changed = ", ".join(patch_paths(patch))
    restored = state.reconciled_generation == generation
    metrics.DEPLOYMENT_WRITES.labels("restored" if restored else "updated").inc()
    if restored:
        event = StatusEvent(
            "Normal", "DeploymentRestored",
            f"put back Deployment {namespace}/{name} fields changed outside the pool: {changed}",
        )
    else:
        event = StatusEvent(
            "Normal", "DeploymentUpdated",
            f"updated Deployment {namespace}/{name} to pool generation {generation}: {changed}",
        )
    state.reconciled_generation = generation
    post(body, event, logger)
    return patched


async def stop_borrowing(kube: KubeApi, state: PoolState, body: Any,
                         protected_accounts: Collection[str], logger: Logger,
                         ) -> dict[str, Any] | None:
    """The pool's Deployment that may serve on while its spec names a protected account (one
    of an earlier spec, with an account of its own), or None. One whose pods run as a
    protected account (made before the operator protected it) is scaled to zero: its pods
    end their runs in their termination grace, and the pool scales it no more."""
    namespace, name = pool_key(body)
    if not state.deployment_known:
        state.remember_deployment(await kube.get_deployment(namespace, name))
    actual = state.deployment
    if actual is None or not controlled_by(actual, body):
        return None
    if not runs_as_protected(actual, namespace, protected_accounts):
        return actual
    if (actual.get("spec") or {}).get("replicas") != 0:
        state.remember_deployment(
            await kube.patch_deployment(namespace, name, {"spec": {"replicas": 0}}))
        post(body, StatusEvent(
            "Warning", SERVICE_ACCOUNT_REFUSED,
            f"scaled Deployment {namespace}/{name} to zero: its pods run as the operator's or "
            "the console's ServiceAccount"), logger)
    return None


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def reconcile(
    body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, retry: int, **_: Any
) -> None:
    """Make the Deployment match the spec at once, without waiting for the daemon's round."""
    ctx = context(memo)
    namespace, name = pool_key(body)
    state = ctx.pool(namespace, name)
    generation = generation_of(body)
    try:
        spec = parse_spec(body)
    except ValidationError as error:  # the pool's owner's to fix: Degraded says so
        raise kopf.PermanentError(f"invalid spec: {sanitize(str(error))}") from None
    refused = queue_change_refused(dict(body.get("status") or {}), spec.queue_name(name))
    if refused is not None:
        raise kopf.PermanentError(f"invalid spec: {refused}")
    try:
        async with state.lock:
            if ctx.settings.per_pool_credentials and (
                    state.worker_credentials is None
                    or state.granted != spec_grants(body.get("spec") or {})):
                # before the Deployment: its pods of a new spec may need rights (a rate
                # limit, a queue to submit to) the user does not have yet
                queue, _problem = await open_queue(ctx, state, namespace, name, spec)
                await refresh_credentials(ctx, state, body, spec, queue, logger)
            if not credentials_pending(ctx, state):
                await ensure_deployment(ctx.api, state, body, spec, generation, logger,
                                        ctx.settings.protected_service_accounts)
    except DeploymentRefused as error:
        metrics.record_reconcile_error(namespace, name, "deployment")
        raise kopf.TemporaryError(str(error), delay=CONFLICT_RETRY_SECONDS) from None
    except ApiException as error:
        metrics.record_reconcile_error(namespace, name, "deployment")
        delay = min(MAX_RETRY_SECONDS, 2.0 ** min(retry, 6))
        raise kopf.TemporaryError(
            f"cannot reconcile the Deployment: {api_error_message(error)}", delay=delay
        ) from None
    finally:
        state.wake.set()


@kopf.on.event("apps", "v1", "deployments", labels={POOL_LABEL: kopf.PRESENT})
async def deployment_event(
    event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    """A pool's Deployment changed (rollout, readiness, hand edit, deletion): wake the pool.

    A copy the pool already has (a watch replaying its listing) changes nothing: no wake-up.
    """
    namespace = body.metadata.namespace
    pool = body.metadata.labels.get(POOL_LABEL)
    if namespace is None or pool is None:
        return
    state = context(memo).pools.get((namespace, pool))
    if state is None:
        return
    seen = None if event.get("type") == "DELETED" else dict(body)
    known = state.deployment if state.deployment_known else None
    unchanged = replayed(known, seen)
    if seen is None:
        state.forget_deployment(dict(body))
    else:
        state.remember_deployment(seen)
    if not unchanged:
        state.wake.set()


CREDENTIALS_PENDING = (
    "the pool's own Redis user is not settled yet (its Redis does not answer): its pods start "
    "once it is, never with the URL the pool gives the operator")


def credentials_pending(ctx: OperatorContext, state: PoolState) -> bool:
    """Per-pool credentials are on and this pool's are not decided yet: a Deployment now would
    hand its pods the pool's own URL (the operator's credential) until a rollout replaced
    them, and agent code may have read it by then. Nor while the pool has no worker Secret
    of its own to give them (`WorkerCredentials.usable`): a Deployment is neither made nor
    changed meanwhile."""
    credentials = state.worker_credentials
    return ctx.settings.per_pool_credentials and (credentials is None or not credentials.usable)


def pending_problem(state: PoolState) -> Problem:
    credentials = state.worker_credentials
    problem = credentials.problem if credentials is not None else None
    return problem or Problem("CredentialsPending", CREDENTIALS_PENDING)


async def refresh_credentials(
    ctx: OperatorContext, state: PoolState, body: Any, spec: AgentPoolSpec,
    queue: TaskQueue | None, logger: Logger,
    pods: Sequence[Mapping[str, Any]] | None = None,
) -> None:
    """Decide what the pool's workers connect with (see `credentials`), creating or
    re-applying the pool's Redis user and its Secret, and moving a rotation on (with the
    pool's pods known). When Redis or the API cannot be asked, an earlier decision stands;
    with none, an existing worker Secret means a pool user. Call with `state.lock` held: the
    create handler and the pool's loop must not both draw a first password."""
    if not ctx.settings.per_pool_credentials:
        state.worker_credentials = None
        return
    namespace, name = pool_key(body)
    try:
        if queue is None or state.redis_url is None:
            raise QueueAccessError("RedisUnreachable", "the pool's Redis cannot be opened")
        annotations = dict((body.get("metadata") or {}).get("annotations") or {})
        accepted = accept_rotation(annotations, str(body["metadata"].get("resourceVersion")),
                                   spec.redis.producer_credentials)
        if accepted is not None:
            await ctx.api.patch_pool(namespace, name, {"metadata": {"annotations": accepted}})
            annotations.update(accepted)
        outcome = await ensure_worker_credentials(
            ctx.api, queue.redis, body, queue.name, state.redis_url,
            known=state.credential_secrets, now=time.monotonic(),
            request=annotations.get(REQUEST_ANNOTATION) or None, pods=pods,
        )
        owed = annotations.get(PRODUCER_ROTATE_ANNOTATION) or None
    except (QueueAccessError, *REDIS_FAILURES, ApiException) as error:
        detail = api_error_message(error) if isinstance(error, ApiException) else str(error)
        logger.debug(f"cannot check the workers' Redis user: {sanitize(detail)}")
        if state.worker_credentials is None:
            with contextlib.suppress(ApiException):
                secret = await ctx.api.get_secret(namespace, worker_secret_name(name))
                if secret is not None and pool_owns(secret, body):
                    state.worker_credentials = per_pool(namespace, name, spec.queue_name(name))
        return
    state.worker_credentials = outcome.credentials
    state.granted = spec_grants(body.get("spec") or {})
    for reason, message in outcome.events:
        post(body, StatusEvent(event_type(reason), reason, message), logger)
    if outcome.credentials.secret is None or not outcome.credentials.usable:
        return
    try:
        producer_event = await ensure_producer_credentials(
            ctx.api, queue.redis, body, queue.name, state.redis_url,
            wanted=spec.redis.producer_credentials, known=state.credential_secrets,
            now=time.monotonic(), rotation=owed, clock=time.time(),
            grace=ctx.settings.producer_password_grace_seconds,
        )
        if producer_event:
            reason, message = producer_event
            post(body, StatusEvent(event_type(reason), reason, message), logger)
        if owed is not None:  # done (the Secret records it): the request may go
            await ctx.api.patch_pool(namespace, name, {"metadata": {"annotations": {
                PRODUCER_ROTATE_ANNOTATION: None}}})
    except (*REDIS_FAILURES, ApiException) as error:
        detail = api_error_message(error) if isinstance(error, ApiException) else str(error)
        logger.debug(f"cannot check the producer's Redis user: {sanitize(detail)}")


KNOWN_URL_MEMO = "pool_redis_url"
"""In the pool's own memo (kopf keeps one per object, shared by its daemon and its handlers,
forgotten with the object): the Redis URL the pool's loop last used, for the delete handler
when the pool's URL Secret is gone before the pool. Its loop ends as the deletion starts."""


def known_redis_url(ctx: OperatorContext, memo: kopf.Memo, namespace: str,
                    name: str) -> str | None:
    """The Redis URL the pool's loop last used, kept in the pool's memo (see
    `KNOWN_URL_MEMO`): the URL of its last round, else of the last round that opened its
    queue (a Redis that stopped answering leaves only that one)."""
    state = ctx.pools.get((namespace, name))
    if state is not None:
        url = state.redis_url or (state.served.url if state.served is not None else None)
        if url is not None:
            memo[KNOWN_URL_MEMO] = url
    known = memo.get(KNOWN_URL_MEMO)
    return known if isinstance(known, str) else None


@kopf.daemon(
    GROUP, VERSION, PLURAL, id="observe", cancellation_backoff=2.0, cancellation_timeout=5.0
)
async def observe_pool(
    body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, stopped: kopf.DaemonStopped,
    **kwargs: Any,
) -> None:
    """The pool's loop: observe, act, report; then sleep until the next poll or a wake-up."""
    pool_pods: PoolPods = kwargs["pool_pods"]  # kopf's index of `pod_events.pool_pods`
    ctx = context(memo)
    namespace, name = pool_key(body)
    state = ctx.pool(namespace, name)
    try:
        while not stopped:
            state.wake.clear()
            try:
                delay = await observe_once(ctx, state, body, logger, pool_pods)
            except Exception as error:
                logger.error(f"observing the pool failed: {sanitize(str(error))}")
                log_traceback(f"observing pool {namespace}/{name} failed")
                metrics.record_reconcile_error(namespace, name, "observe")
                state.failing_since = state.failing_since or time.monotonic()
                delay = next_round_in(MIN_POLL_SECONDS, state.failing_for(time.monotonic()))
            await sleep(state, stopped, delay)
    finally:
        known_redis_url(ctx, memo, namespace, name)  # for pool_deletion, see there
        await ctx.forget(namespace, name)
        metrics.forget_pool(namespace, name)


async def sleep(state: PoolState, stopped: kopf.DaemonStopped, delay: float) -> None:
    """Until `delay` passed, the pool is woken, or its daemon is asked to stop."""
    waiters = {
        asyncio.ensure_future(state.wake.wait()),
        asyncio.ensure_future(stopped.wait(delay)),
    }
    try:
        await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def next_round_in(poll_seconds: float, failing_for: float | None,
                  schedule_due_in: float | None = None) -> float:
    """The poll interval; while failing, as long as the failure lasts (so the pool's own
    retries back off exponentially), capped; when not failing, sooner when a schedule's next
    time comes first (`schedule_due_in`), so that its task is submitted when it comes, not up
    to a poll later, however short its startingDeadlineSeconds. A failing loop keeps its
    backoff: it could not submit the task, and would otherwise run a round at every time of
    every schedule. A wake-up (its Deployment or a pod changed) still runs a round at once."""
    base = max(MIN_POLL_SECONDS, poll_seconds)
    delay = min(MAX_RETRY_SECONDS, max(base, failing_for or 0.0))
    if schedule_due_in is None or failing_for is not None:
        return delay
    return min(delay, schedule_due_in)


async def open_queue(
    ctx: OperatorContext, state: PoolState, namespace: str, name: str, spec: AgentPoolSpec,
    pods: Sequence[Mapping[str, Any]] | None = None,
) -> tuple[TaskQueue | None, Problem | None]:
    """The pool's queue on its Redis (no round trip yet), or why there is none."""
    now = time.monotonic()
    source = spec.redis.model_dump_json()
    pod_names = (
        None if pods is None
        else frozenset(str((p.get("metadata") or {}).get("name")) for p in pods)
    )
    try:
        url = state.cached_redis_url(now, source, pod_names)
        if url is None:
            url = await resolve_redis_url(ctx.api, namespace, spec.redis)
            state.remember_redis_url(url, now, source, pod_names)
        client = await ctx.redis.client(namespace, name, url)
        try:
            return TaskQueue(client, spec.queue_name(name)), None
        except ProtocolError as error:
            raise QueueAccessError("InvalidQueueName", str(error)) from None
    except QueueAccessError as error:
        state.redis_url = None
        return None, error.problem


async def observe_queue(
    state: PoolState, queue: TaskQueue | None, problem: Problem | None,
    origin: str | None = None,
) -> tuple[QueueFigures | None, TaskQueue | None, Problem | None]:
    """The queue's figures; the queue is dropped (and its URL read again) when they fail.
    `origin`: the Secret the pool's URL came from, named when Redis refuses its password."""
    if queue is None:
        return None, None, problem
    try:
        return await read_figures(queue, origin=origin), queue, None
    except QueueAccessError as error:
        state.redis_url = None
        return None, None, error.problem


def check_queue_kept(state: PoolState, body: Any, queue: TaskQueue, redis_url: str,
                     figures: QueueFigures, logger: Logger) -> None:
    """Compare this round's figures with the last round's: when Redis lost the queue's data
    (see `queue_loss`), say so once, with a Warning Event and a metric. Only figures that
    were read come here: a failed read keeps the last round's for the next comparison."""
    current = marks_of(queue_identity(redis_url, queue.name), figures)
    loss = data_lost(state.queue_marks, current)
    state.queue_marks = current
    if loss is not None:
        namespace, name = pool_key(body)
        metrics.record_queue_data_lost(namespace, name)
        post(body, loss_event(loss), logger)


LEFT_QUEUE_READ_SECONDS = 2.0
"""A left queue's read waits no longer: a Redis that hangs must not slow the pool's round."""


async def follow_left_queues(
    ctx: OperatorContext, state: PoolState, queue: TaskQueue | None,
) -> tuple[list[Problem], list[StatusEvent]]:
    """Follow the queues the pool left on another Redis (see `queue_moves`): this round's
    problems and the Warning Events owed. Call after `state.queue_address` is set."""
    current = None
    if queue is not None and state.redis_url is not None and state.queue_address is not None:
        current = ServedQueue(state.queue_address, state.redis_url, queue.name)
    served = state.served
    plan = follow(served.address if served else None,
                  current.address if current else None, state.left_queues)
    for address in plan.stop:
        await state.left_queues.pop(address).close()
    if plan.start is not None and served is not None:
        state.left_queues[plan.start] = LeftQueue(served.url, served.name)
    if current is not None:
        state.served = current
    problems: list[Problem] = []
    events: list[StatusEvent] = []

    async def read(left: LeftQueue) -> tuple[QueueFigures | None, str | None]:
        try:
            async with asyncio.timeout(LEFT_QUEUE_READ_SECONDS):
                return await read_figures(await left.queue(ctx.redis)), None
        except QueueAccessError as error:
            return None, error.message
        except TimeoutError:
            return None, f"no answer within {LEFT_QUEUE_READ_SECONDS:g} s"

    lefts = list(state.left_queues.items())
    reads = await asyncio.gather(*(read(left) for _, left in lefts))
    now = time.monotonic()
    for (address, left), (figures, failure) in zip(lefts, reads, strict=True):
        if figures is None:
            left.unreadable_since = left.unreadable_since or now
        else:
            left.unreadable_since = None
        verdict = judge_left_queue(
            address, figures, failure, warned=left.warned,
            unreadable_for=now - left.unreadable_since if left.unreadable_since else 0.0)
        if verdict.event is not None:
            events.append(verdict.event)
            left.warned = True
        if verdict.done:
            await state.left_queues.pop(address).close()
        elif verdict.problem is not None:
            problems.append(verdict.problem)
    return problems, events


async def recover_gone_pods_once(
    ctx: OperatorContext, state: PoolState, queue: TaskQueue, body: kopf.Body,
    pods: Sequence[Mapping[str, Any]] | None, logger: Logger,
) -> None:
    """Once per loop, in its first round that reaches the queue, before the figures are read:
    requeue the tasks of pods that went away while no operator ran (no pod event reports
    them). Tried again next round if Redis or the API fails."""
    known = [str((p.get("metadata") or {}).get("name")) for p in pods or ()]
    try:
        await recovery_actions.recover_gone_pods(queue, ctx.api, body, known, state.recovery)
    except (*REDIS_FAILURES, ApiException) as error:
        detail = api_error_message(error) if isinstance(error, ApiException) else repr(error)
        logger.warning("cannot check for pods gone while the operator was away: "
                       f"{sanitize(detail)}")
        return
    state.recovery.gone_pods_checked = True


INVALID_SPEC_RETRY_SECONDS = 10.0


def spec_problem(error: ValidationError) -> str:
    """The models' first objection, with where it is, for a person."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    return sanitize(f"spec.{where}: {first.get('msg', 'invalid')}" if where
                    else str(first.get("msg", "invalid")))


async def report_invalid_spec(ctx: OperatorContext, state: PoolState, body: kopf.Body,
                              problem: str, now: datetime, generation: int,
                              logger: Logger) -> None:
    """Degraded with InvalidSpec, and its Warning Event when it turns so, like any other
    condition turning bad. Not a reconcile error: the operator did nothing wrong, and the
    condition (its metric, AgentPoolDegraded) already says what the pool's owner must fix."""
    namespace, name = pool_key(body)
    previous = state.last_status or dict(body.get("status") or {})
    new = invalid_spec_status(previous, problem, now=now, generation=generation)
    if new != previous:
        await ctx.api.patch_pool_status(namespace, name, new)
        metrics.STATUS_WRITES.inc()
        state.last_status = new
        for event in condition_events(previous, new):
            post(body, event, logger)
    metrics.record_status(namespace, name, new)


async def observe_once(
    ctx: OperatorContext,
    state: PoolState,
    body: kopf.Body,
    logger: kopf.Logger,
    pool_pods: PoolPods | None = None,
) -> float:
    """One round for one pool; returns the seconds until the next round.

    In order: the spec parsed (an invalid one, or one naming a queue other than the one the
    pool serves, is reported and nothing else done); the queues the pool left on another
    Redis (`follow_left_queues`); the pool's Redis credentials (`refresh_credentials`), its
    Deployment (`ensure_deployment`), the installed CRD's check and the PodDisruptionBudget
    (`ensure_budget`); at a pool's first round, the tasks of pods gone while no operator ran;
    the queue's figures, whether Redis lost the queue (`check_queue_kept`) and may evict or
    is full (`state.memory`); then `actions.act` (recovery, tenants, rate limits, scaling
    with the busy labels, schedules); last the status, written when it changed. The pool's
    pods come from `pool_pods` (the watch); without it, `actions.act` lists them.
    """
    namespace, name = pool_key(body)
    generation = generation_of(body)
    now = datetime.now(UTC)
    try:
        spec = parse_spec(body)
    except ValidationError as error:
        state.seen = True
        await report_invalid_spec(ctx, state, body, spec_problem(error), now, generation,
                                  logger)
        return INVALID_SPEC_RETRY_SECONDS
    refused = queue_change_refused(state.last_status or dict(body.get("status") or {}),
                                   spec.queue_name(name))
    if refused is not None:
        state.seen = True
        await report_invalid_spec(ctx, state, body, refused, now, generation, logger)
        return INVALID_SPEC_RETRY_SECONDS

    pods = None if pool_pods is None else pods_of(pool_pods, namespace, name)
    queue, queue_problem = await open_queue(ctx, state, namespace, name, spec, pods)
    state.queue_address = (
        None if queue is None or state.redis_url is None
        else queue_address(state.redis_url, queue.name, namespace)
    )
    state.seen = True
    left_problems, left_events = await follow_left_queues(ctx, state, queue)

    deployment_problem: Problem | None = None
    async with state.lock:
        if state.newer_spec_applied(generation):
            # A newer spec was applied while this round waited for the lock: the rest of the
            # round (credentials, scaling, the budget) would act on the older one.
            return MIN_POLL_SECONDS
        await refresh_credentials(ctx, state, body, spec, queue, logger, pods)
        try:
            deployment: dict[str, Any] | None = None
            if credentials_pending(ctx, state):
                deployment, deployment_problem = state.deployment, pending_problem(state)
            else:
                deployment = await ensure_deployment(
                    ctx.api, state, body, spec, generation, logger,
                    ctx.settings.protected_service_accounts)
        except DeploymentRefused as error:
            deployment, deployment_problem = error.serving, Problem(error.reason, str(error))
        except ApiException as error:
            deployment = state.deployment
            deployment_problem = Problem("DeploymentError", api_error_message(error))

    crd_problem = await ctx.installed_crd.check(ctx.api)
    budget_problem = None
    if deployment is not None:
        budget_problem = await ensure_budget(ctx.api, state.guard, body, spec, generation)
    if queue is not None and not state.recovery.gone_pods_checked:
        await recover_gone_pods_once(ctx, state, queue, body, pods, logger)
    figures, queue, queue_problem = await observe_queue(
        state, queue, queue_problem, url_origin(namespace, spec.redis))
    if figures is not None and queue is not None and state.redis_url is not None:
        check_queue_kept(state, body, queue, state.redis_url, figures, logger)
    evicting, full = (
        await state.memory.current(queue.redis, queue=queue.name) if queue is not None
        else (None, None))
    previous = state.last_status
    if previous is None:
        previous = dict(body.get("status") or {})

    observation = PoolObservation(
        namespace=namespace, name=name, pool=body, spec=spec, deployment=deployment,
        figures=figures, queue=queue, previous_status=previous, now=now, state=state,
        pods=pods, deployment_problem=deployment_problem,
    )
    try:
        result = await actions.act(observation, ctx.api)
    except Exception as error:
        logger.error(f"scaling and recovery failed: {sanitize(str(error))}")
        log_traceback(f"scaling and recovery of {namespace}/{name} failed")
        metrics.record_reconcile_error(namespace, name, "act")
        result = ActionResult()

    credentials_problem = (
        state.worker_credentials.problem if state.worker_credentials is not None else None)
    if credentials_problem == deployment_problem:  # said already
        credentials_problem = None
    addresses = {key: pool.queue_address for key, pool in ctx.pools.items()}
    shared = sharing_problem((namespace, name), addresses)
    unserved = unserved_problem((namespace, name), addresses, spec.worker.submits_to or [],
                                every_pool_seen=all(p.seen for p in ctx.pools.values()))
    new = build_status(
        queue=spec.queue_name(name),
        generation=generation,
        deployment=DeploymentView.from_body(deployment),
        figures=result.figures if result.figures is not None else figures,
        previous=previous,
        now=now,
        queue_problem=queue_problem,
        deployment_problem=deployment_problem,
        extra_fields={**result.status_fields, **(
            {"redis": server_of(state.queue_address)}
            if state.redis_url and state.queue_address else {})},
        # A full Redis comes first of the problems that leave the pool ready: no new run
        # starts and every producer is refused until a person acts (see docs/operator.md).
        degraded_problems=[*([full] if full is not None else []),
                           *result.problems,
                           *workload_problems(deployment, pods, now,
                                              ctx.settings.unschedulable_grace_seconds),
                           *left_problems,
                           *(p for p in (shared, unserved, evicting, budget_problem,
                                         crd_problem, credentials_problem)
                             if p is not None)],
        extra_conditions=[
            *result.conditions,
            *([state.worker_credentials.condition] if state.worker_credentials else []),
        ],
        paused=spec.paused,
        gone_conditions=() if ctx.settings.per_pool_credentials else (CREDENTIALS_CONDITION,),
    )
    posted: set[str] = set()
    if status_write_needed(previous, new, now, state.last_write,
                           ctx.settings.status_refresh_seconds):
        await ctx.api.patch_pool_status(namespace, name, new)
        metrics.STATUS_WRITES.inc()
        state.last_status, state.last_write = new, now
        for event in condition_events(previous, new):
            if event.reason in CREDENTIALS_WARNINGS:  # its credentials round said it
                continue
            post(body, event, logger)
            posted.add(event.reason)
    for event in left_events:
        if event.reason not in posted:  # Degraded turning so said it already
            post(body, event, logger)
    metrics.record_status(namespace, name, new)
    metrics.record_spec(namespace, name, spec)
    latest = result.figures if result.figures is not None else figures
    if latest is not None:
        metrics.record_queue_totals(namespace, name, latest.stats)

    for problem in (queue_problem, deployment_problem):
        if problem is not None:
            metrics.PROBLEMS.labels(problem.reason).inc()
    failing = queue_problem is not None or deployment_problem is not None
    if not failing:
        metrics.record_observed(namespace, name)
    state.failing_since = (state.failing_since or time.monotonic()) if failing else None
    due_in = seconds_until_next(upcoming_times(spec, result.status_fields), now,
                                datetime.now(UTC))
    return next_round_in(spec.scaling.poll_seconds, state.failing_for(time.monotonic()), due_in)
