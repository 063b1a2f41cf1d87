"""`s2d student_rl`: Stage 3 (optional) and the direct-GRPO baseline — GRPO on the student.

- `s2d_stage3`: GRPO on the post-bridge student with the ledger's held-out labels.
- `s2d_stage3_replay`: the matched control — the same number of updates from the same post-bridge
  student, on labels the arm already spent on its teacher (no new labels).
- `grpo_direct`: GRPO on the raw student with the whole budget (`grpo_direct` params).

Every labeled row comes from the ledger (`labeled_rows`), nowhere else.

    s2d student_rl
"""

from __future__ import annotations

import time

from s2d_pipeline import arms as arm_specs
from s2d_pipeline.config import Config
from s2d_pipeline.io import atomic_dir, write_json
from s2d_pipeline.layout import base_model_dir, metrics_file, student_dir
from s2d_pipeline.ledger import GRPO_DIRECT, STUDENT_RL
from s2d_pipeline.tasks import get_task
from s2d_pipeline.tracking import arm_run


def student_rl_arms(arms) -> list[str]:
    return [a for a in arms if arm_specs.SPECS[a].stage3 or a == GRPO_DIRECT]


def run(cfg: Config) -> dict:
    from s2d_pipeline import runtime
    from s2d_pipeline.stages.allocate import labeled_rows
    from s2d_pipeline.training import save_trained, summarise_rl_history, train_grpo

    runtime.setup(cfg)
    task = get_task(cfg.task)
    metrics: dict = {}
    for arm in student_rl_arms(cfg.arms):
        started = time.perf_counter()
        if arm == GRPO_DIRECT:
            start, rows, stage_cfg = (
                base_model_dir(cfg, "student"),
                labeled_rows(cfg, arm, GRPO_DIRECT),
                cfg.grpo_direct,
            )
        else:
            start = student_dir(cfg, *arm_specs.bridge_final_step(arm))
            rows, stage_cfg = labeled_rows(cfg, arm, STUDENT_RL), cfg.student_rl
        _, step = arm_specs.final_student_step(arm)
        with arm_run(cfg, "student_rl", arm), atomic_dir(student_dir(cfg, arm, step)) as tmp:
            trainer = train_grpo(cfg, task, start, rows, stage_cfg, run_name=f"{step}/{arm}")
            history = save_trained(trainer, tmp)
        metrics[arm] = {
            "labels_seen": len(rows),
            "new_labels": arm_specs.SPECS[arm].stage3 != "replay",
            "steps": stage_cfg.steps,
            "wall_s": round(time.perf_counter() - started, 2),
            **summarise_rl_history(history),
        }
    write_json(metrics_file(cfg, "student_rl"), metrics)
    return metrics
