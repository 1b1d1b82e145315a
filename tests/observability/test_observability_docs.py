"""docs/metrics.md lists exactly the series the worker and the operator export."""

from __future__ import annotations

import re
from pathlib import Path

from observability_helpers import SUFFIXES, exported_families

DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def documented() -> dict[str, str]:
    """Series name -> type, from the tables of docs/metrics.md."""
    rows = re.findall(r"^\| `(agentpool_\w+)` \| (\w+) \|", DOCS.read_text(), re.MULTILINE)
    return dict(rows)


def project_series() -> dict[str, str]:
    """The project's own series (not process_*/python_*) as they are queried."""
    series = {}
    for name, kind in exported_families().items():
        if not name.startswith("agentpool_"):
            continue
        queried = {"counter": f"{name}_total", "info": f"{name}_info"}.get(kind, name)
        series[queried] = "gauge" if kind == "info" else kind
    return series


def test_every_exported_series_is_documented_with_its_type() -> None:
    assert documented() == project_series()


def test_the_suffix_table_knows_every_exported_type() -> None:
    assert set(exported_families().values()) <= set(SUFFIXES)
