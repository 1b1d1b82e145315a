"""Worker deaths and Redis restarts lose nothing; a zombie cannot overwrite a result."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY
from redis.exceptions import RedisError
from worker_helpers import (
    HANDLERS,
    eventually,
    running,
    settings,
    task_in,
    worker_env,
    worker_processes,
)

from agentpool.protocol import ClaimedTask, TaskInfo, TaskQueue, worker_id
from agentpool.redis_server import RedisServer
from agentpool_worker import worker as worker_module


async def held_by_pod(queue: TaskQueue, pod: str) -> set[str]:
    held: set[str] = set()
    for w in await queue.workers():
        if w.pod == pod:
            held |= await queue.held_by(w.worker_id)
    return held


async def all_succeeded(queue: TaskQueue, ids: list[str]) -> bool:
    infos = [await queue.get(t) for t in ids]
    return all(i is not None and i.state == "succeeded" for i in infos)


async def test_kill_9_then_requeue_by_owner_loses_nothing(
    tmp_path: Path, redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    queue = TaskQueue(redis, queue_name)
    ids = await queue.submit_many([{"seconds": 60}] * 6)
    with worker_processes(tmp_path) as start:
        victim = start(worker_env(redis_url, queue_name, f"{HANDLERS}:first_attempt_sleeps",
                                  pod_name="pod-k", concurrency=4, lease_seconds=30))
        held = await eventually(lambda: _exactly(held_by_pod(queue, "pod-k"), 4), 15, "claims")
        victim.signal(signal.SIGKILL)
        assert await victim.exit_code(5) == -signal.SIGKILL
        returned = await queue.requeue_pod("pod-k")
        assert returned.requeued == 4
        async with running(settings(redis_url, queue_name, f"{HANDLERS}:pid",
                                    pod_name="pod-other")):
            await eventually(lambda: all_succeeded(queue, ids), 15, "every task to finish")
    for task_id in ids:
        info = await queue.get(task_id)
        assert info is not None and info.result == {"pid": os.getpid()}
        assert info.attempts == (2 if task_id in held else 1)
    figures = await queue.figures()
    assert (figures.queued, figures.in_flight, figures.dead) == (0, 0, 0)


async def test_without_an_operator_a_worker_requeues_what_a_killed_one_held(
    tmp_path: Path, redis_url: str, queue_name: str, redis: aioredis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nobody calls requeue_pod or reaps: once the dead worker's leases have run out for
    UNREAPED_SECONDS, a live worker of the queue requeues its tasks and runs them."""
    monkeypatch.setattr(worker_module, "UNREAPED_SECONDS", 1.0)
    queue = TaskQueue(redis, queue_name)
    ids = await queue.submit_many([{"seconds": 60}] * 2)
    with worker_processes(tmp_path) as start:
        victim = start(worker_env(redis_url, queue_name, f"{HANDLERS}:first_attempt_sleeps",
                                  pod_name="pod-k", concurrency=2, lease_seconds=1))
        await eventually(lambda: _exactly(held_by_pod(queue, "pod-k"), 2), 15, "claims")
        victim.signal(signal.SIGKILL)
        assert await victim.exit_code(5) == -signal.SIGKILL
        async with running(settings(redis_url, queue_name, f"{HANDLERS}:pid",
                                    pod_name="pod-other", lease_seconds=0.6)) as worker:
            await eventually(lambda: all_succeeded(queue, ids), 15, "every task to finish")
            assert worker.metrics.leases_reaped._value.get() == 2
    for task_id in ids:
        info = await queue.get(task_id)
        assert info is not None and info.attempts == 2
        assert info.result == {"pid": os.getpid()}


async def test_a_worker_leaves_a_lease_that_ran_out_lately_to_the_operator(
    redis_url: str, queue_name: str, redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A lease expired for less than UNREAPED_SECONDS is the operator's to reap (with its
    Events): the worker's heartbeats (every 0.2 s here) see it and leave it."""
    monkeypatch.setattr(worker_module, "UNREAPED_SECONDS", 2.0)
    queue = TaskQueue(redis, queue_name)
    # claimed before the worker starts: a running worker would take the task first
    task_id = await queue.submit({})
    await eventually(lambda: _claimed_by(queue, "pod-gone:i1", 0.3), 5, "a foreign claim")
    async with running(settings(redis_url, queue_name, f"{HANDLERS}:pid", lease_seconds=0.6)):
        await eventually(lambda: _expired_for(queue, 1.0), 5, "the lease to run out 1 s ago")
        info = await queue.get(task_id)
        assert info is not None and (info.state, info.owner) == ("running", "pod-gone:i1")
        await eventually(lambda: all_succeeded(queue, [task_id]), 10, "the worker to reap it")


