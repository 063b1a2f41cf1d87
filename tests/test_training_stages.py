"""Every training stage on micro settings, asserting mechanics that could fail.

One module-scoped pipeline (prepare -> ... -> evaluate on tiny models, a few steps each) keeps the
file near a minute on 2 cores; each test then checks one stage's contract on its outputs.
"""

from __future__ import annotations

import json

import pytest

from tests.helpers import params_equal


def test_teacher_rl_moves_parameters_and_spends_only_its_labels(pipeline):
    from s2d_pipeline.layout import base_model_dir, rl_teacher_dir
    from s2d_pipeline.models import load_model

    cfg, out, _ = pipeline
    raw = load_model(base_model_dir(cfg, "teacher"), cfg)
    for key in ("s2d", "s2d_stage3"):
        assert not params_equal(raw, load_model(rl_teacher_dir(cfg, key), cfg))
    assert out["teacher_rl"]["s2d"]["labels_used"] == cfg.budget
    assert out["teacher_rl"]["s2d_stage3"]["labels_used"] == cfg.budget - round(cfg.budget * 0.25)


def test_rollouts_have_the_declared_schema_and_touch_no_label(pipeline, tmp_path):
    from s2d_pipeline.io import read_jsonl
    from s2d_pipeline.layout import data_file, rollouts_file
    from s2d_pipeline.stages import rollouts
    from s2d_pipeline.stages.rollouts import ROLLOUT_COLUMNS

    cfg, _, _ = pipeline
    rows = read_jsonl(rollouts_file(cfg, "s2d"))
    pool = {r["id"] for r in read_jsonl(data_file(cfg, "prompts"))}
    assert len(rows) == 2 * len(pool)
    for row in rows:
        assert set(row) - {"_line"} == set(ROLLOUT_COLUMNS)
        assert (
            row["prompt_id"] in pool
            # the sampled ids end with the end token when finished; a sampled special token (<pad>)
            # counts as a token but is not in the text
            and row["num_tokens"] == len(row["completion_ids"]) - row["finished"] <= 2
            and len(row["completion"]) <= row["num_tokens"]
            and row["teacher_logprob"] <= 0
        )
    # No label is read: the stage still runs with the labels file gone (in a copy of the project, so
    # the shared outputs other tests read stay as the pipeline wrote them).
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(cfg.root, copy)
    cfg_copy = cfg.model_copy(update={"root": copy})
    data_file(cfg_copy, "labels").unlink()
    assert rollouts.run(cfg_copy)["s2d"]["rows"] == len(rows)


def test_warmup_and_opd_lower_teacher_student_kl(pipeline):
    """C2, the per-token KL(student || teacher) on the student's own seeded samples: what OPD minimises,
    so it is read on-policy (on fixed tokens, such as the teacher's rollouts, a few OPD steps can move
    the KL either way)."""
    cfg, out, _ = pipeline
    arms = json.loads((cfg.metrics / "evaluate.json").read_text())["arms"]
    c2 = arms["s2d"]["C2_kl"]
    assert c2["after_warmup"] < c2["before_warmup"]
    assert c2["after_opd"] < c2["before_warmup"]
    opd_alone = arms["no_warmup"]["C2_kl"]
    assert opd_alone["after_opd"] < opd_alone["before_warmup"]
    assert out["opd"]["s2d"]["loss_last"] < out["opd"]["s2d"]["loss_first"]
    # Ablations keep compute equal: the removed stage's steps go to the other one.
    assert out["opd"]["no_warmup"]["steps"] == out["warmup"]["no_opd"]["steps"] == 8


