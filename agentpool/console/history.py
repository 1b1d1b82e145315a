"""The last hour of each pool's replicas and queue depth, kept in memory from the fleet
refreshes (the same figures the operator observes), so a pool's chart needs no Prometheus."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

HISTORY_SECONDS = 3600.0
SAMPLE_SECONDS = 5.0


@dataclass(frozen=True)
class Point:
    at: float
    """Seconds since the epoch."""
    queued: int
    in_flight: int
    replicas: int | None
    ready_replicas: int | None


class History:
    """Points of one pool, about `step` seconds apart, none older than `span`; the newest
    point is always the latest sample."""

    def __init__(self, span: float = HISTORY_SECONDS, step: float = SAMPLE_SECONDS) -> None:
        self.span = span
        self.step = step
        self._points: deque[Point] = deque()

    def add(self, point: Point) -> None:
        if len(self._points) >= 2 and self._points[-1].at - self._points[-2].at < self.step:
            self._points[-1] = point
            return
        self._points.append(point)
        while self._points and self._points[0].at < point.at - self.span:
            self._points.popleft()

    def points(self) -> list[Point]:
        return list(self._points)
