"""The label-efficiency benchmark reads a claim only where its preconditions hold: on hand-made
records, a failing precondition gives "not testable here: <reason>", a holding one the paired verdict."""

from __future__ import annotations

import pytest

from bench.label_efficiency import STUDENT_FLOOR, claim_preconditions, claim_verdicts

ARMS = ("s2d", "s2d_stage3", "s2d_stage3_replay", "grpo_direct", "raw_bridge", "no_warmup", "no_opd")


def cell(seed: int, budget: int = 64, *, teacher_raw=0.5, student_raw=0.3, teacher_rl=0.9, gain=0.1, **arms) -> dict:
    """One (seed, budget) record as `bench.label_efficiency.run` writes it, one score for both metrics:
    every arm at 0.6 unless given, `s2d` at `grpo_direct` + `gain`, both RL teachers at `teacher_rl`."""
    scores = dict.fromkeys(ARMS, 0.6) | arms
    scores["s2d"] = arms.get("s2d", scores["grpo_direct"] + gain)
    score = lambda v: {"greedy": v, "avg_at_k": v}  # noqa: E731
    return {
        "seed": seed,
        "budget": budget,
        "evaluate": {
            "k": 8,
            "arms": {a: score(v) for a, v in scores.items()},
            "teachers": {
                "teacher_raw": score(teacher_raw),
                "teacher_rl/s2d": score(teacher_rl),
                "teacher_rl/s2d_stage3": score(teacher_rl),
            },
            "student_raw": score(student_raw),
        },
    }


def verdict(records, left="s2d", right="grpo_direct", metric="avg_at_k") -> dict:
    return next(v for v in claim_verdicts(records, metric) if (v["left"], v["right"]) == (left, right))


def test_preconditions_hold_on_a_cell_the_principle_can_be_read_on():
    e = cell(0)["evaluate"]
    assert claim_preconditions(e, "s2d", "grpo_direct", "avg_at_k") == []
    assert claim_preconditions(e, "s2d_stage3", "s2d_stage3_replay", "greedy") == []


def test_the_headline_claim_compares_the_teacher_with_grpo_directs_student_the_bridge_claims_with_the_raw_one():
    # The RL teacher (0.7) beats the raw student (0.3) but not grpo_direct's student (0.8): no distilled
    # student could beat grpo_direct, while the bridge claims can still be read.
    e = cell(0, teacher_rl=0.7, grpo_direct=0.8)["evaluate"]
    assert claim_preconditions(e, "s2d", "grpo_direct", "avg_at_k") == [
        "the RL teacher not above grpo_direct's student"
    ]
    assert claim_preconditions(e, "s2d", "raw_bridge", "avg_at_k") == []
    e = cell(0, teacher_rl=0.3, student_raw=0.3)["evaluate"]  # equal is not above
    assert claim_preconditions(e, "s2d", "no_warmup", "avg_at_k") == ["the RL teacher not above the raw student"]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ({"student_raw": STUDENT_FLOOR / 2}, f"the raw student at the floor (below {STUDENT_FLOOR})"),
        ({"student_raw": 0.5, "teacher_raw": 0.5}, "the raw student at or above the raw teacher"),
        ({"student_raw": 0.47, "teacher_raw": 0.27}, "the raw student at or above the raw teacher"),
    ],
)
def test_a_raw_student_at_the_floor_or_not_below_the_raw_teacher_makes_every_claim_untestable(raw, reason):
    e = cell(0, **raw)["evaluate"]
    for left, right in (("s2d", "grpo_direct"), ("s2d", "raw_bridge"), ("s2d_stage3", "s2d_stage3_replay")):
        assert claim_preconditions(e, left, right, "greedy") == [reason]


def test_a_claim_whose_preconditions_hold_gets_the_paired_verdict():
    records = [cell(s, b, gain=0.1 + 0.01 * s) for s in (0, 1, 2) for b in (64, 128)]
    v = verdict(records)
    assert (v["verdict"], v["testable"], v["cells"], v["won"]) == ("reproduces", 6, 6, 6)
    assert v["mean"] == pytest.approx(0.11)
    assert verdict([cell(s, gain=-0.1) for s in (0, 1, 2)])["verdict"] == "reversed"
    assert verdict([cell(s, gain=g) for s, g in ((0, 0.1), (1, -0.1), (2, 0.0))])["verdict"] == "not shown"
    # One seed, however many budgets: its interval would be its own value, so no verdict.
    one_seed = verdict([cell(0, b, gain=0.1) for b in (16, 64)])
    assert one_seed["verdict"] == "no verdict: 1 seed, 2 needed" and one_seed["mean"] == pytest.approx(0.1)


def test_a_claim_whose_preconditions_fail_in_every_cell_is_not_testable_with_the_reason():
    # The retired reasoning variant's shape: a raw teacher weaker than the raw student, an RL teacher
    # below grpo_direct; s2d far below grpo_direct, which the plain rule would have called reversed.
    records = [
        cell(s, b, teacher_raw=0.25, student_raw=0.47, teacher_rl=0.45, grpo_direct=0.9, s2d=0.002, no_warmup=0.0)
        for s in (0, 1, 2)
        for b in (64, 128)
    ]
    v = verdict(records)
    assert v["testable"] == 0 and v["cells"] == 6 and v["mean"] is None and v["ci"] is None
    assert v["verdict"] == (
        "not testable here: the RL teacher not above grpo_direct's student (6/6 cells); "
        "the raw student at or above the raw teacher (6/6 cells)"
    )
    assert verdict(records, "s2d", "no_warmup")["verdict"].startswith("not testable here: ")
    assert v["levels"] == pytest.approx((0.002, 0.9))  # both arms' scores are still reported


def test_only_the_testable_cells_enter_the_verdict_and_the_others_are_counted():
    # Seed 2's raw student is at the floor: its cells, where s2d loses, are left out, and said so.
    records = [cell(s, gain=0.1) for s in (0, 1)] + [cell(2, gain=-0.3, student_raw=0.01)]
    v = verdict(records, metric="greedy")
    assert (v["testable"], v["cells"], v["won"]) == (2, 3, 2) and v["mean"] == pytest.approx(0.1)
    assert v["verdict"] == (
        f"reproduces (elsewhere not testable: the raw student at the floor (below {STUDENT_FLOOR}) (1/3 cells))"
    )


def test_paired_by_problem_counts_the_problems_each_side_alone_got_right():
    from bench.label_efficiency import paired_by_problem

    record = cell(0, 16)
    record["by_problem"] = {
        "ids": ["a", "b", "c", "d"],
        "models": {"s2d": {"greedy": [1, 1, 0, 1]}, "grpo_direct": {"greedy": [0, 1, 1, 0]}},
    }
    rows = paired_by_problem([record, cell(1, 16)])  # a record without verdicts per problem is skipped
    assert [(r["seed"], r["left"], r["right"]) for r in rows] == [(0, "s2d", "grpo_direct")]
    r = rows[0]
    assert (r["mean"], r["left_higher"], r["right_higher"]) == (0.25, 2, 1)
    assert r["ci95"][0] <= 0.25 <= r["ci95"][1] and r["ci95"][0] < r["ci95"][1]
