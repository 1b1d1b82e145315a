from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import Cli, key_values, make_dead, table_rows, wait_until, with_queue

from agentpool.cli import dead as dead_cli
from agentpool.cli import tasks as tasks_cli
from agentpool.cli import tenants as tenants_cli
from agentpool.cli.common import never_used_message
from agentpool.cli.tenants import read_tenant_loads
from agentpool.protocol import TaskQueue, WorkerInfo
from agentpool.redis_server import RedisServer


async def mixed_queue(q: TaskQueue) -> dict[str, list[str]]:
    """Two queued (priorities 0 and 5), one delayed, one deferred (after the running one), one
    running, one dead, one succeeded."""
    dead = await make_dead(q, [{"k": "dead"}])
    low = await q.submit({"k": "low"})
    high = await q.submit({"k": "high"}, priority=5)
    running = await q.submit({"k": "run"}, priority=9)
    batch = await q.claim("pod-a:i1", 1, 30)
    assert [t.id for t in batch.tasks] == [running]
    done = await q.submit({"k": "done"}, priority=9)
    [claimed] = (await q.claim("pod-a:i1", 1, 30)).tasks
    await q.complete(claimed, "ok")
    delayed = await q.submit({"k": "later"}, delay=300)
    deferred = await q.submit({"k": "next"}, after=[running])
    return {"queued": [high, low], "delayed": [delayed], "deferred": [deferred],
            "running": [running],
            "dead": dead, "succeeded": [done]}


def test_stats_table_and_json(cli: Cli) -> None:
    with_queue(cli.redis_url, cli.queue, mixed_queue)
    table = key_values(cli.ok("stats").out)
    assert table["Queued"] == "2 (p5: 1, p0: 1)"
    assert (table["Delayed"], table["Deferred"], table["In flight"], table["Dead"]) == (
        "1", "1", "1", "1")
    assert table["Submitted (total)"] == "7"
    assert table["Succeeded (total)"] == "1"
    assert table["Failed runs (total)"] == "1"
    doc = cli.ok("stats", "-o", "json").json()
    assert doc["queued"] == 2
    assert doc["queued_by_priority"] == {"5": 1, "0": 1}
    assert (doc["delayed"], doc["deferred"], doc["in_flight"], doc["dead"]) == (1, 1, 1, 1)
    assert doc["counters"]["submitted"] == 7
    assert "rates" not in doc


def test_tasks_lists_each_state_in_order(cli: Cli) -> None:
    ids = with_queue(cli.redis_url, cli.queue, mixed_queue)
    doc = cli.ok("tasks", "-o", "json").json()
    by_state: dict[str, list[str]] = {}
    for task in doc["tasks"]:
        by_state.setdefault(task["state"], []).append(task["id"])
    assert by_state == {k: v for k, v in ids.items() if k != "succeeded"}
    assert doc["totals"] == {"queued": 2, "delayed": 1, "deferred": 1, "running": 1, "dead": 1}
    running = next(t for t in doc["tasks"] if t["state"] == "running")
    assert running["owner"] == "pod-a:i1"


def test_tasks_table_with_state_filter_and_limit(cli: Cli) -> None:
    ids = with_queue(cli.redis_url, cli.queue, mixed_queue)
    out = cli.ok("tasks", "--state", "queued", "--limit", "1").out
    assert out.splitlines()[0] == f"Queued in {cli.queue}: 1 of 2"
    [row] = table_rows(out)
    assert row[:4] == [ids["queued"][0], "queued", "5", "0"]
    assert "Running" not in out


async def due_and_later(q: TaskQueue) -> tuple[list[str], str]:
    """Two delayed tasks that come due at once (no worker to queue them), one that does not."""
    due = [await q.submit({"n": n}, delay=0.001) for n in (1, 2)]
    return due, await q.submit({"n": 3}, delay=300)


