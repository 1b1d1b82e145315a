"""What kube-apiserver does with the AgentPool CRD and with the pools applied to it.

kmock stores any CRD and any object, so the operator's tests cannot show what a real API server
refuses. This module repeats the API server's own checks on the generated CRD, with Google's CEL
runtime (`cel-expr-python`, the grammar and semantics kube-apiserver uses):

- at CRD creation: every `x-kubernetes-validations` rule must compile, using only standard CEL
  (Kubernetes' own library functions are not declared here, so a rule that needs one fails
  until it is declared), and every `default` must pass its node's schema and the CEL rules at
  and below it, as written: the defaults nested inside a default are not applied first;
- at object creation: defaults are filled in (recursively), the OpenAPI schema is checked, then
  every CEL rule whose node is present; a failing rule is reported the way the API server
  reports it, naming the node's path and quoting a scalar's value (an object is shown as
  "object"), which is how a secret can end up in an error message;
- at an update, the same, plus the transition rules (those that read `oldSelf`), which the
  API server evaluates only where the node is present in both the old and the new object
  (never at creation).

Facts measured on Kubernetes 1.36: ../shared/notes/cel-and-the-api-server.md.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import jsonschema
from cel_expr_python import cel

Schema = dict[str, Any]

KUBERNETES_CEL_LIBRARY = frozenset(
    {
        "isSorted", "sum", "min", "max", "indexOf", "lastIndexOf",  # lists
        "find", "findAll",  # regex
        "isURL", "url", "getScheme", "getHost", "getHostname", "getPort", "getEscapedPath",
        "getQuery",  # urls
        "authorizer", "path", "group", "resource", "check", "allowed", "reason",  # authz
        "isQuantity", "quantity", "sign", "isInteger", "asInteger", "isGreaterThan",
        "isLessThan", "compareTo", "add", "sub", "asApproximateFloat",  # quantities
        "isIP", "ip", "family", "isUnspecified", "isLoopback", "isLinkLocalMulticast",
        "isLinkLocalUnicast", "isGlobalUnicast", "isCIDR", "cidr", "containsIP",
        "containsCIDR", "masked", "prefixLength",  # ip and cidr
        "format", "named", "validate", "dns1123Label", "dns1123Subdomain",
        "qualifiedName", "labelValue", "uri", "uuid", "byte", "date", "datetime",  # format
        "semver", "isSemver", "major", "minor", "patch",  # semver
    }
)
"""Functions Kubernetes adds to CEL; none is declared in the environment below."""


class RuleCompileError(ValueError):
    """A rule the API server would refuse to compile, with its reason."""


@dataclass(frozen=True)
class FieldError:
    """One line of the API server's answer: `path: Invalid value: "shown": message`."""

    path: str
    shown: str
    message: str

    def __str__(self) -> str:
        path = self.path.removeprefix(".")
        return f"{path}: Invalid value: {json.dumps(self.shown)}: {self.message}"


@functools.cache
def _environment() -> cel.Env:
    return cel.NewEnv(variables={"self": cel.Type.DYN, "oldSelf": cel.Type.DYN})


@functools.cache
def compile_rule(rule: str) -> cel.Expression:
    """The compiled rule, or RuleCompileError naming what the API server would say."""
    try:
        return _environment().compile(rule)
    except RuntimeError as error:
        text = str(error)
        undeclared = re.search(r"undeclared reference to '([^']+)'", text)
        if undeclared and undeclared.group(1) in KUBERNETES_CEL_LIBRARY:
            raise RuleCompileError(
                f"rule {rule!r} uses the Kubernetes CEL library function "
                f"{undeclared.group(1)!r}, which this check does not declare: declare it "
                f"(with its Kubernetes semantics) before relying on it\n{text}"
            ) from None
        raise RuleCompileError(f"rule {rule!r} does not compile:\n{text}") from None


_ABSENT = object()
"""No old object: a creation, or a node the old object did not have."""


def is_transition_rule(rule: str) -> bool:
    return re.search(r"\boldSelf\b", rule) is not None


def evaluate_rule(rule: str, value: Any, old: Any = _ABSENT) -> str | None:
    """None when the rule holds for `value` (bound to `self`, and `old` to `oldSelf`); else
    why it does not."""
    data = {"self": value} if old is _ABSENT else {"self": value, "oldSelf": old}
    result = compile_rule(rule).eval(data=data)
    if result.type() == cel.Type.ERROR:
        return f"{result.plain_value()} evaluating rule"
    if result.type() != cel.Type.BOOL:
        return f"rule returned {result.type()}, not a bool"
    return None if result.plain_value() is True else "rule is false"


