"""The AgentPool API on a real API server: the CRD is served, bad pools are refused."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
from e2e_config import E2EConfig
from e2e_kube import Kubectl
from e2e_manifests import derived_pool, invalid_pools, of_run

from agentpool.crd import PRINTER_COLUMNS
from agentpool.models import (
    CEL_RULES,
    GROUP,
    KIND,
    PLURAL,
    QUEUE_FIXED,
    SHORT_NAMES,
    TRANSITION_RULES,
    VERSION,
)

pytestmark = pytest.mark.e2e

DEFAULT_COLUMNS = ["Queue", "Ready", "Desired", "Queued", "In-Flight", "Health", "Age"]
INVALID_CASES = [pool.case for pool in invalid_pools("example.invalid/worker:0")]


def walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def test_crd_is_established_with_printer_columns_and_cel_rules(
    crd: dict[str, Any], kube: Kubectl
) -> None:
    spec = crd["spec"]
    assert spec["group"] == GROUP
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == KIND
    assert spec["names"]["plural"] == PLURAL
    assert set(SHORT_NAMES) <= set(spec["names"].get("shortNames") or [])
    (version,) = [v for v in spec["versions"] if v["name"] == VERSION]
    assert version["served"] and version["storage"]
    assert "status" in (version.get("subresources") or {}), "status must be a subresource"
    served = version.get("additionalPrinterColumns") or []
    assert [(c["name"], c["jsonPath"]) for c in served] == [
        (c["name"], c["jsonPath"]) for c in PRINTER_COLUMNS]
    assert [c["name"] for c in served if not c.get("priority")] == DEFAULT_COLUMNS
    served_messages = {
        rule.get("message")
        for node in walk(version["schema"]["openAPIV3Schema"])
        for rule in node.get("x-kubernetes-validations") or []
    }
    missing = {rule.message for rule in (*CEL_RULES, *TRANSITION_RULES)} - served_messages
    assert not missing, f"CEL rules missing from the served schema: {sorted(missing)}"
    # The short name resolves through discovery, as a user would type it.
    kube("get", SHORT_NAMES[0])


@pytest.mark.parametrize("case", INVALID_CASES)
def test_invalid_pool_is_refused_with_a_readable_message(
    case: str, crd: dict[str, Any], kube: Kubectl, e2e_config: E2EConfig
) -> None:
    (invalid,) = [p for p in invalid_pools(e2e_config.worker_image) if p.case == case]
    name = invalid.manifest["metadata"]["name"]
    result = kube.apply(invalid.manifest, check=False)
    if result.returncode == 0:
        kube("delete", "agentpool", name, "--ignore-not-found", "--wait=false", check=False)
    assert result.returncode != 0, f"the API server accepted an invalid pool ({case})"
    assert invalid.message in result.stderr, (
        f"kubectl's error does not carry the rule's message {invalid.message!r}:\n"
        f"{result.stderr}")
    if invalid.secret:
        assert invalid.secret not in result.stderr, "the API server's answer quotes a credential"
    assert kube.get("agentpool", name) is None


def test_a_pools_queue_cannot_change_once_it_exists(
    crd: dict[str, Any], kube: Kubectl, e2e_config: E2EConfig, run_id: str
) -> None:
    """A transition rule: only a real API server, which holds the stored pool, enforces it."""
    pool = of_run(derived_pool(f"e2e-queue-fixed-{run_id}", e2e_config.worker_image), run_id)
    pool["spec"]["paused"] = True
    name = pool["metadata"]["name"]
    kube.apply(pool)
    try:
        moved = copy.deepcopy(pool)
        moved["spec"]["queue"] = f"e2e-queue-elsewhere-{run_id}"
        result = kube.apply(moved, check=False)
        assert result.returncode != 0, "the API server let a pool move to another queue"
        assert QUEUE_FIXED.message in result.stderr, result.stderr
        stored = kube.get("agentpool", name)
        assert stored is not None and stored["spec"]["queue"] == name
        pool["spec"]["paused"] = False  # any other change still goes through
        kube.apply(pool)
    finally:
        kube("delete", "agentpool", name, "--ignore-not-found", "--wait=false", check=False)
