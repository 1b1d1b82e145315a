"""The worker Deployment of a pool, and what it takes to put it back: pure decisions.

`desired_deployment` renders the Deployment from the pool spec. `deployment_drift` compares it
with the Deployment as the API server returns it and answers with a JSON merge patch
(`application/merge-patch+json`: lists are replaced whole, so hand-added env entries go too)
restoring only the fields the operator owns, or None when nothing owned differs. Fields the API
server fills in (defaults, status, replicas) never count as drift, so reconciling an unchanged
pool writes nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from typing import Any

from kubernetes.utils.quantity import parse_quantity

from agentpool.models import (
    SCRATCH_VOLUME,
    WORKER_CONTAINER_NAME,
    AgentPoolSpec,
    SecretKeyRef,
    WorkerSpec,
)
from agentpool.ratelimit import encode_limits, limit_configs

WORKER_CONTAINER = WORKER_CONTAINER_NAME
HTTP_PORT = 8080
POOL_LABEL = "agentpool.dev/pool"
CREDENTIALS_VERSION = "agentpool.dev/credentials-version"
"""Pod template annotation: the version of the workers' Redis password (see credentials.py)."""
POD_METADATA_KEYS = "agentpool.dev/pod-metadata-keys"
"""Deployment annotation: the keys of spec.worker.podLabels and podAnnotations last put on the
pod template, so that a key removed from the spec is removed from the pods while labels and
annotations others add (`kubectl rollout restart`'s) stay."""
GRACE_MARGIN_SECONDS = 15
"""Added to drainSeconds so that the worker's own drain deadline fires before the SIGKILL."""
COMMAND_HANDLER = "agentpool_worker.command:run"
"""The worker's handler that runs spec.worker.taskCommand for each task."""
PROBE_KILL_GRACE_SECONDS = 5
"""Grace after a failed liveness or startup probe. A container that fails them is wedged (a
stalled event loop, a stopped process): waiting drainSeconds for it only delays the restart
that gives its tasks back. A SIGTERM for any other reason still gets the pod's full grace."""

RUN_AS_USER = 10001



# Owned fields that mirror the user's spec: extra keys found in the cluster are drift too.
_EXACT_KEYS = frozenset({
    "resources", "envFrom", "nodeSelector", "tolerations", "affinity", "imagePullSecrets",
    "topologySpreadConstraints",
})
_QUANTITY_PARENTS = frozenset({"limits", "requests"})
"""Resource lists: every value is a quantity (container and volume claim resources)."""
_QUANTITY_KEYS = frozenset({"sizeLimit", "divisor"})
"""Quantity fields elsewhere in a pod template (emptyDir, resourceFieldRef)."""
_POD_PASS_THROUGH = (
    "nodeSelector",
    "tolerations",
    "affinity",
    "serviceAccountName",
    "imagePullSecrets",
    "priorityClassName",
    "runtimeClassName",
    "topologySpreadConstraints",
)
_POD = ("spec", "template", "spec")
_TEMPLATE_LABELS = ("spec", "template", "metadata", "labels")
_POD_METADATA_RECORD = ("metadata", "annotations", POD_METADATA_KEYS)
_TEMPLATE_ANNOTATIONS = ("spec", "template", "metadata", "annotations")
"""Owned only when the pool sets one (the credentials version, podAnnotations); others' stay."""
_OWNED_PATHS: tuple[tuple[str, ...], ...] = (
    ("metadata", "labels"),
    ("spec", "strategy"),
    _TEMPLATE_LABELS,
    _TEMPLATE_ANNOTATIONS,
    (*_POD, "securityContext"),
    (*_POD, "automountServiceAccountToken"),
    (*_POD, "terminationGracePeriodSeconds"),
    (*_POD, "initContainers"),
    (*_POD, "containers"),
    (*_POD, "volumes"),
    *((*_POD, key) for key in _POD_PASS_THROUGH),
)


POD_NAME_BASE = 58
"""Kubernetes cuts a generated name's base to this many characters before its random five."""
_POD_SUFFIX = re.compile(r"[a-z0-9]{5}")
_WHOLE_REST = re.compile(r"[a-z0-9]+-")
"""After ``<pool>-`` in a base Kubernetes did not cut: the ReplicaSet's hash and a dash."""
_CUT_REST = re.compile(r"([a-z0-9]+-?)?")
"""The same, in a base cut to POD_NAME_BASE: any start of it."""