def test_a_delayed_task_come_due_is_listed_once_as_queued_as_stats_counts_it(cli: Cli) -> None:
    due, later = with_queue(cli.redis_url, cli.queue, due_and_later)
    wait_until(lambda: with_queue(cli.redis_url, cli.queue, TaskQueue.figures).due_delayed == 2)
    stats = cli.ok("stats", "-o", "json").json()
    assert (stats["queued"], stats["delayed"]) == (2, 1)
    doc = cli.ok("tasks", "-o", "json").json()
    assert doc["totals"] == {"queued": 2, "delayed": 1, "deferred": 0, "running": 0, "dead": 0}
    assert sorted(t["id"] for t in doc["tasks"]) == sorted([*due, later])
    listed = {t["id"]: (t["listed_as"], t["state"]) for t in doc["tasks"]}
    assert listed == {**{task_id: ("queued", "delayed") for task_id in due},
                      later: ("delayed", "delayed")}
    out = cli.ok("tasks", "--state", "queued", "--state", "delayed").out
    assert f"Queued in {cli.queue}: 2" in out and f"Delayed in {cli.queue}: 1" in out
    [queued_table, delayed_table] = out.split(f"Delayed in {cli.queue}")
    assert {row[0]: row[1] for row in table_rows(queued_table)} == {
        task_id: "delayed (due)" for task_id in due}
    assert "2 of them are delayed tasks now due" in queued_table
    assert [row[0] for row in table_rows(delayed_table)] == [later]
    only_delayed = cli.ok("tasks", "--state", "delayed", "-o", "json").json()
    assert [t["id"] for t in only_delayed["tasks"]] == [later]


async def tenants_queued(q: TaskQueue) -> list[str]:
    return [await q.submit({"n": 1}, tenant="acme"), await q.submit({"n": 2}),
            await q.submit({"n": 3}, delay=60)]


def test_tasks_shows_a_tenant_column_where_a_task_has_a_tenant(cli: Cli) -> None:
    mine, plain, _delayed = with_queue(cli.redis_url, cli.queue, tenants_queued)
    out = cli.ok("tasks", "--state", "queued").out
    assert "TENANT" in out
    rows = {row[0]: row for row in table_rows(out)}
    assert rows[mine][:4] == [mine, "queued", "0", "acme"]
    assert rows[plain][:4] == [plain, "queued", "0", "-"]
    assert "TENANT" not in cli.ok("tasks", "--state", "delayed").out
    tenants = {t["id"]: t["tenant"] for t in cli.ok("tasks", "-o", "json").json()["tasks"]}
    assert (tenants[mine], tenants[plain]) == ("acme", None)


async def markup_lookalikes(q: TaskQueue) -> str:
    return await q.submit({"prompt": "see [/x] and [bold]this[/bold]"}, tenant="[red]acme")


def test_tasks_show_text_that_looks_like_markup_as_it_is(cli: Cli) -> None:
    """Payloads and tenants are data: a closing tag that matches nothing does not end the
    command, and a tag is shown, not applied."""
    task_id = with_queue(cli.redis_url, cli.queue, markup_lookalikes)
    out = cli.ok("tasks", "--state", "queued").out
    [row] = table_rows(out)
    assert row[0] == task_id and row[3] == "[red]acme"
    assert '{"prompt":"see [/x] and [bold]this[/bold]"}' in out


async def tenants_at_work(q: TaskQueue) -> None:
    await q.set_tenant_weights({"gold": 3, "idle": 2})
    for n in range(3):
        await q.submit({"n": n}, tenant="acme")
    await q.submit({"n": 0}, tenant="gold")
    await q.submit({"n": 1}, tenant="gold", delay=300)
    await q.submit({"n": 0})
    [task] = (await q.claim("pod-a:i1", 1, 30)).tasks
    assert task.tenant in ("acme", "gold", None)


def test_tenants_table_and_json(cli: Cli) -> None:
    with_queue(cli.redis_url, cli.queue, tenants_at_work)
    out = cli.ok("tenants").out
    assert out.splitlines()[0] == f"Tenants of {cli.queue}: 4"
    rows = {row[0]: row[1:6] for row in table_rows(out)}
    running = {name: int(row[3]) for name, row in rows.items()}
    assert sum(running.values()) == 1
    queued = {name: int(row[2]) + int(row[3]) for name, row in rows.items()}
    assert queued == {"acme": 3, "gold": 1, "(none)": 1, "idle": 0}
    assert (rows["gold"][0], rows["gold"][4], rows["idle"]) == (
        "3", "1", ["2", "-", "0", "0", "0"])
    assert "cap on runs at once" not in out
    doc = cli.ok("tenants", "-o", "json").json()
    assert (doc["counted"], doc["total"]) == (6, 6)
    by_name = {t["tenant"]: t for t in doc["tenants"]}
    assert set(by_name) == {"acme", "gold", None, "idle"}
    assert by_name["idle"] == {"tenant": "idle", "weight": 2, "max_running": None, "queued": 0,
                               "running": 0, "later": 0, "oldest_queued_wait_seconds": None}
    assert by_name["acme"]["oldest_queued_wait_seconds"] >= 0
    assert doc["capped"] == 0


