"""C1 and C2 as gates: Stage 1 that did not improve the teacher stops distillation (unless
overridden), and warmup can run until the teacher-student KL falls below a target.

Each test copies the shared micro pipeline's inputs into its own directory and reruns a stage there.
"""

from __future__ import annotations

import shutil

import pytest


def _with(cfg, root=None, **changes):
    """`cfg` with nested `changes`, rooted at `root` (default: where it is)."""
    from s2d_pipeline.config import config_from_dict, deep_merge

    raw = deep_merge(cfg.model_dump(mode="json", exclude={"root"}), changes)
    return config_from_dict(raw, root=root or cfg.root)


def _copy(pipeline, tmp_path, subdirs, **changes):
    cfg0, _, _ = pipeline
    for sub in subdirs:
        shutil.copytree(cfg0.root / sub, tmp_path / sub)
    (tmp_path / "metrics").mkdir(exist_ok=True)
    return _with(cfg0, tmp_path, **changes)


@pytest.fixture
def c1_scored(monkeypatch):
    """The ids of the rows each C1 scoring saw: a spy around the real `score` that `teacher_rl` calls."""
    from s2d_pipeline.stages import teacher_rl

    scored: list[list[str]] = []
    real_score = teacher_rl.score

    def score_spy(task, model, tokenizer, rows, *args, **kwargs):
        scored.append([r["id"] for r in rows])
        return real_score(task, model, tokenizer, rows, *args, **kwargs)

    monkeypatch.setattr(teacher_rl, "score", score_spy)
    return scored


def _first_eval_ids(cfg, n: int) -> list[str]:
    from s2d_pipeline.data import load_split
    from s2d_pipeline.tasks import get_task

    return [r["id"] for r in load_split(cfg, get_task(cfg.task), "eval")[:n]]


def test_c1_gate_stops_distillation_from_a_teacher_stage1_did_not_improve(pipeline, tmp_path, c1_scored, caplog):
    from s2d_pipeline.errors import GateError
    from s2d_pipeline.layout import rollouts_file, student_dir
    from s2d_pipeline.stages import opd, rollouts, teacher_rl

    # Stage 1 made to fail: a learning rate too small to move the teacher, so the RL teacher scores
    # what the raw teacher scores (gain 0, not more than min_gain).
    cfg = _copy(
        pipeline,
        tmp_path,
        ["data", "artifacts/prepare", "artifacts/validate", "artifacts/allocate"],
        teacher_rl={"learning_rate": 1e-12},
        gates={"c1": {"override": False, "min_gain": 0.02, "problems": 16, "k": 3}},
    )
    measured = teacher_rl.run(cfg, arm="s2d")["s2d"]["c1_gate"]
    assert measured["problems"] == 16 and measured["k"] == 3
    assert measured["gain"] == pytest.approx(measured["rl_teacher"] - measured["raw_teacher"], abs=1e-4)
    assert measured["gain"] <= 0.02
    # Both teachers were scored on the first `problems` held-out eval problems (not labels or prompts).
    assert c1_scored == [_first_eval_ids(cfg, 16)] * 2

    with pytest.raises(GateError) as stopped:
        rollouts.run(cfg, arm="s2d")
    report = str(stopped.value)
    assert "C1 gate" in report and "'s2d'" in report and "gates.c1.override" in report
    assert f"{measured['rl_teacher']:.4f}" in report and f"{measured['raw_teacher']:.4f}" in report
    assert not rollouts_file(cfg, "s2d").exists()
    # OPD from the same teacher (the no_warmup arm has no rollouts) stops too, and trains nothing.
    with pytest.raises(GateError):
        opd.run(cfg, arm="no_warmup")
    assert not student_dir(cfg, "no_warmup", "opd").exists()
    # The raw teacher is not gated: raw_bridge's rollouts go ahead.
    assert rollouts.run(cfg, arm="raw_bridge")["raw"]["rows"] > 0

    # The override lets a user go on; the stage records the failed gate it went past, silently
    # (teacher_rl warned once for this teacher: every distilling unit repeating it was noise).
    caplog.clear()
    out = rollouts.run(_with(cfg, gates={"c1": {"override": True}}), arm="s2d")["s2d"]
    assert out["rows"] > 0 and rollouts_file(cfg, "s2d").exists()
    assert out["c1_gate"]["passed"] is False and out["c1_gate"]["overridden"] is True
    assert not [r for r in caplog.records if "C1 gate" in r.getMessage()], caplog.text

    # A margin the measured gain clears lets distillation through without an override.
    lenient = _with(cfg, gates={"c1": {"min_gain": measured["gain"] - 0.01}})
    assert rollouts.run(lenient, arm="s2d")["s2d"]["c1_gate"]["passed"] is True


