"""docs/operator.md's "Spec reference" table lists every field of the spec with the models'
default and limits, so that it cannot drift from agentpool/models/ (and the CRD made from it).

A field holding one of the project's own objects (`EXPANDED`) is described by rows of its
fields; `redis`, `worker`, `scaling` and `recovery`, always present, have no row of their own.
An object shaped as in a Pod spec (`SUMMARISED`) is one row that names its fields.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import annotated_types
import pytest
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from agentpool import models

DOCS = Path(__file__).resolve().parents[2] / "docs" / "operator.md"
SECTION = "## Spec reference"

EXPANDED: frozenset[type[BaseModel]] = frozenset({
    models.AgentPoolSpec, models.RedisSpec, models.SecretKeyRef, models.WorkerSpec,
    models.ScalingSpec, models.RecoverySpec, models.RateLimitSpec, models.ScheduleSpec,
    models.TenantSpec,
})
SUMMARISED: frozenset[type[BaseModel]] = frozenset({
    models.EnvVar, models.Volume, models.VolumeMount, models.InitContainer,
    models.ContainerSecurity, models.ResourceRequirements, models.LocalObjectReference,
})
SUPERSCRIPT = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")
BOUNDS: dict[type, str] = {
    annotated_types.Ge: "ge", annotated_types.Gt: "gt", annotated_types.Le: "le",
    annotated_types.Lt: "lt", annotated_types.MaxLen: "max_length",
}
"""The constraints whose value the limits cell must name, by the attribute holding it
(a minimum length of 1, "not empty", need not be named)."""


class Row(typing.NamedTuple):
    default: str
    limits: str
    meaning: str


def documented() -> dict[str, Row]:
    text = DOCS.read_text()
    assert SECTION in text, f"docs/operator.md has no {SECTION!r} section"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    rows: dict[str, Row] = {}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        name, *cells = (cell.strip() for cell in line.strip().strip("|").split("|"))
        assert len(cells) == 3 and re.fullmatch(r"`[^`]+`", name), f"not a row: {line}"
        field = name.strip("`")
        assert field not in rows, f"{field} has two rows"
        rows[field] = Row(*cells)
    return rows


def _unwrapped(annotation: Any) -> Any:
    """The annotation without `| None`."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _models_in(annotation: Any) -> set[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {annotation}
    return {m for arg in typing.get_args(annotation) for m in _models_in(arg)}


def expected_fields(model: type[BaseModel] = models.AgentPoolSpec,
                    prefix: str = "") -> Iterator[tuple[str, FieldInfo]]:
    """(row name, field) of every row the table must have."""
    for name, info in model.model_fields.items():
        path = prefix + (info.alias or name)
        held = _models_in(info.annotation)
        unknown = held - EXPANDED - SUMMARISED
        assert not unknown, f"{path} holds {unknown}: add it to EXPANDED or SUMMARISED"
        expanded = held & EXPANDED
        always_there = info.is_required() or info.default_factory is not None
        if not (expanded and always_there):
            yield path, info
        is_list = typing.get_origin(_unwrapped(info.annotation)) is list
        for sub in expanded:
            yield from expected_fields(sub, path + ("[]." if is_list else "."))


def number(value: float) -> str:
    """A number as the table writes it: 2 for 2.0, 10⁹ for 1000000000."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value)
    if isinstance(value, int) and value >= 10**6 and text.rstrip("0") == "1":
        return "10" + str(len(text) - 1).translate(SUPERSCRIPT)
    return text


def expected_default(info: FieldInfo) -> str:
    assert info.default_factory is None, "a row's default comes from a factory: render it here"
    if info.is_required():
        return "required"
    value = info.default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, int | float):
        return f"`{number(value)}`"
    return f"`{value}`"


def expected_limits(info: FieldInfo) -> tuple[list[str], list[str]]:
    """(numbers, choices) the limits cell must name: the bounds and the allowed values."""
    numbers = []
    for item in info.metadata:
        if (bound := BOUNDS.get(type(item))) is not None:
            numbers.append(number(getattr(item, bound)))
        elif isinstance(item, annotated_types.MinLen) and item.min_length > 1:
            numbers.append(number(item.min_length))
    annotation = _unwrapped(info.annotation)
    choices = [str(c) for c in typing.get_args(annotation)] \
        if typing.get_origin(annotation) is typing.Literal else []
    return numbers, choices


def names_of(model: type[BaseModel], described: set[type[BaseModel]]) -> set[str]:
    """The field names a summarised object's row must name: its own, and those of the objects
    inside it that no row of their own describes."""
    names = set()
    for name, info in model.model_fields.items():
        names.add(info.alias or name)
        for inner in _models_in(info.annotation) - described:
            names |= names_of(inner, described)
    return names


FIELDS = dict(expected_fields())


def test_the_table_has_a_row_for_every_field_and_no_other() -> None:
    rows = documented()
    assert sorted(set(FIELDS) - set(rows)) == [], "fields missing from the Spec reference"
    assert sorted(set(rows) - set(FIELDS)) == [], "rows of no field in the Spec reference"


@pytest.mark.parametrize("field", sorted(FIELDS))
def test_each_row_has_the_models_default_and_limits(field: str) -> None:
    info, row = FIELDS[field], documented()[field]
    assert row.default == expected_default(info), f"{field}: default"
    numbers, choices = expected_limits(info)
    for value in numbers:
        assert re.search(rf"(?<![\w.]){re.escape(value)}(?![\w.])", row.limits), \
            f"{field}: the limits {row.limits!r} do not name {value}"
    for choice in choices:
        assert f"`{choice}`" in row.limits, f"{field}: the limits do not name `{choice}`"
    assert row.meaning, f"{field}: no meaning"


def test_each_summarised_object_names_its_fields() -> None:
    rows = documented()
    held = {field: _models_in(info.annotation) & SUMMARISED for field, info in FIELDS.items()}
    described = {model for models_ in held.values() for model in models_}
    for field, inner in held.items():
        for model in inner:
            for name in names_of(model, described - {model}):
                assert f"`{name}`" in rows[field].meaning, f"{field}: `{name}` is not named"


def test_the_number_format() -> None:
    assert [number(v) for v in (2.0, 0.5, 1000, 10**9, 10**12, 2 * 10**9)] == [
        "2", "0.5", "1000", "10⁹", "10¹²", "2000000000"]
