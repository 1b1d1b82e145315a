"""The chaos soak's own verdicts, on hand-made records: a soak that miscounts proves nothing."""

from __future__ import annotations

from bench.chaos import zombie_checkpoints


def runs(**began: float) -> dict[str, dict[str, float]]:
    """Runs of task t: ``w2_3=9.0`` is worker w2's attempt 3, begun at 9.0."""
    return {"t": {f"t|{name.split('_')[0]}|{name.split('_')[1]}": at
                  for name, at in began.items()}}


def test_the_holders_checkpoints_are_not_a_zombies_when_a_frozen_run_begins_late() -> None:
    """w2 claimed attempt 2 and was frozen before its run began; the lease ran out, w3 claimed
    attempt 3 and began at 5.0; w2 woke and began its (dead) run at 9.0. w3's checkpoints
    after 9.0 come from the holder."""
    starts = runs(w1_1=1.0, w2_2=9.0, w3_3=5.0)
    assert zombie_checkpoints(["t|w3|3|7.0", "t|w3|3|10.0"], starts) == []


def test_a_late_begun_runs_own_accepted_checkpoint_is_a_zombies() -> None:
    starts = runs(w1_1=1.0, w2_2=9.0, w3_3=5.0)
    found = zombie_checkpoints(["t|w2|2|11.0"], starts)
    assert len(found) == 1 and found[0].startswith("t|w2|2 ") and "t|w3|3" in found[0]


def test_a_checkpoint_sent_after_the_next_claim_began_is_a_zombies() -> None:
    starts = runs(w1_1=1.0, w2_2=5.0)
    assert len(zombie_checkpoints(["t|w1|1|6.0"], starts)) == 1
    assert zombie_checkpoints(["t|w1|1|4.0", "t|w2|2|6.0"], starts) == []


def test_runs_of_the_same_attempt_are_ordered_by_their_start() -> None:
    """A run handed back without spending an attempt (a drain, SIGTERM) and the run that took
    the task next share an attempt number."""
    starts = runs(w1_1=1.0, w2_1=4.0)
    assert len(zombie_checkpoints(["t|w1|1|5.0"], starts)) == 1
    assert zombie_checkpoints(["t|w2|1|6.0", "t|w1|1|3.0"], starts) == []