def test_c1_gate_passes_a_teacher_stage1_improved(pipeline, tmp_path, monkeypatch, c1_scored):
    """A real gain: the raw teacher is made worse by construction (its weights re-initialised at
    random) while Stage 1 starts from the pipeline's pretrained teacher, so the RL teacher is better
    than the raw one by what pretraining taught it. The measurement must see that gain, on eval, and
    the gate must let distillation through without an override."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from s2d_pipeline.layout import base_model_dir, rollouts_file
    from s2d_pipeline.stages import rollouts, teacher_rl

    cfg0, _, _ = pipeline
    cfg = _copy(
        pipeline,
        tmp_path,
        ["data", "artifacts/prepare", "artifacts/validate", "artifacts/allocate"],
        teacher_rl={"learning_rate": 1e-12},  # the RL teacher stays the pretrained teacher it starts from
        gates={"c1": {"override": False, "min_gain": 0.02, "problems": 16, "k": 3}},
    )
    pretrained = base_model_dir(cfg0, "teacher")
    torch.manual_seed(0)
    untrained = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(pretrained))
    untrained.save_pretrained(base_model_dir(cfg, "teacher"))  # the copy's raw teacher; tokenizer kept

    real_train_grpo = teacher_rl.train_grpo

    def stage1_from_the_pretrained_teacher(stage_cfg, task, model_dir, *args, **kwargs):
        assert model_dir == base_model_dir(cfg, "teacher")  # Stage 1 starts from the raw teacher ...
        return real_train_grpo(stage_cfg, task, pretrained, *args, **kwargs)  # ... here the better one

    monkeypatch.setattr(teacher_rl, "train_grpo", stage1_from_the_pretrained_teacher)
    measured = teacher_rl.run(cfg, arm="s2d")["s2d"]["c1_gate"]
    assert c1_scored == [_first_eval_ids(cfg, 16)] * 2  # raw and RL teacher, on the same eval problems
    assert measured["raw_teacher"] < measured["rl_teacher"]
    assert measured["gain"] == pytest.approx(measured["rl_teacher"] - measured["raw_teacher"], abs=1e-4)
    assert measured["gain"] > 0.02

    out = rollouts.run(cfg, arm="s2d")["s2d"]
    assert out["c1_gate"]["passed"] is True and "overridden" not in out["c1_gate"]
    assert out["c1_gate"]["gain"] == measured["gain"] and rollouts_file(cfg, "s2d").exists()


def test_c1_gate_asks_for_stage1_when_its_measurement_is_missing(pipeline, tmp_path):
    from s2d_pipeline.errors import S2DError
    from s2d_pipeline.stages import rollouts

    cfg = _copy(pipeline, tmp_path, ["data", "artifacts/prepare", "artifacts/teacher_rl"])
    with pytest.raises(S2DError, match="run `s2d teacher_rl` first"):
        rollouts.run(cfg, arm="s2d")


@pytest.mark.parametrize(("target", "steps_taken", "checked_at"), [(1e6, 2, [2]), (1e-9, 6, [2, 4, 6])])
def test_c2_stopping_rule_ends_warmup_when_kl_is_below_the_target(pipeline, tmp_path, target, steps_taken, checked_at):
    """A target every student meets stops at the first check; one no student meets runs to the cap."""
    from s2d_pipeline.stages import warmup

    cfg = _copy(
        pipeline,
        tmp_path,
        ["data", "artifacts/prepare", "artifacts/teacher_rl", "artifacts/rollouts"],
        arms=["s2d"],
        warmup={"steps": 6, "kl_target": target, "kl_check_every": 2, "kl_prompts": 8},
    )
    out = warmup.run(cfg)["s2d"]
    assert out["kl_target"] == target and out["steps"] == 6
    assert out["steps_taken"] == steps_taken
    assert [step for step, _ in out["c2_checks"]] == checked_at
    assert all(kl > 0 for _, kl in out["c2_checks"])
