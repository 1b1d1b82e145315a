"""How concurrent calls gather (agentpool.coalesce): alone while few are in flight, together
beyond, each caller with its own reply or its group's error. The `send` here is the test's
own, so that it decides when a call finishes; the submits' grouping against real Redis is in
test_protocol_submit.py and test_direct_line.py."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentpool.coalesce import Coalescer


class Held:
    """A `send` whose calls finish when the test lets them: it records every group sent, and
    each call waits for its own gate (`release(i)`) or for `release()` of them all."""

    def __init__(self) -> None:
        self.groups: list[list[str]] = []
        self.gates: list[asyncio.Event] = []
        self.open = False
        self.error: BaseException | None = None

    async def __call__(self, group: Sequence[str]) -> list[str]:
        self.groups.append(list(group))
        gate = asyncio.Event()
        self.gates.append(gate)
        if not self.open:
            await gate.wait()
        if self.error is not None:
            raise self.error
        return [f"reply:{args}" for args in group]

    def release(self, call: int | None = None) -> None:
        if call is not None:
            self.gates[call].set()
            return
        self.open = True
        for gate in self.gates:
            gate.set()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def one_in_flight_and_waiting(
        coalescer: Coalescer[str, str], *waiting: str) -> tuple[
            asyncio.Future[str], list[asyncio.Future[str]]]:
    """A call "first" in flight (limit 1), then calls that wait behind it."""
    first = asyncio.ensure_future(coalescer.call("first"))
    await settle()
    behind = [asyncio.ensure_future(coalescer.call(name)) for name in waiting]
    await settle()
    return first, behind


async def test_a_lone_call_goes_at_once_on_its_own() -> None:
    held = Held()
    held.release()
    coalescer: Coalescer[str, str] = Coalescer(held, limit=2)
    assert await coalescer.call("a") == "reply:a"
    assert await coalescer.call("b") == "reply:b"
    assert held.groups == [["a"], ["b"]]


async def test_lone_calls_go_through_send_one_and_groups_through_send() -> None:
    held = Held()
    lone: list[str] = []

    async def send_one(args: str) -> str:
        lone.append(args)
        return (await held([args]))[0]

    coalescer: Coalescer[str, str] = Coalescer(held, limit=1, send_one=send_one)
    calls = [asyncio.ensure_future(coalescer.call(name)) for name in "abc"]
    await settle()
    held.release()
    assert await asyncio.gather(*calls) == ["reply:a", "reply:b", "reply:c"]
    assert lone == ["a"]
    assert held.groups == [["a"], ["b", "c"]]


async def test_calls_beyond_the_limit_go_together_when_one_finishes() -> None:
    held = Held()
    coalescer: Coalescer[str, str] = Coalescer(held, limit=2)
    calls = [asyncio.ensure_future(coalescer.call(name)) for name in "abcdef"]
    await settle()
    assert held.groups == [["a"], ["b"]]
    held.release()
    assert await asyncio.gather(*calls) == [f"reply:{name}" for name in "abcdef"]
    assert held.groups == [["a"], ["b"], ["c", "d", "e", "f"]]


async def test_a_group_holds_at_most_max_group_calls_and_max_group_bytes() -> None:
    held = Held()
    coalescer: Coalescer[str, str] = Coalescer(held, limit=1, max_group=3, max_group_bytes=10)
    first = asyncio.ensure_future(coalescer.call("first"))
    await settle()
    sizes = {"a": 1, "b": 1, "c": 1, "d": 1, "big": 20, "e": 6, "f": 6}
    calls = [asyncio.ensure_future(coalescer.call(name, size)) for name, size in sizes.items()]
    await settle()
    held.release()
    await asyncio.gather(first, *calls)
    # The first call of a group goes whatever its size; the limit is one group in flight.
    assert held.groups == [["first"], ["a", "b", "c"], ["d"], ["big"], ["e"], ["f"]]


async def test_a_caller_that_stops_waiting_is_left_out_of_its_group() -> None:
    held = Held()
    coalescer: Coalescer[str, str] = Coalescer(held, limit=1)
    first, (gone, kept) = await one_in_flight_and_waiting(coalescer, "gone", "kept")
    gone.cancel()
    held.release()
    assert await asyncio.gather(first, kept) == ["reply:first", "reply:kept"]
    assert held.groups == [["first"], ["kept"]]
    assert gone.cancelled()


async def test_a_groups_error_reaches_each_of_its_callers_and_later_calls_go_on() -> None:
    held = Held()
    coalescer: Coalescer[str, str] = Coalescer(held, limit=1)
    first, grouped = await one_in_flight_and_waiting(coalescer, "x", "y")
    held.error = ConnectionError("Redis went away")
    held.release()
    outcomes = await asyncio.gather(first, *grouped, return_exceptions=True)
    assert [str(outcome) for outcome in outcomes] == ["Redis went away"] * 3
    held.error = None
    assert await coalescer.call("later") == "reply:later"
    assert held.groups[-1] == ["later"]


async def test_a_caller_cancelled_after_its_group_went_out_leaves_the_group_be() -> None:
    held = Held()
    coalescer: Coalescer[str, str] = Coalescer(held, limit=1)
    first, grouped = await one_in_flight_and_waiting(coalescer, "x", "y")
    held.release(0)
    assert await first == "reply:first"
    await settle()
    assert held.groups == [["first"], ["x", "y"]]
    grouped[0].cancel()
    held.release(1)
    assert await grouped[1] == "reply:y"
    assert grouped[0].cancelled()


def test_a_new_event_loop_starts_afresh() -> None:
    """Calls left in flight by a loop that ended do not hold the next loop's calls."""
    held = Held()
    coalescer: Coalescer[str, str] = Coalescer(held, limit=1)

    left: list[asyncio.Future[str]] = []

    async def abandoned() -> None:
        left.append(asyncio.ensure_future(coalescer.call("never finishes")))
        await settle()

    old_loop = asyncio.new_event_loop()
    old_loop.run_until_complete(abandoned())
    old_loop.close()  # without finishing the call it left in flight

    async def next_loop() -> str:
        held.open = True
        return await asyncio.wait_for(coalescer.call("next"), timeout=5)

    assert asyncio.run(next_loop()) == "reply:next"


