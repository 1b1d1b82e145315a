from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import yaml

from agentpool import models
from agentpool.crd import open_api_schema
from agentpool.models import AgentPoolSpec

EXAMPLE = Path(__file__).parents[2] / "examples" / "agentpool.yaml"


def load_example() -> dict[str, Any]:
    manifest: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    return manifest


def test_example_is_an_agentpool() -> None:
    manifest = load_example()
    assert manifest["apiVersion"] == f"{models.GROUP}/{models.VERSION}"
    assert manifest["kind"] == models.KIND


def test_example_spec_parses_into_the_model() -> None:
    spec = AgentPoolSpec.model_validate(load_example()["spec"])
    assert spec.worker.handler == "agentpool_worker.builtin:simulated_agent"
    assert spec.worker.image == "ghcr.io/agentpool/worker:0.1.0"
    assert spec.redis.url is None
    assert spec.redis.url_secret_ref == models.SecretKeyRef(name="agentpool-redis", key="url")
    assert (spec.scaling.min_replicas, spec.scaling.max_replicas) == (1, 10)


def test_example_uses_no_field_the_model_would_drop() -> None:
    raw = load_example()["spec"]
    spec = AgentPoolSpec.model_validate(raw)
    assert spec.model_dump(by_alias=True, exclude_unset=True, mode="json") == raw


def test_example_passes_the_crd_schema() -> None:
    jsonschema.Draft7Validator(open_api_schema()).validate(load_example())


CLI_AGENT = EXAMPLE.parent / "cli-agent.yaml"


def test_the_pipeline_example_uses_no_field_the_model_would_drop() -> None:
    for manifest in yaml.safe_load_all((EXAMPLE.parent / "pipeline.yaml").read_text()):
        raw = manifest["spec"]
        spec = AgentPoolSpec.model_validate(raw)
        assert spec.model_dump(by_alias=True, exclude_unset=True, mode="json") == raw


def test_the_cli_agent_example_uses_no_field_the_model_would_drop() -> None:
    raw = yaml.safe_load(CLI_AGENT.read_text())["spec"]
    spec = AgentPoolSpec.model_validate(raw)
    assert spec.model_dump(by_alias=True, exclude_unset=True, mode="json") == raw
    assert spec.worker.task_command and spec.worker.init_containers and spec.worker.volumes
