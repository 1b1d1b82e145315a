"""Helpers of the observability tests: what the project exports, what rules and panels use."""

from __future__ import annotations

import asyncio
import inspect
import re
import subprocess
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

import agentpool_operator.metrics  # noqa: F401  (registers the operator's metrics)
import agentpool_worker.metrics  # noqa: F401  (registers the worker's metrics)

SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
    "info": ("_info",),
    "stateset": ("",),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "unknown": ("",),
}
"""The series of each metric type, as the worker and the operator serve them: without the
`_created` ones (both call prometheus_client's `disable_created_metrics`)."""

PROMETHEUS_OWN = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
"""Series Prometheus itself adds to every target."""


def exported_families() -> dict[str, str]:
    """Family name -> type of every metric the worker and the operator register."""
    return {family.name: family.type for family in REGISTRY.collect()}


def exported_names() -> set[str]:
    """Every series name the worker and the operator can expose, suffixes included."""
    return {
        name + suffix
        for name, kind in exported_families().items()
        for suffix in SUFFIXES[kind]
    }


_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.$])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")
_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "inf", "nan",
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, label names in
    matchers and groupings, durations and numbers left out)."""
    text = _STRINGS.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    return {
        m.group(1)
        for m in _IDENTIFIER.finditer(text)
        if m.group(2) is None and m.group(1).lower() not in _KEYWORDS
    }


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        body: bytes = response.read()
        return body.decode()


def samples(exposition: str) -> list[Sample]:
    return [s for family in text_string_to_metric_families(exposition) for s in family.samples]


def families(exposition: str) -> dict[str, str]:
    return {f.name: f.type for f in text_string_to_metric_families(exposition)}


def value(found: Iterable[Sample], name: str, **labels: str) -> float:
    """The value of the one sample with this name and these labels (among others)."""
    matching = [
        s for s in found
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(matching) == 1, f"{len(matching)} samples {name}{labels}"
    return matching[0].value


async def eventually(
    check: Callable[[], Any | Awaitable[Any]], within: float = 15.0, what: str = "condition",
) -> Any:
    deadline = time.monotonic() + within
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.05)


def check_metrics(promtool: str, exposition: str) -> None:
    """`promtool check metrics`: the exposition parses and follows Prometheus' naming rules."""
    lint = subprocess.run([promtool, "check", "metrics"], input=exposition,
                          capture_output=True, text=True, timeout=30)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def spawn(args: list[str], env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    """A process with its output in `log`."""
    with log.open("wb") as out:
        return subprocess.Popen(args, env=dict(env), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=out)
