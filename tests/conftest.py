"""Shared fixtures: micro settings that run the real stages in seconds on 2 cores, offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_GSM8K = REPO.parent / "shared" / "data" / "gsm8k" / "train.jsonl"

# Micro settings: every stage runs for real, just tiny and short. One-digit addition (100 problems)
# is learnt by a 2-layer width-32 model in ~300 steps, so base models are imperfect but not random
# and GRPO sees rewards that vary within a group (a random model scores 0 everywhere: zero loss).
MICRO = {
    "task": {"digits": 1},
    "data": {"n_labels": 40, "n_prompts": 40, "n_eval": 16,
             "labels_rows": {"min": 8, "max": 1000}, "prompts_rows": {"min": 8, "max": 1000},
             "eval_rows": {"min": 8, "max": 1000}},
    "budget": 16,
    "models": {"teacher": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64},
               "student": {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32}},
    "prepare": {"teacher": {"steps": 300, "noise_rate": 0.5}, "student": {"steps": 300, "noise_rate": 0.5},
                "batch_size": 64, "learning_rate": 3e-3, "gate_min_accuracy": 0.0,
                "gate_max_accuracy": 1.0, "gate_eval_size": 16, "max_retries": 0},
    "tracking": {"enabled": False},
}
for _stage in ("teacher_rl", "grpo_direct", "student_rl", "rollouts", "opd", "evaluate"):
    MICRO[_stage] = {"max_completion_length": 2}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A temporary project directory holding the repository's params.yaml."""
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    return tmp_path


@pytest.fixture
def micro_cfg(project: Path):
    from s2d_pipeline.config import load_config

    return load_config(project / "params.yaml", MICRO, root=project)
