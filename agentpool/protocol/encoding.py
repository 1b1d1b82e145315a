"""What the scripts are sent: payloads, results, events and options, checked and encoded."""

from __future__ import annotations

import json
import math
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any

from agentpool.protocol.bounds import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    EVENT_KIND,
    FINAL_EVENT,
    MAX_AFTER,
    MAX_DELAY_SECONDS,
    MAX_EVENT_BYTES,
    MAX_TASK_TIMEOUT_SECONDS,
)
from agentpool.protocol.ids import call_id
from agentpool.protocol.records import PayloadTooLarge, ProtocolError
from agentpool.seconds import as_seconds, given_text, seconds_text, short_repr


def encode_event(kind: str, data: Any) -> str:
    """An event's data as JSON, after checking its kind and size (ProtocolError if refused)."""
    if not isinstance(kind, str) or not EVENT_KIND.match(kind) or kind == FINAL_EVENT:
        raise ProtocolError(
            f"invalid event kind {kind!r}: use 1-64 letters, digits, '.', '_', ':' or '-', "
            f"starting with a letter or digit (and not {FINAL_EVENT!r})"
        )
    raw, size = _checked_json(data, "event data")
    if size > MAX_EVENT_BYTES:
        raise ProtocolError(f"event data is over the {MAX_EVENT_BYTES}-byte limit")
    return raw


def encode_progress(fraction: float, message: str | None = None) -> dict[str, Any]:
    if not isinstance(fraction, int | float) or not 0 <= fraction <= 1:
        raise ProtocolError(f"progress must be a number between 0 and 1, got {fraction!r}")
    data: dict[str, Any] = {"fraction": round(float(fraction), 4)}
    if message is not None:
        data["message"] = str(message)[:500]
    return data


_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
"""One encoder for every payload: ``json.dumps`` with options builds a new one per call."""
_ASCII_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def compact_json(value: Any) -> tuple[str, int]:
    """`value` as compact JSON, with its size in UTF-8 bytes. A string holding a lone
    surrogate (Python's strings may, UTF-8 cannot: Redis would never receive it) is written
    with ASCII escapes instead, which is valid JSON and reads back the same. TypeError or
    ValueError when `value` is not JSON, RecursionError when it is nested too deeply."""
    raw = _COMPACT_JSON.encode(value)
    if raw.isascii():
        return raw, len(raw)
    try:
        return raw, len(raw.encode())
    except UnicodeEncodeError:
        raw = _ASCII_JSON.encode(value)
        return raw, len(raw)


def _checked_json(value: Any, what: str) -> tuple[str, int]:
    """`compact_json`, a value that is not JSON refused as a ProtocolError naming `what`."""
    try:
        return compact_json(value)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"{what} is not JSON-serialisable: {exc}") from None
    except RecursionError:
        raise ProtocolError(f"{what} is nested too deeply to encode as JSON (deeper than "
                            "Python's recursion limit)") from None


def has_control_character(text: str) -> bool:
    """Whether `text` holds a character of Unicode's category Cc (U+0000-001F, U+007F-009F:
    a tab, a line break, an escape), what RE2's ``\\p{Cc}`` matches in the CRD's rule."""
    return any(unicodedata.category(c) == "Cc" for c in text)


def after_arg(after: Iterable[str] | None) -> str:
    """The submit script's `after` value: the ids, comma-separated, each once, in order."""
    if after is None:
        return ""
    ids = [after] if isinstance(after, str) else list(after)
    for task_id in ids:
        if not isinstance(task_id, str) or not task_id or "," in task_id:
            raise ProtocolError(f"after takes task ids, got {short_repr(task_id)}")
    unique = list(dict.fromkeys(ids))
    if len(unique) > MAX_AFTER:
        raise ProtocolError(f"a task may run after at most {MAX_AFTER} tasks, got {len(unique)}")
    return ",".join(unique)


def keys_for(payloads: Sequence[Any],
              keys: Iterable[str | None] | None) -> list[str | None]:
    """`submit_many`'s idempotency keys, one per payload (None: no key)."""
    if keys is None:
        return [None] * len(payloads)
    if isinstance(keys, str):
        raise ProtocolError("idempotency_keys takes one key per payload, not one string")
    given = list(keys)
    if len(given) != len(payloads):
        raise ProtocolError(f"idempotency_keys has {len(given)} keys for {len(payloads)} "
                            "payloads: give one per payload (None for a task without one)")
    for key in given:
        if key is not None and (not isinstance(key, str) or not key):
            raise ProtocolError(f"an idempotency key is a non-empty string or None, got "
                                f"{short_repr(key)}")
    return given


def encode_checkpoint(state: Any, limit: int = DEFAULT_MAX_PAYLOAD_BYTES) -> str:
    raw, size = _checked_json(state, "checkpoint")
    if size > limit:
        raise PayloadTooLarge(f"checkpoint is over the {limit}-byte limit")
    return raw


