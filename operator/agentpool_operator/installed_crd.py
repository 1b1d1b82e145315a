"""Whether the AgentPool CRD installed in the cluster knows every field of this operator.

Helm installs a chart's `crds/` once and never upgrades them. After `helm upgrade` without
`kubectl apply -f crds/`, the API server keeps serving the old schema and silently prunes what
it does not describe: a field a person sets (`spec.worker.protectBusyPods: false`) is gone from
the stored pool, and a status field the operator writes never shows; an old default is
written into every pool that omits the field. Nothing fails, so the operator compares the
installed schema with the one its models generate and names the dropped fields and the old
defaults (`Degraded`, reason `CRDOutdated`) until the new CRD is applied.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from kubernetes.client.exceptions import ApiException

from agentpool import models
from agentpool.crd import render_crd

from .kube import api_error_message
from .status import Problem

REASON = "CRDOutdated"
CRD_NAME = f"{models.PLURAL}.{models.GROUP}"
CRD_PATH = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD_NAME}"
CHECK_SECONDS = 60.0
"""The installed CRD is read again this often (one GET for the whole operator)."""
NAMED_AT_MOST = 6
FIX = "kubectl apply -f charts/agentpool-operator/crds/ (or: agentpool crd | kubectl apply -f -)"

log = logging.getLogger(__name__)


def version_schema(crd: Mapping[str, Any],
                   version: str = models.VERSION) -> Mapping[str, Any] | None:
    """The `openAPIV3Schema` a CRD gives `version`, or None when it does not serve it."""
    for entry in (crd.get("spec") or {}).get("versions") or ():
        if entry.get("name") == version:
            schema = (entry.get("schema") or {}).get("openAPIV3Schema")
            return schema if isinstance(schema, Mapping) else None
    return None


@dataclass(frozen=True)
class SchemaDrift:
    """How the installed schema treats what this operator's schema describes."""

    missing: tuple[str, ...] = ()
    """Paths of fields the installed schema does not describe (the API server prunes them),
    outermost only: a missing object is named, not each field inside it."""
    old_defaults: tuple[tuple[str, Any], ...] = ()
    """Fields whose installed default differs from this operator's (or that this operator
    leaves unset): the API server writes the old value into every pool that omits them."""

    def __bool__(self) -> bool:
        return bool(self.missing or self.old_defaults)


def schema_drift(installed: Mapping[str, Any], expected: Mapping[str, Any]) -> SchemaDrift:
    """Compare two `openAPIV3Schema`s. Array items are written `name[]`, map values `name{}`;
    below a node that keeps unknown fields (`x-kubernetes-preserve-unknown-fields`) nothing is
    pruned, nor in `metadata`, which a CRD may only constrain (`metadata.name`'s length)."""
    missing: list[str] = []
    defaults: dict[str, Any] = {}
    _compare(_without_metadata(installed), _without_metadata(expected), "", missing, defaults)
    return SchemaDrift(tuple(missing), tuple(defaults.items()))


def _without_metadata(schema: Mapping[str, Any]) -> Mapping[str, Any]:
    properties = {k: v for k, v in (schema.get("properties") or {}).items() if k != "metadata"}
    return {**schema, "properties": properties}


def _compare(installed: Mapping[str, Any], expected: Mapping[str, Any], path: str,
             missing: list[str], defaults: dict[str, Any]) -> None:
    if path and "default" in installed:
        old, new = installed["default"], expected.get("default")
        if isinstance(old, Mapping):
            new = new if isinstance(new, Mapping) else {}
            defaults.update({f"{path}.{key}": value for key, value in old.items()
                             if new.get(key) != value})
        elif old != new:
            defaults[path] = old
    if installed.get("x-kubernetes-preserve-unknown-fields"):
        return
    known = installed.get("properties") or {}
    for name, child in (expected.get("properties") or {}).items():
        here = f"{path}.{name}" if path else name
        if name not in known:
            missing.append(here)
        else:
            _compare(known[name], child, here, missing, defaults)
    for key, suffix in (("items", "[]"), ("additionalProperties", "{}")):
        inner, installed_inner = expected.get(key), installed.get(key)
        if isinstance(inner, Mapping) and isinstance(installed_inner, Mapping):
            _compare(installed_inner, inner, path + suffix, missing, defaults)


def outdated_problem(installed_crd: Mapping[str, Any],
                     expected_crd: Mapping[str, Any]) -> Problem | None:
    """`CRDOutdated` naming the fields the installed CRD drops and the old defaults it fills
    in, or None when it treats every field as this operator's does."""
    expected = version_schema(expected_crd)
    if expected is None:
        raise ValueError(f"the expected CRD does not serve {models.VERSION}")
    installed = version_schema(installed_crd)
    if installed is None:
        return Problem(REASON, (
            f"the installed AgentPool CRD has no schema for {models.VERSION}; apply this "
            f"operator's CRD: {FIX}"))
    drift = schema_drift(installed, expected)
    if not drift:
        return None
    parts = []
    if drift.missing:
        fields = "field" if len(drift.missing) == 1 else "fields"
        parts.append(f"drops {len(drift.missing)} {fields} it does not know "
                     f"({_named(drift.missing)})")
    if drift.old_defaults:
        values = "value" if len(drift.old_defaults) == 1 else "values"
        named = _named([f"{path}: {value}" for path, value in drift.old_defaults])
        parts.append(f"fills in {len(drift.old_defaults)} old default {values} ({named})")
    return Problem(REASON, (
        f"the installed AgentPool CRD is older than this operator: the API server "
        f"{' and '.join(parts)}; apply this operator's CRD: {FIX}"))


def _named(items: Sequence[str]) -> str:
    more = f" and {len(items) - NAMED_AT_MOST} more" if len(items) > NAMED_AT_MOST else ""
    return ", ".join(items[:NAMED_AT_MOST]) + more


@functools.cache
def _expected_crd() -> dict[str, Any]:
    return render_crd()


class CrdReader(Protocol):
    async def get(self, path: str) -> dict[str, Any] | None: ...


@dataclass
class InstalledCrd:
    """The outcome of the last look at the installed CRD, shared by every pool's loop."""

    problem: Problem | None = None
    read_at: float | None = None
    unreadable: str | None = None
    """Why the last read failed (logged once; no pool is flagged for it)."""

    async def check(self, kube: CrdReader, now: float | None = None) -> Problem | None:
        now = time.monotonic() if now is None else now
        if self.read_at is not None and now - self.read_at < CHECK_SECONDS:
            return self.problem
        self.read_at = now
        try:
            body = await kube.get(CRD_PATH)
        except Exception as error:  # a check of its own: it never fails the pool's round
            reason = (api_error_message(error) if isinstance(error, ApiException)
                      else f"{type(error).__name__}: {error}")
            if reason != self.unreadable:
                log.warning(f"cannot read CRD {CRD_NAME} ({reason}): not checking that it "
                            "knows this operator's fields")
            self.unreadable, self.problem = reason, None
            return None
        self.unreadable = None
        problem = None if body is None else outdated_problem(body, _expected_crd())
        if problem != self.problem:
            if problem is not None:
                log.warning(problem.message)
            else:
                log.info(f"CRD {CRD_NAME} knows every field of this operator")
        self.problem = problem
        return problem
