"""How DVC runs the per-arm stages: `dvc.yaml` expands each over its items in `dvc_units.yaml`
(`foreach`): one item for the whole stage, or with `dvc.per_arm_stages` one per unit (an RL teacher,
a rollout set, a bridge, a student GRPO run), so a change to one arm's settings reruns only that arm.

    s2d dvc-units            # rewrite dvc_units.yaml (after changing `arms` or `dvc.per_arm_stages`)
    s2d dvc-units --check    # exit 2 when it is out of date

The units and the paths each one reads come from `arms.SPECS` and `layout`, so the file is written,
never edited. Every stage that DVC runs checks it first (`check`): when it no longer matches the
params (`arms` changed with per-unit stages on, or `dvc.per_arm_stages` changed), `dvc repro` stops
with what to run instead of training the old set of units. With whole stages the file seldom changes
with `arms`: those stages depend on `arms` and rerun.
"""

from __future__ import annotations

from pathlib import Path

from s2d_pipeline.arms import PER_ARM_STAGES, SPECS, STUDENT_RL, bridge_final_step, stage_units
from s2d_pipeline.config import Config
from s2d_pipeline.errors import S2DError
from s2d_pipeline.io import atomic_path
from s2d_pipeline.layout import (
    base_model_dir,
    rollouts_file,
    stage_dir,
    student_dir,
    teacher_dir,
    unit_metrics_dir,
    unit_metrics_file,
)

FILE = "dvc_units.yaml"
KEY = "dvc_units"  # the vars key dvc.yaml reads (kept apart from params.yaml's keys)
HEADER = (
    "# Written by `s2d dvc-units` from params.yaml's `arms` and `dvc.per_arm_stages` and\n"
    "# s2d_pipeline/arms.py: what each per-arm DVC stage runs (`foreach` in dvc.yaml) and reads.\n"
    "# Do not edit; rerun `s2d dvc-units` after changing either key.\n"
)


WHOLE = "all"  # the key of a per-arm stage's one DVC stage when dvc.per_arm_stages is off


def units(cfg: Config) -> dict:
    """{stage: {key: fields}} for every per-arm stage, the `foreach` items of dvc.yaml: `args` for
    `s2d <stage>`, the outputs (`out`, `metrics`) and the inputs as project-relative paths (a slot a
    unit does not need repeats one it has, so every item has the same fields). With
    `dvc.per_arm_stages` one item per unit (`--arm <arm>`), else one item `all` for the whole stage,
    whose inputs are the units' inputs' stage directories."""

    def rel(path: Path) -> str:
        path = Path(path)
        return str(path.relative_to(cfg.root)) if path.is_relative_to(cfg.root) else str(path)

    prepared = rel(stage_dir(cfg, "prepare"))  # an input of every per-arm stage, always listed in dvc.yaml

    def c1_measurement(teacher: str) -> str:
        """The C1 gate's measurement for an RL teacher; the raw teacher has no gate."""
        return rel(teacher_dir(cfg, teacher) if teacher == "raw" else unit_metrics_file(cfg, "teacher_rl", teacher))

    def inputs(stage: str, unit: str, arm: str) -> dict:
        spec = SPECS[unit if stage in ("warmup", "opd") else arm]  # a bridge's unit is its arm
        if stage == "teacher_rl":
            return {}
        if stage == "rollouts":
            return {"teacher": rel(teacher_dir(cfg, unit)), "c1": c1_measurement(unit)}
        if stage == "warmup":
            return {"teacher": rel(teacher_dir(cfg, spec.teacher)), "rollouts": rel(rollouts_file(cfg, spec.teacher))}
        if stage == "opd":
            start = student_dir(cfg, unit, "warmup") if spec.warmup else base_model_dir(cfg, "student")
            return {
                "student": rel(start),
                "teacher": rel(teacher_dir(cfg, spec.teacher)),
                "c1": c1_measurement(spec.teacher),
            }
        assert stage == STUDENT_RL
        start = student_dir(cfg, *bridge_final_step(arm)) if spec.distils else base_model_dir(cfg, "student")
        return {"student": rel(start), "params": spec.student_rl, "params_also": spec.student_rl}

    def stage_root(path: str) -> str:
        """`artifacts/teacher_rl/s2d` -> `artifacts/teacher_rl`; a params section stays itself."""
        parts = Path(path).parts
        return str(Path(*parts[:2])) if len(parts) > 1 else path

    out: dict = {}
    for stage in PER_ARM_STAGES:
        per_unit = {
            unit: {
                "args": f"--arm {arm}",
                "out": rel(rollouts_file(cfg, unit) if stage == "rollouts" else stage_dir(cfg, stage) / unit),
                "metrics": rel(unit_metrics_file(cfg, stage, unit)),
                "arms": "seed",  # a params slot: one unit's work does not depend on the other arms
                **inputs(stage, unit, arm),
            }
            for unit, arm in stage_units(stage, cfg.arms).items()
        }
        if cfg.dvc.per_arm_stages or not per_unit:
            out[stage] = per_unit
            continue
        whole = {  # the whole stage runs the units the arms need: it depends on `arms`
            "args": "",
            "out": rel(stage_dir(cfg, stage)),
            "metrics": rel(unit_metrics_dir(cfg, stage)),
            "arms": "arms",
        }
        slots = [k for k in next(iter(per_unit.values())) if k not in whole]
        sections = sorted({item["params"] for item in per_unit.values() if "params" in item})
        if len(sections) > 2:
            raise ValueError(f"dvc_units: {stage} reads {sections}; dvc.yaml has two params slots")
        for slot in slots:
            if slot.startswith("params"):
                roots = sections[:1] if slot == "params" else sections[-1:]
            else:
                roots = sorted({stage_root(item[slot]) for item in per_unit.values()} - {prepared})
            if len(roots) > 1:
                raise ValueError(f"dvc_units: {stage}'s input '{slot}' spans {roots}; dvc.yaml has one slot for it")
            whole[slot] = roots[0] if roots else prepared
        out[stage] = {WHOLE: whole}
    return {KEY: out}


def address(cfg: Config, stage: str, unit: str) -> str:
    """The DVC stage that runs `unit` of per-arm `stage` (`warmup@no_opd`, or `warmup@all`)."""
    return f"{stage}@{unit if cfg.dvc.per_arm_stages else WHOLE}"


def render(cfg: Config) -> str:
    import yaml

    return HEADER + yaml.safe_dump(units(cfg), sort_keys=False, default_flow_style=None, width=120)


def write(cfg: Config) -> Path:
    path = cfg.root / FILE
    with atomic_path(path) as tmp:
        tmp.write_text(render(cfg))
    return path


def check(cfg: Config) -> None:
    """Raise S2DError when the project's dvc_units.yaml does not match `cfg`'s arms."""
    path = cfg.root / FILE
    if not path.is_file():
        raise S2DError(f"{path} is missing: run `s2d dvc-units` to write it, then `dvc repro`")
    if path.read_text() != render(cfg):
        raise S2DError(
            f"{path} does not match params.yaml's `arms` ({', '.join(cfg.arms)}) and `dvc.per_arm_stages` "
            f"({str(cfg.dvc.per_arm_stages).lower()}), so dvc.yaml's per-arm stages are the old units: run "
            "`s2d dvc-units`, then `dvc repro` again (finished stages are kept)"
        )
