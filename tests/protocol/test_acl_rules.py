"""The ACL rule builder as a pure function: what each role may run and touch (and, once, the
rules loaded on a redis-server whose defaults would refuse them)."""

from __future__ import annotations

import re
from importlib import resources

import pytest
from redis.exceptions import NoPermissionError

from agentpool.acl import (
    SCRIPT_COMMANDS,
    Role,
    acl_rules,
    acl_username,
    password_hash,
    set_user,
)
from agentpool.connection import redis_from_url
from agentpool.protocol import ProtocolError, TaskQueue
from agentpool.redis_server import RedisServer, free_port
from agentpool.urls import with_credentials

HASH = password_hash("pw")
BEYOND_A_QUEUE = {"keys", "scan", "flushall", "flushdb", "config", "acl", "script|flush",
                  "eval", "debug", "monitor", "client|kill", "shutdown", "@all"}


def commands(rules: list[str]) -> set[str]:
    return {rule[1:] for rule in rules if rule.startswith("+")}


def script_commands() -> set[str]:
    """Every command a protocol script calls, read from the scripts themselves."""
    folder = resources.files("agentpool") / "lua"
    found: set[str] = set()
    for script in folder.iterdir():
        if script.name.endswith(".lua"):
            found |= {c.lower() for c in re.findall(r"redis\.call\('(\w+)'", script.read_text())}
    return found


def test_every_command_a_script_calls_is_in_the_script_list() -> None:
    found = script_commands()
    assert found, "no redis.call found: the pattern no longer matches the scripts"
    assert found <= set(SCRIPT_COMMANDS), sorted(found - set(SCRIPT_COMMANDS))


def test_a_worker_may_run_every_script_command_and_nothing_beyond_its_queue() -> None:
    granted = commands(acl_rules("qa", Role.WORKER, [HASH]))
    assert script_commands() <= granted
    assert {"evalsha", "script|load", "script|exists", "blpop"} <= granted
    assert not granted & BEYOND_A_QUEUE


def test_a_producer_has_no_command_a_claim_or_a_delete_needs() -> None:
    granted = commands(acl_rules("qa", Role.PRODUCER, [HASH]))
    assert {"evalsha", "subscribe", "hgetall", "zadd", "publish"} <= granted
    assert not granted & {"zpopmin", "sadd", "srem", "del", "unlink", "hdel", "blpop",
                          "zremrangebyscore"}
    assert not granted & BEYOND_A_QUEUE


@pytest.mark.parametrize("role", list(Role))
def test_rules_reset_the_user_and_confine_keys_and_channels_to_the_queue(role: Role) -> None:
    rules = acl_rules("orders.v2", role, [HASH])
    assert rules[:3] == ["reset", "resetchannels", "on"]
    patterns = [r for r in rules if "~" in r or r.startswith("&")]
    assert patterns
    assert all("ap:{orders.v2}:" in p for p in patterns)
    assert "&ap:{orders.v2}:*" in rules
    assert not any(r in ("allkeys", "allchannels", "~*", "&*", "+@all") for r in rules)


def test_a_producer_reads_its_queue_and_writes_only_what_submit_and_cancel_write() -> None:
    rules = acl_rules("qa", Role.PRODUCER, [HASH])
    keys = [r for r in rules if "~" in r]
    assert keys[0] == "%R~ap:{qa}:*"
    writable = {k.removeprefix("~ap:{qa}:") for k in keys[1:]}
    assert {"t:*", "ev:*", "cp:*", "queued", "delayed", "dead", "stats", "wake", "seq",
            "idem:*", "durable", "listening", "full", "deferred", "deferred_expiry",
            "next:*", "fair", "parked:*", "parked_expiry"} == writable


def test_passwords_are_given_as_hashes_and_several_may_be_valid_at_once() -> None:
    old, new = password_hash("old-pw"), password_hash("new-pw")
    rules = acl_rules("qa", Role.WORKER, [old, new])
    assert f"#{old}" in rules and f"#{new}" in rules
    assert not any("old-pw" in r or "new-pw" in r for r in rules)


def test_a_user_without_a_password_is_off() -> None:
    rules = acl_rules("qa", Role.WORKER, [])
    assert "off" in rules and "on" not in rules and "nopass" not in rules


def test_bad_input_is_refused() -> None:
    with pytest.raises(ProtocolError, match="invalid queue name"):
        acl_rules("a*b", Role.WORKER, [HASH])
    with pytest.raises(ValueError, match="SHA-256"):
        acl_rules("qa", Role.WORKER, ["plain-password"])


def test_usernames_differ_per_pool_and_role() -> None:
    names = {acl_username(ns, pool, role) for ns in ("a", "b") for pool in ("p", "q")
             for role in Role}
    assert len(names) == 8
    assert acl_username("team-a", "summaries", Role.WORKER) == "agentpool:team-a:summaries:worker"


def test_a_worker_gets_the_keys_of_its_pools_rate_limits_and_a_producer_none() -> None:
    rules = acl_rules("qa", Role.WORKER, [HASH], ["openai", "anthropic"])
    assert [r for r in rules if r.startswith("~")] == [
        "~ap:{qa}:*", "~ap:{rl:anthropic}:*", "~ap:{rl:openai}:*",
    ]
    assert not any("rl:" in r for r in acl_rules("qa", Role.PRODUCER, [HASH]))
    with pytest.raises(ProtocolError):
        acl_rules("qa", Role.WORKER, [HASH], ["*"])


def test_a_worker_submitting_to_other_queues_gets_a_producers_rights_on_each_in_a_selector(
) -> None:
    rules = acl_rules("planner", Role.WORKER, [HASH], (), ["coder", "planner", "coder", "qa"])
    selectors = [r for r in rules if r.startswith("(")]
    assert selectors == [
        f"(resetchannels {' '.join(acl_rules(queue, Role.PRODUCER, [HASH])[4:])})"
        for queue in ("coder", "qa")
    ], "a producer's keys, channels and commands, once per queue, none for its own"
    assert rules[:len(rules) - 2] == acl_rules("planner", Role.WORKER, [HASH])
    with pytest.raises(ProtocolError, match="invalid queue name"):
        acl_rules("planner", Role.WORKER, [HASH], (), ["a b"])
    with pytest.raises(ValueError, match="only a worker"):
        acl_rules("planner", Role.PRODUCER, [HASH], (), ["coder"])


async def test_the_selectors_load_and_confine_channels_whatever_the_servers_pubsub_default(
) -> None:
    """A selector starts with the server's acl-pubsub-default: with `allchannels` a channel
    pattern after it would be refused, so each selector resets its channels first."""
    server = RedisServer(port=free_port(),
                         extra_args=("--acl-pubsub-default", "allchannels")).start()
    admin = redis_from_url(server.url)
    try:
        await set_user(admin, "planner", acl_rules("planner", Role.WORKER, [HASH], (),
                                                   ["coder"]))
        user = redis_from_url(with_credentials(server.url, "planner", "pw"))
        try:
            await TaskQueue(user, "coder").submit("step")
            with pytest.raises(NoPermissionError):
                await user.publish("ap:{third}:done", "x")
        finally:
            await user.aclose()
    finally:
        await admin.aclose()
        server.close()
