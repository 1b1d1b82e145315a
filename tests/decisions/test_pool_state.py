"""What a pool's loop remembers of its Deployment, whatever order the watch and the answers
of its own writes arrive in."""

from __future__ import annotations

from agentpool_operator.context import PoolState


def deployment(uid: str, generation: int = 1) -> dict[str, object]:
    return {"metadata": {"uid": uid, "generation": generation}}


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
