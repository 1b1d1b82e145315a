from __future__ import annotations

from agentpool_operator.context import SECRET_RECHECK_SECONDS, PoolState

SOURCE = '{"url":null,"url_secret_ref":{"name":"r","key":"url"}}'


def remembered(pods: frozenset[str] = frozenset({"p-1"})) -> PoolState:
    state = PoolState()
    state.remember_redis_url("redis://r:6379/0", 100.0, SOURCE, pods)
    return state


def test_a_steady_pool_reuses_the_url_it_read() -> None:
    state = remembered()
    assert state.cached_redis_url(100.0 + 600, SOURCE, frozenset({"p-1"})) == "redis://r:6379/0"
    assert state.cached_redis_url(100.0 + 600, SOURCE, frozenset()) == "redis://r:6379/0"


def test_a_changed_redis_spec_reads_again() -> None:
    assert remembered().cached_redis_url(101.0, '{"url":"redis://x"}', None) is None


def test_a_new_pod_reads_again() -> None:
    assert remembered().cached_redis_url(101.0, SOURCE, frozenset({"p-1", "p-2"})) is None


def test_the_url_is_read_again_after_the_recheck_period() -> None:
    assert remembered().cached_redis_url(100.0 + SECRET_RECHECK_SECONDS, SOURCE, None) is None


def test_nothing_cached_before_the_first_read() -> None:
    assert PoolState().cached_redis_url(0.0, SOURCE, None) is None
