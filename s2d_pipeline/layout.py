"""Where every stage reads and writes. `dvc.yaml` declares the same paths (a test checks)."""

from __future__ import annotations

from pathlib import Path

from s2d_pipeline.config import Config

SPLITS = ("labels", "prompts", "eval")


def data_file(cfg: Config, split: str) -> Path:
    return cfg.path(getattr(cfg.data, split))


def stage_dir(cfg: Config, stage: str) -> Path:
    return cfg.artifacts / stage


def metrics_file(cfg: Config, stage: str) -> Path:
    return cfg.metrics / f"{stage}.json"


def base_model_dir(cfg: Config, role: str) -> Path:
    """The raw (pre-RL) teacher or student: built by `prepare`, or the user's model path."""
    if cfg.models.source == "path":
        from s2d_pipeline.config import resolve_model_ref

        ref = getattr(cfg.models, role).path
        resolved = resolve_model_ref(ref, cfg.root) if ref else None
        return resolved if resolved is not None else cfg.path(ref or f"<missing {role} path>")
    return stage_dir(cfg, "prepare") / role


def validation_report(cfg: Config) -> Path:
    return stage_dir(cfg, "validate") / "report.json"


def ledger_file(cfg: Config) -> Path:
    return stage_dir(cfg, "allocate") / "ledger.json"