def test_every_grpo_run_grades_only_the_labels_its_ledger_entry_allows(pipeline):
    """What each GRPO run's reward function saw, by label id, against the ledger file read directly
    (not through `labeled_rows`, the code under test)."""
    from s2d_pipeline.io import read_jsonl

    cfg, out, seen = pipeline
    ledger = json.loads((cfg.artifacts / "allocate" / "ledger.json").read_text())
    labels_file = {str(r["id"]) for r in read_jsonl(cfg.path(cfg.data.labels))}

    def ids(arm, stage):
        return set(ledger["arms"][arm]["stages"][stage]["ids"])

    budget_ids = ids("s2d", "teacher_rl")
    holdout, teacher_share = ids("s2d_stage3", "student_rl"), ids("s2d_stage3", "teacher_rl")
    # The ledger itself: N labels from the file, split into a teacher share and a disjoint hold-out.
    assert len(budget_ids) == cfg.budget and budget_ids <= labels_file
    assert teacher_share | holdout == budget_ids and not teacher_share & holdout
    assert ids("grpo_direct", "student_rl") == budget_ids

    assert set(seen) == {
        "teacher_rl/s2d",
        "teacher_rl/s2d_stage3",
        "student_rl/s2d_stage3",
        "student_rl/s2d_stage3_replay",
        "student_rl/grpo_direct",
    }
    assert seen["teacher_rl/s2d"] <= budget_ids
    assert seen["teacher_rl/s2d_stage3"] <= teacher_share  # never the Stage-3 hold-out
    assert seen["student_rl/s2d_stage3"] <= holdout  # Stage 3: only new labels
    replayed = ids("s2d_stage3_replay", "student_rl")
    assert replayed <= teacher_share and len(replayed) == len(holdout)  # control: as many, already spent
    assert seen["student_rl/s2d_stage3_replay"] <= replayed
    assert seen["student_rl/grpo_direct"] <= budget_ids
    # Each run drew steps x prompts_per_step rows from its share: it saw more than one label.
    assert all(len(v) > 1 for v in seen.values())
    assert out["student_rl"]["s2d_stage3"]["labels_seen"] == len(holdout) == ledger["stage3_holdout"]
    assert out["student_rl"]["s2d_stage3_replay"]["new_labels"] is False
    assert ledger["arms"]["s2d_stage3_replay"]["spent"] == cfg.budget - ledger["stage3_holdout"]


def test_evaluate_writes_every_arm_and_the_comparison(pipeline):
    cfg, out, _ = pipeline
    result = out["evaluate"]
    assert set(result["arms"]) == set(cfg.arms)
    assert set(result["C1"]) == {"s2d", "s2d_stage3"}
    table = (cfg.artifacts / "evaluate" / "comparison.md").read_text()
    for arm in cfg.arms:
        assert f"| {arm} |" in table
    assert "grpo_direct" in (cfg.artifacts / "evaluate" / "comparison.csv").read_text()


def test_evaluate_keeps_every_models_verdict_per_problem(pipeline):
    """by_problem.json: one verdict per eval problem for every evaluated model, in eval order, and the
    accuracies in evaluate.json are their means (so arms can be compared problem by problem)."""
    from s2d_pipeline.data import load_split
    from s2d_pipeline.evaluation import accuracy_metrics_of
    from s2d_pipeline.io import read_json
    from s2d_pipeline.stages.evaluate import BY_PROBLEM, models_evaluated
    from s2d_pipeline.tasks import get_task

    cfg, out, _ = pipeline
    kept = read_json(cfg.artifacts / "evaluate" / BY_PROBLEM)
    rows = load_split(cfg, get_task(cfg.task), "eval")[: cfg.evaluate.max_problems]
    assert kept["ids"] == [r["id"] for r in rows]
    evaluated = models_evaluated(out["evaluate"])
    assert set(kept["models"]) == set(evaluated)
    for name, verdicts in kept["models"].items():
        assert len(verdicts["greedy"]) == len(rows) and set(verdicts["samples"]) == {cfg.evaluate.k}
        m = evaluated[name]
        assert accuracy_metrics_of(verdicts) == {key: m[key] for key in ("greedy", "avg_at_k", "pass_at_k")}


