"""Run the real operator (kopf) in a thread against kmock's Kubernetes emulation.

`ClusterEmulator` fills in what an API server does and kmock 0.8 does not: uid,
creationTimestamp, generation (bumped on spec changes), a resourceVersion that changes on every
write, the URL's namespace, generateName, JSON patches with `test` (422 on mismatch), status
written only through /status for resources with that subresource, and no-op patches that
write nothing. kopf's finalizer and status handling depend on these.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import itertools
import threading
import uuid
import warnings
from collections.abc import Awaitable, Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp.web
import attrs
import kmock
import yaml
from merge_patch import merge_patch
from prometheus_client import REGISTRY

from agentpool_operator import main as operator_main
from agentpool_operator.settings import OperatorSettings

T = TypeVar("T")

POOLS = "agentpool.dev/v1alpha1/agentpools"
DEPLOYMENTS = "apps/v1/deployments"
EVENTS = "v1/events"
NAMESPACE = "default"


class JSONPatchError(Exception):
    pass


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise JSONPatchError(f"bad JSON pointer {path!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _walk(doc: Any, parts: list[str]) -> Any:
    for part in parts:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


def apply_json_patch(doc: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902 add/remove/replace/test: enough for what kopf sends."""
    result = copy.deepcopy(doc)
    for op in ops:
        parts = _pointer(op["path"])
        try:
            parent = _walk(result, parts[:-1])
            last = parts[-1]
            if op["op"] == "test":
                if _walk(parent, [last]) != op["value"]:
                    raise JSONPatchError(f"test failed at {op['path']}")
            elif op["op"] in ("add", "replace"):
                value = copy.deepcopy(op["value"])
                if isinstance(parent, list):
                    if last == "-":
                        parent.append(value)
                    elif op["op"] == "add":
                        parent.insert(int(last), value)
                    else:
                        parent[int(last)] = value
                else:
                    if op["op"] == "replace" and last not in parent:
                        raise JSONPatchError(f"nothing to replace at {op['path']}")
                    parent[last] = value
            elif op["op"] == "remove":
                if isinstance(parent, list):
                    del parent[int(last)]
                else:
                    del parent[last]
            else:
                raise JSONPatchError(f"unsupported op {op['op']!r}")
        except (KeyError, IndexError, ValueError, TypeError) as error:
            raise JSONPatchError(f"cannot apply {op!r}: {error!r}") from None
    return result