async def four_and_one_due(q: TaskQueue) -> None:
    for n in range(4):
        await q.submit({"n": n}, tenant="acme" if n % 2 else None)
    await q.submit({"n": 4}, tenant="acme", delay=0.001)


def test_tenants_count_a_due_delayed_task_as_queued_as_stats_and_tasks_do(cli: Cli) -> None:
    with_queue(cli.redis_url, cli.queue, four_and_one_due)
    wait_until(lambda: with_queue(cli.redis_url, cli.queue, TaskQueue.figures).due_delayed == 1)
    assert cli.ok("stats", "-o", "json").json()["queued"] == 5
    assert cli.ok("tasks", "-o", "json").json()["totals"]["queued"] == 5
    doc = cli.ok("tenants", "-o", "json").json()
    assert [(t["tenant"], t["queued"], t["later"]) for t in doc["tenants"]] == [
        ("acme", 3, 0), (None, 2, 0)]
    rows = {row[0]: row[3:6] for row in table_rows(cli.ok("tenants").out)}
    assert rows == {"acme": ["3", "0", "0"], "(none)": ["2", "0", "0"]}
    assert "1 of them is a delayed task now due (listed last" in cli.ok("tasks").out


async def oldest_of_the_due(q: TaskQueue) -> tuple[float | None, float]:
    """What `tenants` reads as acme's oldest queued task (its one delayed task, come due), and
    since when that task is ready (its `due`)."""
    loads, _ = await read_tenant_loads(q, 100)
    [acme] = loads.loads
    [late] = await q.list_tasks("delayed")
    due = await q.redis.hget(q.task_key(late.id), "due")
    assert due is not None
    return acme.oldest_queued, int(due) / 1000


def test_tenants_count_a_due_delayed_tasks_wait_from_when_it_came_due(cli: Cli) -> None:
    with_queue(cli.redis_url, cli.queue,
               lambda q: q.submit({"n": 0}, tenant="acme", delay=0.2))
    wait_until(lambda: with_queue(cli.redis_url, cli.queue, TaskQueue.figures).due_delayed == 1)
    oldest, due = with_queue(cli.redis_url, cli.queue, oldest_of_the_due)
    assert oldest == due


async def tenants_by_the_dozen(q: TaskQueue) -> None:
    for n in range(5):
        await q.submit_many([{"n": i} for i in range(n + 1)], tenant=f"t{n}")


def test_tenants_table_shows_the_most_queued_first_and_says_how_many_more(
    cli: Cli, monkeypatch: pytest.MonkeyPatch,
) -> None:
    with_queue(cli.redis_url, cli.queue, tenants_by_the_dozen)
    monkeypatch.setattr(tenants_cli, "TABLE_ROWS", 2)
    out = cli.ok("tenants").out
    assert out.splitlines()[0] == f"Tenants of {cli.queue}: 5"
    assert [row[0] for row in table_rows(out)] == ["t4", "t3"]
    assert "… and 3 more tenants (-o json lists all; tasks --tenant NAME lists one's " \
        "tasks)" in out
    doc = cli.ok("tenants", "-o", "json").json()
    assert [t["tenant"] for t in doc["tenants"]] == ["t4", "t3", "t2", "t1", "t0"]
    monkeypatch.setattr(tenants_cli, "TABLE_ROWS", 5)
    assert "more tenant" not in cli.ok("tenants").out


async def lookalike_tenants(q: TaskQueue) -> dict[str, str | None]:
    return {await q.submit({"n": n}, tenant=name): name
            for n, name in enumerate(["(none)", "-", '"x"', None])}


def test_a_tenant_named_like_no_tenant_shows_in_quotes(cli: Cli) -> None:
    ids = with_queue(cli.redis_url, cli.queue, lookalike_tenants)
    shown = {row[0] for row in table_rows(cli.ok("tenants").out)}
    assert shown == {'"(none)"', "-", '"\\"x\\""', "(none)"}
    rows = {row[0]: row[3] for row in table_rows(cli.ok("tasks", "-s", "queued").out)}
    assert {ids[task_id]: cell for task_id, cell in rows.items()} == {
        "(none)": "(none)", "-": '"-"', '"x"': '"\\"x\\""', None: "-"}
    doc = cli.ok("tenants", "-o", "json").json()
    assert {t["tenant"] for t in doc["tenants"]} == {"(none)", "-", '"x"', None}


