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

# Micro settings: every stage runs for real, just tiny and short.
MICRO = {
    "data": {"n_labels": 64, "n_prompts": 96, "n_eval": 32,
             "labels_rows": {"min": 8, "max": 1000}, "prompts_rows": {"min": 8, "max": 1000},
             "eval_rows": {"min": 8, "max": 1000}},
    "budget": 16,
    "models": {"teacher": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64},
               "student": {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32}},
    "prepare": {"teacher": {"steps": 30}, "student": {"steps": 30}, "batch_size": 64, "gate_min_accuracy": 0.0, "gate_max_accuracy": 1.0,
                "gate_eval_size": 32, "max_retries": 0},
}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A temporary project directory holding the repository's params.yaml."""
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    return tmp_path


@pytest.fixture
def micro_cfg(project: Path):
    from s2d_pipeline.config import load_config

    return load_config(project / "params.yaml", MICRO, root=project)
