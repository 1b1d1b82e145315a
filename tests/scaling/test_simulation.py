from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentpool.scaling.policy import ScalingPolicy
from agentpool.scaling.simulation import (
    Cluster,
    KedaAutoscaler,
    KedaSettings,
    OurAutoscaler,
    RunResult,
    TraceTask,
    compare,
    parse_trace,
    parse_trace_with_warnings,
    percentile,
    simulate,
)

BENCH = Path(__file__).resolve().parents[2] / "bench"
CLUSTER = Cluster(concurrency=4, startup_seconds=10.0)


def burst(
    count: int, at: float = 5.0, service: float = 20.0, spacing: float = 0.1
) -> list[TraceTask]:
    return [TraceTask(at + index * spacing, service) for index in range(count)]


def all_done(result: RunResult, trace: list[TraceTask]) -> bool:
    return result.unfinished == 0 and len(result.waits) == len(trace)


# --- trace files -------------------------------------------------------------------------


def test_trace_parsing_skips_header_comments_and_blank_lines_and_sorts() -> None:
    text = ["# a trace", "arrival_seconds,service_seconds", "", "5, 1.5", "2,3"]
    assert parse_trace(text) == [TraceTask(2.0, 3.0), TraceTask(5.0, 1.5)]


def test_trace_parsing_names_the_bad_line() -> None:
    with pytest.raises(ValueError, match="line 3"):
        parse_trace(["arrival_seconds,service_seconds", "1,2", "three,4"])
    with pytest.raises(ValueError, match="line 1: times must be finite and non-negative"):
        parse_trace(["-1,2"])


@pytest.mark.parametrize(("rows", "error"), [
    (["0,30s", "1,10", "2,10"], "line 1"),
    (["1;2", "3;4"], "line 1"),
    (["arrival_seconds,service_seconds", "1,2,3"], "line 2"),
    (["arrival_seconds,service_seconds", "# nothing else"], "holds no task"),
    ([], "holds no task"),
])
def test_trace_parsing_takes_no_data_row_for_a_header(rows: list[str], error: str) -> None:
    """Only a first row of two cells whose first is not a number is a header: a first data
    row that does not parse, another separator or a third column is refused, not skipped."""
    with pytest.raises(ValueError, match=error):
        parse_trace(rows)


def test_a_header_row_says_which_column_is_which() -> None:
    rows = ["service_seconds, arrival_seconds", "30,1", "5,2"]
    assert parse_trace(rows) == [TraceTask(1.0, 30.0), TraceTask(2.0, 5.0)]
    assert parse_trace(['"arrival_seconds","service_seconds"', "1,30"]) == [TraceTask(1.0, 30.0)]


@pytest.mark.parametrize("header", [
    "arrival,service", "Arrival, Service", '"arrival","service"', "arrival_seconds,service",
])
def test_a_header_row_may_name_the_columns_arrival_and_service(header: str) -> None:
    assert parse_trace_with_warnings(["# a trace", header, "1,30"]) == (
        [TraceTask(1.0, 30.0)], [])
    swapped = ",".join(reversed(header.split(",")))
    assert parse_trace_with_warnings(["# a trace", swapped, "30,1"]) == (
        [TraceTask(1.0, 30.0)], [])


BY_POSITION = ("line 2: the header names the columns 'time', 'duration': took 'time', "
               "'duration' as arrival_seconds, service_seconds by position; name them "
               "arrival_seconds,service_seconds (in either order) to say which is which")


@pytest.mark.parametrize(("header", "warning"), [
    ("time,duration", BY_POSITION),
    ("service_seconds,start", "line 2: the header names the columns 'service_seconds', "
     "'start': took 'start' as arrival_seconds, the column the other does not name; name them "
     "arrival_seconds,service_seconds (in either order) to say which is which"),
])
def test_a_header_row_of_other_names_is_read_by_position_with_a_warning(
    header: str, warning: str,
) -> None:
    """As before headers were read by name; a named column keeps its name's place."""
    rows = ["# a trace", header, "1,30", "0,5"]
    expected = ([TraceTask(0.0, 5.0), TraceTask(1.0, 30.0)] if header.startswith("time")
                else [TraceTask(5.0, 0.0), TraceTask(30.0, 1.0)])
    assert parse_trace_with_warnings(rows) == (expected, [warning])