def test_tenants_that_print_alike_are_taken_and_shown_apart(cli: Cli) -> None:
    """Names are compared exactly ("acme" and "acme " are two tenants); the table quotes a
    name that could pass for another and escapes its format characters."""
    names = ["acme", "acme ", "acme\u200b"]
    for name in names:
        cli.ok("submit", "--tenant", name, "--json", "{}")
    assert {row[0] for row in table_rows(cli.ok("tenants").out)} == {
        "acme", '"acme "', '"acme\\u200b"'}
    doc = cli.ok("tenants", "-o", "json").json()
    assert sorted(t["tenant"] for t in doc["tenants"]) == sorted(names)


async def one_capped(q: TaskQueue) -> None:
    await q.set_tenant_caps({"acme": 1})
    for n in range(2):
        await q.submit({"n": n}, tenant="acme")
    assert len((await q.claim("pod-a:i1", 2, 30)).tasks) == 1


def test_tasks_notes_say_one_task_in_the_singular(cli: Cli) -> None:
    with_queue(cli.redis_url, cli.queue, one_capped)
    assert "1 of them waits for their tenant's cap on runs at once" in cli.ok("tasks").out
    assert "1 queued task waits for their tenant's cap" in cli.ok("tenants").out


async def tenants_capped(q: TaskQueue) -> None:
    await q.set_tenant_caps({"acme": 1, "vip": 5}, default=2)
    for n in range(3):
        await q.submit({"n": n}, tenant="acme")
    await q.submit({"n": 0})
    assert len((await q.claim("pod-a:i1", 4, 30)).tasks) == 2


def test_tenants_show_their_caps_and_the_tasks_a_cap_holds(cli: Cli) -> None:
    with_queue(cli.redis_url, cli.queue, tenants_capped)
    out = cli.ok("tenants").out
    rows = {row[0]: row[1:6] for row in table_rows(out)}
    assert rows["acme"] == ["1", "1", "2", "1", "0"]
    assert rows["vip"][:2] == ["1", "5"]
    assert rows["(none)"][:2] == ["1", "-"]
    assert "2 queued tasks wait for their tenant's cap on runs at once" in out
    doc = cli.ok("tenants", "-o", "json").json()
    assert doc["capped"] == 2
    assert {t["tenant"]: t["max_running"] for t in doc["tenants"]} == {
        "acme": 1, "vip": 5, None: None}
    assert "2 (2 waiting for their tenant's cap)" in cli.ok("stats").out
    assert cli.ok("stats", "-o", "json").json()["capped"] == 2


def test_tasks_waiting_for_their_tenants_cap_are_listed_as_queued_and_marked(cli: Cli) -> None:
    """acme is capped at 1 with a run: its two other tasks wait out of the queue, and are
    still queued tasks to a reader."""
    with_queue(cli.redis_url, cli.queue, tenants_capped)
    out = cli.ok("tasks", "--state", "queued").out
    assert out.splitlines()[0] == f"Queued in {cli.queue}: 2"
    assert [row[1:4] for row in table_rows(out)] == [["queued (capped)", "0", "acme"]] * 2
    assert "2 of them wait for their tenant's cap on runs at once" in out
    doc = cli.ok("tasks", "--state", "queued", "-o", "json").json()
    assert doc["totals"] == {"queued": 2}
    assert [(t["tenant"], t["capped"]) for t in doc["tasks"]] == [("acme", True)] * 2
    shown = cli.ok("get", doc["tasks"][0]["id"]).out
    assert "queued (waits for its tenant's cap on runs at once)" in shown
    running = cli.ok("tasks", "--state", "running", "-o", "json").json()["tasks"]
    assert {t["capped"] for t in running} == {False}


