"""Masking the secrets of URLs quoted in any text (errors, a program's output), and making
redis-py's errors that quote whole clients readable."""

from __future__ import annotations

import pytest

from agentpool.redis_errors import sentinel_failure, without_object_reprs
from agentpool.urls import mask_urls, redis_server


@pytest.mark.parametrize(("text", "shown"), [
    ("could not connect to redis://admin:TopSecret99@db.internal:6379/0",
     "could not connect to redis://admin:***@db.internal:6379/0"),
    ("Error connecting to redis://agent:hunter2@redis:6379/0.",
     "Error connecting to redis://agent:***@redis:6379/0."),
    ("redis://redis:6379/0?password=hunter2", "redis://redis:6379/0?password=***"),
    ("(rediss+sentinel://u:hunter2@s1:26379,s2/mymaster)",
     "(rediss+sentinel://u:***@s1:26379,s2/mymaster)"),
    ("fatal: unable to access 'https://x-access-token:ghp_hunter2@github.com/org/repo.git/': "
     "The requested URL returned error: 403",
     "fatal: unable to access 'https://x-access-token:***@github.com/org/repo.git/': "
     "The requested URL returned error: 403"),
    ("git clone https://ghp_hunter2@github.com/org/repo",
     "git clone https://***@github.com/org/repo"),
    ("postgresql://app:hunter2@pg:5432/db refused", "postgresql://app:***@pg:5432/db refused"),
    ("amqp://:hunter2@mq/", "amqp://***@mq/"),
    ("GET https://s3.example/b/k?X-Amz-Signature=hunter2&X-Amz-Date=20240101 failed",
     "GET https://s3.example/b/k?X-Amz-Signature=***&X-Amz-Date=20240101 failed"),
    ("https://api.example/v1?access_token=hunter2&page=2",
     "https://api.example/v1?access_token=***&page=2"),
    ("https://user:hun/ter2@host/path", "https://***@host/path"),
], ids=["redis", "redis-sentence", "redis-query", "sentinel-in-parentheses", "git-https",
        "lone-token", "postgres", "empty-user", "presigned", "token-query", "slash-in-password"])
def test_the_secrets_of_any_url_are_masked_and_the_rest_kept(text: str, shown: str) -> None:
    assert mask_urls(text) == shown
    assert "hunter2" not in shown and "TopSecret99" not in shown


@pytest.mark.parametrize("text", [
    "see https://www.npmjs.com/package/@types/node?page=2#install",
    "404 for https://api.example/v1/items?page=2&q=x",
    "ssh to git@github.com:org/repo.git failed",
    "no URL at all",
])
def test_text_without_a_secret_is_left_as_it_is(text: str) -> None:
    assert mask_urls(text) == text


CLIENT = ("<redis.asyncio.client.Redis(<redis.asyncio.connection.ConnectionPool(<agentpool."
          "connection.Connection(db=0,username=<REDACTED>,password=<REDACTED>,retry=<redis."
          "asyncio.retry.Retry object at 0x7f>,socket_keepalive_options=<object object at "
          "0x7f>,host={host},port={port},orig_host_address={host})>)>)>")


def test_a_client_repr_is_cut_to_its_address() -> None:
    text = f"closed by {CLIENT.format(host='10.0.0.7', port=26379)} -> retry"
    assert without_object_reprs(text) == "closed by 10.0.0.7:26379 -> retry"
    assert without_object_reprs("cut <redis.asyncio.client.Redis(<redis.asy") == "cut <Redis>"


def test_an_unreachable_sentinel_says_what_was_asked_and_the_last_error() -> None:
    # the text of redis-py 8.2's MasterNotFoundError when no sentinel answers
    errors = ", ".join(
        f"{CLIENT.format(host=host, port=port)} - network:ConnectionError: Error 111 "
        f"connecting to {host}:{port}. Connect call failed ('127.0.0.1', {port})."
        for host, port in (("127.0.0.1", 26379), ("localhost", 26380)))
    text = f"No master found for 'mymaster' : {errors}"
    assert sentinel_failure("mymaster", ["127.0.0.1:26379", "localhost:26380"], text) == (
        "no sentinel named a primary for 'mymaster' (asked 127.0.0.1:26379, localhost:26380); "
        "last error: Error 111 connecting to localhost:26380: Connection refused")
    older = f"No master found for 'm' : {CLIENT.format(host='s', port=1)} - " \
        "TimeoutError('Timeout connecting to server')"
    assert sentinel_failure("m", ["s:1"], older) == (
        "no sentinel named a primary for 'm' (asked s:1); last error: Timeout connecting to "
        "server")
    assert sentinel_failure("m", ["s:1"], "No master found for 'm'") == (
        "no sentinel named a primary for 'm' that is up (asked s:1; they answered: is 'm' the "
        "name they monitor?)")


def test_a_status_masks_every_query_value_of_any_url() -> None:
    """What a status or an Event publishes keeps no option value a person could not guess
    is secret (`?pw=`, `?code=`); a worker's log keeps the harmless ones to stay readable."""
    text = "GET https://api.example/v1?pw=hunter2&code=abc&page=2 failed"
    assert mask_urls(text, every_query_value=True) == (
        "GET https://api.example/v1?pw=***&code=***&page=*** failed")
    assert mask_urls(text) == text


@pytest.mark.parametrize(("url", "server"), [
    ("redis://:pw@h:6379?db=2", "redis://h.team.svc:6379/2"),
    ("redis://h/3?db=2", "redis://h.team.svc:6379/2"),
    ("redis://h", "redis://h.team.svc:6379/0"),
])
def test_the_server_of_a_url_names_the_database_redis_py_connects_to(
    url: str, server: str,
) -> None:
    assert redis_server(url, "team") == server


@pytest.mark.parametrize("text", [
    "Error:connectingtotheprimaryserverfailedrediss://default:s3cret@h:6380",
    "x" * 31 + "redis://:s3cret@host",
    "tokenvalue0123456789abcdefghijklmnop" + "https://u:s3cret@h/",
])
def test_a_url_glued_to_a_long_word_is_masked(text: str) -> None:
    assert "s3cret" not in mask_urls(text)
