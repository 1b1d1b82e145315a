"""A schedule's cron as a CronJob takes it: every range of every field is refused when its start
comes after its end, by the models and by the CRD's rules alike (a CronJob refuses it; croniter
would wrap around), and a time zone written into the expression is refused with a message that
names the `timeZone` field."""

from __future__ import annotations

import functools
from collections.abc import Iterator

import pytest
from apiserver import evaluate_rule, rules_of
from pydantic import ValidationError

from agentpool import models
from agentpool.crd import render_crd
from agentpool.models import ScheduleSpec

MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def numbers(first: int, last: int, padded: bool = True) -> Iterator[tuple[str, int]]:
    for value in range(first, last + 1):
        yield str(value), value
        if padded and value < 10:
            yield f"0{value}", value


FIELDS: dict[int, list[tuple[str, int]]] = {
    0: [*numbers(0, 59)],
    1: [*numbers(0, 23)],
    2: [*numbers(1, 31)],
    3: [*numbers(1, 12), *((n, v) for v, n in enumerate(MONTHS, 1)),
        ("JAN", 1), ("Dec", 12)],
    4: [*numbers(0, 7, padded=False), *((n, v) for v, n in enumerate(DAYS)),
        ("SUN", 0), ("Fri", 5)],
}
"""Each field's spellings with the value a CronJob orders them by (Sunday is 0, or 7)."""


def cron_with(field: int, item: str) -> str:
    return " ".join(item if i == field else "*" for i in range(5))


@functools.cache
def crd_rules() -> tuple[tuple[str, str], ...]:
    """The cron's rules as the rendered CRD holds them: (rule, message)."""
    schema = render_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return tuple((rule["rule"], rule["message"]) for path, rule in rules_of(schema)
                 if path == ".spec.schedules[*].cron")


def crd_refuses(cron: str) -> list[str]:
    return [message for rule, message in crd_rules() if evaluate_rule(rule, cron) is not None]


def models_refuse(cron: str) -> str | None:
    try:
        ScheduleSpec(name="a", cron=cron)
    except ValidationError as error:
        return str(error.errors()[0]["ctx"]["error"])
    return None


def test_the_crd_carries_the_cron_rules_of_the_models() -> None:
    assert set(crd_rules()) == {
        (r.rule, r.message) for r in (models.SCHEDULE_CRON_FORMAT,
                                      models.SCHEDULE_CRON_TIME_ZONE,
                                      models.SCHEDULE_CRON_RANGES)}


@pytest.mark.parametrize("field", sorted(FIELDS), ids=["minute", "hour", "day-of-month",
                                                       "month", "day-of-week"])
def test_every_range_of_a_field_is_refused_by_both_exactly_when_it_is_reversed(
    field: int,
) -> None:
    """Every pair of spellings as a range alone; those at the edge (ends a step apart or
    equal) also within a list and with a step."""
    ranges = models.SCHEDULE_CRON_RANGES.message
    for start, low in FIELDS[field]:
        for end, high in FIELDS[field]:
            edge = abs(low - high) <= 1
            for item in (f"{start}-{end}", *([f"1,{start}-{end}/2,3"] if edge else [])):
                cron = cron_with(field, item)
                expected = [ranges] if low > high else []
                assert crd_refuses(cron) == expected, cron
                assert models_refuse(cron) == (ranges if low > high else None), cron


@pytest.mark.parametrize("cron", [
    "5-1 * * * *", "0 22-2 * * *", "0 9 * * fri-mon", "0 9 * * sat-sun", "0 9 * * 7-1",
    "0 9 * * mon-0", "0 0 31-1 * *", "0 0 1 dec-jan *", "0 0 1 12-jan *", "0 0 1 nov-10 *",
    "10-05 * * * *", "59-0/5 * * * *", "0,50-40 * * * *",
])
def test_wrap_around_ranges_are_refused_with_how_to_split_them(cron: str) -> None:
    message = models.SCHEDULE_CRON_RANGES.message
    assert "split one that wraps around" in message
    assert crd_refuses(cron) == [message]
    assert models_refuse(cron) == message


@pytest.mark.parametrize("cron", [
    "TZ=Europe/Paris 0 * * * *", "CRON_TZ=UTC 30 9 * * mon-fri", "TZ=UTC @daily",
    "TZ=Europe/Paris", "0 * * * * TZ=UTC",
])
def test_a_time_zone_in_the_cron_is_refused_with_the_time_zone_field_to_use(cron: str) -> None:
    """Only that message: the generic "five fields" one would send a person the wrong way."""
    message = models.SCHEDULE_CRON_TIME_ZONE.message
    assert "timeZone" in message
    assert crd_refuses(cron) == [message]
    assert models_refuse(cron) == message


@pytest.mark.parametrize("cron", ["0 * * * * *", "tz=UTC 0 * * * *", "TZ 0 * * * *", ""])
def test_other_malformed_crons_keep_the_format_message(cron: str) -> None:
    message = models.SCHEDULE_CRON_FORMAT.message
    assert crd_refuses(cron) == [message]
    assert models_refuse(cron) == message