def pod_name_prefix(pool: str) -> str:
    """How the names of the pool's pods begin (``<pool>-``, cut as Kubernetes cuts them)."""
    return f"{pool}-"[:POD_NAME_BASE]


def deployment_pod(name: str, pool: str) -> bool:
    """Whether `name` is one the pool's Deployment gives its pods: ``<pool>-<hash>-`` and five
    random characters, the part before them cut to 58 characters for a long pool name."""
    base, suffix = name[:-5], name[-5:]
    prefix = pod_name_prefix(pool)
    if (len(base) > POD_NAME_BASE or not _POD_SUFFIX.fullmatch(suffix)
            or not base.startswith(prefix)):
        return False
    rest = _WHOLE_REST if len(base) < POD_NAME_BASE else _CUT_REST
    return rest.fullmatch(base[len(prefix):]) is not None


def pool_labels(pool_name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "agentpool-worker",
        "app.kubernetes.io/instance": pool_name,
        "app.kubernetes.io/managed-by": "agentpool-operator",
        POOL_LABEL: pool_name,
    }


def desired_deployment(
    pool_name: str,
    namespace: str,
    spec: AgentPoolSpec,
    *,
    owner: Mapping[str, Any] | None = None,
    initial_replicas: int | None = None,
    worker_redis_secret: SecretKeyRef | None = None,
    credentials_version: str | None = None,
) -> dict[str, Any]:
    """The apps/v1 Deployment running the pool's workers.

    `replicas` belongs to scaling and is only set from `initial_replicas`, for the create call.
    `owner` is the AgentPool object; when given, the Deployment is garbage-collected with it.
    `worker_redis_secret` (the pool's own Redis user) replaces `spec.redis` as the workers'
    AGENTPOOL_REDIS_URL; `credentials_version` goes on the pod template, so that a new
    password in that Secret rolls the pods.
    """
    labels = pool_labels(pool_name)
    metadata: dict[str, Any] = {"name": pool_name, "namespace": namespace, "labels": labels}
    if owner is not None:
        metadata["ownerReferences"] = [owner_reference(owner)]
    worker = spec.worker
    pod_labels = {**(worker.pod_labels or {}), **labels}
    pod_annotations = dict(worker.pod_annotations or {})
    if credentials_version:
        pod_annotations[CREDENTIALS_VERSION] = credentials_version
    user_keys = _user_metadata_keys(worker, labels)
    if user_keys:
        metadata["annotations"] = {POD_METADATA_KEYS: user_keys}
    deployment_spec: dict[str, Any] = {
        "selector": {"matchLabels": {POOL_LABEL: pool_name}},
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "25%"},
        },
        "template": {
            "metadata": {
                "labels": pod_labels,
                **({"annotations": pod_annotations} if pod_annotations else {}),
            },
            "spec": _pod_spec(pool_name, spec, worker_redis_secret),
        },
    }
    if initial_replicas is not None:
        deployment_spec = {"replicas": initial_replicas, **deployment_spec}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": deployment_spec,
    }


def _user_metadata_keys(worker: WorkerSpec, labels: Mapping[str, str]) -> str:
    """The podLabels and podAnnotations keys the pool puts on its pods, as the text of the
    POD_METADATA_KEYS annotation ("" when none). A key the operator sets itself is not the
    user's: removing it from the spec must not remove ours."""
    user_labels = sorted(set(worker.pod_labels or ()) - set(labels))
    user_annotations = sorted(set(worker.pod_annotations or ()) - {CREDENTIALS_VERSION})
    if not user_labels and not user_annotations:
        return ""
    return json.dumps({"labels": user_labels, "annotations": user_annotations},
                      separators=(",", ":"))


def borrowed_account(namespace: str, spec: AgentPoolSpec,
                     protected: Collection[str]) -> str | None:
    """Why the pool's pods may not run as the ServiceAccount it names, or None.

    The operator creates the pods, so whoever may create a pool could otherwise give its
    workers the operator's own rights (or the console's) without being allowed those."""
    account = spec.worker.service_account_name
    if account is None or f"{namespace}/{account}" not in protected:
        return None
    return (f"spec.worker.serviceAccountName: {account} is the ServiceAccount of the "
            "agentpool operator or console; a pool's workers may not run with its rights "
            "(give them a ServiceAccount of their own)")


