"""Limits and fixed names of the task protocol, shared by producers, workers and the operator."""

from __future__ import annotations

import re

MAX_PRIORITY = 9
DEFAULT_MAX_PAYLOAD_BYTES = 1_048_576
DEFAULT_MAX_RESULT_BYTES = 1_048_576
"""A worker's default for the largest result it stores (AGENTPOOL_MAX_RESULT_BYTES): every
result stays in Redis for the result TTL, in the memory the whole fleet shares."""
MAX_RESULT_BYTES_LIMIT = 512 * 1_048_576
"""Redis's own limit on one value (proto-max-bulk-len's default)."""
DEFAULT_IDEMPOTENCY_TTL = 86_400
LISTEN_SECONDS = 30
"""How long one `TaskQueue.listen_for_finishes` keeps finishes published on ``done``."""
COMPLETE_CHUNK = 500
"""Completions per script call of a group commit."""
MAX_SUBMIT_CHUNK = 1000
"""Tasks per script call of ``submit_many``: Lua unpacks at most about 8,000 values at once."""
MAX_DELAY_SECONDS = 365 * 86400
DEFAULT_TASK_TIMEOUT_SECONDS = 600
"""A pool's task timeout when it sets none (taskTimeoutSeconds, AGENTPOOL_TASK_TIMEOUT_SECONDS)."""
MAX_TASK_TIMEOUT_SECONDS = 7 * 86400
"""The longest task timeout a pool or a task (taskTimeoutSeconds, submit's `task_timeout`)
has."""
MAX_ATTEMPTS_LIMIT = 100
"""The most attempts a task or a queue allows (a pool's maxAttempts, a worker's
AGENTPOOL_MAX_ATTEMPTS)."""
MAX_AFTER = 100
"""The most tasks one task may run after (``submit(after=...)``)."""
MAX_TENANT_CHARS = 128
"""The longest tenant name a submit takes (see :meth:`TaskQueue.submit`)."""
MAX_TENANT_WEIGHT = 100
"""The largest weight a tenant may have (:meth:`TaskQueue.set_tenant_weights`): it takes about
that many turns to one of a tenant of weight 1. Its place moves 1/weight of a turn per task,
rounded to 1/512 (common.lua): weight w acts as 512/round(512/w), within 9 % of w (exact for
powers of two; 3 acts as 2.99, 10 as 10.04, 50 as 51.2, 94 to 100 as 102.4)."""
MAX_TENANT_RUNS = 1000
"""The largest cap on one tenant's runs at once (:meth:`TaskQueue.set_tenant_caps`)."""
WORKER_LIVENESS_WINDOW = 30.0
WAIT_RECONNECT_SECONDS = 30.0
FIRST_LOOK_SECONDS = 1.0
"""The least time a wait gives its first read of the tasks, whatever its timeout: a wait with
timeout 0 still tells the tasks already final (and one on a Redis that does not answer gives
up after this, not at once)."""
NEWS_AT_ONCE = 1000
"""Finishes a wait takes from what it has received before it reads the tasks they name."""
SUBSCRIBED_WAITS = 32
"""Waits of one client that hold a subscription to their queue's finishes; more poll the task
once a second. A subscription holds a pooled connection while its wait reads the task on
another: with as many waits as the pool has connections, none could read."""
QUEUE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")
TASK_ID = re.compile(r"^[0-9a-f]{32}\Z")
"""What `submit` returns: a random UUID in 32 lowercase hexadecimal digits."""
NEXT_ENTRY_BYTES = 33
"""A ``next:`` key holds the ids of the tasks after a task (each a TASK_ID), each followed by
a comma."""
FINAL_STATES = frozenset({"succeeded", "dead", "cancelled"})
STATE_SETS = {"queued": "queued", "delayed": "delayed", "deferred": "deferred",
               "running": "leases"}
TASK_LIST_STATES = ("queued", "delayed", "deferred", "running", "dead")
MAX_ERROR_CHARS = 4000
"""The longest error text a failure records (a run's error is cut to it)."""
MAX_EVENT_BYTES = 65_536
FINAL_EVENT = "final"
"""The kind of the event that closes a task's stream (data: ``{"state", "error"?}``)."""
EVENT_KIND = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}\Z")
