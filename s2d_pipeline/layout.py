"""Where every stage reads and writes. `dvc.yaml` declares the same paths (a test checks)."""

from __future__ import annotations

from pathlib import Path

from s2d_pipeline.arms import PER_ARM_STAGES
from s2d_pipeline.config import Config
from s2d_pipeline.io import read_json, read_unit_metrics

SPLITS = ("labels", "prompts", "eval")


def data_file(cfg: Config, split: str) -> Path:
    return cfg.path(getattr(cfg.data, split))


def stage_dir(cfg: Config, stage: str) -> Path:
    return cfg.artifacts / stage


def metrics_file(cfg: Config, stage: str) -> Path:
    """The metrics of a stage that runs once for all arms."""
    return cfg.metrics / f"{stage}.json"


def unit_metrics_dir(cfg: Config, stage: str) -> Path:
    """A per-arm stage's metrics: one file per unit (an RL teacher, a bridge, ...), as DVC runs them."""
    return cfg.metrics / stage


def unit_metrics_file(cfg: Config, stage: str, unit: str) -> Path:
    return unit_metrics_dir(cfg, stage) / f"{unit}.json"


def stage_metrics(cfg: Config, stage: str) -> dict:
    """Any stage's metrics as one dict (a per-arm stage's keyed by unit)."""
    if stage in PER_ARM_STAGES:
        return read_unit_metrics(unit_metrics_dir(cfg, stage))
    return read_json(metrics_file(cfg, stage))


def base_model_dir(cfg: Config, role: str) -> Path:
    """The raw (pre-RL) teacher or student: built by `prepare`, or the user's model path."""
    if cfg.models.source == "path":
        ref = getattr(cfg.models, role).path
        resolved = resolve_model_ref(ref, cfg.root) if ref else None
        return resolved if resolved is not None else cfg.path(ref or f"<missing {role} path>")
    return stage_dir(cfg, "prepare") / role


def resolve_model_ref(ref: str, root: Path) -> Path | None:
    """A local model directory for `ref` (a path or a hub id in the local cache), or None."""
    p = Path(ref) if Path(ref).is_absolute() else root / ref
    if (p / "config.json").exists():
        return p
    if "/" in ref and not ref.startswith((".", "/")):
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover - transformers always brings it
            return None
        hit = try_to_load_from_cache(ref, "config.json")
        if isinstance(hit, str):
            return Path(hit).parent
    return None


def validation_report(cfg: Config) -> Path:
    return stage_dir(cfg, "validate") / "report.json"


def ledger_file(cfg: Config) -> Path:
    return stage_dir(cfg, "allocate") / "ledger.json"


def rl_teacher_dir(cfg: Config, key: str) -> Path:
    return stage_dir(cfg, "teacher_rl") / key


def teacher_dir(cfg: Config, teacher: str) -> Path:
    """The raw teacher ("raw") or an RL teacher by key."""
    return base_model_dir(cfg, "teacher") if teacher == "raw" else rl_teacher_dir(cfg, teacher)


def rollouts_file(cfg: Config, teacher: str) -> Path:
    return stage_dir(cfg, "rollouts") / f"{teacher}.jsonl"


def student_dir(cfg: Config, arm: str, step: str) -> Path:
    """An arm's student after stage `step` ("warmup", "opd" or "student_rl"); one root per stage so
    each DVC stage owns its outputs."""
    return stage_dir(cfg, step) / arm


def checkpoint_dir(cfg: Config, run_name: str) -> Path:
    """Where a training run ("teacher_rl/s2d") keeps resumable checkpoints until it finishes. Outside
    the stage's output root on purpose: `dvc repro` deletes a stage's outputs before rerunning it."""
    return cfg.path(cfg.checkpoints_dir) / run_name
