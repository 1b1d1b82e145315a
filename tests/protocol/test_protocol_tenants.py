"""Tenants take turns: `submit(..., tenant=name)` places a task after the next task to run and
after its tenant's previous task, whichever is later (start-time fair queuing in each priority
band, submit.lua), so a tenant's flood does not hold another tenant's next task behind it."""

from __future__ import annotations

import asyncio
import random

import pytest
import redis.asyncio as aioredis
from protocol_helpers import ONE_SERVER, claim_one, claim_within, drop_queue, eventually
from test_protocol_cancel_waiting import after_each_call, states

from agentpool.protocol import MAX_TENANT_CHARS, FailOutcome, ProtocolError, TaskQueue
from agentpool.protocol.replies import as_text

PRIORITY_BAND = 2**40
"""A queued task's score is its priority's band (this times 9 - priority) plus its place
(common.lua)."""


async def claim_order(queue: TaskQueue, ids: dict[str, str]) -> list[str]:
    """Who each task belongs to (`ids`: task id → name), in the order the queue hands them out."""
    batch = await queue.claim("w1", len(ids), 30)
    return [ids[task.id] for task in batch.tasks]


async def due_delayed(queue: TaskQueue, count: int) -> bool:
    return (await queue.figures()).due_delayed >= count


async def submit_as(queue: TaskQueue, tenant: str | None, n: int,
                    **options: object) -> dict[str, str]:
    return {await queue.submit({"of": tenant, "n": i}, tenant=tenant, **options): tenant or "-"
            for i in range(n)}


async def test_a_tenant_arriving_behind_a_flood_runs_next(queue: TaskQueue) -> None:
    ids = await submit_as(queue, "flood", 30)
    ids |= await submit_as(queue, "small", 3)
    order = await claim_order(queue, ids)
    small = [i for i, name in enumerate(order) if name == "small"]
    # each of its tasks is next after one more of the flood's (ties between tenants are
    # settled by task id)
    assert small[0] <= 2 and small[1] <= 4 and small[2] <= 6, order


async def test_without_tenants_the_same_submits_run_in_submit_order(queue: TaskQueue) -> None:
    """The control for the test above: the order it checks is the tenants' doing."""
    ids = {await queue.submit({"n": i}): "flood" for i in range(30)}
    ids |= {await queue.submit({"n": i}): "small" for i in range(3)}
    assert await claim_order(queue, ids) == ["flood"] * 30 + ["small"] * 3


async def test_tenants_take_turns_one_task_each(queue: TaskQueue) -> None:
    ids: dict[str, str] = {}
    for tenant in ("a", "b", "c"):
        ids |= await submit_as(queue, tenant, 10)
    order = await claim_order(queue, ids)
    for turns in range(1, 10):
        first = order[:3 * turns + 1]
        assert min(first.count(t) for t in "abc") >= turns, order


async def test_a_tenants_own_tasks_keep_their_submit_order(queue: TaskQueue) -> None:
    mine = list(await submit_as(queue, "me", 8))
    await submit_as(queue, "other", 8)
    claimed = [task.id for task in (await queue.claim("w1", 16, 30)).tasks]
    assert [i for i in claimed if i in mine] == mine


async def test_priorities_come_first_and_tenants_take_turns_within_each(
    queue: TaskQueue,
) -> None:
    ids = await submit_as(queue, "a", 5)
    urgent = await submit_as(queue, "a", 4, priority=7)
    urgent |= await submit_as(queue, "b", 2, priority=7)
    ids |= {i: name + "!" for i, name in urgent.items()}
    order = await claim_order(queue, ids)
    assert sorted(order[:6]) == ["a!"] * 4 + ["b!"] * 2
    assert order[6:] == ["a"] * 5
    assert "b!" in order[:3] and order[:5].count("b!") == 2, order


async def test_tasks_without_a_tenant_take_turns_as_one_once_the_queue_has_tenants(
    queue: TaskQueue,
) -> None:
    ids = await submit_as(queue, None, 1)  # before any tenant: by submit number
    ids |= await submit_as(queue, "a", 4)
    ids |= {i: "late" for i in await submit_as(queue, None, 1)}
    ids |= await submit_as(queue, "b", 1)
    order = await claim_order(queue, ids)
    assert order.index("-") <= 2 and order.index("b") <= 2, order
    assert order.index("late") <= 4, order