def test_tasks_of_one_tenant(cli: Cli) -> None:
    with_queue(cli.redis_url, cli.queue, tenants_at_work)
    out = cli.ok("tasks", "--tenant", "acme", "--state", "queued", "--state", "running").out
    titles = [line for line in out.splitlines() if line.startswith(("Queued", "Running"))]
    queued = int(titles[0].rsplit(": ", 1)[1])
    running = int(titles[1].rsplit(": ", 1)[1])
    assert titles[0].startswith(f"Queued in {cli.queue} of tenant acme: ")
    assert queued + running == 3
    only_queued = cli.ok("tasks", "--tenant", "acme", "--state", "queued").out
    assert {row[3] for row in table_rows(only_queued)} == {"acme"}
    doc = cli.ok("tasks", "--tenant", "gold", "-o", "json").json()
    assert doc["tenant"] == "gold" and doc["cut"] == []
    assert sorted(t["state"] for t in doc["tasks"]) in (["delayed", "queued"],
                                                        ["delayed", "running"])
    assert {t["tenant"] for t in doc["tasks"]} == {"gold"}
    assert cli.ok("tasks", "--tenant", "nobody", "-o", "json").json()["tasks"] == []
    plain = cli.ok("tasks", "--no-tenant", "-o", "json").json()
    assert plain["tenant"] is None and [t["tenant"] for t in plain["tasks"]] == [None]
    assert cli.ok("tasks", "--no-tenant", "-s", "queued").out.startswith(
        f"Queued in {cli.queue} without a tenant: ")


async def due_of_two_tenants(q: TaskQueue) -> None:
    """acme: two queued, one delayed task come due, one not; other: one come due."""
    await q.submit_many([{"n": n} for n in range(2)], tenant="acme")
    await q.submit({"n": 2}, tenant="acme", delay=0.001)
    await q.submit({"n": 3}, tenant="acme", delay=300)
    await q.submit({"n": 4}, tenant="other", delay=0.001)


def test_tasks_of_one_tenant_count_its_due_delayed_tasks_as_the_unfiltered_view_does(
    cli: Cli,
) -> None:
    with_queue(cli.redis_url, cli.queue, due_of_two_tenants)
    wait_until(lambda: with_queue(cli.redis_url, cli.queue, TaskQueue.figures).due_delayed == 2)
    everyone = cli.ok("tasks", "-o", "json").json()
    acme = cli.ok("tasks", "--tenant", "acme", "-o", "json").json()
    assert [(t["id"], t["listed_as"]) for t in acme["tasks"]] == [
        (t["id"], t["listed_as"]) for t in everyone["tasks"] if t["tenant"] == "acme"]
    assert acme["totals"] == {"queued": 3, "delayed": 1, "deferred": 0, "running": 0,
                              "dead": 0}
    tenants = {t["tenant"]: t for t in cli.ok("tenants", "-o", "json").json()["tenants"]}
    assert (tenants["acme"]["queued"], tenants["acme"]["later"]) == (3, 1)
    out = cli.ok("tasks", "--tenant", "acme", "-s", "queued", "-s", "delayed").out
    [queued_table, delayed_table] = out.split(f"Delayed in {cli.queue} of tenant acme: 1")
    assert [row[1] for row in table_rows(queued_table)] == ["queued", "queued",
                                                            "delayed (due)"]
    assert "1 of them is a delayed task now due" in queued_table
    assert [row[1] for row in table_rows(delayed_table)] == ["delayed"]
    only_delayed = cli.ok("tasks", "--tenant", "acme", "-s", "delayed", "-o", "json").json()
    assert only_delayed["totals"] == {"delayed": 1}


async def many_of_acme(q: TaskQueue) -> None:
    await q.submit_many([{"n": n} for n in range(7)], tenant="acme")
    await q.submit_many([{"n": n} for n in range(2)], tenant="other")


def test_tasks_of_one_tenant_say_how_many_it_has_beyond_the_limit(
    cli: Cli, monkeypatch: pytest.MonkeyPatch,
) -> None:
    with_queue(cli.redis_url, cli.queue, many_of_acme)
    out = cli.ok("tasks", "--tenant", "acme", "--state", "queued", "--limit", "3").out
    assert out.splitlines()[0] == f"Queued in {cli.queue} of tenant acme: 3 of 7"
    assert len(table_rows(out)) == 3
    monkeypatch.setattr(tasks_cli, "TENANT_LOOK", 5)
    out = cli.ok("tasks", "--tenant", "acme", "--state", "queued").out
    assert out.splitlines()[0] == f"Queued in {cli.queue} of tenant acme: 3"  # of 5 read
    assert "counted among the first 5 queued tasks only" in out
    assert cli.ok("tasks", "--tenant", "acme", "-s", "queued", "-o", "json").json()["cut"] == [
        "queued"]


def test_tenants_refuse_to_count_nothing(cli: Cli) -> None:
    result = cli("tenants", "--most", "0")
    assert (result.code, result.out) == (2, "")
    assert result.err_lines == ["agentpool: --most must be at least 1"]


