"""Shared fixtures: micro settings that run the real stages in seconds on 2 cores, offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from s2d_pipeline.config import deep_merge, load_config

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
    "data": {
        "n_labels": 40,
        "n_prompts": 40,
        "n_eval": 16,
        "labels_rows": {"min": 8, "max": 1000},
        "prompts_rows": {"min": 8, "max": 1000},
        "eval_rows": {"min": 8, "max": 1000},
    },
    "budget": 16,
    "models": {
        "teacher": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64},
        "student": {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32},
    },
    "prepare": {
        "teacher": {"steps": 300, "noise_rate": 0.5},
        "student": {"steps": 300, "noise_rate": 0.5},
        "batch_size": 64,
        "learning_rate": 3e-3,
        "gate_min_accuracy": 0.0,
        "gate_max_accuracy": 1.0,
        "gate_eval_size": 16,
        "max_retries": 0,
    },
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


STAGE_MICRO = deep_merge(
    MICRO,
    {
        "teacher_rl": {
            "steps": 3,
            "prompts_per_step": 4,
            "num_generations": 4,
            "warmup_steps": 0,
            "learning_rate": 1e-3,
        },
        "grpo_direct": {
            "steps": 3,
            "prompts_per_step": 4,
            "num_generations": 4,
            "warmup_steps": 0,
            "learning_rate": 1e-3,
        },
        "student_rl": {
            "steps": 2,
            "prompts_per_step": 2,
            "num_generations": 4,
            "warmup_steps": 0,
            "learning_rate": 1e-3,
        },
        "rollouts": {"samples_per_prompt": 2, "batch_size": 64},
        "warmup": {"steps": 4, "batch_size": 32, "warmup_steps": 0, "learning_rate": 3e-3},
        "opd": {"steps": 4, "batch_size": 32, "warmup_steps": 0, "learning_rate": 3e-3},
        "evaluate": {"k": 2, "kl_prompts": 32, "batch_size": 64},
    },
)


def _params_equal(a, b) -> bool:
    import torch

    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory):
    """Run every stage once on micro settings; record which label prompts each GRPO run saw."""
    from s2d_pipeline.stages import (
        allocate,
        evaluate,
        opd,
        prepare,
        rollouts,
        student_rl,
        teacher_rl,
        validate,
        warmup,
    )
    from s2d_pipeline.tasks.arithmetic import ArithmeticTask

    root = tmp_path_factory.mktemp("pipeline")
    (root / "params.yaml").write_text((REPO / "params.yaml").read_text())
    cfg = load_config(root / "params.yaml", STAGE_MICRO, root=root)
    for stage in (prepare, validate, allocate):
        stage.run(cfg)

    seen: dict[str, set[str]] = {}
    original = ArithmeticTask.rewards
    current = {"stage": None}

    def spy(self, completions, answers):  # a spy: the real verifier still scores
        seen.setdefault(current["stage"], set()).update(map(str, answers))
        return original(self, completions, answers)

    ArithmeticTask.rewards = spy
    try:
        out = {}
        for name, stage in (
            ("teacher_rl", teacher_rl),
            ("rollouts", rollouts),
            ("warmup", warmup),
            ("opd", opd),
            ("student_rl", student_rl),
            ("evaluate", evaluate),
        ):
            current["stage"] = name
            out[name] = stage.run(cfg)
    finally:
        ArithmeticTask.rewards = original
    return cfg, out, seen
