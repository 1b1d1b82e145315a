"""What Redis answers (the scripts, and a few plain reads), read into the protocol's records."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from agentpool.protocol.records import (
    ClaimBatch,
    ClaimedTask,
    Progress,
    QueueFigures,
    RequeueResult,
    TaskEvent,
    TaskInfo,
    TaskNotFound,
    WorkerState,
)


def as_text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def decoded_text(value: Any) -> str:
    """Text read from Redis that another writer may have put there: never a decoding error."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def int_or(value: Any, default: int = 0) -> int:
    """A number field of a task hash; `default` for one written behind the protocol's back."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def optional_int(value: Any) -> int | None:
    return None if value is None else int_or(value)


def json_or_raw(value: Any) -> Any:
    if value is None:
        return None
    text = decoded_text(value)
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python parses
        return text


def submitted_id(reply: tuple[int, str, int], queue: str) -> str:
    """The id of a submit's task, from the script's (created, id); a task it was to run after
    that the queue does not know raises TaskNotFound."""
    created, task_id, _ = reply
    if created < 0:
        raise_unknown_after(task_id, queue)
    return task_id


def raise_unknown_after(task_id: str, queue: str, submitted: Sequence[str] = ()) -> NoReturn:
    went_in = (f"{len(submitted)} {'task was' if len(submitted) == 1 else 'tasks were'} "
               "submitted before it was found gone, the rest were not")
    raise TaskNotFound(
        f"after: no task {task_id} in queue {queue} (never submitted, or finished longer ago "
        f"than the result TTL); {went_in if submitted else 'nothing was submitted'}",
        submitted)


def claim_batch(reply: Sequence[Any]) -> ClaimBatch:
    tasks, next_due, now, left = reply
    now = int(now)
    claimed = [
        ClaimedTask(
            # a payload written behind the protocol's back may not even be UTF-8: let the
            # worker dead-letter it as malformed instead of failing the whole claim
            id=as_text(t[0]), token=as_text(t[1]), attempts=int(t[2]),
            payload_raw=decoded_text(t[3]),
            created_ms=int(t[4]), max_attempts=int(t[5]), claimed_ms=now,
            checkpoint_raw=None if len(t) < 7 or t[6] is None else as_text(t[6]),
            timeout_ms=optional_int(t[7]) if len(t) > 7 else None,
            after=tuple(as_text(t[8]).split(",")) if len(t) > 8 and t[8] else (),
            tenant=as_text(t[9]) if len(t) > 9 and t[9] else None,
            ready_ms=int(t[10]) if len(t) > 10 else int(t[4]),
        )
        for t in tasks
    ]
    due_in = None if next_due is None else max(0.0, (float(next_due) - now) / 1000)
    return ClaimBatch(claimed, due_in, int(left))


def task_info(task_id: str, raw: Mapping[Any, Any]) -> TaskInfo | None:
    """A task hash as read from Redis (bytes or str keys), or None when there is none."""
    if not raw:
        return None
    f = {as_text(k): v for k, v in raw.items()}
    return TaskInfo(
        id=task_id,
        state=as_text(f.get("state", b"unknown")),
        payload=json_or_raw(f.get("payload")),
        attempts=int_or(f.get("attempts")),
        priority=int_or(f.get("prio")),
        created_ms=int_or(f.get("created")),
        started_ms=optional_int(f.get("started")),
        finished_ms=optional_int(f.get("finished")),
        result=json_or_raw(f.get("result")),
        error=decoded_text(f["error"]) if "error" in f else None,
        owner=as_text(f["owner"]) if "owner" in f else None,
        max_attempts=optional_int(f.get("max")),
        progress=progress_of(f.get("progress")),
        expires_ms=optional_int(f.get("expires")),
        timeout_ms=optional_int(f.get("timeout")),
        after=tuple(as_text(f["after"]).split(",")) if f.get("after") else (),
        tenant=decoded_text(f["tenant"]) if f.get("tenant") else None,
    )


def progress_of(raw: Any) -> Progress | None:
    data = json_or_raw(raw)
    if not isinstance(data, dict) or not isinstance(data.get("fraction"), int | float):
        return None
    message = data.get("message")
    return Progress(float(data["fraction"]), None if message is None else str(message))


def task_event(entry_id: Any, fields: Mapping[Any, Any]) -> TaskEvent:
    f = {as_text(k): v for k, v in fields.items()}
    return TaskEvent(id=as_text(entry_id), kind=as_text(f.get("kind", "")),
                     data=json_or_raw(f.get("data")), attempt=int(f.get("attempt", 0)))


def queue_figures(reply: Sequence[Any]) -> QueueFigures:
    per, due, delayed, in_flight, dead, workers, stats, used, deferred, capped = reply
    flat = [as_text(x) for x in stats]
    return QueueFigures(
        queued_by_priority={prio: int(n) for prio, n in enumerate(per)},
        due_delayed=int(due), delayed=int(delayed), in_flight=int(in_flight),
        dead=int(dead), workers=int(workers),
        stats={flat[i]: int(flat[i + 1]) for i in range(0, len(flat), 2)},
        used=bool(used), deferred=int(deferred), capped=int(capped),
    )


def worker_states(reply: Sequence[Any]) -> list[WorkerState]:
    out: list[WorkerState] = []
    for wid_raw, score, raw, held, drain in reply:
        wid = as_text(wid_raw)
        info = json.loads(as_text(raw)) if raw else {}
        pod, _, instance = wid.rpartition(":")
        out.append(WorkerState(
            worker_id=wid, pod=pod, instance=instance,
            state=str(info.get("state", "unknown")),
            in_flight=int(held), done=int(info.get("done", 0)),
            failed=int(info.get("failed", 0)),
            concurrency=int(info.get("concurrency", 0)),
            last_heartbeat=float(score) / 1000, started=float(info.get("started", 0)),
            drain_requested=bool(int(drain)),
            limit_window=_limit_window(info.get("limitWindow")),
            not_ready=_text_or_empty(info.get("notReady")),
        ))
    return out


def _text_or_empty(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _limit_window(value: Any) -> Mapping[str, Any] | None:
    return value if isinstance(value, dict) else None


def redis_seconds(time_reply: Sequence[Any]) -> float:
    """Redis's `TIME` reply (seconds, microseconds) as epoch seconds."""
    seconds, micros = time_reply
    return int(seconds) + int(micros) / 1_000_000


def run_starts(value: Any) -> tuple[float, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(
        float(ms) / 1000 for ms in value
        if isinstance(ms, int | float) and not isinstance(ms, bool)
    )


def requeue_result(reply: Sequence[Any]) -> RequeueResult:
    values = [int(x) for x in reply]
    return RequeueResult(*values)


def listed_ids(raw: bytes | str | None) -> tuple[str, ...]:
    """The task ids of a ``next:`` list (or of its start), in order, each once."""
    return tuple(dict.fromkeys(i for i in as_text(raw or b"").split(",") if i))
