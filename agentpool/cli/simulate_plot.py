"""The PNG of `agentpool simulate --plot`: queue depth and replicas over time, both autoscalers.

matplotlib is an optional dependency (the `bench` extra), imported only when a plot is asked
for. The figure is drawn with the Agg canvas directly, without pyplot, so no display, backend
selection or global figure state is involved.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from agentpool.scaling.simulation import Comparison, RunResult

MISSING = "--plot needs matplotlib: pip install 'agentpool[bench]'"
COLOURS = {"agentpool": "#1f77b4", "agentpool-unaware": "#2ca02c", "keda": "#ff7f0e"}
LABELS = {"agentpool": "agentpool", "agentpool-unaware": "agentpool, blind to the rate limit",
          "keda": "KEDA defaults over the HPA"}
SHORT = {"agentpool": "agentpool", "agentpool-unaware": "blind", "keda": "KEDA"}


class PlotUnavailable(RuntimeError):
    pass


def require_matplotlib() -> None:
    """Raise PlotUnavailable with an installation hint when matplotlib is not installed."""
    try:
        found = importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise PlotUnavailable(MISSING)


def write_plot(result: Comparison, path: Path, *, trace: str, caption: str) -> None:
    """Two panels sharing the time axis, queue depth above replicas; p95 waits in the title."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise PlotUnavailable(MISSING) from error

    runs = result.runs
    figure = Figure(figsize=(12, 7), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    queue_axes, replica_axes = figure.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    for run in runs:
        minutes = [sample.at / 60 for sample in run.timeline]
        style = {"color": COLOURS[run.name], "label": LABELS[run.name], "where": "post"}
        queue_axes.step(minutes, [sample.queued for sample in run.timeline], **style)
        replica_axes.step(minutes, [sample.replicas for sample in run.timeline], **style)
    queue_axes.set_ylabel("tasks queued (waiting for a slot)")
    replica_axes.set_ylabel("replicas")
    replica_axes.set_xlabel("time (minutes)")
    replica_axes.yaxis.get_major_locator().set_params(integer=True)
    for axes in (queue_axes, replica_axes):
        axes.set_ylim(bottom=0)
        axes.set_xlim(left=0, right=max(run.end for run in runs) / 60)
        axes.grid(alpha=0.3)
    figure.legend(*queue_axes.get_legend_handles_labels(), loc="outside lower center",
                  ncols=len(runs))
    figure.suptitle(f"{trace}: p95 wait {_p95_line(runs)}", fontsize=13)
    queue_axes.set_title(caption, fontsize=9, color="dimgray")
    figure.savefig(path, format="png")


def _p95_line(runs: Sequence[RunResult]) -> str:
    return ", ".join(f"{SHORT[run.name]} {_p95(run)}" for run in runs)


def _p95(run: RunResult) -> str:
    """`-` without a wait, `≥` before a lower bound (tasks unfinished at the stop)."""
    summary = run.summary()
    value = summary["p95_wait_s"]
    if value is None:
        return "-"
    return f"{'≥ ' if summary['waits_lower_bound'] else ''}{value:g} s"