async def test_tasks_without_a_tenant_wait_a_turn_not_the_whole_backlog(
    queue: TaskQueue,
) -> None:
    """Three tenants keep a backlog while tasks without a tenant arrive now and then: each of
    those waits about a turn of the tenants, however long the queue has been busy."""
    for tenant in "abc":
        await submit_as(queue, tenant, 30)
    for _ in range(5):
        probe = await queue.submit({"probe": True})
        handed_out = 0
        while (task := await claim_one(queue, "w1")).id != probe:
            handed_out += 1
            await queue.submit({"more": True}, tenant=task.tenant)  # the backlog stays
        assert handed_out <= 3
        for _ in range(10):  # time passes: the tenants' work goes on
            task = await claim_one(queue, "w1")
            await queue.submit({"more": True}, tenant=task.tenant)


async def test_an_interrupted_task_goes_back_ahead_of_the_tasks_that_came_after_it(
    queue: TaskQueue,
) -> None:
    first = await queue.submit({"n": 0}, tenant="a")
    task = await claim_one(queue, "lost-worker")
    assert task.id == first
    later = await submit_as(queue, "b", 5)
    later |= await submit_as(queue, "a", 5)
    await queue.requeue_owner("lost-worker")
    batch = await queue.claim("w2", 11, 30)
    assert batch.tasks[0].id == first
    assert {t.id for t in batch.tasks[1:]} == set(later)


async def test_a_claim_and_a_read_hand_over_the_tenant(queue: TaskQueue) -> None:
    mine = await queue.submit({}, tenant="acme / team 7")
    plain = await queue.submit({})
    batch = await queue.claim("w1", 2, 30)
    assert {t.id: t.tenant for t in batch.tasks} == {mine: "acme / team 7", plain: None}
    info = await queue.get(mine)
    assert info is not None and info.tenant == "acme / team 7"
    other = await queue.get(plain)
    assert other is not None and other.tenant is None


async def test_submit_many_with_a_tenant_waits_behind_the_others_not_ahead(
    queue: TaskQueue,
) -> None:
    fan_out = await queue.submit_many([{"n": n} for n in range(20)], tenant="big")
    ids = dict.fromkeys(fan_out, "big")
    ids |= await submit_as(queue, "small", 2)
    order = await claim_order(queue, ids)
    assert order.index("small") <= 2 and order[5:].count("small") == 0, order
    info = await queue.get(fan_out[0])
    assert info is not None and info.tenant == "big"


async def test_submits_gathered_into_one_call_take_turns_too(queue: TaskQueue) -> None:
    """Concurrent submits go to Redis as one script call (coalesce.py): the places of a
    group are decided within it as they would be one by one."""
    queued = await submit_as(queue, "a", 1)  # something queued to take turns behind
    names = ["a"] * 20 + ["b"] * 5
    ids = await asyncio.gather(*(queue.submit({"n": n}, tenant=name)
                                 for n, name in enumerate(names)))
    order = await claim_order(queue, queued | dict(zip(ids, names, strict=True)))
    first_b = [i for i, name in enumerate(order) if name == "b"]
    assert first_b and first_b[-1] <= 11, order


