"""The units DVC runs as one stage each: `dvc.yaml` expands every per-arm stage over the units in
`dvc_units.yaml` (`foreach`), so a change to one arm's settings reruns only that arm's stages.

    s2d dvc-units            # rewrite dvc_units.yaml from params.yaml's `arms` (after changing them)
    s2d dvc-units --check    # exit 2 when it is out of date

The units and the paths each one reads come from `arms.SPECS` and `layout`, so the file is written,
never edited. Every stage that DVC runs checks it first (`check`): after a change to `arms`, `dvc
repro` stops with what to run instead of training the old set of units.
"""

from __future__ import annotations

from pathlib import Path

from s2d_pipeline.config import Config

FILE = "dvc_units.yaml"
KEY = "dvc_units"  # the vars key dvc.yaml reads (kept apart from params.yaml's keys)
HEADER = (
    "# Written by `s2d dvc-units` from params.yaml's `arms` and s2d_pipeline/arms.py: the unit each\n"
    "# per-arm DVC stage runs (`foreach` in dvc.yaml), with what it reads. Do not edit; rerun\n"
    "# `s2d dvc-units` after changing `arms`.\n"
)


def units(cfg: Config) -> dict:
    """{stage: {unit: {arm, inputs...}}} for every per-arm stage: the arm `s2d <stage> --arm` is
    called with, and the unit's own inputs as project-relative paths (a unit without one of them
    repeats an input it has, so every unit of a stage has the same fields)."""
    from s2d_pipeline.arms import (
        PER_ARM_STAGES,
        SPECS,
        STUDENT_RL,
        bridge_final_step,
        stage_units,
    )
    from s2d_pipeline.layout import (
        base_model_dir,
        rollouts_file,
        student_dir,
        teacher_dir,
        unit_metrics_file,
    )

    def rel(path: Path) -> str:
        path = Path(path)
        return str(path.relative_to(cfg.root)) if path.is_relative_to(cfg.root) else str(path)

    def c1_measurement(teacher: str) -> str:
        """The C1 gate's measurement for an RL teacher; the raw teacher has no gate."""
        if teacher == "raw":
            return rel(teacher_dir(cfg, teacher))
        return rel(unit_metrics_file(cfg, "teacher_rl", teacher))

    out: dict = {}
    for stage in PER_ARM_STAGES:
        out[stage] = {}
        for unit, arm in stage_units(stage, cfg.arms).items():
            spec = SPECS[unit if stage in ("warmup", "opd") else arm]  # a bridge's unit is its arm
            entry: dict = {"arm": arm}
            if stage == "rollouts":
                entry |= {"teacher": rel(teacher_dir(cfg, unit)), "c1": c1_measurement(unit)}
            elif stage == "warmup":
                entry |= {
                    "teacher": rel(teacher_dir(cfg, spec.teacher)),
                    "rollouts": rel(rollouts_file(cfg, spec.teacher)),
                }
            elif stage == "opd":
                start = student_dir(cfg, unit, "warmup") if spec.warmup else base_model_dir(cfg, "student")
                entry |= {
                    "teacher": rel(teacher_dir(cfg, spec.teacher)),
                    "c1": c1_measurement(spec.teacher),
                    "student": rel(start),
                }
            elif stage == STUDENT_RL:
                start = student_dir(cfg, *bridge_final_step(arm)) if spec.distils else base_model_dir(cfg, "student")
                entry |= {"student": rel(start), "params": spec.student_rl}
            out[stage][unit] = entry
    return {KEY: out}


def render(cfg: Config) -> str:
    import yaml

    return HEADER + yaml.safe_dump(units(cfg), sort_keys=False, default_flow_style=None, width=120)


def write(cfg: Config) -> Path:
    from s2d_pipeline.io import atomic_path

    path = cfg.root / FILE
    with atomic_path(path) as tmp:
        tmp.write_text(render(cfg))
    return path


def check(cfg: Config) -> None:
    """Raise S2DError when the project's dvc_units.yaml does not match `cfg`'s arms."""
    from s2d_pipeline.errors import S2DError

    path = cfg.root / FILE
    if not path.is_file():
        raise S2DError(f"{path} is missing: run `s2d dvc-units` to write it, then `dvc repro`")
    if path.read_text() != render(cfg):
        raise S2DError(
            f"{path} does not match params.yaml's `arms` ({', '.join(cfg.arms)}), so dvc.yaml's per-arm "
            "stages are the old units: run `s2d dvc-units`, then `dvc repro` again (finished stages are kept)"
        )
