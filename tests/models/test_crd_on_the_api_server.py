"""The CRD and the pools we ship, checked the way kube-apiserver checks them (see apiserver.py).

kmock accepts any CRD, so these are the tests that stand between a change to the models and a
CRD that no cluster installs.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from apiserver import (
    KUBERNETES_CEL_LIBRARY,
    RuleCompileError,
    admission_errors,
    compile_rule,
    crd_problems,
    evaluate_rule,
    rules_of,
    walk_schema,
)
from e2e_manifests import applied_pools, invalid_pools, load_example
from hypothesis import given, settings
from hypothesis import strategies as st
from pool_fixtures import (
    CEL_VIOLATIONS,
    INVALID_SPECS,
    NEAR_THE_RULES,
    VALID_SPECS,
    minimal_spec,
    pool,
)
from pydantic import ValidationError

from agentpool import models
from agentpool.crd import render_crd
from agentpool.models import AgentPoolSpec

REPO = Path(__file__).resolve().parents[2]
CRD_FILES = [
    REPO / "crds" / "agentpool.dev_agentpools.yaml",
    REPO / "charts" / "agentpool-operator" / "crds" / "agentpool.dev_agentpools.yaml",
]
IMAGE = "ghcr.io/agentpool/worker:0.1.0"
SECRET = "hunter2"


def schema_of(crd: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def all_rules() -> list[tuple[str, dict[str, str]]]:
    return list(rules_of(schema_of(render_crd())))


def default_nodes() -> list[tuple[str, dict[str, Any]]]:
    nodes = walk_schema(schema_of(render_crd()))
    return [(path, node) for path, node in nodes if "default" in node]


# -- the CRD is accepted ------------------------------------------------------------------------


@pytest.mark.parametrize("crd_file", CRD_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_the_api_server_accepts_the_shipped_crd(crd_file: Path) -> None:
    crd = yaml.safe_load(crd_file.read_text())
    assert crd == render_crd(), f"{crd_file} differs from the models: run `make crds`"
    assert crd_problems(crd) == []


@pytest.mark.parametrize(("change", "problem"), [
    ({"type": "datetime"}, "type: Unsupported value: 'datetime'"),
    ({"jsonPath": "status.lastScaleTime"}, "jsonPath: Invalid value"),
    ({"priority": -1}, "priority: Invalid value: -1"),
    ({"name": "Queue"}, "name: Duplicate value: 'Queue'"),
])
def test_a_printer_column_the_api_server_would_refuse_is_caught(
    change: dict[str, Any], problem: str,
) -> None:
    crd = copy.deepcopy(render_crd())  # the rendered CRD is shared between tests
    columns = crd["spec"]["versions"][0]["additionalPrinterColumns"]
    last_scale = next(c for c in columns if c["name"] == "Last-Scale")
    last_scale.update(change)
    assert any(problem in found for found in crd_problems(crd)), crd_problems(crd)


@pytest.mark.parametrize(("path", "rule"), all_rules(), ids=lambda x: str(x)[:60])
def test_every_rule_compiles_with_standard_cel(path: str, rule: dict[str, str]) -> None:
    compile_rule(rule["rule"])


@pytest.mark.parametrize(("path", "node"), default_nodes(), ids=lambda x: str(x)[:40])
def test_every_default_passes_the_rules_it_sits_under_as_written(
    path: str, node: dict[str, Any]
) -> None:
    crd = {"spec": {"versions": [{"schema": {"openAPIV3Schema": node}}]}}
    assert crd_problems(crd) == [], f"default of {path or '<root>'}"


def test_object_defaults_carry_the_fields_their_rules_read() -> None:
    paths = {path for path, _ in default_nodes()}
    assert {".spec.scaling", ".spec.recovery"} <= paths


# -- the check finds what a real API server refused ---------------------------------------------


def test_an_empty_default_under_a_rule_is_refused_as_on_kubernetes() -> None:
    crd = render_crd()
    schema_of(crd)["properties"]["spec"]["properties"]["scaling"]["default"] = {}
    (problem,) = crd_problems(crd)
    assert problem.startswith("spec.scaling.default: Invalid value: \"object\": ")
    assert models.MIN_LE_MAX.message in problem


def test_a_backslash_escape_in_a_rule_is_a_syntax_error_as_on_kubernetes() -> None:
    crd = render_crd()
    handler = schema_of(crd)["properties"]["spec"]["properties"]["worker"]["properties"]["handler"]
    handler["x-kubernetes-validations"][0]["rule"] = r"self.matches('^[a-z]+(\.[a-z]+)*$')"
    (problem,) = crd_problems(crd)
    assert "Syntax error: token recognition error at: ''^[a-z]+(\\.'" in problem


def test_a_kubernetes_library_function_must_be_declared() -> None:
    assert "isURL" in KUBERNETES_CEL_LIBRARY
    with pytest.raises(RuleCompileError, match="Kubernetes CEL library function 'isURL'"):
        compile_rule("isURL(self)")
    with pytest.raises(RuleCompileError, match="Kubernetes CEL library function 'quantity'"):
        compile_rule("quantity(self).isGreaterThan(quantity('1'))")


def test_a_rule_on_a_missing_key_fails_rather_than_passes() -> None:
    assert evaluate_rule(models.MIN_LE_MAX.rule, {"maxReplicas": 3}) is not None
    assert evaluate_rule(models.MIN_LE_MAX.rule, {"minReplicas": 1, "maxReplicas": 3}) is None


# -- the API server and the models agree on every pool ------------------------------------------


def accepted_by_models(spec: dict[str, Any]) -> bool:
    try:
        AgentPoolSpec.model_validate(spec)
    except ValidationError:
        return False
    return True


VALID_POOLS = [
    pytest.param(load_example(), id="examples/agentpool.yaml"),
    pytest.param(yaml.safe_load((REPO / "examples" / "cli-agent.yaml").read_text()),
                 id="examples/cli-agent.yaml"),
    *[pytest.param(p, id=f"examples/pipeline.yaml:{p['metadata']['name']}") for p in
      yaml.safe_load_all((REPO / "examples" / "pipeline.yaml").read_text())],
    *[pytest.param(p, id=f"e2e:{p['metadata']['name']}") for p in applied_pools(IMAGE)],
    *[pytest.param(pool(s), id=f"valid-{i}") for i, s in enumerate(VALID_SPECS)],
    *[pytest.param(pool(s), id=f"near-{i}") for i, s in enumerate(NEAR_THE_RULES)],
]


@pytest.mark.parametrize("manifest", VALID_POOLS)
def test_pools_we_ship_are_accepted_by_both(manifest: dict[str, Any]) -> None:
    assert [str(e) for e in admission_errors(render_crd(), manifest)] == []
    assert accepted_by_models(manifest["spec"])


@pytest.mark.parametrize(
    ("rule", "spec"), CEL_VIOLATIONS, ids=[f"violation-{i}" for i in range(len(CEL_VIOLATIONS))]
)
def test_each_rule_violation_is_refused_by_both_with_the_same_message(
    rule: models.CelRule, spec: dict[str, Any]
) -> None:
    messages = [e.message for e in admission_errors(render_crd(), pool(spec))]
    assert rule.message in messages
    with pytest.raises(ValidationError) as caught:
        AgentPoolSpec.model_validate(spec)
    assert rule.message in str(caught.value)


@pytest.mark.parametrize("spec", INVALID_SPECS)
def test_schema_violations_are_refused_by_both(spec: dict[str, Any]) -> None:
    assert admission_errors(render_crd(), pool(spec)) != []
    assert not accepted_by_models(spec)


@pytest.mark.parametrize("invalid", invalid_pools(IMAGE), ids=lambda p: p.case)
def test_the_e2e_invalid_pools_are_refused_with_their_message(invalid: Any) -> None:
    errors = admission_errors(render_crd(), invalid.manifest)
    assert invalid.message in [e.message for e in errors]
    if invalid.secret:
        assert all(invalid.secret not in str(e) for e in errors)
    assert not accepted_by_models(invalid.manifest["spec"])


SPEC_CHANGES = st.fixed_dictionaries(
    {},
    optional={
        "queue": st.sampled_from(["jobs", "a.b-c_d", "-x", "", "x" * 101, "x" * 100]),
        "redis": st.sampled_from(
            [
                {"url": "redis://r:6379/0"},
                {"url": "rediss://r:6380"},
                {"url": "redis+sentinel://s1,s2:26380/svc/0"},
                {"url": "sentinel://s1/svc"},
                {"url": "redis+cluster://n1,n2:7001/"},
                {"url": "cluster://n1"},
                {"url": "http://r"},
                {"url": f"redis://:{SECRET}@r:6379"},
                {"url": f"redis://r/0?password={SECRET}"},
                {"urlSecretRef": {"name": "s"}},
                {"urlSecretRef": {"name": "s", "key": "k"}},
                {"urlSecretRef": {"name": ""}},
                {"url": "redis://r", "urlSecretRef": {"name": "s"}},
                {},
            ]
        ),
        "tenantMaxRunning": st.sampled_from([-1, 0, 1, 1000, 1001, 2.5]),
        "handler": st.sampled_from(
            ["m:f", "a.b.c:run", "_p._q:_r", "a.b", "a..b:f", "a.b:", ":f", "1a:f", "a b:f",
             None]
        ),
        "taskCommand": st.sampled_from([["node", "/app/agent.js"], ["agent"], [], [""]]),
        "concurrency": st.integers(-2, 1002),
        "taskTimeoutSeconds": st.sampled_from([0, 1, 60, 600, 604800, 604801]),
        "minReplicas": st.integers(-1, 12),
        "maxReplicas": st.integers(-1, 12),
        "scaleUpStep": st.integers(-1, 2),
        "scaleDownStep": st.integers(-1, 2),
        "pollSeconds": st.sampled_from([0, 0.25, 0.5, 1, 2.5, 3600, 3601]),
        "maxUnavailable": st.one_of(
            st.integers(-2, 3), st.sampled_from(["0%", "25%", "100%", "1000%", "half", "5"])
        ),
        "schedules": st.lists(
            st.fixed_dictionaries(
                {"name": st.sampled_from(["nightly", "a", "Nightly", "-a"]),
                 "cron": st.sampled_from(["0 * * * *", "30 9 * * mon-fri", "@daily",
                                          "*/5 0-23/2 1,15 jan-jun 0-7", "60 * * * *",
                                          "* * * *", "@reboot", "0 0 * * 8", "*/0 * * * *"])},
                optional={
                    "timeZone": st.sampled_from(["UTC", "Europe/Paris", "Etc/GMT+5", "", "a b",
                                                 "../x"]),
                    "priority": st.integers(-1, 10),
                    "payload": st.sampled_from([None, {"prompt": "p"}, [1], "text", 3]),
                    "startingDeadlineSeconds": st.sampled_from([0, 1, 86400, 86401]),
                    "expiresSeconds": st.sampled_from([0, 1, 31536000, 31536001, 1.5]),
                    "taskTimeoutSeconds": st.sampled_from([0, 1, 60, 61, 600, 601, 604801,
                                                           2.5]),
                    "concurrencyPolicy": st.sampled_from(["Allow", "Forbid", "Replace", ""]),
                    "tenant": st.sampled_from(["acme", "", "a\tb", "x" * 128, "x" * 129,
                                               "é ü\u00a0", "\u009f", "\x7f", None]),
                },
            ),
            max_size=3,
        ),
        "volumes": st.lists(
            st.fixed_dictionaries(
                {"name": st.sampled_from(["data", "tmp", "a-b", "Data", "x" * 64])},
                optional={source: st.sampled_from([{}, {"name": "c"}])
                          for source in ("emptyDir", "configMap", "hostPath", "downwardAPI")},
            ),
            max_size=3,
        ),
        "volumeMounts": st.lists(
            st.fixed_dictionaries(
                {"name": st.sampled_from(["data", "tmp", "cache"]),
                 "mountPath": st.sampled_from(["/data", "/tmp", "/tmp/", "/tmp/x", "data"])},
                optional={"subPath": st.sampled_from(["x", "a/b", "../x", "/x", "a..b", ""]),
                          "readOnly": st.booleans()},
            ),
            max_size=3,
        ),
        "initContainers": st.lists(
            st.fixed_dictionaries(
                {"name": st.sampled_from(["fetch", "worker", "Fetch", "gateway"]),
                 "image": st.sampled_from(["curl:8", ""])},
                optional={
                    "restartPolicy": st.sampled_from(["Always", "OnFailure"]),
                    "volumeMounts": st.lists(st.fixed_dictionaries(
                        {"name": st.sampled_from(["data", "tmp", "cache"]),
                         "mountPath": st.sampled_from(["/data", "/tmp", "/x"])}), max_size=2),
                    "securityContext": st.fixed_dictionaries({}, optional={
                        "runAsUser": st.sampled_from([-1, 0, 1, 1000, 2147483648]),
                        "runAsGroup": st.sampled_from([0, 1, 2147483647]),
                        "readOnlyRootFilesystem": st.booleans()}),
                },
            ),
            max_size=3,
        ),
        "rateLimits": st.lists(
            st.fixed_dictionaries(
                {"name": st.sampled_from(["openai", "a", "a.b-c_d", "A", "-a", "a-", "x" * 64])},
                optional={
                    "requestsPerMinute": st.integers(-1, 2),
                    "tokensPerMinute": st.integers(-1, 2),
                    "burstSeconds": st.sampled_from([0, 0.005, 0.01, 1, 60, 61]),
                },
            ),
            max_size=3,
        ),
        "tenants": st.lists(
            st.fixed_dictionaries(
                {"name": st.sampled_from(["acme", "", "a\tb", "x" * 128, "x" * 129, "é ü\u00a0",
                                          "\u009f", "acme "])},
                optional={"weight": st.sampled_from([-1, 0, 1, 2, 100, 101, 2.5]),
                          "maxRunning": st.sampled_from([-1, 0, 1, 1000, 1001, 2.5])},
            ),
            max_size=3,
        ),
    },
)


def spec_with(changes: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "redis": {"urlSecretRef": {"name": "agentpool-redis"}},
        "worker": {"image": IMAGE, "handler": "pkg.mod:run"},
    }
    for key in ("queue", "redis"):
        if key in changes:
            spec[key] = copy.deepcopy(changes[key])
    for key in ("handler", "taskCommand", "concurrency", "taskTimeoutSeconds", "volumes",
                "volumeMounts", "initContainers"):
        if key in changes:
            spec["worker"][key] = changes[key]
    if spec["worker"]["handler"] is None:
        del spec["worker"]["handler"]
    for key in ("minReplicas", "maxReplicas", "scaleUpStep", "scaleDownStep", "pollSeconds"):
        if key in changes:
            spec.setdefault("scaling", {})[key] = changes[key]
    if "maxUnavailable" in changes:
        spec["recovery"] = {"maxUnavailable": changes["maxUnavailable"]}
    if "rateLimits" in changes:
        spec["rateLimits"] = copy.deepcopy(changes["rateLimits"])
    if "schedules" in changes:
        spec["schedules"] = copy.deepcopy(changes["schedules"])
    for key in ("tenants", "tenantMaxRunning"):
        if key in changes:
            spec[key] = copy.deepcopy(changes[key])
    return spec


@settings(max_examples=300, deadline=None)
@given(SPEC_CHANGES)
def test_the_api_server_and_the_models_agree_on_any_spec(changes: dict[str, Any]) -> None:
    spec = spec_with(changes)
    errors = admission_errors(render_crd(), pool(spec))
    assert (errors == []) == accepted_by_models(spec), (spec, [str(e) for e in errors])


# -- a refused spec never echoes a credential ---------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{SECRET}@redis:6379/0",
        f"redis://agent:{SECRET}@redis:6379/0",
        f"http://agent:{SECRET}@redis:6379/0",
        f"redis://redis:6379/0?password={SECRET}",
        f"rediss://default:{SECRET}@redis.example:6380",
    ],
)
def test_a_url_with_credentials_is_refused_without_quoting_it(url: str) -> None:
    manifest = pool({"redis": {"url": url}, "worker": {"image": IMAGE, "handler": "m:f"}})
    errors = admission_errors(render_crd(), manifest)
    assert models.REDIS_URL_NO_CREDENTIALS.message in [e.message for e in errors]
    for error in errors:
        assert SECRET not in str(error)
        assert str(error).startswith("spec.redis: Invalid value: \"object\": ")
    with pytest.raises(ValidationError) as caught:
        AgentPoolSpec.model_validate(manifest["spec"])
    assert models.REDIS_URL_NO_CREDENTIALS.message in str(caught.value)


def test_no_rule_sits_on_the_redis_url_itself() -> None:
    """A failing rule on a scalar quotes its value: the URL's rules live on spec.redis."""
    assert ".spec.redis.url" not in {path for path, _ in all_rules()}


