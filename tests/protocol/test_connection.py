"""Redis URLs: the Sentinel form's parts, its errors, and that no message quotes a password."""

from __future__ import annotations

import pytest

from agentpool.connection import (
    RedisURLError,
    SentinelURL,
    is_sentinel_url,
    parse_sentinel_url,
    redis_from_url,
)
from agentpool.urls import URL_PREFIXES, redact_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "redis+sentinel://h1:26380,h2/agentpool",
            SentinelURL(sentinels=(("h1", 26380), ("h2", 26379)), service="agentpool"),
        ),
        (
            "rediss+sentinel://:s%40cret@h1:1,[::1]:2/svc/3",
            SentinelURL(sentinels=(("h1", 1), ("::1", 2)), service="svc", db=3,
                        password="s@cret", tls=True),
        ),
        (
            "redis+sentinel://agent:pw@h/svc/0?sentinel_password=sp&sentinel_username=mon",
            SentinelURL(sentinels=(("h", 26379),), service="svc", username="agent",
                        password="pw", sentinel_username="mon", sentinel_password="sp"),
        ),
    ],
)
def test_sentinel_urls_parse_into_their_parts(url: str, expected: SentinelURL) -> None:
    assert is_sentinel_url(url)
    assert parse_sentinel_url(url) == expected


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel://:hunter2@/svc", "at least one sentinel"),
        ("redis+sentinel://:hunter2@h1:26379", "/<service>"),
        ("redis+sentinel://:hunter2@h1/svc/0/extra", "/<service>"),
        ("redis+sentinel://:hunter2@h1/svc/zero", "database"),
        ("redis+sentinel://:hunter2@h1:port/svc", "host:port"),
    ],
)
def test_a_bad_sentinel_url_is_refused_without_quoting_its_password(
    url: str, problem: str
) -> None:
    with pytest.raises(RedisURLError) as caught:
        redis_from_url(url)
    assert problem in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_a_standalone_url_is_not_sentinel() -> None:
    assert not is_sentinel_url("redis://h:6379/0")
    assert not is_sentinel_url("rediss://h:6380")
    assert all(p.endswith("://") for p in URL_PREFIXES)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis+sentinel://:pw@127.0.0.1:1,127.0.0.1:2/agentpool/0",
         "redis+sentinel://:***@127.0.0.1:1,127.0.0.1:2/agentpool/0"),
        ("rediss+sentinel://u:pw@h1/svc/2?sentinel_password=sp",
         "rediss+sentinel://u:***@h1/svc/2?sentinel_password=***"),
        ("redis+sentinel://h1,h2/svc", "redis+sentinel://h1,h2/svc"),
    ],
)
def test_sentinel_urls_are_shown_with_hosts_and_without_secrets(url: str, shown: str) -> None:
    assert redact_url(url) == shown