async def test_the_places_remembered_are_only_those_still_ahead(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    for n in range(50):
        await queue.submit({"n": n}, tenant=f"user-{n}")
    members = await redis.zrange(queue.prefix + "fair", 0, -1)
    assert len([m for m in members if m.startswith(b"9:user-")]) == 50  # band 9: priority 0
    await queue.claim("w1", 50, 30)
    await queue.reap_expired()
    assert await redis.zrange(queue.prefix + "fair", 0, -1) == [b"9"], "only the band's clock"
    await queue.submit({}, tenant="someone else")
    await queue.reap_expired()
    assert await redis.zrange(queue.prefix + "fair", 0, -1) == [b"9", b"9:someone else"]


@pytest.mark.parametrize("how", ["requeued", "released", "retried", "dead-lettered"])
async def test_a_task_handed_back_makes_no_room_for_a_newcomer_to_pass_the_others(
    queue: TaskQueue, how: str,
) -> None:
    """A lost worker's task, one a draining worker hands back, a retry, a dead letter
    requeued: each goes back at its old place, ahead of all; a tenant arriving then takes
    turns with the backlog, not ten places in a row before it."""
    ids = await submit_as(queue, "b", 30)
    lost = await claim_one(queue, "lost-worker")
    await queue.claim("w2", 10, 30)  # the turns move on with no submit in between
    if how == "requeued":
        await queue.requeue_owner("lost-worker")
    elif how == "released":
        assert await queue.release(lost, "draining") is FailOutcome.REQUEUED
    elif how == "retried":
        assert await queue.fail(lost, "boom", delay=0) is FailOutcome.RETRY
        await queue.claim("w2", 0, 30)  # a claim promotes it (taking nothing)
    else:
        assert await queue.fail(lost, "boom", retryable=False) is FailOutcome.DEAD
        assert await queue.requeue_dead([lost.id]) == 1
    ids |= await submit_as(queue, "c", 10)
    batch = await queue.claim("w3", 35, 30)
    assert batch.tasks[0].id == lost.id
    order = [ids[task.id] for task in batch.tasks[1:]]
    assert order[:6].count("c") <= 3, order
    for turn, position in enumerate(i for i, name in enumerate(order) if name == "c"):
        assert position <= 2 * turn + 2, order


async def test_delayed_tasks_take_their_turns_when_they_come_due(queue: TaskQueue) -> None:
    """Not when submitted: due together, they take turns with the backlog; far off, they
    take no turn from their tenant's tasks of now."""
    ids = await submit_as(queue, "a", 10, delay=0.05)
    ids |= await submit_as(queue, "later", 20, delay=3600)
    ids |= await submit_as(queue, "b", 30)
    await eventually(lambda: due_delayed(queue, 10))
    ids |= {i: "later-now" for i in await submit_as(queue, "later", 1)}
    order = [ids[task.id] for task in (await queue.claim("w1", 41, 30)).tasks]
    assert order.count("a") == 10 and order.count("b") == 30
    assert order[:10].count("a") <= 6, order
    assert max(i for i, name in enumerate(order) if name == "a") <= 22, order
    assert order.index("later-now") <= 3, order


async def test_tasks_born_cancelled_take_no_turn(queue: TaskQueue) -> None:
    gone = await queue.submit({"n": 0})
    assert await queue.cancel(gone) == "cancelled"
    born_cancelled = await queue.submit_many([{"n": n} for n in range(20)], after=[gone],
                                             tenant="a")
    assert {i.state for i in await queue.get_many(born_cancelled)} == {"cancelled"}
    ids = await submit_as(queue, "b", 20)
    ids |= await submit_as(queue, "a", 1)
    assert (await claim_order(queue, ids)).index("a") <= 2


async def test_cancel_waiting_leaves_a_tenants_tasks_submitted_meanwhile(
    queue: TaskQueue,
) -> None:
    """A tenant's task submitted during the call takes a place among those it cancels (before
    tasks submitted earlier): its submit number tells it apart, in calls of any size."""
    old = list(await submit_as(queue, "a", 6))
    old += list(await submit_as(queue, None, 2))
    later: list[str] = []

    async def submit_late(call: int) -> None:
        if call == 1:
            later.extend(await submit_as(queue, "b", 3))

    after_each_call(queue, submit_late)
    assert await queue.cancel_waiting(batch=2) == 8
    assert await states(queue, old) == ["cancelled"] * 8
    assert await states(queue, later) == ["queued"] * 3


async def test_cancel_waiting_goes_on_past_more_late_tasks_than_one_call_takes(
    queue: TaskQueue,
) -> None:
    """Their places lie among the first call's range (after the two it cancelled): seven are
    passed over by calls of two, each going on where the last stopped."""
    old = list(await submit_as(queue, "a", 10))
    later: list[str] = []

    async def submit_late(call: int) -> None:
        if call == 1:
            later.extend(await submit_as(queue, "b", 7))

    after_each_call(queue, submit_late)
    assert await queue.cancel_waiting(batch=2) == 10
    assert await states(queue, old) == ["cancelled"] * 10
    assert await states(queue, later) == ["queued"] * 7


@pytest.mark.parametrize("tenant", ["", "x" * (MAX_TENANT_CHARS + 1), "line\nbreak",
                                    "c1\u0085", 7])
async def test_a_tenant_that_is_no_name_is_refused_and_nothing_stored(
    queue: TaskQueue, tenant: object,
) -> None:
    with pytest.raises(ProtocolError, match="tenant must be a name of 1 to 128 characters, "
                                            "none a control character, got"):
        await queue.submit({}, tenant=tenant)  # type: ignore[arg-type]
    assert (await queue.figures()).used is False


async def test_any_other_name_is_a_tenant(queue: TaskQueue) -> None:
    names = ["x" * MAX_TENANT_CHARS, "Acme Corp / équipe 7 \u00a0✓", "0:1", "{other}"]
    ids = [await queue.submit({}, tenant=name) for name in names]
    assert [info.tenant for info in await queue.get_many(ids)] == names


async def test_names_are_compared_exactly(queue: TaskQueue) -> None:
    """A blank at an end or a format character makes another tenant, which pools stored by an
    older CRD may name: their weights and caps are set as the operator sets them."""
    names = ["acme", "acme ", " ", "acme\u200b", "\u202eemca"]
    await queue.set_tenant_weights({name: 2 + n for n, name in enumerate(names)})
    await queue.set_tenant_caps({name: 1 for name in names})
    ids = [await queue.submit({}, tenant=name) for name in names]
    assert [info.tenant for info in await queue.get_many(ids)] == names
    loads = {load.tenant: load for load in (await queue.tenant_loads()).loads}
    assert {name: (loads[name].weight, loads[name].queued, loads[name].cap)
            for name in names} == {name: (2 + n, 1, 1) for n, name in enumerate(names)}


async def test_a_retry_keeps_its_place_and_a_released_task_takes_its_turn(
    queue: TaskQueue,
) -> None:
    """A retry comes back at the place it had (ahead of the tasks that came after it); a task
    released by the end of the tasks it ran after takes its turn then, not a place kept from
    its submit."""
    first = await queue.submit({"n": 0}, tenant="a")
    task = await claim_one(queue, "w1")
    gate = await queue.submit({"gate": True})
    gate_task = await claim_one(queue, "w1")
    assert gate_task.id == gate
    ids = {i: "after" for i in await queue.submit_many([{"n": n} for n in range(6)],
                                                      after=[gate], tenant="x")}
    ids |= await submit_as(queue, "b", 40)
    await queue.claim("w2", 20, 30)
    await queue.reap_expired()  # the band's clock moves on to the head
    assert await queue.fail(task, "boom", delay=0) is FailOutcome.RETRY
    assert (await claim_within(queue, "w1")).id == first, "the retry at its old place"
    await queue.complete(gate_task, "open")
    queued = {info.id for info in await queue.get_many(list(ids)) if info.state == "queued"}
    order = await claim_order(queue, {i: n for i, n in ids.items() if i in queued})
    assert order.count("after") == 6
    assert order[:6].count("after") <= 3, order


@ONE_SERVER
async def test_cancel_waiting_misses_no_earlier_task_and_takes_no_later_one_whatever_claims_do(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    """Random queues of tenants' tasks and tasks without one, two priorities; between the
    calls of a cancel_waiting in small batches, new tasks are submitted (placed in turn among
    the earlier ones) and claims take tasks from the head (shifting what the calls passed
    over). Every earlier task not claimed ends cancelled; every later one stays queued."""
    for seed in range(80):
        rnd = random.Random(seed)
        trial = TaskQueue(redis, f"{queue.name}-{seed}")
        earlier = [await trial.submit({"n": n}, tenant=rnd.choice([None, "a", "b"]),
                                      priority=rnd.choice([0, 0, 3]))
                   for n in range(rnd.randint(5, 40))]
        later: list[str] = []
        claimed: set[str] = set()

        async def meanwhile(call: int, trial: TaskQueue = trial, rnd: random.Random = rnd,
                            later: list[str] = later, claimed: set[str] = claimed) -> None:
            for _ in range(rnd.randint(0, 4)):
                later.append(await trial.submit({"late": True},
                                                tenant=rnd.choice(["c", "d", "a", None]),
                                                priority=rnd.choice([0, 0, 3])))
            claimed.update(t.id for t in (await trial.claim("w", rnd.randint(0, 2), 300)).tasks)

        after_each_call(trial, meanwhile)
        await trial.cancel_waiting(batch=rnd.randint(1, 4))
        left = [i for i in earlier if i not in claimed]
        assert await states(trial, left) == ["cancelled"] * len(left), f"seed {seed}"
        late = [i for i in later if i not in claimed]
        assert await states(trial, late) == ["queued"] * len(late), f"seed {seed}"
        await drop_queue(redis, trial)


async def test_a_burst_placed_at_once_keeps_its_order_and_cancel_waiting_finds_it(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    """A tenant's delayed tasks coming due together into an empty band take places one after
    another, past the submit counter (no ties that a task id would settle), and
    cancel_waiting, which looks up to each band's highest place, still finds them."""
    await queue.submit({"n": "first"}, tenant="b")
    await queue.claim("w1", 1, 30)
    burst = list(await submit_as(queue, "a", 10, delay=0.05))
    await eventually(lambda: due_delayed(queue, 10))
    batch = await queue.claim("w1", 1, 30)  # promotes the ten, takes the first
    assert batch.tasks[0].id == burst[0]
    counter = int(await redis.get(queue.prefix + "seq") or 0)
    places = {as_text(i): score % PRIORITY_BAND
              for i, score in await redis.zrange(queue.prefix + "queued", 0, -1,
                                                 withscores=True)}
    assert [places[i] for i in burst[1:]] == sorted(set(places.values()))
    assert max(places.values()) > counter
    assert await queue.cancel_waiting() == 9


# -- weights -------------------------------------------------------------------------------


async def test_a_tenant_of_weight_three_takes_three_turns_to_anothers_one(
    queue: TaskQueue,
) -> None:
    assert await queue.set_tenant_weights({"big": 3}) is True
    ids = await submit_as(queue, "big", 30)
    ids |= await submit_as(queue, "small", 10)
    order = await claim_order(queue, ids)
    for turns in range(1, 8):
        first = order[:4 * turns]
        assert abs(first.count("big") - 3 * turns) <= 1, order


async def test_without_weights_the_same_submits_take_one_turn_each(queue: TaskQueue) -> None:
    """The control for the test above: the 3 to 1 is the weight's doing."""
    ids = await submit_as(queue, "big", 30)
    ids |= await submit_as(queue, "small", 10)
    order = await claim_order(queue, ids)
    assert order[:20].count("big") == 10, order


async def test_weights_shift_the_share_between_several_tenants(queue: TaskQueue) -> None:
    await queue.set_tenant_weights({"gold": 4, "silver": 2})
    ids: dict[str, str] = {}
    for tenant in ("gold", "silver", "bronze"):
        ids |= await submit_as(queue, tenant, 40)
    order = (await claim_order(queue, ids))[:70]
    assert [order.count(t) for t in ("gold", "silver", "bronze")] == [40, 20, 10], order


async def test_a_weight_applies_to_the_tasks_submitted_after_it_is_set(
    queue: TaskQueue,
) -> None:
    """Tasks already queued keep their places; the next ones take the new share, and the
    weight goes when it is left out of the next call."""
    ids = await submit_as(queue, "big", 4)
    ids |= await submit_as(queue, "small", 4)
    await queue.set_tenant_weights({"big": 2})
    ids |= {i: "big+" for i in await submit_as(queue, "big", 8)}
    ids |= {i: "small+" for i in await submit_as(queue, "small", 4)}
    order = await claim_order(queue, ids)
    assert order[:8].count("big") == 4 and order[:8].count("small") == 4, order
    rest = order[8:20]
    assert rest.count("big+") == 8 and rest.count("small+") == 4
    assert rest[:6].count("big+") == 4, order
    assert await queue.set_tenant_weights({}) is True
    assert await queue.tenant_weights() == {}


@ONE_SERVER
async def test_setting_the_same_weights_again_writes_nothing(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    assert await queue.set_tenant_weights({"a": 2, "b": 100}) is True
    writes = {name: (await redis.info("commandstats")).get(f"cmdstat_{name}", {}).get("calls")
              for name in ("del", "hset", "multi")}
    assert await queue.set_tenant_weights({"b": 100, "a": 2}) is False
    assert {name: (await redis.info("commandstats")).get(f"cmdstat_{name}", {}).get("calls")
            for name in ("del", "hset", "multi")} == writes
    assert await queue.tenant_weights() == {"a": 2, "b": 100}


@pytest.mark.parametrize("written", [" 3", "3 ", "2.5", "0x3", "\u00b2", "\u0663", "0", "101",
                                     "03"])
async def test_a_weight_written_by_hand_is_none_and_the_next_set_replaces_it(
    queue: TaskQueue, redis: aioredis.Redis, written: str,
) -> None:
    """Neither the scripts nor the reads take it: the tenant weighs 1 until the next set."""
    await redis.hset(queue.prefix + "weights", "a", written)
    assert await queue.tenant_weights() == {}
    ids = await submit_as(queue, "a", 6)
    ids |= await submit_as(queue, "b", 6)
    assert (await claim_order(queue, ids))[:6].count("a") == 3
    assert await queue.set_tenant_weights({}) is True
    assert not await redis.exists(queue.prefix + "weights")


@pytest.mark.parametrize("weight", [0, 101, -1, 2.5, True, "3"])
async def test_a_weight_out_of_range_is_refused_and_nothing_stored(
    queue: TaskQueue, weight: object,
) -> None:
    await queue.set_tenant_weights({"kept": 2})
    with pytest.raises(ProtocolError, match="a tenant's weight must be a whole number from 1 "
                                            "to 100, got"):
        await queue.set_tenant_weights({"a": weight})  # type: ignore[dict-item]
    assert await queue.tenant_weights() == {"kept": 2}


async def test_a_weighted_burst_past_the_submit_counter_is_found_by_cancel_waiting(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    """A weighted tenant's places are fractions of a place (1/3 here, rounded to 1/512), and
    they may pass the submit counter: cancel_waiting, which looks up to each band's highest
    place, finds them all in calls of two."""
    await queue.set_tenant_weights({"a": 3})
    await queue.submit({"n": "first"}, tenant="b")
    await queue.claim("w1", 1, 30)
    burst = list(await submit_as(queue, "a", 10, delay=0.05))
    await eventually(lambda: due_delayed(queue, 10))
    await queue.claim("w1", 1, 30)
    counter = int(await redis.get(queue.prefix + "seq") or 0)
    places = [score % PRIORITY_BAND
              for _, score in await redis.zrange(queue.prefix + "queued", 0, -1,
                                                 withscores=True)]
    assert places == sorted(places) and len(places) == len(burst) - 1
    assert max(places) > counter and max(places) != round(max(places))
    # one call of one task: the band's highest place it hands to the next call, exactly
    reply = await queue._run("cancel_waiting", counter, 1, "", 0, "", "")
    tops = [float(top) for top in as_text(reply[5]).split(",")]
    assert tops[9] == await redis.zscore(queue.prefix + "fair", "9:a")
    assert await queue.cancel_waiting(batch=2) == 8


async def test_the_reaper_keeps_a_weighted_place_just_ahead_of_the_clock(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    """The clock and places lie between whole places: the reaper drops only the places before
    the clock, not one a fraction ahead of it (which a clock written with Lua's 14 digits
    would round past)."""
    await queue.set_tenant_weights({"w": 50})
    ids = list(await submit_as(queue, "w", 50))
    await queue.claim("w1", 49, 30)
    head = await redis.zrange(queue.prefix + "queued", 0, 0, withscores=True)
    assert as_text(head[0][0]) == ids[-1] and head[0][1] % 1 > 0.95
    await queue.submit({"n": "other"}, tenant="other")  # the clock notes the head
    await queue.reap_expired()
    assert await redis.zscore(queue.prefix + "fair", "9:w") == head[0][1]


# -- per-tenant counts ---------------------------------------------------------------------


async def test_tenant_loads_count_each_tenants_tasks_by_state(queue: TaskQueue) -> None:
    await queue.set_tenant_weights({"gold": 4, "idle": 2})
    first = await queue.submit({"n": 0}, tenant="acme")
    await submit_as(queue, "acme", 4)
    await submit_as(queue, "gold", 2)
    await queue.submit({"later": True}, tenant="gold", delay=600)
    await queue.submit({"after": True}, tenant="acme", after=[first])
    running = await queue.claim("w1", 2, 30)  # acme's first and gold's first, in turn
    assert sorted(t.tenant or "" for t in running.tasks) == ["acme", "gold"]
    await submit_as(queue, None, 1)
    new = await queue.get(await queue.submit({"n": "new"}, tenant="new"))
    assert new is not None
    loads = await queue.tenant_loads(page=3)
    by_tenant = {load.tenant: load for load in loads.loads}
    assert [(load.tenant, load.weight, load.queued, load.running, load.later)
            for load in loads.loads] == [
        ("acme", 1, 4, 1, 1), ("gold", 4, 1, 1, 1), (None, 1, 1, 0, 0), ("new", 1, 1, 0, 0),
        ("idle", 2, 0, 0, 0)]
    assert by_tenant["new"].oldest_queued == new.created_ms / 1000
    assert by_tenant["idle"].oldest_queued is None
    assert loads.counted == loads.total == 11


async def test_a_queued_tasks_wait_counts_from_when_it_came_due(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    """A delayed task a claim queued (here parked for its tenant's cap) and a requeued one have
    waited since their `due`, not since their submit, as a claim counts a run's wait."""
    await queue.set_tenant_caps({"d": 1})
    await queue.submit({"n": 0}, tenant="d")
    late = await queue.submit({"n": 1}, tenant="d", delay=0.2)
    assert [t.tenant for t in (await queue.claim("w1", 1, 30)).tasks] == ["d"]
    await eventually(lambda: due_delayed(queue, 1))
    assert (await queue.claim("w1", 1, 30)).tasks == []  # queues it, parks it
    again = await queue.submit({"n": 2}, tenant="r")
    assert [t.id for t in (await queue.claim("w2", 1, 30)).tasks] == [again]
    await queue.requeue_owner("w2")

    async def ready(task_id: str) -> float:
        created, due = await redis.hmget(queue.task_key(task_id), "created", "due")
        assert created is not None and due is not None
        return max(int(created), int(due)) / 1000

    by_tenant = {load.tenant: load for load in (await queue.tenant_loads()).loads}
    assert (by_tenant["d"].queued, by_tenant["r"].queued) == (1, 1)
    late_info = await queue.get(late)
    assert late_info is not None
    assert by_tenant["d"].oldest_queued == await ready(late)
    assert round(by_tenant["d"].oldest_queued * 1000) >= late_info.created_ms + 200
    assert by_tenant["r"].oldest_queued == await ready(again)


async def test_tenant_loads_stop_at_their_bound_and_say_so(queue: TaskQueue) -> None:
    await submit_as(queue, "a", 7)
    loads = await queue.tenant_loads(most=5, page=2)
    assert [(load.tenant, load.queued) for load in loads.loads] == [("a", 5)]
    assert (loads.counted, loads.total) == (5, 7)


@pytest.mark.parametrize("reaped", [False, True])
async def test_the_reaper_keeps_a_place_less_than_a_turn_behind_the_clock(
    queue: TaskQueue, redis: aioredis.Redis, reaped: bool,
) -> None:
    """A weighted tenant at the head puts the clock between whole places; a tenant of weight 1
    whose last place is less than a turn behind it still goes one turn after that place, so
    its next task lands where it would whether the reaper ran or not."""
    await queue.set_tenant_weights({"w": 2})
    await submit_as(queue, "w", 6)
    await submit_as(queue, "b", 2)
    await queue.claim("w1", 5, 30)
    head = (await redis.zrange(queue.prefix + "queued", 0, 0, withscores=True))[0][1]
    last_b = await redis.zscore(queue.prefix + "fair", "9:b")
    assert last_b is not None and head - 1 < last_b < head
    if reaped:
        await queue.reap_expired()
    late = await queue.submit({"late": True}, tenant="b")
    assert float(await redis.hget(queue.task_key(late), "score") or 0) == last_b + 1


async def test_a_tenants_task_ids_in_list_order_within_the_look(queue: TaskQueue) -> None:
    ids = {await queue.submit({"n": n}, tenant="a" if n % 3 else "b"): n for n in range(9)}
    mine = [i for i, n in ids.items() if n % 3]
    order = [info.id for info in await queue.list_tasks("queued", 20)]
    in_order = [i for i in order if i in mine]
    assert await queue.tenant_task_ids("queued", "a", 10) == (in_order, 6, False)
    assert await queue.tenant_task_ids("queued", "a", 2) == (in_order[:2], 6, False)
    found, count, cut = await queue.tenant_task_ids("queued", "b", 10, most=4)
    assert cut and found == [i for i in order[:4] if i not in mine] and count == len(found)
    assert await queue.tenant_task_ids("queued", None, 10) == ([], 0, False)
    with pytest.raises(ProtocolError, match="no task state 'done'"):
        await queue.tenant_task_ids("done", "a", 10)
    with pytest.raises(ProtocolError, match="most and page must be at least 1, got 0 and 1000"):
        await queue.tenant_task_ids("queued", "a", 10, most=0)
    with pytest.raises(ProtocolError, match="most and page must be at least 1, got 5 and 0"):
        await queue.tenant_loads(most=5, page=0)


async def test_tenant_loads_read_each_task_once_while_tasks_come_and_go(
    queue: TaskQueue,
) -> None:
    """Between two pages, urgent tasks enter ahead of the pages read and claims take tasks
    from the head: the tasks read are counted once each, none twice and none skipped."""
    await submit_as(queue, "a", 30)
    entered: list[str] = []
    real_run = queue._run

    async def run(name: str, *args: object, **kwargs: object) -> object:
        reply = await real_run(name, *args, **kwargs)
        if name == "tenant_page" and args[0] == "queued" and not entered:
            entered.extend(await submit_as(queue, "b", 8, priority=9))
            await queue.claim("w1", 3, 30)
        return reply

    queue._run = run  # type: ignore[method-assign]
    loads = await queue.tenant_loads(page=5)
    counts = {load.tenant: (load.queued, load.running) for load in loads.loads}
    # the first page held a's first 5 tasks, the 3 claimed were b's (ahead of them): the 25
    # after the first page are read once each, b's 5 left entered ahead and are not read
    assert counts["a"] == (30, 0), counts
    assert counts.get("b", (0, 0))[0] == 0 and counts["b"][1] == 3


async def test_the_oldest_queued_task_is_the_one_submitted_first(
    queue: TaskQueue, redis: aioredis.Redis,
) -> None:
    ids = list(await submit_as(queue, "a", 3))
    for task_id, created in zip(ids, (2_000_000, 1_000_000, 3_000_000), strict=True):
        await redis.hset(queue.task_key(task_id), "created", created)
    [load] = (await queue.tenant_loads()).loads
    assert load.oldest_queued == 1_000.0


async def test_a_tenants_dead_letters_come_in_the_dead_lists_order(queue: TaskQueue) -> None:
    """Newest first, as `list_tasks("dead")` gives them."""
    for n in range(4):
        await queue.submit({"n": n}, tenant="a" if n else "b")
        [task] = (await queue.claim("w1", 1, 30)).tasks
        await queue.fail(task, "boom", retryable=False)
    listed = [info.id for info in await queue.list_tasks("dead", 10) if info.tenant == "a"]
    assert len(listed) == 3
    assert await queue.tenant_task_ids("dead", "a", 10) == (listed, 3, False)
