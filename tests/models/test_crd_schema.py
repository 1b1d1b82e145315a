from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes.client import V1JSONSchemaProps
from pool_fixtures import INVALID_SPECS, VALID_SPECS, pool

from agentpool import models
from agentpool.cli import main as cli
from agentpool.crd import open_api_schema, render_crd, render_crd_yaml

CRD_FILE = Path(__file__).parents[2] / "crds" / "agentpool.dev_agentpools.yaml"


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            yield from walk(node[key], f"{path}[{key}]")


def spec_schema() -> dict[str, Any]:
    schema: dict[str, Any] = open_api_schema()["properties"]["spec"]
    return schema


def test_committed_crd_matches_the_models() -> None:
    assert CRD_FILE.read_text() == render_crd_yaml(), (
        f"{CRD_FILE.name} is out of date with agentpool/models/: run `make crds`"
    )


def test_every_schema_key_is_one_the_api_server_reads() -> None:
    """The API server decodes a nested schema leniently: a key JSONSchemaProps does not have
    (`const`, say) is dropped without a word, and the rule it carried with it."""
    known = set(V1JSONSchemaProps.attribute_map.values())
    for path, node in walk(open_api_schema()):
        assert set(node) <= known, f"{path or '<root>'}: {sorted(set(node) - known)}"


def test_every_description_reads_as_one_paragraph() -> None:
    """`kubectl explain` prints a description's line breaks as they are: a docstring's wrapping
    would cut its sentences."""
    for path, node in walk(open_api_schema()):
        description = node.get("description", "")
        assert description == " ".join(description.split()), f"{path or '<root>'}: {description!r}"


def test_agentpool_crd_command_prints_the_crd(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["crd"]) == 0
    assert capsys.readouterr().out == render_crd_yaml()


def test_crd_is_a_valid_apiextensions_v1_object() -> None:
    kubernetes_validate.validate(render_crd(), "1.30", strict=True)


def test_schema_is_structural() -> None:
    forbidden = {"$ref", "$defs", "anyOf", "oneOf", "allOf", "not", "title", "nullable"}
    for path, node in walk(open_api_schema()):
        assert not forbidden & node.keys(), f"{path or '<root>'} has {forbidden & node.keys()}"
        # The two exceptions the API server makes to "every node has a type".
        untyped_allowed = (node.get("x-kubernetes-int-or-string") is True
                           or node.get("x-kubernetes-preserve-unknown-fields") is True)
        assert "type" in node or untyped_allowed, f"{path} has no type"
        if "properties" in node:
            assert "additionalProperties" not in node, f"{path} mixes properties and a map"
        if node.get("type") == "array":
            assert "type" in node["items"], f"{path} items have no type"
        assert node.get("default", 0) is not None, f"{path} defaults to null"


def test_names_scope_and_subresources() -> None:
    crd = render_crd()
    assert crd["metadata"]["name"] == "agentpools.agentpool.dev"
    spec = crd["spec"]
    assert spec["group"] == "agentpool.dev"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["shortNames"] == ["ap"]
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1"
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns == {
        "Queue": ".status.queue",
        "Ready": ".status.readyReplicas",
        "Desired": ".status.desiredReplicas",
        "Queued": ".status.queued",
        "In-Flight": ".status.inFlight",
        "Delayed": ".status.delayed",
        "Deferred": ".status.deferred",
        "Dead": ".status.dead",
        "Draining": ".status.drainingReplicas",
        "Scaling": '.status.conditions[?(@.type=="Scaling")].reason',
        "Last-Scale": ".status.lastScaleTime",
        "Rate-Limited": ".status.rateLimitedBy",
        "Degraded": '.status.conditions[?(@.type=="Degraded")].reason',
        "Health": ".status.health",
        "Age": ".metadata.creationTimestamp",
    }
    wide_only = [c["name"] for c in version["additionalPrinterColumns"] if c.get("priority")]
    assert wide_only == ["Delayed", "Deferred", "Dead", "Draining", "Scaling", "Last-Scale",
                         "Rate-Limited", "Degraded"]
    status = open_api_schema()["properties"]["status"]["properties"]
    for path in columns.values():
        if path.startswith(".status."):
            field = path.removeprefix(".status.").split(".")[0].split("[")[0]
            assert field in status, f"the column {path} names no status field"