def merge_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The RFC 7386 patch turning `old` into `new` (kmock applies patches this way)."""
    diff: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            sub = merge_diff(before, value)
            if sub:
                diff[key] = sub
        elif key not in old or before != value:
            diff[key] = value
    return diff


@attrs.define(kw_only=True)
class ClusterEmulator(kmock.KubernetesEmulator):
    _versions: Iterator[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    _write_lock: asyncio.Lock = attrs.field(factory=asyncio.Lock, init=False)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if request.resource is None or request.action not in (
            kmock.action.CREATE, kmock.action.UPDATE
        ):
            return await super()._handle(request)
        async with self._write_lock:
            if request.action == kmock.action.CREATE:
                request = self._replace(request, self._completed_create(request))
            else:
                current = self._current(request)
                if current is not None:
                    data = self._patched_data(request, current)
                    if data is None:
                        return aiohttp.web.json_response(current)
                    request = self._replace(request, data)
            return await super()._handle(request)

    def _replace(self, request: kmock.Request, data: Any) -> kmock.Request:
        """The request with other data; kmock matches its reactions to recorded requests."""
        new = attrs.evolve(request, data=data)
        for index in range(len(self._requests) - 1, -1, -1):
            if self._requests[index] is request:
                self._requests[index] = new
                break
        return new

    def _next_version(self) -> str:
        return str(next(self._versions))

    def _current(self, request: kmock.Request) -> dict[str, Any] | None:
        try:
            obj = self.objects[request.resource, request.namespace, request.name]
        except KeyError:
            return None
        return None if obj.deleted else copy.deepcopy(obj.raw)

    def _completed_create(self, request: kmock.Request) -> dict[str, Any]:
        data = copy.deepcopy(request.data) if isinstance(request.data, dict) else {}
        meta = data.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if request.namespace and not meta.get("namespace"):
            meta["namespace"] = request.namespace
        meta.setdefault("uid", str(uuid.uuid4()))
        meta["creationTimestamp"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        meta["generation"] = 1
        meta["resourceVersion"] = self._next_version()
        return data

    def _patched_data(self, request: kmock.Request, current: dict[str, Any]) -> Any:
        """The merge patch kmock should apply, or None when the request changes nothing."""
        if isinstance(request.data, list):
            try:
                target = apply_json_patch(current, request.data)
            except JSONPatchError as error:
                raise kmock.KubernetesError(
                    status=422, reason="Invalid", message=str(error)
                ) from None
        elif isinstance(request.data, dict):
            target = merge_patch(current, request.data)
        else:
            return request.data
        if request.subresource == "status":
            target = {**current, "status": target.get("status")}
        elif request.resource in self.resources and "status" in (
            self.resources[request.resource].subresources
        ):
            target["status"] = current.get("status")
        if target.get("status") is None:
            target.pop("status", None)
        if target == current:
            return None
        target = copy.deepcopy(target)
        meta = target.setdefault("metadata", {})
        if target.get("spec") != current.get("spec"):
            meta["generation"] = int(current.get("metadata", {}).get("generation") or 1) + 1
        meta["resourceVersion"] = self._next_version()
        return merge_diff(current, target)


def seed_resources(emulator: kmock.KubernetesEmulator) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        emulator.resources.load_bundled()
    emulator.resources[POOLS] = kmock.ResourceInfo(
        kind="AgentPool",
        singular="agentpool",
        namespaced=True,
        verbs={"create", "delete", "get", "list", "patch", "update", "watch"},
        shortnames={"ap"},
        subresources={"status"},
    )


def write_kubeconfig(path: Path, server: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kmock", "cluster": {"server": server}}],
        "users": [{"name": "kmock", "user": {"token": "kmock-token"}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock"}}],
        "current-context": "kmock",
    }))
    return path


class OperatorThread:
    """The operator's `run()` in its own thread and event loop, as in production."""

    def __init__(self, settings: OperatorSettings) -> None:
        self.settings = settings
        self.stop_flag = threading.Event()
        self.ready_flag = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="operator", daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(operator_main.run(
                self.settings, stop_flag=self.stop_flag, ready_flag=self.ready_flag
            ))
        except BaseException as error:
            self.error = error

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    async def start(self, within: float = 10.0) -> None:
        self._thread.start()
        ready = await asyncio.to_thread(self.ready_flag.wait, within)
        if not ready:
            raise TimeoutError(f"the operator did not start within {within}s: {self.error!r}")

    async def stop(self, within: float = 15.0) -> None:
        self.stop_flag.set()
        await asyncio.to_thread(self._thread.join, within)
        if self._thread.is_alive():
            raise TimeoutError(f"the operator did not stop within {within}s")


