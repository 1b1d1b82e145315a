"""The few Kubernetes API calls the operator makes, on plain JSON dicts.

The official client's typed models are skipped on purpose: the desired Deployment is built and
compared as plain data, and the raw bodies keep every field the server returns. Calls run in a
worker thread so the operator's event loop never blocks.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import kubernetes
from kubernetes.client.exceptions import ApiException

from agentpool import __version__
from agentpool.kubeconfig import kubeconfig_problem
from agentpool.models import GROUP, PLURAL, VERSION

Body = dict[str, Any]
MERGE_PATCH = "application/merge-patch+json"
REQUEST_TIMEOUT = 30.0

FIELD_MANAGER = "agentpool-operator"
"""Who the API server says wrote what the operator writes (managedFields, audit logs)."""


class KubeconfigError(Exception):
    """The kubeconfig exists but cannot be read."""


def load_configuration() -> Any:
    """In-cluster service account if there is one, else the kubeconfig ($KUBECONFIG, read now).

    Raises KubeconfigError, saying which file and what is wrong, for a kubeconfig that is not
    YAML or not a kubeconfig at all.
    """
    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration
        )
    except kubernetes.config.ConfigException:
        path = os.environ.get("KUBECONFIG") or None
        try:
            kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=path, client_configuration=configuration,
            )
        except kubernetes.config.ConfigException:
            raise
        except Exception as error:
            problem = kubeconfig_problem(error)
            if problem is None:
                raise
            shown = f"$KUBECONFIG ({path})" if path else "~/.kube/config"
            raise KubeconfigError(f"the kubeconfig {shown} is {problem}") from None
    return configuration


class KubeApi:
    def __init__(self, api_client: Any) -> None:
        self._client = api_client

    @classmethod
    def from_environment(cls) -> KubeApi:
        client = kubernetes.client.ApiClient(configuration=load_configuration())
        # the API server names a write's field manager after it, and audit logs show it
        client.user_agent = f"{FIELD_MANAGER}/{__version__}"
        return cls(client)

    def close(self) -> None:
        self._client.close()

    def _call(self, method: str, path: str, body: Any = None,
              content_type: str = "application/json") -> Body:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        request = self._client.param_serialize(
            method=method,
            resource_path=path,
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self._client.call_api(*request, _request_timeout=REQUEST_TIMEOUT)
        data = response.read()
        if not 200 <= response.status <= 299:
            raise ApiException.from_response(
                http_resp=response, body=data.decode(errors="replace"), data=None
            )
        result: Body = json.loads(data) if data else {}
        return result

    async def request(self, method: str, path: str, body: Any = None,
                      content_type: str = "application/json") -> Body:
        return await asyncio.to_thread(self._call, method, path, body, content_type)

    async def get(self, path: str) -> Body | None:
        try:
            return await self.request("GET", path)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    async def get_deployment(self, namespace: str, name: str) -> Body | None:
        return await self.get(deployment_path(namespace, name))

    async def create_deployment(self, namespace: str, body: Mapping[str, Any]) -> Body:
        return await self.request("POST", deployment_path(namespace), dict(body))

    async def patch_deployment(self, namespace: str, name: str, patch: Mapping[str, Any],
                               content_type: str = MERGE_PATCH) -> Body:
        return await self.request(
            "PATCH", deployment_path(namespace, name), dict(patch), content_type
        )

    async def list_pods(self, namespace: str, labels: Mapping[str, str]) -> list[Body]:
        """Pods carrying all these labels (also filtered here, whatever the server did)."""
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        path = f"/api/v1/namespaces/{namespace}/pods?labelSelector={quote(selector)}"
        items: list[Body] = (await self.request("GET", path)).get("items") or []
        return [
            pod for pod in items
            if all(((pod.get("metadata") or {}).get("labels") or {}).get(k) == v
                   for k, v in labels.items())
        ]

    async def get_pod(self, namespace: str, name: str) -> Body | None:
        return await self.get(pod_path(namespace, name))

    async def patch_pod(self, namespace: str, name: str, patch: Mapping[str, Any]) -> Body | None:
        """Merge-patch a pod (e.g. its annotations); None if the pod is gone."""
        try:
            return await self.request("PATCH", pod_path(namespace, name), dict(patch), MERGE_PATCH)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    async def delete_pod(self, namespace: str, name: str) -> bool:
        """Delete a pod with its grace period; False if it was already gone."""
        try:
            await self.request("DELETE", pod_path(namespace, name))
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    async def get_node(self, name: str) -> Body | None:
        return await self.get(f"/api/v1/nodes/{name}")

    async def get_budget(self, namespace: str, name: str) -> Body | None:
        return await self.get(budget_path(namespace, name))

    async def create_budget(self, namespace: str, body: Mapping[str, Any]) -> Body:
        return await self.request("POST", budget_path(namespace), dict(body))

    async def patch_budget(self, namespace: str, name: str, patch: Mapping[str, Any]) -> Body:
        return await self.request("PATCH", budget_path(namespace, name), dict(patch), MERGE_PATCH)

    async def delete_budget(self, namespace: str, name: str) -> bool:
        """False when there was none."""
        try:
            await self.request("DELETE", budget_path(namespace, name))
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    async def get_secret(self, namespace: str, name: str) -> Body | None:
        return await self.get(f"/api/v1/namespaces/{namespace}/secrets/{name}")

    async def create_secret(self, namespace: str, body: Mapping[str, Any]) -> Body:
        return await self.request("POST", f"/api/v1/namespaces/{namespace}/secrets", dict(body))

    async def patch_secret(self, namespace: str, name: str, patch: Mapping[str, Any]) -> Body:
        return await self.request(
            "PATCH", f"/api/v1/namespaces/{namespace}/secrets/{name}", dict(patch), MERGE_PATCH
        )

    async def delete_secret(self, namespace: str, name: str) -> bool:
        """False when there was none."""
        try:
            await self.request("DELETE", f"/api/v1/namespaces/{namespace}/secrets/{name}")
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    async def patch_pool(self, namespace: str, name: str, patch: Mapping[str, Any]) -> Body | None:
        """Merge-patch the pool itself (its metadata); None if the pool is gone."""
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}"
        try:
            return await self.request("PATCH", path, dict(patch), MERGE_PATCH)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    async def patch_pool_status(self, namespace: str, name: str,
                                status: Mapping[str, Any]) -> Body | None:
        """Merge-patch the status through the /status subresource; None if the pool is gone."""
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}/status"
        try:
            return await self.request("PATCH", path, {"status": dict(status)}, MERGE_PATCH)
        except ApiException as error:
            if error.status == 404:
                return None
            raise


def pod_path(namespace: str, name: str) -> str:
    return f"/api/v1/namespaces/{namespace}/pods/{name}"


def deployment_path(namespace: str, name: str | None = None) -> str:
    path = f"/apis/apps/v1/namespaces/{namespace}/deployments"
    return f"{path}/{name}" if name else path


def budget_path(namespace: str, name: str | None = None) -> str:
    path = f"/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets"
    return f"{path}/{name}" if name else path


def api_error_message(error: ApiException) -> str:
    """The server's own message of a failed call (its Status body), not the whole HTTP dump."""
    try:
        message = json.loads(error.body or "{}").get("message")
    except (ValueError, AttributeError):
        message = None
    status = f"{error.status} {error.reason}"
    return f"{status}: {message}" if message else status
