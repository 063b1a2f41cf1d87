"""Fixtures: a temporary project, micro settings, and one micro pipeline shared by the stage tests.
Shared constants and helpers live in tests/helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import MICRO, REPO, STAGE_MICRO

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A temporary project directory holding the repository's params.yaml."""
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    return tmp_path


@pytest.fixture
def micro_cfg(project: Path):
    from s2d_pipeline.config import load_config

    return load_config(project / "params.yaml", MICRO, root=project)


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory):
    """Run every stage once on micro settings. Records, per GRPO run ("teacher_rl/s2d",
    "student_rl/grpo_direct", ...), the ids of the ledger labels its reward function graded: a spy
    around the real verifier reward, which still scores. Tests must not rewrite these outputs."""
    from s2d_pipeline import training
    from s2d_pipeline.config import load_config
    from s2d_pipeline.stages import stages_through

    root = tmp_path_factory.mktemp("pipeline")
    (root / "params.yaml").write_text((REPO / "params.yaml").read_text())
    cfg = load_config(root / "params.yaml", STAGE_MICRO, root=root)

    seen: dict[str, set[str]] = {}
    real_reward, real_train_grpo = training.verifier_reward, training.train_grpo
    current = {"run": None}

    def train_grpo_spy(cfg, task, model_dir, rows, stage, run_name, *args, **kwargs):
        current["run"] = run_name
        return real_train_grpo(cfg, task, model_dir, rows, stage, run_name, *args, **kwargs)

    def reward_spy(task):
        verifier = real_reward(task)

        def spy(prompts, completions, answer, **columns):
            seen.setdefault(current["run"], set()).update(columns["label_id"])
            return verifier(prompts, completions, answer, **columns)

        return spy

    import importlib

    from s2d_pipeline.stages import student_rl, teacher_rl

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training, "verifier_reward", reward_spy)
        for stage in (teacher_rl, student_rl):  # the stages that run GRPO, each with its own name for it
            patch.setattr(stage, "train_grpo", train_grpo_spy)
        out = {}
        for name in stages_through("evaluate"):
            out[name] = importlib.import_module(f"s2d_pipeline.stages.{name}").run(cfg)
    return cfg, out, seen