def test_every_field_is_documented_for_kubectl_explain() -> None:
    for section in ("spec", "status"):
        for path, node in walk(open_api_schema()["properties"][section], section):
            if path.endswith("]"):
                continue
            assert node.get("description"), f"{path} has no description"


def test_int_or_string_fields() -> None:
    props = spec_schema()["properties"]
    max_unavailable = props["recovery"]["properties"]["maxUnavailable"]
    assert max_unavailable["x-kubernetes-int-or-string"] is True
    assert max_unavailable["default"] == "25%"
    resources = props["worker"]["properties"]["resources"]["properties"]
    for key in ("limits", "requests"):
        assert resources[key]["additionalProperties"]["x-kubernetes-int-or-string"] is True


def test_nested_sections_default_to_their_models_defaults_written_out() -> None:
    props = spec_schema()["properties"]
    assert props["scaling"]["default"] == models.ScalingSpec().model_dump(
        by_alias=True, exclude_none=True, mode="json"
    )
    assert props["scaling"]["default"]["minReplicas"] == 1
    assert props["scaling"]["default"]["maxReplicas"] == 10
    assert props["recovery"]["default"] == {"unreadyGraceSeconds": 60, "maxUnavailable": "25%"}
    assert props["scaling"]["properties"]["minReplicas"]["default"] == 1


def test_every_cel_rule_is_in_the_crd_with_its_message() -> None:
    rendered = [
        rule
        for _, node in walk(open_api_schema())
        for rule in node.get("x-kubernetes-validations", [])
    ]
    assert {(r["rule"], r["message"]) for r in rendered} == {
        (r.rule, r.message) for r in (*models.CEL_RULES, *models.TRANSITION_RULES)
    }, "a model used in two places renders its rules twice; each must be in CEL_RULES"
    for rule in rendered:
        assert set(rule) == {"rule", "message"}
        assert rule["message"][0].isalpha()


@pytest.mark.parametrize("spec", VALID_SPECS)
def test_valid_specs_pass_the_openapi_schema(spec: dict[str, Any]) -> None:
    validator().validate(pool(spec))


@pytest.mark.parametrize("spec", INVALID_SPECS)
def test_invalid_specs_fail_the_openapi_schema(spec: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        validator().validate(pool(spec))


def validator() -> jsonschema.Draft7Validator:
    """A JSON-schema validator with the Kubernetes int-or-string extension spelled out."""
    schema = open_api_schema()
    for _, node in walk(schema):
        if node.pop("x-kubernetes-int-or-string", False):
            node["type"] = ["integer", "string"]
    return jsonschema.Draft7Validator(schema)


def test_committed_crd_file_is_plain_yaml() -> None:
    assert yaml.safe_load(CRD_FILE.read_text()) == render_crd()


def _unbounded(node: dict[str, Any]) -> str | None:
    """What the API server's CEL cost estimate would take as unbounded in `node` itself."""
    kind = node.get("type")
    if kind == "array" and "maxItems" not in node:
        return "an array without maxItems"
    if kind == "object" and "additionalProperties" in node and "maxProperties" not in node:
        return "a map without maxProperties"
    if kind == "string" and "maxLength" not in node and "enum" not in node:
        return "a string without maxLength"
    return None


def test_every_value_a_rule_reads_is_bounded() -> None:
    """kube-apiserver estimates each rule's cost before it accepts the CRD, taking an array,
    map or string without a bound as unbounded (cel-go's estimate for `==` is the shorter
    string's length, for a comprehension the range's size times its step). A rule over budget
    refuses the whole CRD, so every value a rule iterates or compares carries its bound.
    A presence test (`has(self.x)`) and a size (`size(self.x)`) cost the same whatever x
    holds: they read nothing of it."""
    problems = []
    for path, node in walk(open_api_schema()):
        for rule in node.get("x-kubernetes-validations", []):
            text = re.sub(r"(has|size)[(][^()]*[)]", "", rule["rule"])
            if (issue := _unbounded(node)) and node.get("type") != "string":
                problems.append(f"{path or 'root'}: {issue}, iterated by {text!r}")
            for sub_path, sub in walk(node, path):
                names = re.findall(r"[.]([A-Za-z0-9_]+)", sub_path[len(path):])
                if sub is node or not all(re.search(rf"[.]{n}\b", text) for n in names):
                    continue
                if issue := _unbounded(sub):
                    problems.append(f"{sub_path}: {issue}, read by {text!r}")
    assert problems == []
