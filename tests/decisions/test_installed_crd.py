"""An installed CRD older than the operator: which fields the API server would drop or fill
with old defaults, and the shared look at it (once a minute, a refused read flags nothing)."""

from __future__ import annotations

import copy
import logging
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from agentpool.crd import render_crd
from agentpool_operator import installed_crd
from agentpool_operator.installed_crd import (
    CHECK_SECONDS,
    REASON,
    InstalledCrd,
    outdated_problem,
    schema_drift,
    version_schema,
)


def schema(crd: dict[str, Any]) -> dict[str, Any]:
    found = version_schema(crd)
    assert isinstance(found, dict)
    return found


def node(crd: dict[str, Any], *path: str) -> dict[str, Any]:
    """The schema node at `path`: property names, `[]` for an array's items."""
    here = schema(crd)
    for step in path:
        here = here["items"] if step == "[]" else here["properties"][step]
    return here


def without(*paths: tuple[str, ...]) -> dict[str, Any]:
    """The operator's CRD with the last property of each path removed."""
    crd = render_crd()
    for path in paths:
        del node(crd, *path[:-1])["properties"][path[-1]]
    return crd


def test_the_operators_own_crd_lacks_nothing() -> None:
    assert outdated_problem(render_crd(), render_crd()) is None


def test_a_rule_on_the_pool_name_added_since_is_no_field_dropped() -> None:
    """The API server never prunes `metadata`: a CRD from before the 63-character name rule
    loses no field."""
    old = without(("metadata", "name"))
    assert not schema_drift(schema(old), schema(render_crd()))
    assert outdated_problem(old, render_crd()) is None


def test_fields_added_since_the_installed_crd_are_named_with_their_paths() -> None:
    old = without(("spec", "worker", "protectBusyPods"), ("status", "drainingReplicas"),
                  ("spec", "schedules", "[]", "concurrencyPolicy"))
    assert schema_drift(schema(old), schema(render_crd())).missing == (
        "spec.worker.protectBusyPods", "spec.schedules[].concurrencyPolicy",
        "status.drainingReplicas",
    )
    problem = outdated_problem(old, render_crd())
    assert problem is not None and problem.reason == REASON
    assert "drops 3 fields it does not know (spec.worker.protectBusyPods, " in problem.message
    assert "kubectl apply -f charts/agentpool-operator/crds/" in problem.message


def test_a_missing_object_is_named_once_not_field_by_field() -> None:
    old = without(("spec", "schedules"))
    assert schema_drift(schema(old), schema(render_crd())).missing == ("spec.schedules",)
    problem = outdated_problem(old, render_crd())
    assert problem is not None and "drops 1 field it does not know (spec.schedules)" in (
        problem.message)


def test_nothing_is_missing_below_a_node_that_keeps_unknown_fields() -> None:
    old = render_crd()
    worker = node(old, "spec", "worker")
    worker.pop("properties")
    worker["x-kubernetes-preserve-unknown-fields"] = True
    assert schema_drift(schema(old), schema(render_crd())).missing == ()


def test_old_defaults_the_api_server_would_write_into_pools_are_named() -> None:
    """drainSeconds had a default of 60; this operator leaves it unset (taskTimeoutSeconds)."""
    old = render_crd()
    node(old, "spec", "worker", "drainSeconds")["default"] = 60
    node(old, "spec", "worker", "concurrency")["default"] = 2
    drift = schema_drift(schema(old), schema(render_crd()))
    assert (drift.missing, drift.old_defaults) == (
        (), (("spec.worker.concurrency", 2), ("spec.worker.drainSeconds", 60)))
    problem = outdated_problem(old, render_crd())
    assert problem is not None and "the API server fills in 2 old default values (" in (
        problem.message)
    both = without(("status", "drainingSince"))
    node(both, "spec", "worker", "drainSeconds")["default"] = 60
    problem = outdated_problem(both, render_crd())
    assert problem is not None and (
        "drops 1 field it does not know (status.drainingSince) and fills in 1 old default "
        "value (spec.worker.drainSeconds: 60)") in problem.message


def test_an_object_default_is_compared_key_by_key() -> None:
    """An old `scaling` default (written whole into a pool that omits `scaling`) with another
    cooldown and without keepDrainedSeconds: only the differing value is named."""
    old = render_crd()
    scaling = node(old, "spec", "scaling")
    scaling["default"] = {**scaling["default"], "scaleDownCooldownSeconds": 60}
    del scaling["default"]["keepDrainedSeconds"]
    drift = schema_drift(schema(old), schema(render_crd()))
    assert drift.old_defaults == (("spec.scaling.scaleDownCooldownSeconds", 60),)


def test_a_long_list_names_the_first_few_and_counts_the_rest() -> None:
    worker = tuple(node(render_crd(), "spec", "worker")["properties"])
    old = without(*(("spec", "worker", name) for name in worker[:9]))
    problem = outdated_problem(old, render_crd())
    assert problem is not None
    named = ", ".join(f"spec.worker.{name}" for name in worker[:6])
    assert f"drops 9 fields it does not know ({named} and 3 more)" in problem.message


def test_a_crd_without_this_version_is_outdated() -> None:
    old = render_crd()
    old["spec"]["versions"][0]["name"] = "v1alpha0"
    problem = outdated_problem(old, render_crd())
    assert problem is not None and "has no schema for v1alpha1" in problem.message


class Reader:
    """Answers the CRD read from a list of outcomes, one per read (an int: that HTTP status)."""

    def __init__(self, *answers: dict[str, Any] | int | Exception | None) -> None:
        self.answers = list(answers)
        self.paths: list[str] = []

    async def get(self, path: str) -> dict[str, Any] | None:
        self.paths.append(path)
        answer = self.answers.pop(0)
        if isinstance(answer, int):
            raise ApiException(status=answer, reason="Forbidden")
        if isinstance(answer, Exception):
            raise answer
        return copy.deepcopy(answer)


async def test_the_crd_is_read_once_a_minute_and_a_new_one_clears_the_problem() -> None:
    old = without(("spec", "worker", "protectBusyPods"))
    reader = Reader(old, render_crd())
    look = InstalledCrd()
    first = await look.check(reader, now=100.0)
    assert first is not None and "spec.worker.protectBusyPods" in first.message
    assert await look.check(reader, now=100.0 + CHECK_SECONDS - 1) == first
    assert reader.paths == [
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/agentpools.agentpool.dev"]
    assert await look.check(reader, now=100.0 + CHECK_SECONDS) is None
    assert len(reader.paths) == 2


async def test_an_unreadable_or_missing_crd_flags_no_pool_and_is_logged_once_per_cause(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reader = Reader(403, 403, None, ConnectionResetError("reset by peer"),
                    without(("status", "drainingSince")))
    look = InstalledCrd()
    with caplog.at_level(logging.WARNING, logger=installed_crd.__name__):
        assert await look.check(reader, now=0.0) is None
        assert await look.check(reader, now=CHECK_SECONDS) is None
        assert await look.check(reader, now=2 * CHECK_SECONDS) is None
        assert await look.check(reader, now=3 * CHECK_SECONDS) is None
        problem = await look.check(reader, now=4 * CHECK_SECONDS)
    assert problem is not None and "status.drainingSince" in problem.message
    messages = [record.getMessage() for record in caplog.records]
    assert sum("cannot read CRD agentpools.agentpool.dev (" in m for m in messages) == 2
    assert any("ConnectionResetError: reset by peer" in m for m in messages)
    assert sum("status.drainingSince" in m for m in messages) == 1
