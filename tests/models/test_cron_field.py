"""A schedule's cron as the models and the CRD's rules take it alike: a time zone written into the
expression is refused with a message that names the `timeZone` field; a range whose start comes
after its end is taken (croniter wraps it around; pools stored before may hold one)."""

from __future__ import annotations

import functools

import pytest
from apiserver import evaluate_rule, rules_of
from pydantic import ValidationError

from agentpool import models
from agentpool.crd import render_crd
from agentpool.models import ScheduleSpec


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
                                      models.SCHEDULE_CRON_TIME_ZONE)}


@pytest.mark.parametrize("cron", [
    "5-1 * * * *", "0 22-2 * * *", "0 9 * * fri-mon", "0 9 * * 7-1", "0 0 31-1 * *",
    "0 0 1 Dec-FEB/2 *", "59-0/5 * * * *", "0,50-40 * * * *",
])
def test_wrap_around_ranges_are_taken_by_both(cron: str) -> None:
    assert crd_refuses(cron) == []
    assert models_refuse(cron) is None


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
