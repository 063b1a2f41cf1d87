"""Every branch of `ledger.check_ledger` on hand-built ledgers, and `labels_for`'s refusal of an
allocation that does not exist. Each invalid ledger breaks exactly one invariant."""

from __future__ import annotations

import copy

import pytest

from s2d_pipeline.arms import STUDENT_RL, TEACHER_RL
from s2d_pipeline.errors import BudgetError
from s2d_pipeline.ledger import check_ledger, labels_for

AVAILABLE = {f"L{i}" for i in range(10)}


def _ledger(budget: int, arms: dict) -> dict:
    return {
        "budget": budget,
        "seed": 0,
        "stage3_holdout": 1,
        "labels_available": len(AVAILABLE),
        "arms": arms,
    }


def _valid() -> dict:
    """Four arms spending the same 4 labels differently, as `build_ledger` would write them."""
    return _ledger(
        4,
        {
            "s2d": {"stages": {TEACHER_RL: {"ids": ["L0", "L1", "L2", "L3"]}}, "spent": 4},
            "s2d_stage3": {
                "stages": {TEACHER_RL: {"ids": ["L0", "L1", "L2"]}, STUDENT_RL: {"ids": ["L3"]}},
                "spent": 4,
            },
            "s2d_stage3_replay": {
                "stages": {
                    TEACHER_RL: {"ids": ["L0", "L1", "L2"]},
                    STUDENT_RL: {"ids": ["L0", "L1", "L2"], "replay_of": TEACHER_RL},
                },
                "spent": 3,  # a replay spends nothing new
            },
            "grpo_direct": {"stages": {STUDENT_RL: {"ids": ["L0", "L1", "L2", "L3"]}}, "spent": 4},
            "opd_direct": {"stages": {}, "spent": 0},
        },
    )


def test_valid_ledger_passes():
    ledger = _valid()
    before = copy.deepcopy(ledger)
    assert check_ledger(ledger, AVAILABLE) is None
    assert ledger == before  # checking never edits the ledger


def test_budget_equal_to_available_passes():
    ids = sorted(AVAILABLE)
    check_ledger(_ledger(10, {"s2d": {"stages": {TEACHER_RL: {"ids": ids}}, "spent": 10}}), AVAILABLE)


@pytest.mark.parametrize("budget", [0, -3])
def test_non_positive_budget(budget):
    with pytest.raises(BudgetError, match=rf"non-positive budget {budget}\b"):
        check_ledger(_ledger(budget, {"opd_direct": {"stages": {}, "spent": 0}}), AVAILABLE)


def test_budget_over_available():
    ledger = _ledger(11, {"s2d": {"stages": {TEACHER_RL: {"ids": ["L0"]}}, "spent": 1}})
    with pytest.raises(BudgetError, match=r"budget 11 exceeds the 10 labels available"):
        check_ledger(ledger, AVAILABLE)


def test_arm_spending_over_the_budget():
    ledger = _valid()
    ledger["arms"]["s2d"] = {"stages": {TEACHER_RL: {"ids": ["L0", "L1", "L2", "L3", "L4"]}}, "spent": 5}
    with pytest.raises(BudgetError, match=r"arm 's2d' spends 5 labels, over the budget of 4"):
        check_ledger(ledger, AVAILABLE)


def test_arm_spending_over_the_budget_across_stages():
    ledger = _valid()
    ledger["arms"]["s2d_stage3"]["stages"][STUDENT_RL]["ids"] = ["L3", "L4"]
    ledger["arms"]["s2d_stage3"]["spent"] = 5
    with pytest.raises(BudgetError, match=r"arm 's2d_stage3' spends 5 labels, over the budget of 4"):
        check_ledger(ledger, AVAILABLE)


def test_unknown_ids():
    ledger = _valid()
    ledger["arms"]["grpo_direct"]["stages"][STUDENT_RL]["ids"] = ["L0", "L1", "gone-7", "L3"]
    with pytest.raises(BudgetError, match=r"arm 'grpo_direct' spends label ids not in data\.labels: \['gone-7'\]"):
        check_ledger(ledger, AVAILABLE)


def test_recorded_spent_count_mismatch():
    ledger = _valid()
    ledger["arms"]["s2d_stage3_replay"]["spent"] = 6  # as if the replay's ids counted as new
    with pytest.raises(BudgetError, match=r"arm 's2d_stage3_replay' records 6 spent but spends 3"):
        check_ledger(ledger, AVAILABLE)


def test_replay_of_a_missing_stage():
    ledger = _valid()
    del ledger["arms"]["s2d_stage3_replay"]["stages"][TEACHER_RL]
    ledger["arms"]["s2d_stage3_replay"]["spent"] = 0
    with pytest.raises(
        BudgetError,
        match=rf"arm 's2d_stage3_replay' stage '{STUDENT_RL}' replays labels its stage '{TEACHER_RL}' did not spend",
    ):
        check_ledger(ledger, AVAILABLE)


def test_replay_of_ids_its_source_did_not_spend():
    ledger = _valid()
    ledger["arms"]["s2d_stage3_replay"]["stages"][STUDENT_RL]["ids"] = ["L0", "L3"]  # L3: never spent here
    with pytest.raises(
        BudgetError,
        match=rf"arm 's2d_stage3_replay' stage '{STUDENT_RL}' replays labels its stage '{TEACHER_RL}' did not spend",
    ):
        check_ledger(ledger, AVAILABLE)


def test_label_spent_twice_across_stages_of_one_arm():
    ledger = _valid()
    ledger["arms"]["s2d_stage3"]["stages"][STUDENT_RL]["ids"] = ["L2"]  # also spent by teacher_rl
    ledger["arms"]["s2d_stage3"]["spent"] = 3
    with pytest.raises(BudgetError, match=r"arm 's2d_stage3' spends label 'L2' twice"):
        check_ledger(ledger, AVAILABLE)


def test_label_spent_twice_within_one_stage():
    ledger = _valid()
    ledger["arms"]["s2d"]["stages"][TEACHER_RL]["ids"] = ["L0", "L1", "L1", "L3"]
    ledger["arms"]["s2d"]["spent"] = 3
    with pytest.raises(BudgetError, match=r"arm 's2d' spends label 'L1' twice"):
        check_ledger(ledger, AVAILABLE)


def test_labels_for_returns_the_stage_ids_as_a_copy():
    ledger = _valid()
    assert labels_for(ledger, "s2d_stage3", STUDENT_RL) == ["L3"]
    assert labels_for(ledger, "s2d_stage3_replay", STUDENT_RL) == ["L0", "L1", "L2"]
    got = labels_for(ledger, "s2d", TEACHER_RL)
    got.append("L9")  # a caller editing its list must not change the ledger
    assert labels_for(ledger, "s2d", TEACHER_RL) == ["L0", "L1", "L2", "L3"]


@pytest.mark.parametrize(
    ("arm", "stage"),
    [("s2d", STUDENT_RL), ("opd_direct", TEACHER_RL), ("no_such_arm", TEACHER_RL)],
)
def test_labels_for_missing_allocation_names_arm_and_stage(arm, stage):
    with pytest.raises(BudgetError) as info:
        labels_for(_valid(), arm, stage)
    assert f"'{arm}'" in str(info.value) and f"'{stage}'" in str(info.value)
