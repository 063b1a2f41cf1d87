"""`s2d warmup`: Stage 2a — forward KL of the student toward the teacher on the teacher's rollouts.

For every arm with a warmup, starts from the raw student and trains on the rollouts of that arm's
teacher: token-level forward KL against the teacher's full distribution (TRL GKD, lmbda=0, beta=0),
or plain SFT on the sampled tokens with `warmup.loss: sft`. Needs no labels.

    s2d warmup
"""

from __future__ import annotations

from functools import partial

from s2d_pipeline import arms as arm_specs
from s2d_pipeline.config import Config
from s2d_pipeline.io import read_jsonl, write_stage_metrics
from s2d_pipeline.layout import base_model_dir, metrics_file, rollouts_file, student_dir, teacher_dir


def run(cfg: Config, arm: str | None = None) -> dict:
    from s2d_pipeline import runtime
    from s2d_pipeline.training import summarise_loss_history, train_arm, train_forward_kl

    runtime.setup(cfg)
    metrics: dict = {}
    units = arm_specs.bridge_stage_arms("warmup", cfg.arms, cfg.warmup.steps, cfg.opd.steps)
    for unit, spec, steps in arm_specs.only_unit(units, "warmup", arm):
        rollouts = read_jsonl(rollouts_file(cfg, spec.teacher))
        metrics[unit] = train_arm(
            cfg,
            "warmup",
            unit,
            student_dir(cfg, unit, "warmup"),
            partial(
                train_forward_kl,
                cfg,
                cfg.warmup,
                base_model_dir(cfg, "student"),
                teacher_dir(cfg, spec.teacher),
                rollouts,
                steps,
                f"warmup/{unit}",
            ),
            summarise_loss_history,
            teacher=spec.teacher,
            steps=steps,
            loss=cfg.warmup.loss,
        )
    return write_stage_metrics(metrics_file(cfg, "warmup"), metrics, partial=arm is not None)
