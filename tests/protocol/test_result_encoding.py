"""How a run's result is stored: JSON, its repr when it is not JSON, within a size limit."""

from __future__ import annotations

import pytest

from agentpool.protocol import PayloadTooLarge, encode_result


class Opaque:
    def __repr__(self) -> str:
        return "Opaque(" + "x" * 100 + ")"


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


def test_a_result_that_is_not_json_is_stored_as_its_repr_within_the_same_limit() -> None:
    assert encode_result(Opaque()) == '"Opaque(' + "x" * 100 + ')"'
    with pytest.raises(PayloadTooLarge):
        encode_result(Opaque(), limit=100)


def test_no_limit_and_none_are_stored_as_they_are() -> None:
    assert encode_result(None, limit=1024) == "null"
    assert len(encode_result("x" * 5_000_000)) == 5_000_002
