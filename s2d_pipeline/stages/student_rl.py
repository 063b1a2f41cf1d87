"""`s2d student_rl`: Stage 3 (optional) and the direct-GRPO baseline — GRPO on the student.

- `s2d_stage3`: GRPO on the post-bridge student with the ledger's held-out labels.
- `s2d_stage3_replay`: the matched control — the same number of updates from the same post-bridge
  student, on labels the arm already spent on its teacher (no new labels).
- `grpo_direct`: GRPO on the raw student with the whole budget (`grpo_direct` params).

Every labeled row comes from the ledger (`labeled_rows`), nowhere else.

    s2d student_rl
"""

from __future__ import annotations

from functools import partial

from s2d_pipeline import arms as arm_specs
from s2d_pipeline import runtime
from s2d_pipeline.config import Config
from s2d_pipeline.io import write_unit_metrics
from s2d_pipeline.layout import base_model_dir, student_dir, unit_metrics_dir
from s2d_pipeline.ledger import STUDENT_RL, labeled_rows
from s2d_pipeline.tasks import get_task
from s2d_pipeline.training import summarise_rl_history, train_arm, train_grpo


def run(cfg: Config, arm: str | None = None) -> dict:
    runtime.setup(cfg)
    task = get_task(cfg.task)
    metrics: dict = {}
    for unit in arm_specs.only_unit(arm_specs.student_rl_arms(cfg.arms), "student_rl", arm):
        spec = arm_specs.SPECS[unit]
        # After the bridge when the arm distils (Stage 3), else from the raw student (direct GRPO).
        start = (
            student_dir(cfg, *arm_specs.bridge_final_step(unit)) if spec.distils else base_model_dir(cfg, "student")
        )
        rows, settings = labeled_rows(cfg, unit, STUDENT_RL), getattr(cfg, spec.student_rl)
        metrics[unit] = train_arm(
            cfg,
            "student_rl",
            unit,
            student_dir(cfg, *arm_specs.final_student_step(unit)),
            partial(train_grpo, cfg, task, start, rows, settings, f"student_rl/{unit}"),
            summarise_rl_history,
            labels_seen=len(rows),
            new_labels=spec.labels is not arm_specs.LabelUse.TEACHER_AND_REPLAY,
            settings=spec.student_rl,
            steps=settings.steps,
        )
    return write_unit_metrics(unit_metrics_dir(cfg, "student_rl"), metrics, prune=arm is None)