def test_tenants_say_when_they_counted_only_some(cli: Cli) -> None:
    with_queue(cli.redis_url, cli.queue, tenants_at_work)
    out = cli.ok("tenants", "--most", "2").out
    assert "counted the first 4 of 6 tasks (raise --most to count more)" in out  # 2 queued


async def used_then_emptied(q: TaskQueue) -> None:
    await q.cancel(await q.submit({"n": 1}))


def test_tasks_of_an_empty_queue(cli: Cli) -> None:
    with_queue(cli.redis_url, cli.queue, used_then_emptied)
    out = cli.ok("tasks").out
    assert out.splitlines() == [f"{s} in {cli.queue}: 0"
                                for s in ("Queued", "Delayed", "Deferred", "Running", "Dead")]


def test_dead_list_table_and_json(cli: Cli) -> None:
    """Each dead task with how many tasks were submitted to run after it (those its requeue
    brings back)."""

    async def dead_with_one_after(queue: TaskQueue) -> list[str]:
        first, second = [await queue.submit({"n": n}) for n in (1, 2)]
        await queue.submit({"n": 3}, after=[first])
        for task in (await queue.claim("pod-x:inst", 2, 30)).tasks:
            await queue.fail(task, "bad input", retryable=False)
        return [first, second]

    ids = with_queue(cli.redis_url, cli.queue, dead_with_one_after)
    rows = table_rows(cli.ok("dead", "list").out)
    assert {r[0]: r[3] for r in rows} == {ids[0]: "1", ids[1]: "0"}
    assert {r[4] for r in rows} == {"bad input"}
    doc = cli.ok("dead", "list", "-o", "json").json()
    assert {t["id"]: t["next_count"] for t in doc["tasks"]} == {ids[0]: 1, ids[1]: 0}
    assert {t["error"] for t in doc["tasks"]} == {"bad input"}
    out = cli.ok("dead", "requeue", ids[0]).out.strip()
    assert out == (f"Requeued 1 dead task of queue {cli.queue}; 1 task its death had "
                   "cancelled waits for it again")
    doc = cli.ok("dead", "requeue", ids[1], "-o", "json").json()
    assert doc == {"queue": cli.queue, "requeued": 1, "revived": 0}


def test_dead_list_says_how_many_of_how_many_it_shows(cli: Cli) -> None:
    with_queue(cli.redis_url, cli.queue, lambda q: make_dead(q, [1, 2, 3]))
    out = cli.ok("dead", "list", "--limit", "2").out
    assert out.splitlines()[0] == f"Dead-letter queue of {cli.queue}: 2 of 3 shown"
    assert len(table_rows(out)) == 2
    doc = cli.ok("dead", "list", "--limit", "2", "-o", "json").json()
    assert (doc["total"], len(doc["tasks"])) == (3, 2)
    assert cli.ok("dead", "list").out.splitlines()[0] == (
        f"Dead-letter queue of {cli.queue}: 3 shown")
    assert cli.ok("dead", "list", "-o", "json").json()["total"] == 3


def test_dead_requeue_some_then_purge_all(cli: Cli) -> None:
    ids = with_queue(cli.redis_url, cli.queue, lambda q: make_dead(q, [1, 2, 3]))
    result = cli.ok("dead", "requeue", ids[0], ids[1])
    assert result.out.strip() == f"Requeued 2 dead tasks of queue {cli.queue}"
    info = with_queue(cli.redis_url, cli.queue, lambda q: q.get(ids[0]))
    assert info is not None and (info.state, info.attempts) == ("queued", 0)
    doc = cli.ok("dead", "purge", "--all", "-o", "json").json()
    assert doc == {"queue": cli.queue, "purged": 1}
    figures = with_queue(cli.redis_url, cli.queue, TaskQueue.figures)
    assert (figures.dead, figures.queued) == (0, 2)
    assert with_queue(cli.redis_url, cli.queue, lambda q: q.get(ids[2])) is None


def test_dead_requeue_all_json(cli: Cli) -> None:
    with_queue(cli.redis_url, cli.queue, lambda q: make_dead(q, [1, 2]))
    assert cli.ok("dead", "requeue", "--all", "-o", "json").json()["requeued"] == 2


