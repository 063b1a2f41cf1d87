"""Crash and resume: a training stage killed with SIGKILL mid-way resumes from its last checkpoint
and ends exactly where an uninterrupted run with the same seed ends; nothing partial is taken for
complete."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from s2d_pipeline.config import deep_merge
from tests.helpers import STAGE_MICRO

# End-to-end runs of the whole pipeline or many stages: `make test-slow` runs only these.
pytestmark = pytest.mark.slow

# Long enough that the kill lands mid-run; a checkpoint every 4 steps.
RESUME = deep_merge(
    STAGE_MICRO, {"teacher_rl": {"steps": 40}, "runtime": {"checkpoint_steps": 4}, "arms": ["s2d", "grpo_direct"]}
)
RUN_DEPENDENT = {"wall_s", "train_runtime_s", "train_tokens_per_s", "trained_by"}


def _project(root: Path, pipeline_root: Path) -> Path:
    """A project with the session pipeline's data, base models and ledger (same inputs for every run)."""
    root.mkdir()
    raw = yaml.safe_load((pipeline_root / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump(deep_merge(raw, RESUME)))
    shutil.copytree(pipeline_root / "data", root / "data")
    for stage in ("prepare", "validate"):
        shutil.copytree(pipeline_root / "artifacts" / stage, root / "artifacts" / stage)
    return root


def _teacher_rl(project: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "s2d_pipeline.cli", "teacher_rl"],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _allocate(project: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "s2d_pipeline.cli", "allocate"], cwd=project, check=True, capture_output=True
    )


def _weights(model_dir: Path):
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


@pytest.fixture(scope="module")
def uninterrupted(pipeline, tmp_path_factory):
    cfg, _, _ = pipeline
    project = _project(tmp_path_factory.mktemp("resume") / "uninterrupted", cfg.root)
    _allocate(project)
    proc = _teacher_rl(project)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    return project


def test_sigkill_mid_training_resumes_to_the_same_result(pipeline, uninterrupted, tmp_path):
    cfg, _, _ = pipeline
    project = _project(tmp_path / "killed", cfg.root)
    _allocate(project)
    checkpoints = project / "checkpoints" / "teacher_rl" / "s2d"
    final = project / "artifacts" / "teacher_rl" / "s2d"

    proc = _teacher_rl(project)
    deadline = time.time() + 300
    while not (checkpoints / "checkpoint-8" / "trainer_state.json").exists():
        assert proc.poll() is None, "the run ended before it could be killed: " + proc.stdout.read()
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL

    # Killed mid-way: no final model, no stage metrics, at least one complete checkpoint to resume.
    assert not final.exists()
    assert not (project / "metrics" / "teacher_rl" / "s2d.json").exists()
    state = json.loads((checkpoints / "checkpoint-8" / "trainer_state.json").read_text())
    assert 8 <= state["global_step"] < RESUME["teacher_rl"]["steps"]

    rerun = _teacher_rl(project)  # what `dvc repro` or a Prefect retry does: run the stage again
    out, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, out
    assert "resuming from" in out and "checkpoint-" in out

    # Same end point as the uninterrupted run: metrics (reward curve summary, tokens) and weights.
    resumed_metrics = json.loads((project / "metrics" / "teacher_rl" / "s2d.json").read_text())
    clean_metrics = json.loads((uninterrupted / "metrics" / "teacher_rl" / "s2d.json").read_text())
    assert {k: v for k, v in resumed_metrics.items() if k not in RUN_DEPENDENT} == {
        k: v for k, v in clean_metrics.items() if k not in RUN_DEPENDENT
    }
    a, b = _weights(final), _weights(uninterrupted / "artifacts" / "teacher_rl" / "s2d")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    # The finished run's checkpoints are gone, and no temporary directory is left behind.
    assert not checkpoints.exists()
    assert not list((project / "artifacts" / "teacher_rl").glob(".*.tmp"))


def test_checkpoint_of_a_different_run_is_not_reused(pipeline, uninterrupted, tmp_path):
    """A leftover checkpoint from other params (here: another learning rate) is discarded."""
    cfg, _, _ = pipeline
    project = _project(tmp_path / "changed", cfg.root)
    _allocate(project)
    stale = project / "checkpoints" / "teacher_rl" / "s2d"
    shutil.copytree(uninterrupted / "artifacts" / "teacher_rl" / "s2d", stale / "checkpoint-36")
    (stale / "checkpoint-36" / "trainer_state.json").write_text("{}")
    (stale / "checkpoint-36" / "optimizer.pt").write_text("")
    (stale / "s2d_run.json").write_text(json.dumps({"fingerprint": "from another run"}))
    proc = _teacher_rl(project)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert "resuming" not in out
    assert (
        json.loads((project / "metrics" / "teacher_rl" / "s2d.json").read_text())["reward_first"]
        == json.loads((uninterrupted / "metrics" / "teacher_rl" / "s2d.json").read_text())["reward_first"]
    )


def test_stale_temporary_output_of_a_killed_run_is_cleaned(tmp_path):
    from s2d_pipeline.io import atomic_dir

    target = tmp_path / "model"
    stale = tmp_path / ".model.s2d-tmp-abc123.tmp"
    stale.mkdir()
    (stale / "half-written.safetensors").write_text("x")
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("ok")
    assert (target / "weights").read_text() == "ok" and (target / "_COMPLETE.json").exists()
    assert not stale.exists()