@pytest.mark.parametrize("header", [
    "arrival_seconds", "arrival_seconds,arrival_seconds", "arrival,arrival_seconds",
    "arrival_seconds,service_seconds,priority", "time,duration,priority",
])
def test_a_header_row_not_of_two_columns_or_naming_one_twice_is_refused(header: str) -> None:
    with pytest.raises(ValueError, match=(
            r"^line 2: the header names the columns .*: expected the two columns "
            r"arrival_seconds and service_seconds \(in either order; or arrival and "
            r"service\)$")):
        parse_trace(["# a trace", header, "1,30"])


@pytest.mark.parametrize(("header", "expected"), [
    ("arrival_seconds,service_seconds", "arrival_seconds,service_seconds"),
    ("service,arrival", "service_seconds,arrival_seconds"),
    ("time,duration", "arrival_seconds,service_seconds"),
])
def test_a_bad_data_row_is_told_the_columns_by_their_names(header: str, expected: str) -> None:
    with pytest.raises(ValueError, match=(
            rf"^line 3: expected {expected} \(two numbers of seconds\): '1,x'$")):
        parse_trace([header, "1,2", "1,x"])


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert percentile([0.0, 10.0], 95) == pytest.approx(9.5)
    assert percentile([], 95) == 0.0


def load_make_traces() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_traces", BENCH / "make_traces.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_traces_are_what_the_generator_makes_from_its_seed(tmp_path: Path) -> None:
    make_traces = load_make_traces()
    for name in make_traces.TRACES:
        shipped = BENCH / "traces" / f"{name}.csv"
        seed = int(shipped.read_text().splitlines()[0].rsplit(" ", 1)[1])
        regenerated = tmp_path / f"{name}.csv"
        make_traces.write_trace(regenerated, name, seed)
        assert regenerated.read_text() == shipped.read_text()
        tasks, warnings = parse_trace_with_warnings(shipped.read_text().splitlines())
        assert (bool(tasks), warnings) == (True, [])


# --- behaviour on small traces -----------------------------------------------------------


def test_both_autoscalers_end_at_min_once_the_work_is_done() -> None:
    trace = burst(30)
    for low in (0, 2):
        result = compare(trace, ScalingPolicy(min_replicas=low, max_replicas=8), CLUSTER)
        for run in (result.ours, result.keda):
            assert all_done(run, trace)
            assert run.final_pods == low
            assert run.timeline[-1].replicas == low
            assert run.timeline[-1].queued == run.timeline[-1].in_flight == 0


def test_no_work_means_no_scaling_and_min_pods_for_the_whole_run() -> None:
    policy = ScalingPolicy(min_replicas=2, max_replicas=8)
    result = compare([], policy, CLUSTER)
    for run in (result.ours, result.keda):
        assert run.scale_events == ()
        assert run.replica_seconds == 2 * run.end


def test_keda_drops_busy_pods_when_the_queue_empties_and_ours_does_not() -> None:
    """Long tasks leave the queue as soon as they start: KEDA's queue-length metric reads
    zero, the HPA scales down after its window and kills pods mid-task. Ours counts the
    tasks in flight and keeps their pods."""
    trace = burst(32, service=600.0)
    result = compare(trace, ScalingPolicy(min_replicas=1, max_replicas=8), CLUSTER)
    assert result.ours.interrupted == 0
    assert result.keda.interrupted > 0
    assert all_done(result.keda, trace)
    assert max(result.keda.waits) > max(result.ours.waits)


