"""`Retry`, the exception a handler raises to run its task again after a delay of its own."""

from __future__ import annotations

import pytest

from agentpool.errors import Retry
from agentpool_worker.worker import retry_error


@pytest.mark.parametrize("delay", [-1, 86401, float("nan"), float("inf"), True, "5", None])
def test_a_delay_out_of_bounds_is_refused_where_it_is_raised(delay: object) -> None:
    with pytest.raises(ValueError, match=r"Retry needs a delay from 0 to 86400 seconds \(a day\)"):
        Retry(delay)  # type: ignore[arg-type]


@pytest.mark.parametrize(("delay", "reason", "error"), [
    (0, "", "asked to run again in 0s"),
    (2.5, "", "asked to run again in 2.5s"),
    (86400, "quota resets daily", "asked to run again in 86400s: quota resets daily"),
])
def test_the_recorded_error_says_when_and_why(delay: float, reason: str, error: str) -> None:
    request = Retry(delay, reason)
    assert (request.delay, str(request)) == (float(delay), reason)
    assert retry_error(request) == error
