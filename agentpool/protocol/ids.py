"""Ids: of tasks, of worker instances, of calls; a queue's key prefix."""

from __future__ import annotations

import os
import uuid


def worker_id(pod: str, instance: str) -> str:
    return f"{pod}:{instance}"


def new_instance_id() -> str:
    return uuid.uuid4().hex[:12]


def key_prefix(queue: str) -> str:
    return f"ap:{{{queue}}}:"


def new_task_id() -> str:
    """A new task's id: 32 random hex digits (128 bits, as a UUID's hex form, without its
    version bits and for a quarter of the CPU)."""
    return os.urandom(16).hex()


def call_id() -> str:
    """A random id per call, sent with it: Redis tells the same call sent again (after its
    connection was lost with the reply) from a new one. 48 bits: a task's calls are few, and
    the id (a claim's token prefix among them) is kept with the task."""
    return uuid.uuid4().hex[:12]
