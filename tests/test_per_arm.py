"""Arms as the unit of work: `s2d <stage> --arm NAME` runs only what that arm needs of a stage, and
leaves every other arm's output and metrics entry as it was."""

from __future__ import annotations

import shutil

import pytest
import yaml

from s2d_pipeline import arms
from s2d_pipeline.cli import main
from s2d_pipeline.io import read_unit_metrics

ALL = list(arms.SPECS)


def test_each_stage_unit_is_what_the_arm_needs():
    assert arms.stage_units("teacher_rl", ALL) == {"s2d": "s2d", "s2d_stage3": "s2d_stage3"}
    assert arms.stage_units("rollouts", ALL) == {"s2d": "s2d", "s2d_stage3": "s2d_stage3", "raw": "raw_bridge"}
    # The replay control reuses the Stage-3 arm's bridge; the ablations train their own.
    assert arms.stage_unit("warmup", "s2d_stage3_replay") == "s2d_stage3"
    assert set(arms.stage_units("warmup", ALL)) == {"s2d", "s2d_stage3", "raw_bridge", "no_opd"}
    assert set(arms.stage_units("opd", ALL)) == {"s2d", "s2d_stage3", "opd_direct", "raw_bridge", "no_warmup"}
    assert set(arms.stage_units("student_rl", ALL)) == {"s2d_stage3", "s2d_stage3_replay", "grpo_direct"}
    assert arms.stage_unit("warmup", "grpo_direct") is None and arms.stage_unit("teacher_rl", "raw_bridge") is None
    # The units are exactly what the whole-stage loops train.
    assert set(arms.stage_units("warmup", ALL)) == {a for a, _, _ in arms.bridge_stage_arms("warmup", ALL, 1, 1)}
    assert set(arms.stage_units("teacher_rl", ALL)) == set(arms.rl_teachers(ALL))
    with pytest.raises(ValueError, match="does not run per arm"):
        arms.stage_unit("evaluate", "s2d")


@pytest.fixture
def copied(pipeline, tmp_path, monkeypatch):
    """The session pipeline's project, copied (its outputs stay as written), as the working directory."""
    cfg, _, _ = pipeline
    root = tmp_path / "project"
    shutil.copytree(cfg.root, root, ignore=shutil.ignore_patterns("checkpoints", "mlruns", "*.db"))
    resolved = cfg.model_dump(mode="json", exclude={"root"})
    (root / "params.yaml").write_text(
        yaml.safe_dump({**resolved, "tracking": {**resolved["tracking"], "enabled": False}})
    )
    monkeypatch.chdir(root)
    return cfg, root


def _s2d(cfg, *args: str) -> int:
    return main(["--params", "params.yaml", *args])


def test_one_arm_reruns_only_its_unit(copied, capsys):
    cfg, root = copied
    before = read_unit_metrics(root / "metrics/warmup")
    others = {a: (root / "artifacts/warmup" / a / "model.safetensors").stat().st_mtime_ns for a in before}
    assert _s2d(cfg, "--arm", "no_opd", "warmup") == 0
    after = read_unit_metrics(root / "metrics/warmup")
    assert set(after) == set(before)  # every arm's entry kept
    assert after["no_opd"]["wall_s"] != before["no_opd"]["wall_s"]  # ... and no_opd's rewritten
    for arm, mtime in others.items():
        changed = (root / "artifacts/warmup" / arm / "model.safetensors").stat().st_mtime_ns != mtime
        assert changed is (arm == "no_opd"), arm


def test_arm_errors_name_the_problem(copied, capsys):
    cfg, _ = copied
    assert _s2d(cfg, "--arm", "bogus", "warmup") == 2
    assert "'bogus' is not a configured arm" in capsys.readouterr().err
    assert _s2d(cfg, "--arm", "s2d", "validate") == 2
    assert "stage 'validate' runs once for all arms" in capsys.readouterr().err
    assert _s2d(cfg, "--arm", "s2d", "run") == 2
    assert "name the stage" in capsys.readouterr().err
