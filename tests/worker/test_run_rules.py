"""The worker's rules for one run: how long it may last, and what its error says when its
timeout stops it or it asks to run again later (`Retry`)."""

from __future__ import annotations

import copy
import pickle
from decimal import Decimal
from fractions import Fraction

import pytest

from agentpool.errors import PermanentError, Retry
from agentpool.protocol import MAX_ERROR_CHARS, ClaimedTask
from agentpool_worker.command import read_retry_after
from agentpool_worker.run_rules import (
    RunFailure,
    describe,
    retry_error,
    retry_request,
    run_failure,
    run_timeout,
    timeout_error,
)


def task(timeout_ms: int | None) -> ClaimedTask:
    return ClaimedTask("t1", "tok", 1, 3, "null", 0, 0, timeout_ms=timeout_ms)


@pytest.mark.parametrize(("timeout_ms", "pool", "seconds", "error"), [
    (None, 600, 600, "timed out after 600s"),
    (None, 0.3, 0.3, "timed out after 0.3s"),
    (30_000, 600, 30, "timed out after 30s (the task's own timeout)"),
    (600_000, 600, 600, "timed out after 600s (the task's own timeout)"),
    (3_600_000, 600, 600, "timed out after 600s (the pool's task timeout; the task's own is "
                          "3600s)"),
    (1_234_567, 123456.789, 1234.567, "timed out after 1234.567s (the task's own timeout)"),
    (0, 600, 600, "timed out after 600s"),  # a field written by hand: the pool's applies
])
def test_a_run_lasts_the_shorter_of_the_two_and_its_error_says_whose(
    timeout_ms: int | None, pool: float, seconds: float, error: str,
) -> None:
    assert run_timeout(task(timeout_ms), pool) == seconds
    assert timeout_error(seconds, task(timeout_ms), pool) == error


@pytest.mark.parametrize("delay", [-1, 86401, float("nan"), float("inf"), True, "5", None])
def test_a_retry_delay_out_of_bounds_is_refused_where_it_is_raised(delay: object) -> None:
    with pytest.raises(ValueError, match=r"Retry needs a delay from 0 to 86400 seconds \(a day\)"):
        Retry(delay)  # type: ignore[arg-type]


@pytest.mark.parametrize(("delay", "reason", "error"), [
    (0, "", "asked to run again in 0s"),
    (2.5, "", "asked to run again in 2.5s"),
    (86400, "quota resets daily", "asked to run again in 86400s: quota resets daily"),
])
def test_a_retry_records_when_and_why(delay: float, reason: str, error: str) -> None:
    request = Retry(delay, reason)
    assert (request.delay, request.reason) == (float(delay), reason)
    assert str(request) == (reason or f"run again in {delay:g} s")
    assert retry_error(request) == error


def test_a_retry_crosses_processes_and_copies_whole() -> None:
    """A process pool's child raising Retry: its parent gets the Retry, not a broken pool."""
    for again in (pickle.loads(pickle.dumps(Retry(5, "later"))), copy.copy(Retry(5, "later"))):
        assert isinstance(again, Retry) and (again.delay, again.reason) == (5.0, "later")


def test_any_real_number_is_a_delay() -> None:
    assert [Retry(d).delay for d in (2, 2.5, Fraction(1, 2), Decimal("0.25"), -0.0)] == [
        2.0, 2.5, 0.5, 0.25, 0.0]
    assert str(Retry(-0.0)) == "run again in 0 s"


def test_a_group_of_retries_asks_for_the_longest_delay_with_every_reason() -> None:
    group = ExceptionGroup("children", [
        Retry(1, "a not ready"),
        ExceptionGroup("nested", [Retry(3, "b not ready"), Retry(2, "a not ready")]),
        Retry(0.5),
    ])
    request = retry_request(group)
    assert request is not None
    assert (request.delay, request.reason) == (3.0, "a not ready; b not ready")


def test_a_group_with_any_other_failure_is_no_retry_request() -> None:
    assert retry_request(ExceptionGroup("children", [Retry(1), ValueError("boom")])) is None
    assert retry_request(ValueError("boom")) is None


def _exit() -> SystemExit:
    return SystemExit(3)


