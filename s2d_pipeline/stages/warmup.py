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
from s2d_pipeline.io import read_jsonl, write_json
from s2d_pipeline.layout import base_model_dir, metrics_file, rollouts_file, student_dir, teacher_dir


def run(cfg: Config) -> dict:
    from s2d_pipeline import runtime
    from s2d_pipeline.training import summarise_loss_history, train_arm, train_forward_kl

    runtime.setup(cfg)
    metrics: dict = {}
    for arm, spec, steps in arm_specs.bridge_stage_arms("warmup", cfg.arms, cfg.warmup.steps, cfg.opd.steps):
        rollouts = read_jsonl(rollouts_file(cfg, spec.teacher))
        metrics[arm] = train_arm(
            cfg,
            "warmup",
            arm,
            student_dir(cfg, arm, "warmup"),
            partial(
                train_forward_kl,
                cfg,
                cfg.warmup,
                base_model_dir(cfg, "student"),
                teacher_dir(cfg, spec.teacher),
                rollouts,
                steps,
                f"warmup/{arm}",
            ),
            summarise_loss_history,
            teacher=spec.teacher,
            steps=steps,
            loss=cfg.warmup.loss,
        )
    write_json(metrics_file(cfg, "warmup"), metrics)
    return metrics
