"""The pure parts of per-pool Redis users: the worker Secret, its drift, Redis's refusals."""

from __future__ import annotations

import base64

import redis.exceptions

from agentpool_operator.credentials import (
    desired_worker_secret,
    password_of,
    per_pool,
    refusal,
    secret_drift,
    shared,
)

POOL = {"apiVersion": "agentpool.dev/v1alpha1", "kind": "AgentPool",
        "metadata": {"name": "summaries", "namespace": "team-a", "uid": "u-1"}}
URL = "redis://agentpool%3Ateam-a%3Asummaries%3Aworker:p%2Fw%40rd@redis.team-a:6379/0"


def test_the_worker_secret_is_owned_by_the_pool_and_holds_the_url() -> None:
    secret = desired_worker_secret("team-a", "summaries", POOL, URL)
    assert secret["metadata"]["name"] == "summaries-redis-worker"
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert secret["metadata"]["ownerReferences"][0]["controller"] is True
    assert base64.b64decode(secret["data"]["url"]).decode() == URL
    assert password_of(secret) == "p/w@rd"


def test_a_secret_without_a_usable_url_has_no_password_to_reuse() -> None:
    assert password_of(None) is None
    assert password_of({"data": {}}) is None
    assert password_of({"data": {"url": base64.b64encode(b"redis://host:1/0").decode()}}) is None
    assert password_of({"data": {"url": "%%%"}}) is None


def test_drift_puts_back_data_and_owner_only() -> None:
    desired = desired_worker_secret("team-a", "summaries", POOL, URL)
    same = {**desired, "metadata": {**desired["metadata"], "labels": {"x": "y"}}}
    assert secret_drift(desired, same) is None
    edited = {**desired, "data": {"url": "eA=="}, "metadata": {"name": "summaries-redis-worker"}}
    assert secret_drift(desired, edited) == {
        "data": desired["data"],
        "metadata": {"ownerReferences": desired["metadata"]["ownerReferences"]},
    }


def test_refusals_that_mean_no_per_pool_user_and_others_that_do_not() -> None:
    assert "may not manage" in str(refusal(redis.exceptions.NoPermissionError("NOPERM x")))
    assert "no ACLs" in str(refusal(redis.exceptions.ResponseError("unknown command 'ACL'")))
    assert refusal(redis.exceptions.ResponseError("LOADING Redis is loading")) is None


def test_conditions_name_the_user_and_secret_never_a_password() -> None:
    own = per_pool("team-a", "summaries", "jobs")
    assert own.secret is not None and own.secret.name == "summaries-redis-worker"
    assert (own.condition.status, own.condition.reason) == ("True", "PerPoolUser")
    assert "agentpool:team-a:summaries:worker" in own.condition.message
    fallback = shared("this Redis has no ACLs")
    assert fallback.secret is None
    assert (fallback.condition.status, fallback.condition.reason) == ("False",
                                                                     "CredentialsShared")