def test_dead_ids_not_dead_exit_1(cli: Cli) -> None:
    [task_id] = with_queue(cli.redis_url, cli.queue, lambda q: make_dead(q, [1]))
    result = cli("dead", "purge", task_id, "0123456789abcdef0123456789abcdef")
    assert result.code == 1
    assert result.out.strip() == f"Purged 1 dead task of queue {cli.queue}"
    assert result.err_lines == ["agentpool: 1 of 2 given tasks were not in the dead-letter queue"]


def test_dead_needs_ids_or_all_but_not_both(cli: Cli) -> None:
    none = cli("dead", "requeue")
    assert (none.code, none.err_lines) == (2, ["agentpool: give the task ids to requeue, or --all"])
    both = cli("dead", "purge", "x", "--all")
    assert (both.code, both.err_lines) == (2, ["agentpool: give task ids or --all, not both"])



async def two_workers(q: TaskQueue) -> None:
    """pod-a holds three tasks, claimed after its last heartbeat; pod-b is idle and draining."""
    busy = WorkerInfo(pod="pod-a", instance="i1", concurrency=4, done=10, failed=1,
                      started=time.time() - 120)
    idle = WorkerInfo(pod="pod-b", instance="i2", concurrency=4, done=2)
    await q.heartbeat(busy, {}, 30)
    await q.heartbeat(idle, {}, 30)
    await q.submit_many([{"n": n} for n in range(3)])
    assert len((await q.claim(busy.worker_id, 3, 30)).tasks) == 3
    await q.request_drain("pod-b")


def test_workers_table(cli: Cli) -> None:
    with_queue(cli.redis_url, cli.queue, two_workers)
    out = cli.ok("workers").out
    assert out.splitlines()[0] == f"Workers of queue {cli.queue}: 2"
    rows = table_rows(out)
    assert [r[:6] for r in rows] == [
        ["pod-a", "i1", "running", "3/4", "10", "1"],
        ["pod-b", "i2", "drain-requested", "0/4", "2", "0"],
    ]
    assert rows[0][6] in ("0s", "1s")
    assert rows[0][7].startswith("2m")


def test_workers_json(cli: Cli) -> None:
    with_queue(cli.redis_url, cli.queue, two_workers)
    doc = cli.ok("workers", "-o", "json").json()
    assert doc["queue"] == cli.queue
    by_pod = {w["pod"]: w for w in doc["workers"]}
    assert by_pod["pod-a"]["worker_id"] == "pod-a:i1"
    assert (by_pod["pod-a"]["in_flight"], by_pod["pod-a"]["done"]) == (3, 10)
    assert by_pod["pod-b"]["state"] == "drain-requested"
    assert 0 <= by_pod["pod-a"]["heartbeat_age_seconds"] < 5


@pytest.fixture
def worker_process(cli: Cli, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real `agentpool-worker` on the CLI's queue: 4 at a time, the default lease, tasks that
    run for minutes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTPOOL_")}
    env.update(AGENTPOOL_REDIS_URL=cli.redis_url, AGENTPOOL_QUEUE=cli.queue,
               AGENTPOOL_HANDLER="agentpool_worker.builtin:simulated_agent",
               AGENTPOOL_CONCURRENCY="4", AGENTPOOL_POD_NAME="pod-w", AGENTPOOL_PORT="0")
    with (tmp_path / "worker.log").open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "agentpool_worker.main"], env=env,
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        yield process
    finally:
        process.kill()
        process.wait(timeout=10)


def running_owners(cli: Cli) -> Counter[str]:
    doc = cli.ok("tasks", "-s", "running", "-o", "json").json()
    return Counter(task["owner"] for task in doc["tasks"])


def test_workers_in_flight_agrees_with_the_running_tasks_of_a_real_worker(
    cli: Cli, worker_process: subprocess.Popen[bytes]
) -> None:
    def registered() -> bool:
        result = cli("workers", "-o", "json")
        return result.code == 0 and bool(result.json()["workers"])

    wait_until(registered, within=20)
    cli.ok("submit", *["--json", '{"mean_seconds": 600}'] * 6)
    wait_until(lambda: sum(running_owners(cli).values()) == 4, within=10)

    [worker] = cli.ok("workers", "-o", "json").json()["workers"]
    assert running_owners(cli) == {worker["worker_id"]: 4}
    assert (worker["pod"], worker["in_flight"], worker["concurrency"]) == ("pod-w", 4, 4)
    [row] = table_rows(cli.ok("workers").out)
    assert row[:4] == ["pod-w", worker["instance"], "running", "4/4"]
    assert worker_process.poll() is None