@pytest.mark.parametrize(("exc", "timed_out", "failure"), [
    (ValueError("boom"), False, RunFailure("ValueError: boom", True)),
    (PermanentError("no prompt"), False, RunFailure("PermanentError: no prompt", False)),
    (_exit(), False, RunFailure("the handler called sys.exit(3); return or raise instead", True)),
    (Retry(60, "index building"), False,
     RunFailure("asked to run again in 60s: index building", True, retry_after=60.0)),
    (ExceptionGroup("g", [Retry(1), Retry(2)]), False,
     RunFailure("asked to run again in 2s", True, retry_after=2.0)),
    (Retry(50, "made of the cancel"), True,
     RunFailure("timed out after 30s (the task's own timeout)", True, timed_out=True)),
    (None, True, RunFailure("timed out after 30s (the task's own timeout)", True, timed_out=True)),
    (PermanentError("late"), True,
     RunFailure("timed out after 30s (the task's own timeout)", True, timed_out=True)),
], ids=["error", "permanent", "sys-exit", "retry", "group-of-retries", "retry-after-timeout",
        "returned-after-timeout", "permanent-after-timeout"])
def test_how_a_failed_run_is_recorded(exc: BaseException | None, timed_out: bool,
                                      failure: RunFailure) -> None:
    got = run_failure(exc, timed_out, 30, task(30_000), 600)
    if failure.error.startswith(("ValueError", "PermanentError")):  # then its traceback
        assert got.error.split("\n")[0] == failure.error
        got = RunFailure(failure.error, got.retryable, got.retry_after, got.timed_out)
    assert got == failure


@pytest.mark.parametrize(("message", "seconds", "why"), [
    ({"error": "e"}, None, ""),
    ({"error": "e", "retry_after": 30}, 30.0, ""),
    ({"error": "e", "retry_after": 0.5}, 0.5, ""),
    ({"error": "e", "retry_after": "120"}, 120.0, ""),
    ({"error": "e", "retry_after": " 2.5 "}, 2.5, ""),
    ({"error": "e", "retry_after": "Wed, 21 Oct 2026 07:28:00 GMT"}, None,
     "'Wed, 21 Oct 2026 07:28:00 GMT' is not a number of seconds from 0 to 86400"),
    ({"error": "e", "retry_after": "1e3"}, None, "'1e3' is not a number of seconds"),
    ({"error": "e", "retry_after": -1}, None, "-1 is not a number of seconds from 0 to 86400"),
    ({"error": "e", "retry_after": 86401}, None, "86401 is not a number of seconds"),
    ({"error": "e", "retry_after": True}, None, "True is not a number of seconds"),
    ({"error": "e", "retry_after": None}, None, "None is not a number of seconds"),
    ({"error": "e", "retry_after": 5, "retry": False}, None, '"retry" is false'),
    ({"error": "e", "retry_after": 5, "retry": True}, 5.0, ""),
])
def test_a_programs_retry_after_is_read_or_said_why_not(
    message: dict[str, object], seconds: float | None, why: str,
) -> None:
    got, why_not = read_retry_after(message)
    assert got == seconds
    assert why in why_not and (why_not == "") == (why == "")
    if why_not:
        assert why_not.startswith('"retry_after" ignored: ')


def _raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def test_a_failed_runs_error_is_its_type_and_message_then_the_end_of_its_traceback() -> None:
    error = describe(_raised(ValueError("bad input")))
    head, _, rest = error.partition("\n")
    assert head == "ValueError: bad input"
    assert "Traceback (most recent call last)" in rest and "_raised" in rest


def test_a_long_traceback_is_cut_from_its_start_to_fit_the_limit() -> None:
    error = describe(_raised(RuntimeError("z" * 3000)))
    assert len(error) == MAX_ERROR_CHARS
    assert error.startswith("RuntimeError: zzz")
    assert "Traceback (most recent call last)" not in error  # its start was cut
    assert error.endswith("z" * 100 + "\n")


def test_a_message_longer_than_the_limit_is_kept_whole_without_its_traceback() -> None:
    assert describe(_raised(RuntimeError("y" * 10_000))) == "RuntimeError: " + "y" * 10_000


def test_an_error_cut_to_fit_masks_the_urls_of_its_traceback_before_the_cut() -> None:
    """Cut after masking, a password could lose the scheme:// that marks it and stay."""
    secret = "TopSecret99"

    def connect() -> None:
        raise ConnectionError(f"cannot reach redis://admin:{secret}@db.internal:6379/0")

    def deep(n: int) -> None:
        if n == 0:
            connect()
        deep(n - 1)

    try:
        deep(60)
    except ConnectionError as error:
        text = describe(error)
    assert len(text) <= MAX_ERROR_CHARS
    assert secret not in text
    assert text.startswith("ConnectionError: cannot reach redis://admin:***@db.internal:6379/0")