def encode_payload(payload: Any, limit: int) -> str:
    """The payload as compact JSON: any JSON value, at most `limit` bytes once encoded."""
    raw, size = _checked_json(payload, "payload")
    if size > limit:
        raise PayloadTooLarge(
            f"payload is {size} bytes encoded as JSON; the limit is {limit} bytes"
            f"{_in_binary_units(limit)}"
        )
    return raw


def _in_binary_units(size: int) -> str:
    for unit, factor in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor:
            return f" ({size / factor:.3g} {unit})"
    return ""


def claim_args(worker: str, count: int, lease_seconds: float,
                promote_limit: int) -> list[Any]:
    """claim.lua's arguments after the prefix; the call's id as the token prefix keeps fencing
    tokens unique when a failover rolls the fence counter back, and tells the same claim sent
    again from a new one."""
    return [worker, count, int(lease_seconds * 1000), promote_limit, call_id() + "-"]


def stored_expiry_ms(expires: Any, delay: float, delay_ms: int) -> int:
    """A submit's `expires` in milliseconds, as the submit script stores it; ProtocolError
    unless it is a number of seconds, after the delay (as stored) and within a year."""
    seconds = seconds_given("expires", expires)
    expires_ms = round(min(seconds, 2 * MAX_DELAY_SECONDS) * 1000)  # past the limit, not inf
    if not delay_ms < expires_ms <= MAX_DELAY_SECONDS * 1000:
        low = seconds_text((delay_ms + 1) / 1000)
        after = f"after the delay ({seconds_text(delay)} s): " if delay_ms else ""
        raise ProtocolError(f"expires must be {after}from {low} to {MAX_DELAY_SECONDS} "
                            f"seconds (a year), got {given_text(seconds)}")
    return expires_ms


def stored_timeout_ms(task_timeout: Any) -> int:
    """A submit's `task_timeout` in milliseconds, as stored; ProtocolError unless it is a
    number of seconds from 0.001 to a week (the longest a pool's task timeout may be)."""
    seconds = seconds_given("task_timeout", task_timeout)
    timeout_ms = round(min(seconds, 2 * MAX_TASK_TIMEOUT_SECONDS) * 1000)
    if not 1 <= timeout_ms <= MAX_TASK_TIMEOUT_SECONDS * 1000:
        raise ProtocolError(f"task_timeout must be from 0.001 to {MAX_TASK_TIMEOUT_SECONDS} "
                            f"seconds (a week), got {given_text(seconds)}")
    return timeout_ms


def seconds_given(name: str, value: Any) -> float:
    seconds = as_seconds(value)
    if seconds is None:
        raise ProtocolError(f"{name} must be a number of seconds, got {short_repr(value)}")
    return seconds


def storable_text(text: str) -> str:
    """`text` as Redis can take it: a lone surrogate, which UTF-8 cannot encode (an exception
    message may hold one), becomes '?'."""
    if text.isascii():
        return text
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode(errors="replace").decode()
    return text


def encode_result(result: Any, limit: int | None = None) -> str:
    """A run's result as stored: JSON. ValueError when it is not JSON (a datetime, bytes, a
    set, NaN or infinity, any other object: stored as its ``repr`` it would pass for a
    success, and a repr may hold what must not be stored, such as an API key), naming the
    first such value's place; when it is nested deeper than Python recurses; PayloadTooLarge
    (a ValueError) when it is over `limit` bytes."""
    if result is None:
        return "null"
    try:
        raw, size = compact_json(result)
    except RecursionError:
        raise ValueError("the result is nested too deeply to store as JSON") from None
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the result is not JSON: {_not_json(result, exc)}") from None
    if limit is not None and size > limit:
        raise PayloadTooLarge(f"the result is {size} bytes encoded as JSON; the limit is "
                              f"{limit} bytes{_in_binary_units(limit)}")
    return raw


def _not_json(value: Any, error: Exception) -> str:
    """Why `value` is not JSON, and where, e.g. ``Object of type datetime is not JSON
    serializable at ['when']`` (the encoder's `error` alone when the place cannot be found)."""
    try:
        found = _first_not_json(value, "")
    except RecursionError:
        found = None
    if found is None:
        out_of_range = str(error).startswith("Out of range float")
        return "NaN or infinity is not JSON" if out_of_range else str(error)
    place, why = found
    return f"{why} at {place}" if place else why


_JSON_KEYS = (str, int, float, bool)


def _first_not_json(value: Any, place: str) -> tuple[str, str] | None:
    """The place (``['when'][0]``) of the first value in `value` that JSON cannot carry, and
    why; None when there is none."""
    if value is None or isinstance(value, str | bool | int):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else (place, "NaN or infinity is not JSON")
    if isinstance(value, dict):
        for key, item in value.items():
            if key is not None and not isinstance(key, _JSON_KEYS):
                return place, f"a key of type {type(key).__name__} is not JSON"
            found = _first_not_json(item, f"{place}[{short_repr(key)}]")
            if found is not None:
                return found
        return None
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = _first_not_json(item, f"{place}[{index}]")
            if found is not None:
                return found
        return None
    return place, f"Object of type {type(value).__name__} is not JSON serializable"
