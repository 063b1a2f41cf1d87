"""`s2d opd`: Stage 2b — on-policy distillation with a dense per-token reward.

For every arm with OPD, the student (after warmup where the arm has one) samples on unlabeled
prompts and minimises per-token reverse KL to the arm's teacher (TRL DistillationTrainer, beta=1).
Needs no labels. An RL teacher that fails the C1 gate (`s2d_pipeline.gate`) stops the stage first.

    s2d opd
"""

from __future__ import annotations

from functools import partial

from s2d_pipeline import arms as arm_specs
from s2d_pipeline import runtime
from s2d_pipeline.config import Config
from s2d_pipeline.data import load_split
from s2d_pipeline.gate import require_improved_teacher
from s2d_pipeline.io import write_unit_metrics
from s2d_pipeline.layout import base_model_dir, student_dir, teacher_dir, unit_metrics_dir
from s2d_pipeline.prompts import trainer_prompt
from s2d_pipeline.tasks import get_task
from s2d_pipeline.training import summarise_loss_history, train_arm, train_opd


def run(cfg: Config, arm: str | None = None) -> dict:
    runtime.setup(cfg)
    task = get_task(cfg.task)
    prompts = [trainer_prompt(cfg, task, r["prompt"]) for r in load_split(cfg, task, "prompts")]
    metrics: dict = {}
    units = arm_specs.bridge_stage_arms("opd", cfg.arms, cfg.warmup.steps, cfg.opd.steps)
    for unit, spec, steps in arm_specs.only_unit(units, "opd", arm):
        c1 = require_improved_teacher(cfg, spec.teacher)
        start = student_dir(cfg, unit, "warmup") if spec.warmup else base_model_dir(cfg, "student")
        metrics[unit] = train_arm(
            cfg,
            "opd",
            unit,
            student_dir(cfg, unit, "opd"),
            partial(train_opd, cfg, start, teacher_dir(cfg, spec.teacher), prompts, steps, f"opd/{unit}"),
            summarise_loss_history,
            teacher=spec.teacher,
            steps=steps,
        )
        if c1:
            metrics[unit]["c1_gate"] = c1
    return write_unit_metrics(unit_metrics_dir(cfg, "opd"), metrics, prune=arm is None)