def test_evaluate_pairs_the_candidate_with_the_baseline_problem_by_problem(pipeline):
    """The headline gap, s2d minus grpo_direct, with its interval over the eval problems: in
    evaluate.json and the comparison table."""
    cfg, out, _ = pipeline
    result = out["evaluate"]
    paired = result["paired"]
    assert (paired["left"], paired["right"]) == ("s2d", "grpo_direct")
    for metric in ("avg_at_k", "greedy"):
        p, arms = paired[metric], result["arms"]
        assert p["problems"] == result["eval_problems"]
        assert p["mean"] == pytest.approx(arms["s2d"][metric] - arms["grpo_direct"][metric], abs=1e-3)
        assert p["ci95"][0] <= p["mean"] <= p["ci95"][1]
    table = (cfg.artifacts / "evaluate" / "comparison.md").read_text()
    assert "s2d minus grpo_direct, paired by problem" in table and f"{paired['greedy']['mean']:+.3f}" in table


def test_a_paired_difference_is_the_mean_gap_with_an_interval_over_the_problems():
    from s2d_pipeline.evaluation import paired_difference

    left = {"greedy": [1, 1, 0, 1, 1, 0], "hits": [4, 2, 0, 4, 3, 1], "samples": [4] * 6}
    right = {"greedy": [0, 1, 1, 0, 1, 0], "hits": [0, 1, 4, 0, 3, 1], "samples": [4] * 6}
    greedy = paired_difference(left, right, "greedy")
    assert (greedy["mean"], greedy["left_higher"], greedy["right_higher"]) == (round(1 / 6, 4), 2, 1)
    assert greedy["ci95"][0] < greedy["mean"] < greedy["ci95"][1]
    sampled = paired_difference(left, right, "avg_at_k")  # per problem: +1, +1/4, -1, +1, 0, 0
    assert (sampled["mean"], sampled["left_higher"], sampled["right_higher"]) == (round(1.25 / 6, 4), 3, 1)
    any_right = paired_difference(left, right, "pass_at_k")  # per problem: +1, 0, -1, +1, 0, 0
    assert (any_right["mean"], any_right["left_higher"], any_right["right_higher"]) == (round(1 / 6, 4), 2, 1)
    same = paired_difference(left, left, "pass_at_k")
    assert same["ci95"] == [0.0, 0.0] and same["left_higher"] == same["right_higher"] == 0


def test_accuracy_metrics_score_known_right_and_wrong_completions():
    from s2d_pipeline.evaluation import accuracy_metrics
    from s2d_pipeline.tasks.arithmetic import ArithmeticTask

    task = ArithmeticTask(3)
    rows = [{"prompt": task.problem(58, 67), "answer": "125"}, {"prompt": task.problem(1, 2), "answer": "3"}]
    right, carry_free = task.encode_answer(125), task.encode_answer(115)
    m = accuracy_metrics(task, [right, "3000"], [[right, carry_free], ["0000", "xx"]], rows)
    assert m == {"greedy": 1.0, "avg_at_k": 0.25, "pass_at_k": 0.5}


def test_sft_warmup_variant_trains(pipeline, tmp_path):
    """`warmup.loss: sft` (cross-entropy on the teacher's sampled tokens) runs through SFTTrainer."""
    import shutil

    from s2d_pipeline.config import config_from_dict
    from s2d_pipeline.layout import base_model_dir, student_dir
    from s2d_pipeline.models import load_model
    from s2d_pipeline.stages import warmup

    cfg0, _, _ = pipeline
    for sub in ("data", "artifacts/prepare", "artifacts/teacher_rl", "artifacts/rollouts"):
        shutil.copytree(cfg0.root / sub, tmp_path / sub)
    raw = cfg0.model_dump(mode="json", exclude={"root"})
    raw["warmup"]["loss"] = "sft"
    raw["arms"] = ["s2d"]
    cfg = config_from_dict(raw, root=tmp_path)
    out = warmup.run(cfg)
    assert out["s2d"]["loss"] == "sft" and out["s2d"]["loss_last"] is not None
    assert not params_equal(
        load_model(base_model_dir(cfg, "student"), cfg), load_model(student_dir(cfg, "s2d", "warmup"), cfg)
    )