async def test_a_worker_reaps_only_once_redis_has_answered_it_for_a_whole_lease(
    redis_url: str, queue_name: str, redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After an outage every lease has run out: a worker whose Redis just came back (here:
    one just started) leaves the other workers a lease's time to renew theirs."""
    monkeypatch.setattr(worker_module, "UNREAPED_SECONDS", 0.2)
    queue = TaskQueue(redis, queue_name)
    task_id = await queue.submit({})
    await eventually(lambda: _claimed_by(queue, "pod-gone:i1", 0.1), 5, "a foreign claim")
    await eventually(lambda: _expired_for(queue, 0.5), 5, "the lease to run out")
    async with running(settings(redis_url, queue_name, f"{HANDLERS}:pid",
                                lease_seconds=3.0)) as worker:
        started = time.monotonic()
        seen: list[float] = []
        await eventually(lambda: _heartbeats(queue, worker.worker_id, seen, 3), 5,
                         "three heartbeats")
        info = await queue.get(task_id)
        assert time.monotonic() - started < 3.0, "the check came too late to mean anything"
        assert info is not None and (info.state, info.owner) == ("running", "pod-gone:i1")
        await eventually(lambda: all_succeeded(queue, [task_id]), 10, "the worker to reap it")


async def _claimed_by(queue: TaskQueue, worker: str, lease: float) -> bool:
    return bool((await queue.claim(worker, 1, lease)).tasks)


async def _expired_for(queue: TaskQueue, seconds: float) -> bool:
    left = await queue.next_lease_expiry()
    return left is not None and left <= -seconds


async def _heartbeats(queue: TaskQueue, worker: str, seen: list[float], count: int) -> bool:
    """Whether `count` distinct heartbeats of `worker` have been seen (collected in `seen`)."""
    for state in await queue.workers():
        if state.worker_id == worker and state.last_heartbeat not in seen:
            seen.append(state.last_heartbeat)
    return len(seen) >= count


async def _exactly(held: object, n: int) -> set[str] | None:
    tasks: set[str] = await held  # type: ignore[misc]
    return tasks if len(tasks) == n else None


async def test_start_up_returns_tasks_of_an_earlier_instance_of_the_pod(
    tmp_path: Path, redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    queue = TaskQueue(redis, queue_name)
    ids = await queue.submit_many([{"seconds": 60}] * 3)
    with worker_processes(tmp_path) as start:
        first = start(worker_env(redis_url, queue_name, f"{HANDLERS}:first_attempt_sleeps",
                                 pod_name="pod-r", lease_seconds=30))
        await eventually(lambda: _exactly(held_by_pod(queue, "pod-r"), 3), 15, "claims")
        first.signal(signal.SIGKILL)
        await first.exit_code(5)
        # the container restarts: same pod name, new instance; leases are far from expiry
        second = start(worker_env(redis_url, queue_name, f"{HANDLERS}:first_attempt_sleeps",
                                  pod_name="pod-r", lease_seconds=30))
        await eventually(lambda: all_succeeded(queue, ids), 15, "every task to finish")
        started = next(json.loads(line) for line in second.logs().splitlines()
                       if '"worker started"' in line)
    assert started["returned_from_earlier_instances"] == 3
    assert started["earlier_instances"] == 1
    for task_id in ids:
        info = await queue.get(task_id)
        assert info is not None and info.result["pid"] == second.pid


async def test_worker_processes_on_one_host_without_a_pod_name_leave_each_others_tasks(
    tmp_path: Path, redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    """Outside Kubernetes nobody sets AGENTPOOL_POD_NAME: each process is a pod of its own,
    so a second worker starting on the host returns nothing the first one is running."""
    queue = TaskQueue(redis, queue_name)
    task_id = await queue.submit({"seconds": 60})
    with worker_processes(tmp_path) as start:
        env = worker_env(redis_url, queue_name, f"{HANDLERS}:sleep", lease_seconds=30)
        del env["AGENTPOOL_POD_NAME"]
        first = start(env)
        running_first = await eventually(lambda: task_in(queue, task_id, "running"), 15, "run")
        second = start(env)
        started = await eventually(lambda: _started_line(second.logs()), 15, "second start")
        info = await queue.get(task_id)
    assert started["returned_from_earlier_instances"] == 0
    assert started["pod"].endswith(f"-{second.pid}")
    assert running_first.owner is not None and running_first.owner.endswith(
        f"-{first.pid}:" + running_first.owner.rpartition(":")[2])
    assert info is not None and (info.state, info.attempts) == ("running", 1)
    assert info.owner == running_first.owner


def _started_line(logs: str) -> dict[str, Any] | None:
    return next((json.loads(line) for line in logs.splitlines()
                 if '"worker started"' in line), None)


@pytest.mark.parametrize("zombie_fails", [False, True], ids=["complete", "fail"])
async def test_a_zombie_cannot_complete_or_fail_a_task_it_lost(
    tmp_path: Path, redis_url: str, queue_name: str, redis: aioredis.Redis,
    zombie_fails: bool,
) -> None:
    queue = TaskQueue(redis, queue_name)
    task_id = await queue.submit({"seconds": 1.0, "fail": zombie_fails})
    with worker_processes(tmp_path) as start:
        # a long lease: the zombie's next heartbeat is far off, so on waking it tries to
        # record its outcome before it could learn from a heartbeat that it lost the task;
        # one slot, so it has no wait pending that could claim the task again while frozen
        zombie = start(worker_env(redis_url, queue_name, f"{HANDLERS}:zombie",
                                  pod_name="pod-z", lease_seconds=60, concurrency=1))
        await eventually(lambda: task_in(queue, task_id, "running"), 15, "the zombie's claim")
        zombie.signal(signal.SIGSTOP)
        # frozen past its lease: expire it the way time would, and let the reaper act
        await redis.zadd(queue.prefix + "leases", {task_id: 0}, xx=True)
        assert (await queue.reap_expired()).requeued == 1
        async with running(settings(redis_url, queue_name, f"{HANDLERS}:pid",
                                    pod_name="pod-new")):
            done = await eventually(lambda: task_in(queue, task_id, "succeeded"), 10, "re-run")
        zombie.signal(signal.SIGCONT)
        refusal = "completion refused" if not zombie_fails else "outcome refused"
        await eventually(lambda: refusal in zombie.logs(), 10, "the zombie's attempt")
        assert zombie.alive()
    info = await queue.get(task_id)
    assert info is not None and info.state == "succeeded"
    assert info.result == {"pid": os.getpid()} == done.result
    assert info.attempts == 2 and info.error is None


async def test_a_frozen_idle_worker_holds_back_one_task_at_most_and_only_for_its_lease(
    tmp_path: Path, redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    """An idle worker's wait carries its claim, which Redis runs even when the worker is
    frozen: that claim takes one task, which returns to the queue when its lease runs out."""
    queue = TaskQueue(redis, queue_name)
    with worker_processes(tmp_path) as start:
        frozen = start(worker_env(redis_url, queue_name, pod_name="pod-f", lease_seconds=2,
                                  concurrency=8, poll_seconds=30))
        await eventually(lambda: blocked_clients(redis, frozen.pid), 15,
                         "the idle worker's wait")
        frozen.signal(signal.SIGSTOP)
        try:
            ids = await queue.submit_many(list(range(6)))
            assert len(await held_by_pod(queue, "pod-f")) <= 1
            async with running(settings(redis_url, queue_name, f"{HANDLERS}:pid",
                                        pod_name="pod-live")):
                async def reaped_and_done() -> bool:
                    await queue.reap_expired()
                    return await all_succeeded(queue, ids)
                await eventually(reaped_and_done, 15, "every task run by the live worker")
        finally:
            frozen.signal(signal.SIGCONT)
    infos = [await queue.get(i) for i in ids]
    assert all(i is not None and i.result == {"pid": os.getpid()} for i in infos)
    assert sum(1 for i in infos if i is not None and i.attempts == 2) <= 1


async def test_a_worker_frozen_past_the_lease_does_not_run_what_was_claimed_elsewhere(
    tmp_path: Path, redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    """The claim an idle worker's wait carried is read only after the worker wakes; by then
    the task was reaped and run by another worker. The woken worker asks Redis before it
    starts the run and drops the task as lost: a second run would repeat the work (an
    agent's model calls and tool actions, which no fence stops)."""
    queue = TaskQueue(redis, queue_name)
    payload = {"url": redis_url, "key": f"{queue_name}:runs"}
    with worker_processes(tmp_path) as start:
        frozen = start(worker_env(redis_url, queue_name, f"{HANDLERS}:recorded",
                                  pod_name="pod-f", lease_seconds=2, poll_seconds=30))
        await eventually(lambda: blocked_clients(redis, frozen.pid), 15,
                         "the idle worker's wait")
        frozen.signal(signal.SIGSTOP)
        try:
            task_id = await queue.submit(payload)
            await eventually(lambda: held_by_pod(queue, "pod-f"), 10, "the wait's claim")
            async with running(settings(redis_url, queue_name, f"{HANDLERS}:recorded",
                                        pod_name="pod-live")):
                async def reaped_and_done() -> TaskInfo | None:
                    await queue.reap_expired()
                    return await task_in(queue, task_id, "succeeded")
                await eventually(reaped_and_done, 15, "the task run by the live worker")
        finally:
            frozen.signal(signal.SIGCONT)

        def verdict() -> dict[str, Any] | None:
            """The woken worker's word on the task: dropped as lost, or its zombie run's
            completion refused."""
            lines = [json.loads(line) for line in frozen.logs().splitlines()
                     if line.startswith("{")]
            return next((line for line in lines
                         if line["msg"].startswith(("lease lost", "completion refused"))), None)

        said = await eventually(verdict, 15, "the woken worker to learn it lost the task")
        assert said["msg"].startswith("lease lost"), said
        assert said["task"] == task_id and said["run"] == "not started"
        assert frozen.alive()
    runs = await redis.lrange(payload["key"], 0, -1)
    assert [int(pid) for pid in runs] == [os.getpid()]


async def blocked_clients(redis: aioredis.Redis, pid: int) -> bool:
    """Whether a connection of process `pid` is blocked in Redis (the idle worker's wait): the
    server is the session's, where another test's client may be blocked too."""
    ports = local_ports(pid)
    return any("b" in c["flags"] and int(c["addr"].rpartition(":")[2]) in ports
               for c in await redis.client_list())


def local_ports(pid: int) -> set[int]:
    """The local TCP ports of process `pid`'s sockets."""
    inodes: set[str] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return set()
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target.removeprefix("socket:[").removesuffix("]"))
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                if fields[9] in inodes:
                    ports.add(int(fields[1].rpartition(":")[2], 16))
    return ports


async def test_a_poison_task_that_kills_its_worker_ends_in_the_dead_letter_queue(
    tmp_path: Path, redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    queue = TaskQueue(redis, queue_name)
    poison = await queue.submit({"poison": True})
    env = worker_env(redis_url, queue_name, f"{HANDLERS}:crash", pod_name="pod-p",
                     max_attempts=3, lease_seconds=30)
    crashes = 0
    with worker_processes(tmp_path) as start:
        # each process stands for a restart of the pod's container
        while not await task_in(queue, poison, "dead"):
            assert crashes <= 3, "the poison task kept killing workers"
            proc = start(env)
            dead_or_crashed = await eventually(
                lambda p=proc: (not p.alive()) or task_in(queue, poison, "dead"), 15, "a crash")
            if not proc.alive():
                assert proc.proc.returncode == 17
                crashes += 1
            else:
                assert dead_or_crashed
    assert crashes == 3
    info = await queue.get(poison)
    assert info is not None and info.attempts == 3
    assert info.error is not None
    assert re.fullmatch(r"worker restarted, held by pod-p:\S+ \(attempt 3 of 3\)", info.error)


async def test_a_redis_restart_with_appendonly_loses_nothing(queue_name: str) -> None:
    with RedisServer(appendonly=True) as server:
        client = aioredis.Redis.from_url(server.url)
        queue = TaskQueue(client, queue_name)
        ids = await queue.submit_many([{"seconds": 0.02}] * 300)
        async with running(settings(server.url, queue_name, f"{HANDLERS}:sleep",
                                    concurrency=8, redis_timeout_seconds=0.5)) as worker:
            await eventually(lambda: worker.info.done >= 60, 15, "some progress")
            server.stop()  # a restart, held open until the worker has noticed the outage
            await eventually(lambda: not worker.health.redis_ok, 10, "the worker to notice")
            server.start()
            assert worker.info.done < 300

            async def finished() -> bool:
                try:
                    return await all_succeeded(queue, ids)
                except RedisError:  # this test's own client meets the restart too
                    return False

            await eventually(finished, 30, "every task to finish")
        figures = await queue.figures()
        assert (figures.queued, figures.in_flight, figures.dead) == (0, 0, 0)
        assert figures.stats["succeeded"] == 300
        await client.aclose()


def test_worker_ids_are_pod_and_instance() -> None:
    assert worker_id("pod-a", "abc123") == "pod-a:abc123"


async def test_reclaiming_a_task_it_lost_keeps_the_worker_whole(
    redis: aioredis.Redis, redis_url: str, queue_name: str
) -> None:
    """The worker claims a task again after losing its lease (requeued while it still ran):
    the earlier run is abandoned, the new claim completes, and no slot leaks."""
    queue = TaskQueue(redis, queue_name)
    worker_settings = settings(redis_url, queue_name, f"{HANDLERS}:sleep",
                               concurrency=2, lease_seconds=6)
    async with running(worker_settings) as worker:
        task_id = await queue.submit({"seconds": 1.0})
        await eventually(lambda: task_in(queue, task_id, "running"), what="first claim")

        assert (await queue.requeue_owner(worker.worker_id)).requeued == 1
        def reclaimed() -> ClaimedTask | None:
            task = worker._held.get(task_id)
            return task if task is not None and task.attempts == 2 else None

        second = await eventually(reclaimed, what="the worker claims the requeued task again")

        info = await eventually(lambda: task_in(queue, task_id, "succeeded"), within=10,
                                what="the second claim's success recorded")
        assert info is not None and info.attempts == second.attempts == 2
        def idle() -> bool:
            return worker._free == 2 and not worker._runs and not worker._held

        await eventually(idle, what="both slots free again")
        counts = {name: REGISTRY.get_sample_value(f"agentpool_worker_tasks_{name}_total",
                                                  {"queue": queue_name})
                  for name in ("succeeded", "lost")}
        assert counts == {"succeeded": 1, "lost": 1}, "the first claim's run counts as lost"


@pytest.mark.parametrize("overdue, reachable_for, due", [
    (0.0, 600.0, False),    # nothing expired
    (29.9, 600.0, False),   # the operator's to reap (with its Events) a while longer
    (30.0, 600.0, True),
    (45.0, 6.9, False),     # Redis back for less than a lease: others renew theirs first
    (45.0, 7.0, True),
    (45.0, 0.0, False),     # Redis failing now
])
def test_a_worker_reaps_what_no_operator_did_once_it_has_had_redis_a_lease(
    overdue: float, reachable_for: float, due: bool,
) -> None:
    assert worker_module.reap_due(overdue, reachable_for, lease_seconds=7.0) is due


async def test_a_worker_writes_the_queues_settings_again_when_redis_lost_its_data(
    tmp_path: Path, redis_url: str, queue_name: str, redis: aioredis.Redis,
) -> None:
    """Redis comes back empty (a restart without persistence, a FLUSHALL): the queue's
    settings went with its data, and a task submitted since must still run under the pool's
    (here one attempt, so a failure dead-letters it), not the defaults; the log says why."""
    queue = TaskQueue(redis, queue_name)
    with worker_processes(tmp_path) as start:
        worker = start(worker_env(redis_url, queue_name, f"{HANDLERS}:fails",
                                  pod_name="pod-e", lease_seconds=1.5, max_attempts=1))
        await eventually(lambda: _has_settings(redis, queue), 15, "the worker to start")
        keys = [key async for key in redis.scan_iter(f"{queue.prefix}*")]
        await redis.delete(*keys)
        await eventually(lambda: _has_settings(redis, queue), 5, "the settings written again")
        task_id = await queue.submit({"n": 1})
        await eventually(lambda: task_in(queue, task_id, "dead"), 15, "the task to fail once")
        info = await queue.get(task_id)
        assert info is not None and info.attempts == 1
        assert "Redis lost its data" in worker.logs()


async def _has_settings(redis: aioredis.Redis, queue: TaskQueue) -> bool:
    return await redis.hget(queue.prefix + "config", "max_attempts") == b"1"
