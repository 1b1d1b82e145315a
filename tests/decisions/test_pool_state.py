"""What a pool's loop remembers of its Deployment, whatever order the watch and the answers
of its own writes arrive in."""

from __future__ import annotations

from agentpool_operator.context import PoolState


def deployment(uid: str, generation: int = 1,
               version: str | None = None) -> dict[str, object]:
    meta: dict[str, object] = {"uid": uid, "generation": generation}
    if version is not None:
        meta["resourceVersion"] = version
    return {"metadata": meta}


def test_a_deployment_deleted_before_its_creation_was_answered_is_not_kept() -> None:
    """The watch saw it deleted while the create's answer was on its way: the answer must
    not bring it back, or the pool would never create it again."""
    state = PoolState()
    created = deployment("u1")
    state.forget_deployment(created)
    state.remember_deployment(created)
    assert (state.deployment, state.deployment_known) == (None, True)
    again = deployment("u2")
    state.remember_deployment(again)
    assert state.deployment == again, "the one created next is kept"


def test_a_deployment_whose_label_was_taken_off_is_known_again_from_a_read() -> None:
    """The watch selects by the pool's label: taking it off comes as a deletion carrying the
    Deployment at that change's version. A read then finds it (a create got 409): it is
    still there, and the pool puts its label back instead of failing every round."""
    state = PoolState()
    state.remember_deployment(deployment("u1", version="10"))
    state.forget_deployment(deployment("u1", version="11"))
    assert (state.deployment, state.deployment_known) == (None, True)
    state.remember_deployment(deployment("u1", version="10"))
    assert state.deployment is None, "a copy from before the change is not kept"
    read = deployment("u1", version="11")
    state.remember_deployment(read)
    assert state.deployment == read
    state.forget_deployment(deployment("u1", version="12"))
    state.remember_deployment(deployment("u1", version="13"))
    assert state.deployment == deployment("u1", version="13"), "put back and watched again"


def test_a_late_deletion_of_an_older_deployment_leaves_the_newer_one() -> None:
    state = PoolState()
    newer = deployment("u2")
    state.remember_deployment(newer)
    state.forget_deployment(deployment("u1"))
    assert state.deployment == newer


def test_an_older_spec_of_the_same_deployment_is_ignored() -> None:
    state = PoolState()
    state.remember_deployment(deployment("u1", generation=3))
    state.remember_deployment(deployment("u1", generation=2))
    assert state.deployment == deployment("u1", generation=3)


def test_a_creations_answer_after_the_watch_brought_a_newer_status_is_ignored() -> None:
    """The watch delivered the Deployment with the status written since (the same spec, a
    later version) before the create's answer arrived: the answer must not replace it, or
    the pool would read a status that no later event corrects."""
    state = PoolState()
    watched = deployment("u1", version="12")
    state.remember_deployment(watched)
    state.remember_deployment(deployment("u1", version="11"))
    assert state.deployment == watched
    newer = deployment("u1", version="13")
    state.remember_deployment(newer)
    assert state.deployment == newer


def test_versions_that_are_not_integers_are_not_compared() -> None:
    state = PoolState()
    state.remember_deployment(deployment("u1", version="b"))
    latest = deployment("u1", version="a")
    state.remember_deployment(latest)
    assert state.deployment == latest


def test_a_spec_older_than_the_one_applied_is_known_as_such() -> None:
    state = PoolState()
    assert not state.newer_spec_applied(1), "nothing applied yet"
    state.reconciled_generation = 3
    assert state.newer_spec_applied(2)
    assert not state.newer_spec_applied(3) and not state.newer_spec_applied(4)