QUEUE_CHANGES = [
    pytest.param({"queue": "orders"}, {"queue": "orders", "paused": True}, False, id="kept"),
    pytest.param({}, {"paused": True}, False, id="defaulted-kept"),
    pytest.param({"queue": "orders"}, {"queue": "invoices"}, True, id="changed"),
    pytest.param({}, {"queue": "invoices"}, True, id="set"),
    pytest.param({"queue": "orders"}, {}, True, id="removed"),
]


@pytest.mark.parametrize(("before", "after", "refused"), QUEUE_CHANGES)
def test_a_pools_queue_is_fixed_once_the_pool_exists(
    before: dict[str, Any], after: dict[str, Any], refused: bool,
) -> None:
    errors = admission_errors(render_crd(), pool(minimal_spec(**after)),
                              stored=pool(minimal_spec(**before)))
    expected = [models.QUEUE_FIXED.message] if refused else []
    assert [e.message for e in errors] == expected
    assert [e.path for e in errors] == ([".spec"] if refused else [])


def test_a_new_pool_takes_any_queue_the_transition_rule_is_not_checked_at_creation() -> None:
    for spec in (minimal_spec(), minimal_spec(queue="invoices")):
        assert admission_errors(render_crd(), pool(spec)) == []


def test_a_pool_name_longer_than_a_label_value_is_refused() -> None:
    """The pool's name is the value of its pods' agentpool.dev/pool label (at most 63
    characters): a longer one would be stored, and its Deployment refused for ever."""
    named = pool(minimal_spec())
    named["metadata"]["name"] = "p" * 63
    assert admission_errors(render_crd(), named) == []
    named["metadata"]["name"] = "p" * 64
    assert [e.path for e in admission_errors(render_crd(), named)] == [".metadata.name"]
