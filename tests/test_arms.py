"""`arms.SPECS` and what derives from it: which teachers, bridges, steps and final students each
configured set of arms needs."""

from __future__ import annotations

import pytest

from s2d_pipeline import arms
from s2d_pipeline.arms import SPECS, LabelUse

ALL = list(SPECS)


def test_every_spec_is_consistent():
    for name, spec in SPECS.items():
        assert spec.warmup or spec.opd or spec.student_rl, f"{name} trains nothing"
        assert spec.distils == (spec.teacher is not None)
        if spec.labels in (LabelUse.NONE,):
            assert spec.teacher == "raw", name  # without labels only the raw teacher is available
        if spec.labels is LabelUse.STUDENT:
            assert spec.teacher is None and spec.student_rl, name
        if spec.labels.holds_out_stage3:
            assert spec.student_rl == "student_rl" and spec.distils, name
        if spec.bridge is not None:
            assert SPECS[spec.bridge].teacher == spec.teacher and spec.bridge in SPECS, name
    assert SPECS[arms.CANDIDATE_ARM].labels is LabelUse.TEACHER
    assert SPECS[arms.BASELINE_ARM].labels is LabelUse.STUDENT


def test_rl_teachers_and_rollout_teachers():
    assert arms.rl_teachers(ALL) == ["s2d", "s2d_stage3"]
    assert arms.rl_teachers(["grpo_direct", "raw_bridge", "opd_direct"]) == []
    assert arms.rollout_teachers(ALL) == ["raw", "s2d", "s2d_stage3"]
    assert arms.rollout_teachers(["no_warmup", "opd_direct"]) == []  # no warmup: no rollouts needed
    assert arms.ledger_arm_for_teacher("s2d", ["grpo_direct", "no_opd"]) == "no_opd"
    with pytest.raises(ValueError, match="no configured arm uses RL teacher 's2d_stage3'"):
        arms.ledger_arm_for_teacher("s2d_stage3", ["s2d"])


def test_bridges_are_trained_once_and_the_replay_control_reuses_its_arms():
    assert arms.bridge_arms(ALL) == ["s2d", "s2d_stage3", "opd_direct", "raw_bridge", "no_warmup", "no_opd"]
    assert arms.bridge_arms(["s2d_stage3_replay"]) == ["s2d_stage3"]  # trained for the control alone
    assert arms.bridge_arms(["grpo_direct"]) == []
    assert arms.student_rl_arms(ALL) == ["s2d_stage3", "s2d_stage3_replay", "grpo_direct"]


def test_ablations_move_the_removed_stages_steps_to_the_other():
    assert arms.bridge_steps("s2d", 100, 150) == (100, 150)
    assert arms.bridge_steps("no_warmup", 100, 150) == (0, 250)
    assert arms.bridge_steps("no_opd", 100, 150) == (250, 0)
    assert arms.bridge_steps("opd_direct", 100, 150) == (0, 250)
    warmups = {a: steps for a, _, steps in arms.bridge_stage_arms("warmup", ALL, 100, 150)}
    opds = {a: steps for a, _, steps in arms.bridge_stage_arms("opd", ALL, 100, 150)}
    assert warmups == {"s2d": 100, "s2d_stage3": 100, "raw_bridge": 100, "no_opd": 250}
    assert opds == {"s2d": 150, "s2d_stage3": 150, "opd_direct": 250, "raw_bridge": 150, "no_warmup": 250}


@pytest.mark.parametrize(
    "arm, bridge_end, final",
    [
        ("s2d", ("s2d", "opd"), ("s2d", "opd")),
        ("no_opd", ("no_opd", "warmup"), ("no_opd", "warmup")),
        ("s2d_stage3", ("s2d_stage3", "opd"), ("s2d_stage3", "student_rl")),
        ("s2d_stage3_replay", ("s2d_stage3", "opd"), ("s2d_stage3_replay", "student_rl")),
        ("grpo_direct", None, ("grpo_direct", "student_rl")),
    ],
)
def test_where_each_arms_student_ends(arm, bridge_end, final):
    assert arms.final_student_step(arm) == final
    if SPECS[arm].distils:
        assert arms.bridge_final_step(arm) == bridge_end