def walk_schema(node: Schema, path: str = "") -> Iterator[tuple[str, Schema]]:
    """Every schema node with its path (`.spec.scaling`, `.spec.worker.env[*]`, ...)."""
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from walk_schema(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk_schema(node["items"], f"{path}[*]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk_schema(node["additionalProperties"], f"{path}[*]")


def rules_of(schema: Schema) -> Iterator[tuple[str, dict[str, str]]]:
    for path, node in walk_schema(schema):
        for rule in node.get("x-kubernetes-validations", []):
            yield path, rule


def json_schema(node: Schema) -> Schema:
    """The node as plain JSON schema: int-or-string spelled out, Kubernetes keys dropped."""
    node = copy.deepcopy(node)
    for _, child in walk_schema(node):
        if child.pop("x-kubernetes-int-or-string", False):
            child["type"] = ["integer", "string"]
    return node


def cel_errors(node: Schema, value: Any, path: str, old: Any = _ABSENT) -> list[FieldError]:
    """CEL rules at `node` and below, on the parts of `value` that are present; transition
    rules only where `old` (the node in the object before an update) is present too."""
    errors = []
    for rule in node.get("x-kubernetes-validations", []):
        if is_transition_rule(rule["rule"]) and old is _ABSENT:
            continue
        why = evaluate_rule(rule["rule"], value, old)
        if why is not None:
            shown = value if isinstance(value, str | int | float | bool) else _kind_of(value)
            errors.append(FieldError(path, str(shown), rule["message"]))
    if isinstance(value, dict):
        old_fields = old if isinstance(old, dict) else {}
        for name, child in node.get("properties", {}).items():
            if name in value:
                errors += cel_errors(child, value[name], f"{path}.{name}",
                                     old_fields.get(name, _ABSENT))
        if isinstance(node.get("additionalProperties"), dict):
            for key, item in value.items():
                errors += cel_errors(node["additionalProperties"], item, f"{path}[{key}]")
    if isinstance(value, list) and isinstance(node.get("items"), dict):
        for index, item in enumerate(value):
            errors += cel_errors(node["items"], item, f"{path}[{index}]")
    return errors


def _kind_of(value: Any) -> str:
    return "array" if isinstance(value, list) else "object"


def schema_errors(node: Schema, value: Any, path: str) -> list[FieldError]:
    """The OpenAPI part: types, bounds, patterns, enums, required fields."""
    validator = jsonschema.Draft7Validator(json_schema(node))
    return [
        FieldError(
            path + "".join(f".{p}" if isinstance(p, str) else f"[{p}]" for p in error.path),
            str(error.instance) if not isinstance(error.instance, dict | list) else "object",
            error.message,
        )
        for error in validator.iter_errors(value)
    ]


def unknown_field_errors(node: Schema, value: Any, path: str) -> list[FieldError]:
    """Fields a structural schema would prune; in a default the API server refuses them."""
    errors = []
    if isinstance(value, dict) and "properties" in node:
        if not node.get("x-kubernetes-preserve-unknown-fields"):
            for name in value.keys() - node["properties"].keys():
                errors.append(FieldError(f"{path}.{name}", name, "field not declared in schema"))
        for name, child in node["properties"].items():
            if name in value:
                errors += unknown_field_errors(child, value[name], f"{path}.{name}")
    if isinstance(value, list) and isinstance(node.get("items"), dict):
        for index, item in enumerate(value):
            errors += unknown_field_errors(node["items"], item, f"{path}[{index}]")
    return errors


COLUMN_TYPES = frozenset({"integer", "number", "string", "boolean", "date"})
"""The types kube-apiserver takes for an additional printer column (its CRD validation)."""


def column_problems(columns: list[dict[str, Any]]) -> list[str]:
    """Why the API server would refuse these additional printer columns, as its CRD validation
    does: a name and a JSONPath each, a known type, a priority that is a whole number >= 0,
    no name twice."""
    problems: list[str] = []
    seen: set[str] = set()
    for index, column in enumerate(columns):
        where = f"additionalPrinterColumns[{index}]"
        name, path = column.get("name"), column.get("jsonPath")
        if not name:
            problems.append(f"{where}.name: Required value")
        elif name in seen:
            problems.append(f"{where}.name: Duplicate value: {name!r}")
        seen.add(str(name))
        if column.get("type") not in COLUMN_TYPES:
            problems.append(f"{where}.type: Unsupported value: {column.get('type')!r}")
        if not path or not str(path).startswith("."):
            problems.append(f"{where}.jsonPath: Invalid value: {path!r}")
        priority = column.get("priority", 0)
        if not isinstance(priority, int) or isinstance(priority, bool) or priority < 0:
            problems.append(f"{where}.priority: Invalid value: {priority!r}")
    return problems


def crd_problems(crd: dict[str, Any]) -> list[str]:
    """Why the API server would refuse this CustomResourceDefinition; empty when it accepts."""
    problems: list[str] = []
    for version in crd["spec"]["versions"]:
        problems += column_problems(version.get("additionalPrinterColumns") or [])
        schema = version["schema"]["openAPIV3Schema"]
        for path, rule in rules_of(schema):
            try:
                compile_rule(rule["rule"])
            except RuleCompileError as error:
                problems.append(f"{path}: {error}")
        if problems:
            continue
        for path, node in walk_schema(schema):
            if "default" not in node:
                continue
            default = node["default"]
            found = (
                schema_errors(node, default, f"{path}.default")
                + unknown_field_errors(node, default, f"{path}.default")
                + cel_errors(node, default, f"{path}.default")
            )
            problems += [str(error) for error in found]
    return problems


def apply_defaults(node: Schema, value: Any) -> Any:
    """Structural defaulting: missing fields get their default, then are defaulted in turn."""
    if isinstance(value, dict) and "properties" in node:
        value = dict(value)
        for name, child in node["properties"].items():
            if name not in value and "default" in child:
                value[name] = copy.deepcopy(child["default"])
            if name in value:
                value[name] = apply_defaults(child, value[name])
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        value = [apply_defaults(node["items"], item) for item in value]
    return value


def admission_errors(crd: dict[str, Any], manifest: dict[str, Any],
                     stored: dict[str, Any] | None = None) -> list[FieldError]:
    """What `kubectl apply` of this object would be refused with; empty when it is stored.
    `stored`: the object as the API server holds it, for an update."""
    (version,) = [v for v in crd["spec"]["versions"] if v["storage"]]
    schema = version["schema"]["openAPIV3Schema"]
    obj = apply_defaults(schema, manifest)
    found = schema_errors(schema, obj, "")
    if found:
        return found
    old = _ABSENT if stored is None else apply_defaults(schema, stored)
    return cel_errors(schema, obj, "", old)