def runs_as_protected(deployment: Mapping[str, Any], namespace: str,
                      protected: Collection[str]) -> bool:
    """Whether a Deployment's pods run as one of the `protected` ServiceAccounts."""
    pod = ((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}
    account = pod.get("serviceAccountName")
    return account is not None and f"{namespace}/{account}" in protected


def owner_reference(owner: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def controlled_by(owned: Mapping[str, Any], pool: Mapping[str, Any]) -> bool:
    """Whether `pool` is the controlling owner of `owned` (its Deployment, its budget)."""
    uid = pool["metadata"].get("uid")
    references = (owned.get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid and ref.get("controller") for ref in references)


def _container_security() -> dict[str, Any]:
    """Of every container of a worker pod, init containers and sidecars too: the restricted
    Pod Security Standard, with a read-only root filesystem."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
    }


def _scratch_mount() -> dict[str, Any]:
    return {"name": SCRATCH_VOLUME, "mountPath": "/tmp"}


def _pod_spec(pool_name: str, spec: AgentPoolSpec,
              redis_secret: SecretKeyRef | None) -> dict[str, Any]:
    worker = spec.worker
    pod: dict[str, Any] = {
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationGracePeriodSeconds": worker.stop_seconds + GRACE_MARGIN_SECONDS,
        "automountServiceAccountToken": worker.automount_service_account_token,
        "containers": [_container(pool_name, spec, redis_secret)],
        "volumes": _volumes(worker),
    }
    if worker.init_containers:
        pod["initContainers"] = [
            _init_container(c.model_dump(by_alias=True, exclude_none=True),
                            worker.image_pull_policy)
            for c in worker.init_containers]
    pod.update(_passed_through(worker, _POD_PASS_THROUGH))
    for constraint in pod.get("topologySpreadConstraints", ()):
        constraint.setdefault("labelSelector", {"matchLabels": {POOL_LABEL: pool_name}})
    return pod


def _container(pool_name: str, spec: AgentPoolSpec,
               redis_secret: SecretKeyRef | None) -> dict[str, Any]:
    worker = spec.worker
    container: dict[str, Any] = {
        "name": WORKER_CONTAINER,
        "image": worker.image,
        "imagePullPolicy": worker.image_pull_policy or _default_pull_policy(worker.image),
        "env": _env(pool_name, spec, redis_secret),
        "ports": [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}],
        "startupProbe": _http_probe(
            "/livez", period=2, timeout=2, failures=30, kill_grace=PROBE_KILL_GRACE_SECONDS
        ),
        "livenessProbe": _http_probe(
            "/livez", period=10, timeout=3, failures=3, kill_grace=PROBE_KILL_GRACE_SECONDS
        ),
        "readinessProbe": _http_probe("/readyz", period=5, timeout=2, failures=2),
        "securityContext": _container_security(),
        "volumeMounts": [
            _scratch_mount(),
            *(m.model_dump(by_alias=True, exclude_none=True) for m in worker.volume_mounts or ()),
        ],
    }
    container.update(_passed_through(worker, ("envFrom", "resources")))
    return container


def _init_container(given: dict[str, Any], pull_policy: str | None) -> dict[str, Any]:
    """An init container or sidecar as the pool gives it, under the worker's security context
    (its own user, group or writable root filesystem if it asks), with the scratch volume at
    /tmp (where it can leave files for the worker) and the pool's image pull policy, if it
    sets one (an image loaded into the nodes, or one that must be pulled every time, is so
    for all of the pod's containers)."""
    container = {**given,
                 "securityContext": {**_container_security(), **given.get("securityContext", {})},
                 "volumeMounts": [_scratch_mount(), *given.get("volumeMounts", ())]}
    if pull_policy is not None:
        container["imagePullPolicy"] = pull_policy
    return container


def _volumes(worker: WorkerSpec) -> list[dict[str, Any]]:
    """The scratch volume at /tmp (the root filesystem is read-only), then the pool's own; a
    pool volume named like the scratch one replaces it."""
    given = [v.model_dump(by_alias=True, exclude_none=True) for v in worker.volumes or ()]
    scratch = next((v for v in given if v["name"] == SCRATCH_VOLUME),
                   {"name": SCRATCH_VOLUME, "emptyDir": {}})
    return [scratch, *(v for v in given if v["name"] != SCRATCH_VOLUME)]


def _passed_through(worker: WorkerSpec, keys: tuple[str, ...]) -> dict[str, Any]:
    """The worker fields copied verbatim into the pod template (fresh copies, empties left out)."""
    dumped = worker.model_dump(by_alias=True, exclude_none=True)
    return {key: dumped[key] for key in keys if dumped.get(key)}


def _env(pool_name: str, spec: AgentPoolSpec,
         redis_secret: SecretKeyRef | None) -> list[dict[str, Any]]:
    """The worker's settings, then the user's env; a user entry replaces ours of the same name."""
    worker = spec.worker
    redis_url: dict[str, Any]
    ref = redis_secret or spec.redis.url_secret_ref
    if ref is not None:
        redis_url = {"valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
    else:
        redis_url = {"value": spec.redis.url}
    ours: list[dict[str, Any]] = [
        {"name": "AGENTPOOL_REDIS_URL", **redis_url},
        {"name": "AGENTPOOL_QUEUE", "value": spec.queue_name(pool_name)},
        {"name": "AGENTPOOL_HANDLER", "value": worker.handler or COMMAND_HANDLER},
        {"name": "AGENTPOOL_CONCURRENCY", "value": str(worker.concurrency)},
        {"name": "AGENTPOOL_TASK_TIMEOUT_SECONDS", "value": str(worker.task_timeout_seconds)},
        {"name": "AGENTPOOL_MAX_ATTEMPTS", "value": str(worker.max_attempts)},
        {"name": "AGENTPOOL_DRAIN_SECONDS", "value": str(worker.stop_seconds)},
        {"name": "AGENTPOOL_PORT", "value": str(HTTP_PORT)},
        _field_env("AGENTPOOL_POD_NAME", "metadata.name"),
        _field_env("AGENTPOOL_POD_NAMESPACE", "metadata.namespace"),
    ]
    if worker.task_command is not None:
        ours.append({"name": "AGENTPOOL_TASK_COMMAND",
                     "value": json.dumps(worker.task_command, ensure_ascii=False)})
    if spec.rate_limits:
        limits = encode_limits(limit_configs(spec.rate_limits))
        ours.append({"name": "AGENTPOOL_RATE_LIMITS", "value": limits})
    if spec.redis.durability != "none":
        ours.append({"name": "AGENTPOOL_DURABILITY", "value": spec.redis.durability})
    if worker.submits_to:
        ours.append({"name": "AGENTPOOL_SUBMITS_TO", "value": ",".join(worker.submits_to)})
    users = [e.model_dump(by_alias=True, exclude_none=True) for e in worker.env or []]
    overridden = {e["name"] for e in users}
    return [e for e in ours if e["name"] not in overridden] + users


def _field_env(name: str, field_path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": field_path}}}


def _http_probe(
    path: str, *, period: int, timeout: int, failures: int, kill_grace: int | None = None
) -> dict[str, Any]:
    probe: dict[str, Any] = {
        "httpGet": {"path": path, "port": "http", "scheme": "HTTP"},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
        "successThreshold": 1,
    }
    if kill_grace is not None:
        probe["terminationGracePeriodSeconds"] = kill_grace
    return probe


def _default_pull_policy(image: str) -> str:
    """What the API server would pick, so that an unset policy does not read as drift."""
    if "@" in image:
        return "IfNotPresent"
    last = image.rsplit("/", 1)[-1]
    tag = last.split(":", 1)[1] if ":" in last else "latest"
    return "Always" if tag == "latest" else "IfNotPresent"


def deployment_drift(
    desired: Mapping[str, Any], actual: Mapping[str, Any]
) -> dict[str, Any] | None:
    """A JSON merge patch putting back the owned fields of `actual`, or None if they match.

    The selector is immutable and `replicas` belongs to scaling: neither is compared.
    """
    patch: dict[str, Any] = {}
    for path in _OWNED_PATHS:
        want, have = _get(desired, path), _get(actual, path)
        if want is None and path == _TEMPLATE_ANNOTATIONS:
            continue
        exact = path[-1] in _EXACT_KEYS
        if _covers(want, have, key=path[-1], exact=exact):
            continue
        _put(patch, path, _merge_patch(want, have) if exact else want)
        if path[-1] == "serviceAccountName":
            # The deprecated twin would otherwise restore the old name when ours is removed.
            _put(patch, (*_POD, "serviceAccount"), want)
    _remove_stale_pod_metadata(patch, desired, actual)
    return patch or None


def _remove_stale_pod_metadata(patch: dict[str, Any], desired: Mapping[str, Any],
                               actual: Mapping[str, Any]) -> None:
    """Null the podLabels and podAnnotations keys the pods got from an earlier spec and the
    current one dropped, and keep the record of the keys applied (POD_METADATA_KEYS)."""
    applied = _applied_keys(_get(actual, _POD_METADATA_RECORD))
    for kind, path in (("labels", _TEMPLATE_LABELS), ("annotations", _TEMPLATE_ANNOTATIONS)):
        wanted, present = _get(desired, path) or {}, _get(actual, path) or {}
        stale = {k: None for k in applied[kind] if k not in wanted and k in present}
        if stale:
            _put(patch, path, {**(_get(patch, path) or {}), **stale})
    want = _get(desired, _POD_METADATA_RECORD)
    if (want or "") != (_get(actual, _POD_METADATA_RECORD) or ""):
        _put(patch, _POD_METADATA_RECORD, want)


def _applied_keys(record: str | None) -> dict[str, list[str]]:
    try:
        keys = json.loads(record) if record else {}
    except ValueError:
        keys = {}
    if not isinstance(keys, dict):
        keys = {}
    return {kind: [k for k in keys.get(kind) or () if isinstance(k, str)]
            for kind in ("labels", "annotations")}


def replayed(known: Mapping[str, Any] | None, seen: Mapping[str, Any] | None) -> bool:
    """Whether a watched copy `seen` (None: deleted) is the copy already `known`: a watch
    replaying its listing, which changes nothing."""
    if known is None or seen is None:
        return False
    return bool(
        (known.get("metadata") or {}).get("resourceVersion")
        == (seen.get("metadata") or {}).get("resourceVersion")
    )


def _covers(want: Any, have: Any, *, key: str, exact: bool, parent: str = "") -> bool:
    """Whether `have` carries everything of `want`; keys only `have` has are API defaults
    unless `exact` (user-owned pass-through), where they are drift."""
    if _empty(want) and _empty(have):
        return True
    if isinstance(want, dict):
        if not isinstance(have, dict):
            return False
        if exact and any(k not in want and not _empty(v) for k, v in have.items()):
            return False
        return all(
            _covers(v, have.get(k), key=k, exact=exact or k in _EXACT_KEYS, parent=key)
            for k, v in want.items()
        )
    if isinstance(want, list):
        return (
            isinstance(have, list)
            and len(want) == len(have)
            and all(_covers(w, h, key=key, exact=exact) for w, h in zip(want, have, strict=True))
        )
    if want == have:
        return True
    return (key in _QUANTITY_KEYS or parent in _QUANTITY_PARENTS) and _same_quantity(want, have)


def _same_quantity(a: Any, b: Any) -> bool:
    try:
        return bool(parse_quantity(a) == parse_quantity(b))  # type: ignore[no-untyped-call]
    except (ValueError, TypeError):
        return False


def _empty(value: Any) -> bool:
    """The API server drops empty optional fields, so missing and empty are the same."""
    return value is None or value == "" or value == [] or value == {}


def _merge_patch(want: Any, have: Any) -> Any:
    """The merge patch turning `have` into `want` (keys only `have` has are removed)."""
    if isinstance(want, dict) and isinstance(have, dict):
        patch: dict[str, Any] = {k: None for k in have if k not in want}
        patch.update({k: _merge_patch(v, have.get(k)) for k, v in want.items()})
        return patch
    return want


def _get(obj: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = obj
    for key in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


def _put(patch: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = patch
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
