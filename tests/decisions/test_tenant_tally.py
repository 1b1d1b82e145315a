"""`tally_tenants`: a queue's tenants' loads from the tasks read, a pure function."""

from __future__ import annotations

from agentpool.protocol import TenantLoad, tally_tenants


def test_each_tenant_counts_its_tasks_by_kind_and_its_oldest_queued_one() -> None:
    tasks = [("queued", "a", 30.0), ("queued", "a", 10.0), ("queued", "a", 20.0),
             ("running", "a", 5.0), ("later", "b", 1.0), ("queued", None, None),
             ("running", "b", 2.0)]
    assert tally_tenants({"b": 3}, tasks) == [
        TenantLoad("a", 1, queued=3, running=1, oldest_queued=10.0),
        TenantLoad(None, 1, queued=1),
        TenantLoad("b", 3, running=1, later=1),
    ]


def test_weighted_tenants_without_tasks_are_listed_last_by_name() -> None:
    assert tally_tenants({"zed": 2, "amy": 5}, [("queued", "x", 1.0)]) == [
        TenantLoad("x", 1, queued=1, oldest_queued=1.0),
        TenantLoad("amy", 5), TenantLoad("zed", 2),
    ]


def test_more_running_comes_first_among_equally_queued() -> None:
    tasks = [("queued", "a", 1.0), ("queued", "b", 1.0), ("running", "b", 1.0)]
    assert [load.tenant for load in tally_tenants({}, tasks)] == ["b", "a"]
