"""How a run's result is stored: JSON within a size limit; a value that is not JSON is
refused (ValueError) saying what and where, never stored as its repr."""

from __future__ import annotations

import datetime
import math
from typing import Any

import pytest

from agentpool.protocol import PayloadTooLarge, encode_result


class Secret:
    def __repr__(self) -> str:
        return "Secret(api_key='sk-LEAKED')"


def test_a_result_up_to_the_limit_is_stored_as_compact_json() -> None:
    assert encode_result({"a": [1, 2]}, limit=1024) == '{"a":[1,2]}'
    exactly = "x" * 1022  # and its two quotes: 1,024 bytes
    assert encode_result(exactly, limit=1024) == f'"{exactly}"'


def test_one_byte_over_the_limit_is_refused_with_both_sizes() -> None:
    with pytest.raises(PayloadTooLarge,
                       match=r"^the result is 1025 bytes encoded as JSON; the limit is 1024 "
                             r"bytes \(1 KiB\)\Z"):
        encode_result("x" * 1023, limit=1024)


def test_the_limit_counts_bytes_not_characters() -> None:
    with pytest.raises(PayloadTooLarge):
        encode_result("€" * 400, limit=1024)  # 402 characters, 1,202 bytes
    assert encode_result("€" * 340, limit=1024) == '"' + "€" * 340 + '"'


@pytest.mark.parametrize(("result", "error"), [
    ({"answer": 42, "when": datetime.datetime(2024, 1, 2)},
     "Object of type datetime is not JSON serializable at ['when']"),
    ({"data": b"\x00\x01"}, "Object of type bytes is not JSON serializable at ['data']"),
    ({"tags": {"a"}}, "Object of type set is not JSON serializable at ['tags']"),
    ({"score": math.nan}, "NaN or infinity is not JSON at ['score']"),
    ([1, {"x": [2.5, -math.inf]}], "NaN or infinity is not JSON at [1]['x'][1]"),
    ({"client": Secret()}, "Object of type Secret is not JSON serializable at ['client']"),
    (Secret(), "Object of type Secret is not JSON serializable"),
    ({(1, 2): "pair"}, "a key of type tuple is not JSON"),
])
def test_a_result_that_is_not_json_is_refused_saying_what_and_where(
        result: Any, error: str) -> None:
    with pytest.raises(ValueError) as refused:
        encode_result(result, limit=1 << 20)
    assert str(refused.value) == f"the result is not JSON: {error}"
    assert "sk-LEAKED" not in str(refused.value)


def test_a_result_that_refers_to_itself_is_refused() -> None:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    with pytest.raises(ValueError, match=r"^the result is not JSON: Circular reference"):
        encode_result(loop)


def test_no_limit_and_none_are_stored_as_they_are() -> None:
    assert encode_result(None, limit=1024) == "null"
    assert len(encode_result("x" * 5_000_000)) == 5_000_002