def test_workers_none(cli: Cli) -> None:
    with_queue(cli.redis_url, cli.queue, used_then_emptied)
    assert cli.ok("workers").out.strip() == f"Workers of queue {cli.queue}: 0"
    assert cli.ok("workers", "-o", "json").json() == {"queue": cli.queue, "workers": []}


NEVER_USED_VIEWS = [["stats"], ["tasks"], ["dead", "list"], ["workers"], ["tenants"],
                    ["dead", "purge", "--all"], ["dead", "requeue", "--all"],
                    ["cancel", "--waiting"]]
"""The commands that read a queue (or act on all of it) and say so when nobody used it."""


def never_used(queue: str) -> str:
    return (f'agentpool: queue "{queue}" has never been used: nothing was submitted to it and '
            "no worker serves it")


@pytest.mark.parametrize("argv", NEVER_USED_VIEWS, ids=" ".join)
@pytest.mark.parametrize("output", ["table", "json"])
def test_a_never_used_queue_is_not_shown_as_an_empty_one(cli: Cli, argv: list[str],
                                                         output: str) -> None:
    result = cli(*argv, "-o", output)
    assert (result.code, result.out) == (1, "")
    [line] = result.err_lines
    assert line.startswith(never_used(cli.queue) + " (")


def test_status_of_a_never_used_queue(cli: Cli) -> None:
    result = cli.raw("status", "--redis-url", cli.redis_url, "--queue", cli.queue)
    assert (result.code, result.out) == (1, "")
    [line] = result.err_lines
    assert line.startswith(never_used(cli.queue))


@pytest.fixture
def own_redis() -> Iterator[str]:
    """A redis-server of this test's own, so that the queues it holds are known exactly."""
    with RedisServer() as server:
        yield server.url


def test_the_message_lists_the_queues_this_redis_has(
    capsys: pytest.CaptureFixture[str], own_redis: str,
) -> None:
    cli = Cli(capsys, own_redis, "demo2")
    result = cli("stats")
    assert result.err_lines == [never_used("demo2") + " (this Redis database has no queues yet)"]

    async def use(q: TaskQueue) -> None:
        if q.name == "demo":
            await q.submit({"n": 1})
        elif q.name == "jobs":
            await q.heartbeat(WorkerInfo(pod="pod-j", instance="i1", concurrency=1), {}, 30)
        else:
            await q.configure(max_attempts=2)

    for name in ("demo", "jobs", "old"):
        with_queue(own_redis, name, use)
    for argv in NEVER_USED_VIEWS:
        result = cli(*argv)
        assert (result.code, result.err_lines) == (
            1, [never_used("demo2") + " (queues here: demo, jobs, old)"])
    for name in ("demo", "jobs", "old"):
        assert Cli(capsys, own_redis, name).ok("stats").err == ""


def test_a_queue_only_a_worker_serves_is_shown(cli: Cli) -> None:
    with_queue(cli.redis_url, cli.queue, lambda q: q.heartbeat(
        WorkerInfo(pod="pod-s", instance="i1", concurrency=2), {}, 30))
    assert key_values(cli.ok("stats").out)["Workers"] == "1"
    assert cli.ok("tasks", "-o", "json").json()["totals"]["queued"] == 0
    assert cli.ok("dead", "list", "-o", "json").json()["tasks"] == []
    [worker] = cli.ok("workers", "-o", "json").json()["workers"]
    assert worker["pod"] == "pod-s"


def test_never_used_message_lists_at_most_ten_queues() -> None:
    names = [f"q{i:02d}" for i in range(13)]
    assert never_used_message("typo", names, complete=True).endswith(
        "(queues here: q00, q01, q02, q03, q04, q05, q06, q07, q08, q09 and 3 more)")
    assert never_used_message("q00", ["q00", "q01"], complete=False).endswith(
        "(queues here include: q01)")
    assert never_used_message("typo", [], complete=False).endswith("no worker serves it")


@pytest.mark.parametrize(("revived", "dead", "text"), [
    (1, 1, "1 task its death had cancelled waits for it again"),
    (3, 1, "3 tasks its death had cancelled wait for it again"),
    (1, 2, "1 task their deaths had cancelled waits for them again"),
    (4, 2, "4 tasks their deaths had cancelled wait for them again"),
])
def test_dead_requeue_says_how_many_came_back_in_words_that_agree(
    revived: int, dead: int, text: str,
) -> None:
    assert dead_cli._came_back(revived, dead) == text