@pytest.mark.parametrize("limit", [1, 3, 8])
async def test_every_caller_gets_its_own_reply_under_many_at_once(limit: int) -> None:
    async def echo(group: Sequence[str]) -> list[str]:
        await asyncio.sleep(0.001)
        return [f"reply:{args}" for args in group]

    coalescer: Coalescer[str, str] = Coalescer(echo, limit=limit, max_group=7)
    names = [str(i) for i in range(200)]
    assert await asyncio.gather(*(coalescer.call(n) for n in names)) == [
        f"reply:{n}" for n in names]


@settings(max_examples=150, deadline=None)
@given(
    limit=st.integers(1, 4),
    max_group=st.integers(1, 6),
    max_group_bytes=st.integers(1, 12),
    sizes=st.lists(st.sampled_from([0, 0, 1, 2, 8]), min_size=1, max_size=40),
    pauses=st.lists(st.integers(0, 3), min_size=1, max_size=40),
)
def test_groups_keep_every_rule_whatever_the_arrivals(
        limit: int, max_group: int, max_group_bytes: int, sizes: list[int],
        pauses: list[int]) -> None:
    """Callers arriving in bursts (`pauses`: loop turns between arrivals) with payloads of
    `sizes`: each gets its own reply, at most `limit` calls are in flight, a group holds at
    most `max_group` callers and, beyond its first, `max_group_bytes`, and every group keeps
    its callers' order of arrival."""
    in_flight, most, groups = 0, 0, []
    size_of = {str(i): size for i, size in enumerate(sizes)}

    async def send(group: Sequence[str]) -> list[str]:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        groups.append(list(group))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        in_flight -= 1
        return [f"reply:{args}" for args in group]

    async def scenario() -> list[str]:
        coalescer: Coalescer[str, str] = Coalescer(
            send, limit=limit, max_group=max_group, max_group_bytes=max_group_bytes)
        calls = []
        for i, size in enumerate(sizes):
            calls.append(asyncio.ensure_future(coalescer.call(str(i), size)))
            for _ in range(pauses[i % len(pauses)]):
                await asyncio.sleep(0)
        return await asyncio.gather(*calls)

    replies = asyncio.run(scenario())
    assert replies == [f"reply:{i}" for i in range(len(sizes))]
    assert most <= limit
    assert sorted(int(args) for group in groups for args in group) == list(range(len(sizes)))
    for group in groups:
        assert len(group) <= max_group
        assert [int(args) for args in group] == sorted(int(args) for args in group)
        if len(group) > 1:
            assert sum(size_of[args] for args in group) <= max_group_bytes
