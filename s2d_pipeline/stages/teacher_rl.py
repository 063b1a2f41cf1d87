"""`s2d teacher_rl`: Stage 1 — GRPO with the sparse verifiable reward on the teacher.

Spends the ledger's teacher labels (and nothing else) on the raw teacher and saves the RL teacher.
One RL teacher serves every arm whose ledger gives its teacher the same labels (`s2d`, `no_warmup`,
`no_opd`); the Stage-3 arms hold labels out, so their teacher is trained separately.

    s2d teacher_rl                 # every RL teacher the configured arms need
"""

from __future__ import annotations

import time

from s2d_pipeline import arms as arm_specs
from s2d_pipeline.config import Config
from s2d_pipeline.io import atomic_dir, write_json
from s2d_pipeline.layout import base_model_dir, metrics_file, rl_teacher_dir
from s2d_pipeline.ledger import TEACHER_RL
from s2d_pipeline.tasks import get_task
from s2d_pipeline.tracking import arm_run


def run(cfg: Config) -> dict:
    from s2d_pipeline import runtime
    from s2d_pipeline.stages.allocate import labeled_rows
    from s2d_pipeline.training import save_trained, summarise_rl_history, train_grpo

    runtime.setup(cfg)
    task = get_task(cfg.task)
    metrics: dict = {}
    for key in arm_specs.rl_teachers(cfg.arms):
        started = time.perf_counter()
        rows = labeled_rows(cfg, arm_specs.ledger_arm_for_teacher(key, cfg.arms), TEACHER_RL)
        out = rl_teacher_dir(cfg, key)
        with arm_run(cfg, "teacher_rl", key), atomic_dir(out) as tmp:
            trainer = train_grpo(
                cfg, task, base_model_dir(cfg, "teacher"), rows, cfg.teacher_rl, run_name=f"teacher_rl/{key}"
            )
            history = save_trained(trainer, tmp)
        metrics[key] = {
            "labels_used": len(rows),
            "wall_s": round(time.perf_counter() - started, 2),
            **summarise_rl_history(history),
        }
    write_json(metrics_file(cfg, "teacher_rl"), metrics)
    return metrics