def test_keda_wakes_from_zero_on_its_polling_interval_and_ours_on_its_poll() -> None:
    trace = [TraceTask(1.0, 5.0)]
    policy = ScalingPolicy(min_replicas=0, max_replicas=4, poll_seconds=2.0)
    keda = KedaSettings()
    result = compare(trace, policy, CLUSTER, keda)
    ours_wake, keda_wake = result.ours.scale_events[0], result.keda.scale_events[0]
    assert (ours_wake.before, keda_wake.before) == (0, 0)
    assert ours_wake.at - trace[0].arrival <= policy.poll_seconds
    assert keda_wake.at >= keda.polling_interval
    assert keda_wake.at % keda.polling_interval == 0
    assert result.keda.waits[0] - result.ours.waits[0] == keda_wake.at - ours_wake.at


def test_keda_scale_up_is_limited_to_four_pods_or_double_per_period() -> None:
    trace = burst(200, service=120.0)
    policy = ScalingPolicy(min_replicas=1, max_replicas=50)
    run = simulate(trace, KedaAutoscaler(policy, KedaSettings()), CLUSTER)
    first = run.scale_events[0]
    assert (first.before, first.after) == (1, 5)
    second = run.scale_events[1]
    assert second.after == 2 * second.before


def test_ours_scales_up_to_the_backlog_in_one_decision() -> None:
    trace = burst(40, at=0.5, service=120.0, spacing=0.0)
    policy = ScalingPolicy(min_replicas=1, max_replicas=50)
    run = simulate(trace, OurAutoscaler(policy), CLUSTER)
    assert (run.scale_events[0].at, run.scale_events[0].after) == (2.0, 10)


def test_fixed_size_pool_never_scales() -> None:
    result = compare(burst(100), ScalingPolicy(min_replicas=3, max_replicas=3), CLUSTER)
    for run in (result.ours, result.keda):
        assert run.scale_events == ()
        assert {sample.replicas for sample in run.timeline} == {3}


def test_a_busy_pod_chosen_for_removal_keeps_its_replica_until_its_runs_end() -> None:
    """After a burst of long runs every pod is busy; the scale-down drains pods, which finish
    their runs however long they take, and leave only then."""
    trace = burst(16, service=30.0) + [TraceTask(5.0 + index * 0.1, 900.0) for index in range(4)]
    policy = ScalingPolicy(min_replicas=1, max_replicas=5)
    run = simulate(trace, OurAutoscaler(policy), CLUSTER)
    assert all_done(run, trace)
    assert run.interrupted == 0
    assert run.final_pods == 1
    assert max(sample.pods for sample in run.timeline if sample.at > 600) >= 2


def test_a_burst_during_a_drain_takes_draining_pods_back_before_starting_new_ones() -> None:
    """The first burst leaves one 400 s run on each of four new pods; the scale-down drains
    three of them. The second burst takes them back: no pod starts, no task waits."""
    first = burst(4, at=1.0, spacing=0.0) + [
        TraceTask(1.0, 400.0 if index % 5 == 0 else 20.0) for index in range(16)
    ]
    second = burst(12, at=200.0, service=10.0, spacing=0.0)
    policy = ScalingPolicy(min_replicas=1, max_replicas=5)
    run = simulate(first + second, OurAutoscaler(policy), CLUSTER)
    assert all_done(run, first + second)
    assert run.interrupted == 0
    before = [s for s in run.timeline if 150 <= s.at < 200]
    assert {(s.pods, s.ready) for s in before} == {(4, 1)}
    assert run.pod_starts == 4
    assert max(run.waits[20:]) == 0.0


def test_pod_starts_count_every_pod_created_after_the_warm_start() -> None:
    trace = burst(40, at=0.5, service=30.0, spacing=0.0)
    policy = ScalingPolicy(min_replicas=2, max_replicas=10)
    result = compare(trace, policy, CLUSTER)
    ours_up = sum(max(0, e.after - e.before) for e in result.ours.scale_events)
    assert result.ours.pod_starts == ours_up == 8
    keda_up = sum(max(0, e.after - e.before) for e in result.keda.scale_events)
    assert result.keda.pod_starts == keda_up > 0


