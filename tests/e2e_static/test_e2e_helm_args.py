"""What the e2e suite asks helm for, rendered offline with the real helm: the chart accepts the
suite's values, and the Redis-only rendering of local mode holds Redis and nothing else."""

from __future__ import annotations

import os
import subprocess
from typing import Any

import pytest
import yaml
from e2e_config import CHART, E2EConfig, default_helm
from e2e_install import REDIS_TEMPLATES, helm_values, operator_name, redis_name

NAMESPACE = "agentpool-e2e-0a1b2c"


def helm_template(*args: str) -> list[dict[str, Any]]:
    helm = default_helm()
    if not os.access(helm, os.X_OK):
        pytest.fail(f"helm is missing at {helm}: run `make setup` (scripts/install-helm.sh)")
    result = subprocess.run([helm, "template", "agentpool", str(CHART), "--namespace",
                             NAMESPACE, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def test_the_suites_chart_values_render_a_namespaced_operator_with_the_image() -> None:
    config = E2EConfig.from_env({"E2E_OPERATOR_IMAGE": "registry.local:5000/op:t2"})
    docs = helm_template(*helm_values(config, NAMESPACE, operator=True))
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"
                     and d["metadata"]["name"] == operator_name(config.release)]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.local:5000/op:t2"
    assert container["imagePullPolicy"] == "IfNotPresent"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["AGENTPOOL_OPERATOR_NAMESPACES"] == NAMESPACE
    roles = [d for d in docs if d["kind"] == "Role" and d["metadata"]["namespace"] == NAMESPACE]
    assert roles, "the operator gets its namespaced rights in the test namespace"


def test_local_mode_renders_the_bundled_redis_alone() -> None:
    show_only = [arg for template in REDIS_TEMPLATES for arg in ("--show-only", template)]
    docs = helm_template(*show_only)
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    assert kinds == [("Secret", "agentpool-redis"), ("Service", redis_name("agentpool")),
                     ("Service", f"{redis_name('agentpool')}-headless"),
                     ("StatefulSet", redis_name("agentpool"))]
    assert all(d["metadata"]["namespace"] == NAMESPACE for d in docs)
