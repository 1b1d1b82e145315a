"""The threads of sync hooks: a call given up on keeps its thread, another serves the next
calls, and the room it was given goes when it returns (hooks that time out now and then must
not use up the room kept for calls that never return)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import Any

from agentpool_worker.threads import DaemonThreads


def running(future: Future[Any]) -> None:
    deadline = time.monotonic() + 5
    while not future.running():
        assert time.monotonic() < deadline, "the call did not start"
        time.sleep(0.005)


def test_a_call_given_up_on_leaves_its_thread_and_the_next_calls_run() -> None:
    threads = DaemonThreads(1, "test", most=2)
    gate = threading.Event()
    hung = threads.submit(gate.wait, 10)
    running(hung)
    assert threads.give_up(hung)
    assert threads.submit(lambda: "next").result(timeout=5) == "next"
    assert not threads.give_up(hung), "given up on once"
    gate.set()
    assert hung.result(timeout=5) is True


def test_the_room_a_call_was_given_goes_when_it_returns() -> None:
    threads = DaemonThreads(1, "test", most=2)
    for _ in range(5):  # calls that return late, one after the other
        gate = threading.Event()
        late = threads.submit(gate.wait, 10)
        running(late)
        assert threads.give_up(late), "room again: the last late call returned"
        gate.set()
        late.result(timeout=5)
        assert threads.submit(lambda: "after").result(timeout=5) == "after"


def test_no_room_beyond_most_and_none_for_a_call_without_a_thread() -> None:
    threads = DaemonThreads(1, "test", most=2)
    gates = [threading.Event() for _ in range(3)]
    first = threads.submit(gates[0].wait, 10)
    running(first)
    waiting = threads.submit(gates[1].wait, 10)
    assert not threads.give_up(waiting), "it holds no thread yet"
    assert threads.give_up(first)
    running(waiting)
    assert not threads.give_up(waiting), "two threads at most"
    for gate in gates:
        gate.set()
    assert first.result(timeout=5) and waiting.result(timeout=5)
