"""Each script carries the shared definitions it uses, and only those."""

from __future__ import annotations

from importlib import resources

import redis

from agentpool.lua_source import assemble, script_source
from agentpool.redis_server import RedisServer

COMMON = """-- header
local P = ARGV[1]
local K_A = P .. 'a'
local K_B = P .. 'b'

-- a helper on K_A
local function helper(x)
  -- K_B is only mentioned here
  return redis.call('GET', K_A .. x)
end
local unused_flag
local function outer() return helper('1') end
"""

SCRIPTS = sorted(
    item.name.removesuffix(".lua")
    for item in (resources.files("agentpool") / "lua").iterdir()
    if item.name.endswith(".lua") and item.name not in ("common.lua", "rate_limit.lua")
)


def test_a_definition_comes_with_what_it_uses_in_file_order() -> None:
    source = assemble(COMMON, "return outer()")
    assert source.index("local P =") < source.index("local K_A") < source.index(
        "local function helper") < source.index("local function outer")
    assert source.endswith("return outer()")
    assert "-- a helper on K_A" in source


def test_unused_definitions_and_names_in_comments_are_left_out() -> None:
    source = assemble(COMMON, "-- outer() is not called here\nreturn K_A")
    assert "local K_A" in source
    assert "local K_B" not in source
    assert "helper" not in source
    assert "unused_flag" not in source


def test_submit_leaves_out_what_only_finishing_and_requeueing_need() -> None:
    source = script_source("submit")
    for name in ("local function finished", "local function requeue_worker",
                 "local function announce", "local function drain_requested"):
        assert name not in source
    assert "local function wake" in source


def test_every_script_compiles_on_redis(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    try:
        for name in SCRIPTS:
            assert client.script_load(script_source(name))
    finally:
        client.close()


def test_a_name_only_quoted_brings_no_definition_in() -> None:
    body = "redis.call('HSET', KEYS[1], 'helper', \"outer\")"
    assert "local function helper" not in assemble(COMMON, body)


def test_no_script_writes_a_string_the_name_reader_would_misread() -> None:
    """The reader drops quoted text by a simple pattern: an escaped quote or a long string
    ([[...]]) would hide the names after it, and a definition would be left out."""
    for item in (resources.files("agentpool") / "lua").iterdir():
        if item.name.endswith(".lua"):
            text = item.read_text()
            assert not any(mark in text for mark in ("\\'", '\\"', "[[", "[=")), item.name
