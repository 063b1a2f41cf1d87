"""Reading the three data splits into canonical rows through the task adapter."""

from __future__ import annotations

from s2d_pipeline.config import Config
from s2d_pipeline.io import read_data_file
from s2d_pipeline.layout import data_file
from s2d_pipeline.tasks import Task


def load_split(cfg: Config, task: Task, split: str) -> list[dict]:
    """Canonical rows of `labels`, `prompts` or `eval` (JSONL, a JSON array, Parquet or Arrow); each
    keeps where it is in its file (line, or row number) under `_line`."""
    path = data_file(cfg, split)
    return task.to_canonical(read_data_file(path), path)