async def eventually(
    check: Callable[[], T] | Callable[[], Awaitable[T]],
    *,
    within: float = 10.0,
    interval: float = 0.05,
) -> T:
    """Poll `check` until it returns a truthy value without raising AssertionError/KeyError."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        failure: BaseException | None = None
        try:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result  # type: ignore[return-value]
        except (AssertionError, KeyError) as error:
            failure = error
        if loop.time() >= deadline:
            if failure is not None:
                raise failure
            raise AssertionError(f"condition not met within {within}s: {check}")
        await asyncio.sleep(interval)


def last_observed(pool: str) -> float:
    """When the pool's last round ended (the operator's own gauge): a test that must act
    between two rounds waits for one to end after its set-up."""
    return REGISTRY.get_sample_value(
        "agentpool_operator_pool_last_observed_timestamp_seconds",
        {"namespace": NAMESPACE, "pool": pool},
    ) or 0.0


def pool_manifest(
    name: str,
    *,
    image: str = "registry.example/agent-worker:1.0",
    redis_url: str | None = None,
    secret: str | None = None,
    queue: str | None = None,
    poll_seconds: float = 1,
    **extra: Any,
) -> dict[str, Any]:
    redis: dict[str, Any] = (
        {"urlSecretRef": {"name": secret}} if secret else {"url": redis_url or "redis://x:1/0"}
    )
    spec: dict[str, Any] = {
        "redis": redis,
        "worker": {"image": image, "handler": "agentpool_worker.builtin:echo"},
        "scaling": {"minReplicas": 1, "maxReplicas": 3, "pollSeconds": poll_seconds},
        **extra,
    }
    if queue is not None:
        spec["queue"] = queue
    return {
        "apiVersion": "agentpool.dev/v1alpha1",
        "kind": "AgentPool",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": spec,
    }


class Cluster:
    """Test-side access to the emulated cluster: write like kubectl, read kmock's store."""

    def __init__(self, emulator: kmock.KubernetesEmulator) -> None:
        self.emulator = emulator

    async def _send(self, method: str, path: str, body: Any = None,
                    content_type: str = "application/merge-patch+json") -> dict[str, Any]:
        headers = {"Content-Type": content_type}
        async with self.emulator.request(method, path, json=body, headers=headers) as response:
            payload: dict[str, Any] = await response.json()
            assert response.status < 300, (response.status, payload)
            return payload

    async def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self._send("POST", path, dict(body), "application/json")

    async def create_pool(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        return await self.create(
            f"/apis/agentpool.dev/v1alpha1/namespaces/{NAMESPACE}/agentpools", manifest
        )

    async def patch_pool(self, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        return await self._send(
            "PATCH", f"/apis/agentpool.dev/v1alpha1/namespaces/{NAMESPACE}/agentpools/{name}",
            dict(patch),
        )

    async def patch_pool_status(self, name: str, status: Mapping[str, Any]) -> dict[str, Any]:
        return await self._send(
            "PATCH",
            f"/apis/agentpool.dev/v1alpha1/namespaces/{NAMESPACE}/agentpools/{name}/status",
            {"status": dict(status)},
        )

    async def patch_deployment(self, name: str, patch: Mapping[str, Any],
                               subresource: str = "") -> dict[str, Any]:
        suffix = f"/{subresource}" if subresource else ""
        return await self._send(
            "PATCH", f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{name}{suffix}",
            dict(patch),
        )

    async def create_secret(self, name: str, string_data: Mapping[str, str]) -> dict[str, Any]:
        data = {k: base64.b64encode(v.encode()).decode() for k, v in string_data.items()}
        return await self.create(f"/api/v1/namespaces/{NAMESPACE}/secrets", {
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": NAMESPACE}, "data": data,
        })

    def get(self, resource: str, name: str) -> dict[str, Any]:
        """The stored object; KeyError when it does not exist (so `eventually` retries)."""
        obj = self.emulator.objects[resource, NAMESPACE, name]
        if obj.deleted:
            raise KeyError(name)
        return copy.deepcopy(obj.raw)

    def deployment(self, name: str) -> dict[str, Any]:
        return self.get(DEPLOYMENTS, name)

    def pool(self, name: str) -> dict[str, Any]:
        return self.get(POOLS, name)

    def condition(self, pool: str, type_: str) -> dict[str, Any]:
        for condition in self.pool(pool).get("status", {}).get("conditions", []):
            if condition["type"] == type_:
                return dict(condition)
        raise KeyError(type_)

    def events(self, reason: str | None = None) -> list[dict[str, Any]]:
        found = []
        for (resource, _, _), obj in self.emulator.objects.items():
            if resource.plural == "events" and not resource.group and not obj.deleted:
                event = obj.raw
                if reason is None or event.get("reason") == reason:
                    found.append(event)
        return found

    def requests(self, method: str, path_suffix: str) -> list[kmock.Request]:
        return [
            r for r in self.emulator
            if r.method.value == method and str(r.url.path).endswith(path_suffix)
        ]

    async def delete_pool(self, name: str) -> dict[str, Any]:
        return await self._send(
            "DELETE", f"/apis/agentpool.dev/v1alpha1/namespaces/{NAMESPACE}/agentpools/{name}"
        )

    async def delete(self, path: str) -> dict[str, Any]:
        return await self._send("DELETE", path)
