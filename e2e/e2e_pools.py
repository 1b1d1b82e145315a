"""AgentPools, their Deployments and pods, as kubectl sees them in the suite's namespace."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from e2e_kube import CommandError, Kubectl, Waiter, is_terminating, parse_table, pod_troubles
from e2e_manifests import of_run, run_selector

POOL_LABEL = "agentpool.dev/pool"
FATAL_POD_REASONS = frozenset({"ErrImageNeverPull", "InvalidImageName", "ImagePullBackOff"})
"""Waiting reasons that no amount of waiting fixes: fail at once with the reason."""


@dataclass
class Pools:
    kube: Kubectl
    waiter: Waiter
    run_id: str
    """Labelled on every pool applied here; teardown selects on it."""
    applied: list[str] = field(default_factory=list)

    # -- reading ---------------------------------------------------------------------------

    def get(self, name: str) -> dict[str, Any] | None:
        return self.kube.get("agentpool", name)

    def status(self, name: str) -> dict[str, Any]:
        pool = self.get(name)
        status: dict[str, Any] = (pool or {}).get("status") or {}
        return status

    def deployment(self, name: str) -> dict[str, Any] | None:
        return self.kube.get("deployment", name)

    def pods(self, name: str) -> list[dict[str, Any]]:
        return self.kube.items("pods", f"{POOL_LABEL}={name}")

    def live_pods(self, name: str) -> list[dict[str, Any]]:
        """Pods not being deleted."""
        return [p for p in self.pods(name) if not is_terminating(p)]

    def table(self) -> list[dict[str, str]]:
        """`kubectl get agentpools`, parsed: one dict per row, keyed by column header."""
        return parse_table(self.kube("get", "agentpools").stdout)

    # -- acting ----------------------------------------------------------------------------

    def apply(self, manifest: Mapping[str, Any]) -> str:
        name: str = manifest["metadata"]["name"]
        self.kube.apply(of_run(dict(manifest), self.run_id))
        if name not in self.applied:
            self.applied.append(name)
        return name

    def delete(self, name: str, *, timeout: float = 180) -> None:
        """Delete the pool and wait until it, its Deployment and its pods are gone."""
        try:
            self.kube("delete", "agentpool", name, "--ignore-not-found", "--wait=true",
                      f"--timeout={int(timeout * self.waiter.scale)}s",
                      timeout=timeout * self.waiter.scale + 30)
        except CommandError as exc:
            raise exc.with_picture(self.waiter.picture()) from None
        self.waiter.true(lambda: self.deployment(name) is None, timeout=timeout,
                         what=f"the Deployment of deleted pool {name} to be removed")
        self.waiter.true(lambda: not self.pods(name), timeout=timeout,
                         what=f"the pods of deleted pool {name} to be removed")

    def force_remove(self, name: str) -> None:
        """Last-resort cleanup when the operator did not finish a deletion."""
        self.kube("patch", "agentpool", name, "--type=merge",
                  "--patch", '{"metadata":{"finalizers":null}}', check=False)
        self.kube("delete", "agentpool", name, "--ignore-not-found", "--wait=false",
                  check=False)

    def delete_suite_pools(self, timeout: float = 180) -> list[str]:
        """Delete every pool this run labelled (another run's in the same namespace stay);
        the problems, for the teardown report."""
        problems = []
        try:
            names = self.names_of_run()
        except CommandError as exc:
            return [str(exc)]
        for name in names:
            try:
                self.delete(name, timeout=timeout)
            except (CommandError, AssertionError) as exc:
                problems.append(f"pool {name}: {str(exc).splitlines()[0]}")
                self.force_remove(name)
        return problems

    def names_of_run(self) -> list[str]:
        return [p["metadata"]["name"]
                for p in self.kube.items("agentpools", run_selector(self.run_id))]

    def release_finalizers(self) -> list[str]:
        """Take the finalizers off this run's pools, for a namespace kept (E2E_KEEP=1) after
        its operator is gone: otherwise deleting a pool, or the namespace, would wait for an
        operator that no longer runs. Only once the operator has stopped: a running one puts
        its finalizer back. The problems, for the teardown report."""
        try:
            names = self.names_of_run()
        except CommandError as exc:
            return [str(exc)]
        problems = []
        for name in names:
            done = self.kube("patch", "agentpool", name, "--type=merge",
                             "--patch", '{"metadata":{"finalizers":null}}', check=False)
            if done.returncode != 0:
                problems.append(f"pool {name}: finalizers not removed: {done.stderr.strip()}")
        return problems

    # -- waiting ---------------------------------------------------------------------------

    def wait_serving(self, name: str, replicas: int, *, timeout: float = 300) -> dict[str, Any]:
        """Wait until the pool's Deployment exists and `replicas` of its pods are ready."""

        def probe() -> dict[str, Any]:
            deployment = self.deployment(name) or {}
            self.fail_on_fatal_pods(name)
            return deployment

        def ready(deployment: dict[str, Any]) -> bool:
            return int((deployment.get("status") or {}).get("readyReplicas") or 0) >= replicas

        return self.waiter.until(probe, ready, timeout=timeout,
                                 what=f"pool {name}: {replicas} ready worker pod(s)")

    def fail_on_fatal_pods(self, name: str) -> None:
        troubles = [t for t in pod_troubles(self.pods(name))
                    if any(reason in t for reason in FATAL_POD_REASONS)]
        if troubles:
            raise AssertionError(
                f"pool {name}: worker pods cannot start: {'; '.join(troubles)} "
                "(is E2E_WORKER_IMAGE loaded into the cluster or pullable?)")

    def replicas(self, name: str) -> tuple[int, int, int]:
        """(status.desiredReplicas of the pool, spec.replicas of the Deployment, ready pods)."""
        status = self.status(name)
        deployment = self.deployment(name) or {}
        return (int(status.get("desiredReplicas") or 0),
                int((deployment.get("spec") or {}).get("replicas") or 0),
                int((deployment.get("status") or {}).get("readyReplicas") or 0))
