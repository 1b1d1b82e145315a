"""The pure parts of per-pool Redis users: the worker Secret, its drift, Redis's refusals."""

from __future__ import annotations

import base64
import copy

import redis.exceptions
from kubernetes.client.exceptions import ApiException

from agentpool.acl import password_hash
from agentpool.models import AgentPoolSpec, SecretKeyRef
from agentpool_operator.credentials import (
    PRODUCER_ROTATE_ANNOTATION,
    REQUEST_ANNOTATION,
    ROTATE_ANNOTATION,
    accept_rotation,
    conflicting,
    credentials_version,
    desired_worker_secret,
    event_type,
    lasting,
    password_of,
    per_pool,
    plan_producer_rotation,
    plan_rotation,
    pool_owns,
    refusal,
    refused,
    retiring_hashes,
    rolled_out,
    same_server,
    secret_drift,
    shared,
    unmanaged,
)
from agentpool_operator.deployment import (
    CREDENTIALS_VERSION,
    deployment_drift,
    desired_deployment,
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


def test_a_secret_is_the_pools_only_when_an_agentpool_of_its_name_controls_it() -> None:
    """Any uid: the Secret of an earlier pool of the same name (deleted and created again,
    the garbage collector not done yet) is the same user's."""
    ours = desired_worker_secret("team-a", "summaries", POOL, URL)
    assert pool_owns(ours, POOL)
    earlier = {**POOL, "metadata": {**POOL["metadata"], "uid": "u-0"}}
    assert pool_owns(desired_worker_secret("team-a", "summaries", earlier, URL), POOL)
    [reference] = ours["metadata"]["ownerReferences"]

    def owned_by(**changes: object) -> dict:
        return {"metadata": {"name": "summaries-redis-worker",
                             "ownerReferences": [{**reference, **changes}]}}

    assert not pool_owns({"metadata": {"name": "summaries-redis-worker"}}, POOL)
    assert not pool_owns(owned_by(name="other"), POOL)
    assert not pool_owns(owned_by(controller=False), POOL)
    assert not pool_owns(owned_by(kind="Deployment", apiVersion="apps/v1"), POOL)
    assert not pool_owns(owned_by(apiVersion="example.com/v1"), POOL)


def test_problems_that_need_a_person_are_warnings_and_degrade_the_pool() -> None:
    forbidden = ApiException(status=403, reason="Forbidden")
    forbidden.body = ('{"message": "secrets is forbidden: User \\"op\\" cannot create '
                      'resource \\"secrets\\" (redis://admin:hunter2@redis:6379/0)"}')
    for credentials in (conflicting("team-a", "summaries"),
                        refused("team-a", "summaries", forbidden, reading=False,
                                exists=False),
                        unmanaged("team-a", "summaries", "NOPERM")):
        assert credentials.condition.status == "False"
        assert credentials.secret == SecretKeyRef(name="summaries-redis-worker")
        assert event_type(credentials.condition.reason) == "Warning"
        assert credentials.problem is not None
        assert credentials.problem.reason == credentials.condition.reason
        assert "team-a/summaries-redis-worker" in credentials.condition.message
    assert not conflicting("team-a", "summaries").usable
    assert "rename or delete" in conflicting("team-a", "summaries").condition.message
    message = refused("team-a", "summaries", forbidden, reading=False,
                      exists=True).condition.message
    assert "403 Forbidden: secrets is forbidden" in message
    assert "hunter2" not in message
    assert unmanaged("team-a", "summaries", "NOPERM").usable
    assert shared("no ACLs").problem is None and per_pool("a", "b", "q").problem is None
    assert event_type("CredentialsCreated") == "Normal"


def test_lasting_api_refusals_are_reported_and_races_retried() -> None:
    assert lasting(ApiException(status=403)) and lasting(ApiException(status=422))
    for status in (404, 409, 429, 500, 503, 0):
        assert not lasting(ApiException(status=status)), status


def test_refusals_that_mean_no_per_pool_user_and_others_that_do_not() -> None:
    assert "may not manage" in str(refusal(redis.exceptions.NoPermissionError("NOPERM x")))
    assert "no ACLs" in str(refusal(redis.exceptions.ResponseError("unknown command 'ACL'")))
    assert refusal(redis.exceptions.ResponseError("LOADING Redis is loading")) is None
    redis6 = redis.exceptions.ResponseError(
        "Error in ACL SETUSER modifier '(resetchannels %R~ap:{coder}:* ...)': Syntax error")
    assert "selectors need Redis 7" in str(refusal(redis6))


def test_conditions_name_the_user_and_secret_never_a_password() -> None:
    own = per_pool("team-a", "summaries", "jobs")
    assert own.secret is not None and own.secret.name == "summaries-redis-worker"
    assert (own.condition.status, own.condition.reason) == ("True", "PerPoolUser")
    assert "agentpool:team-a:summaries:worker" in own.condition.message
    fallback = shared("this Redis has no ACLs")
    assert fallback.secret is None
    assert (fallback.condition.status, fallback.condition.reason) == ("False",
                                                                     "CredentialsShared")


def test_a_rotation_accepts_both_passwords_until_every_pod_rolled() -> None:
    old, new = password_hash("old"), password_hash("new")
    start = plan_rotation("old", None, requested=True, rolled_out=True, new_password="new")
    assert (start.password, start.accepted, start.retiring, start.started) == (
        "new", (old, new), old, True)
    waiting = plan_rotation("new", old, requested=True, rolled_out=False, new_password="x")
    assert (waiting.password, waiting.accepted, waiting.retiring) == ("new", (new, old), old)
    assert not waiting.started and not waiting.finished
    done = plan_rotation("new", old, requested=False, rolled_out=True, new_password="x")
    assert (done.password, done.accepted, done.retiring, done.finished) == (
        "new", (new,), None, True)


def test_without_a_request_the_password_stays_and_a_first_one_is_drawn() -> None:
    steady = plan_rotation("pw", None, requested=False, rolled_out=False, new_password="x")
    assert (steady.password, steady.accepted, steady.started) == (
        "pw", (password_hash("pw"),), False)
    first = plan_rotation(None, None, requested=True, rolled_out=False, new_password="x")
    assert (first.password, first.accepted, first.started) == ("x", (password_hash("x"),), False)


def test_a_producer_rotation_keeps_the_old_password_for_the_grace_period() -> None:
    old, new = password_hash("old"), password_hash("new")
    start, until = plan_producer_rotation("old", None, None, requested=True, clock=1000.0,
                                          grace=600.0, new_password="new")
    assert (start.password, start.accepted, start.retiring, start.started, until) == (
        "new", (old, new), old, True, 1600.0)
    during, until = plan_producer_rotation("new", old, 1600.0, requested=False, clock=1599.0,
                                           grace=600.0, new_password="x")
    assert (during.password, during.accepted, during.retiring, until) == (
        "new", (new, old), old, 1600.0)
    assert not during.started and not during.finished
    over, until = plan_producer_rotation("new", old, 1600.0, requested=False, clock=1600.0,
                                         grace=600.0, new_password="x")
    assert (over.accepted, over.retiring, over.finished, until) == ((new,), None, True, None)
    lost, until = plan_producer_rotation("new", old, None, requested=False, clock=0.0,
                                         grace=600.0, new_password="x")
    assert (lost.accepted, lost.finished, until) == ((new,), True, None), (
        "a retiring password without its end (a hand edit) goes at once")


def test_a_producer_rotation_asked_for_during_the_grace_starts_over() -> None:
    again, until = plan_producer_rotation("new", password_hash("old"), 1600.0, requested=True,
                                          clock=1200.0, grace=600.0, new_password="newest")
    assert (again.password, again.retiring, again.started, until) == (
        "newest", password_hash("new"), True, 1800.0)
    assert again.accepted == (password_hash("new"), password_hash("newest"))


def test_rolled_out_means_every_pod_carries_the_version() -> None:
    def pod(version: str | None) -> dict:
        annotations = {} if version is None else {CREDENTIALS_VERSION: version}
        return {"metadata": {"annotations": annotations}}

    assert rolled_out([pod("v2"), pod("v2")], "v2")
    assert not rolled_out([pod("v2"), pod("v1")], "v2")
    assert not rolled_out([pod(None)], "v2")
    assert rolled_out([], "v2")
    assert not rolled_out(None, "v2"), "pods unknown: wait"
    assert credentials_version("a") != credentials_version("b")


def test_pods_that_ended_for_good_do_not_hold_a_rotation_up() -> None:
    """An evicted pod (phase Failed) or a completed one stays in the pool's pods until deleted
    or garbage-collected, but its containers connect to nothing."""
    def pod(version: str, phase: str | None) -> dict:
        status = {} if phase is None else {"phase": phase}
        return {"metadata": {"annotations": {CREDENTIALS_VERSION: version}}, "status": status}

    assert rolled_out([pod("v2", "Running"), pod("v1", "Failed"), pod("v1", "Succeeded")], "v2")
    for phase in ("Running", "Pending", "Unknown", None):
        assert not rolled_out([pod("v2", "Running"), pod("v1", phase)], "v2"), phase


def test_a_missing_secret_keeps_the_users_passwords_until_the_pods_rolled() -> None:
    a, b, new = password_hash("a"), password_hash("b"), password_hash("new")
    again = plan_rotation(None, None, requested=False, rolled_out=False, new_password="new",
                          live=(a, b))
    assert (again.password, again.accepted, again.retiring) == ("new", (new, a, b), f"{a},{b}")
    assert not again.started and not again.finished
    waiting = plan_rotation("new", again.retiring, requested=False, rolled_out=False,
                            new_password="x")
    assert (waiting.password, waiting.accepted, waiting.retiring) == (
        "new", (new, a, b), f"{a},{b}")
    done = plan_rotation("new", again.retiring, requested=False, rolled_out=True,
                         new_password="x")
    assert (done.accepted, done.retiring, done.finished) == ((new,), None, True)
    fresh = plan_rotation(None, None, requested=False, rolled_out=False, new_password="new")
    assert (fresh.accepted, fresh.retiring) == ((new,), None), "no user yet: nothing to keep"


def test_a_retiring_annotation_yields_only_password_hashes() -> None:
    a, b = password_hash("a"), password_hash("b")
    assert retiring_hashes(f"{a}, {b},{a}") == (a, b)
    assert retiring_hashes("not-a-hash") == ()
    assert retiring_hashes(None) == ()
    edited = plan_rotation("pw", "garbage", requested=False, rolled_out=False,
                           new_password="x")
    assert (edited.accepted, edited.retiring) == ((password_hash("pw"),), None)


def test_a_request_is_accepted_under_the_name_of_the_copy_that_carried_it() -> None:
    asked = {ROTATE_ANNOTATION: "now", "team": "a"}
    assert accept_rotation(asked, "41", producer_wanted=True) == {
        ROTATE_ANNOTATION: None, REQUEST_ANNOTATION: "41", PRODUCER_ROTATE_ANNOTATION: "41"}
    assert accept_rotation(asked, "41", producer_wanted=False) == {
        ROTATE_ANNOTATION: None, REQUEST_ANNOTATION: "41"}
    assert accept_rotation(asked, "41", True) == accept_rotation(asked, "41", True), (
        "a stale copy seen again names the same request")
    assert accept_rotation({REQUEST_ANNOTATION: "41"}, "57", True) is None


def test_a_new_credentials_version_rolls_the_pods_and_foreign_annotations_stay() -> None:
    spec = AgentPoolSpec.model_validate({
        "redis": {"url": "redis://redis:6379/0"},
        "worker": {"image": "registry.example/w:1", "handler": "m:f"},
    })
    ref = SecretKeyRef(name="summaries-redis-worker")
    first = desired_deployment("summaries", "team-a", spec, worker_redis_secret=ref,
                               credentials_version="v1")
    live = copy.deepcopy(first)
    live["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"] = "t"
    assert deployment_drift(first, live) is None
    second = desired_deployment("summaries", "team-a", spec, worker_redis_secret=ref,
                                credentials_version="v2")
    assert deployment_drift(second, live) == {"spec": {"template": {"metadata": {
        "annotations": {CREDENTIALS_VERSION: "v2"}}}}}
    shared_url = desired_deployment("summaries", "team-a", spec)
    assert "annotations" not in shared_url["spec"]["template"]["metadata"]
    env = {e["name"]: e for e in first["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["AGENTPOOL_REDIS_URL"]["valueFrom"] == {
        "secretKeyRef": {"name": "summaries-redis-worker", "key": "url"}}


def test_a_secret_names_the_pools_redis_when_server_and_database_are_the_same() -> None:
    """What decides whether a refused pool keeps its workers' user (the same Redis: it has
    the user there) or moves them with it to its URL (another one: it has none there)."""
    pool = "redis://admin:pw@redis.ns.svc:6379/2?socket_timeout=5"
    for held in ("redis://agentpool%3Ans%3Ap%3Aworker:x@redis:6379/2",
                 "redis://u:x@redis.ns.svc.cluster.local/2",
                 "rediss://u:x@redis.ns.svc:6379/2",
                 "redis://u:x@redis.ns:6379?db=2"):
        assert same_server(held, pool, "ns"), held
    for held in ("redis://u:x@redis.ns.svc:6380/2", "redis://u:x@redis.ns.svc:6379/0",
                 "redis://u:x@other.ns.svc:6379/2", "redis://u:x@redis.other:6379/2",
                 "redis+cluster://u:x@redis.ns.svc:6379"):
        assert not same_server(held, pool, "ns"), held
    sentinels = "redis+sentinel://a:26379,b:26379/mymaster"
    assert same_server("redis+sentinel://u:x@b,a/mymaster", sentinels, "ns")
    assert not same_server("redis+sentinel://u:x@a,b/other", sentinels, "ns")
    assert not same_server("redis+sentinel://u:x@a,c/mymaster", sentinels, "ns")