def test_a_run_stopped_with_tasks_unfinished_counts_their_waits_up_to_the_stop() -> None:
    """One pod of four slots: the first task finishes, three endless runs start at 1 s and a
    fourth at 5 s, when the first task leaves its slot; the last task waits in the queue until
    the stop, 100 s after it arrived. Its wait counts to the stop, a running task's to the
    start of its run, so the figures are lower bounds, and say so."""
    endless = 1e9
    trace = [TraceTask(0.0, 5.0), *(TraceTask(1.0, endless) for _ in range(4)),
             TraceTask(2.0, endless)]
    cluster = Cluster(concurrency=4, startup_seconds=0.0, give_up_after_seconds=100.0)
    run = simulate(trace, OurAutoscaler(ScalingPolicy(min_replicas=1, max_replicas=1)), cluster)
    assert (run.waits, run.unfinished) == ((0.0,), 5)
    assert sorted(run.open_waits) == [0.0, 0.0, 0.0, 4.0, 100.0]
    summary = run.summary()
    assert (summary["tasks"], summary["unfinished"], summary["waits_lower_bound"]) == (1, 5, True)
    assert (summary["p50_wait_s"], summary["max_wait_s"]) == (0.0, 100.0)
    assert summary["p95_wait_s"] == pytest.approx(percentile([0, 0, 0, 0, 4, 100], 95))


def test_a_run_with_no_task_finished_has_no_throughput_and_no_task_no_waits() -> None:
    cluster = Cluster(concurrency=1, startup_seconds=0.0, give_up_after_seconds=50.0)
    policy = ScalingPolicy(min_replicas=1, max_replicas=1)
    stuck = simulate([TraceTask(0.0, 1e9)], OurAutoscaler(policy), cluster).summary()
    assert (stuck["tasks"], stuck["tasks_per_minute"], stuck["max_wait_s"]) == (0, None, 0.0)
    empty = simulate([], OurAutoscaler(policy), cluster).summary()
    assert {empty[key] for key in ("p50_wait_s", "p95_wait_s", "max_wait_s")} == {None}
    assert empty["waits_lower_bound"] is False


def test_costs_are_counted_to_the_same_moment() -> None:
    result = compare(burst(20), ScalingPolicy(min_replicas=1), CLUSTER)
    assert result.ours.end == result.keda.end


# --- properties --------------------------------------------------------------------------

traces = st.lists(
    st.builds(TraceTask, st.floats(0, 600), st.floats(0.5, 900)),
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(traces, st.integers(0, 2), st.integers(2, 6), st.sampled_from(["queued", "backlog"]))
def test_property_every_task_runs_within_bounds_and_ours_interrupts_none(
    trace: list[TraceTask], low: int, high: int, metric: str
) -> None:
    """Our scale-down interrupts nothing, whatever the trace and however long the runs; both
    runs finish every task, stay within the bounds, and pay at least for the work done."""
    policy = ScalingPolicy(min_replicas=low, max_replicas=high)
    keda = KedaSettings(metric="queued" if metric == "queued" else "backlog")
    result = compare(trace, policy, CLUSTER, keda)
    assert result.ours.interrupted == 0
    work = sum(task.service for task in trace)
    assert all_done(result.ours, trace)
    if low > 0 or max((task.service for task in trace), default=0) < keda.cooldown_period:
        # With minReplicas 0 KEDA scales to zero under a run longer than its cooldownPeriod
        # (its metric ignores running tasks) and restarts it forever.
        assert all_done(result.keda, trace)
    for run in (result.ours, result.keda):
        assert min(run.waits, default=0.0) >= 0
        assert all(low <= sample.replicas <= high for sample in run.timeline)
        assert all(sample.pods <= high for sample in run.timeline if run is result.ours)
        assert run.replica_seconds * CLUSTER.concurrency >= work - 1e-6
