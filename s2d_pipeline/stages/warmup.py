"""`s2d warmup`: Stage 2a — forward KL of the student toward the teacher on the teacher's rollouts.

For every arm with a warmup, starts from the raw student and trains on the rollouts of that arm's
teacher, on the token ids the teacher sampled (`completion_ids`): token-level forward KL against the
teacher's full distribution (TRL GKD, lmbda=0, beta=0, computed in chunks), or plain SFT on the
sampled tokens with `warmup.loss: sft`. Needs no labels. With `warmup.kl_target`
set, warmup runs until C2 (KL(student || teacher) on the student's own samples of the last
`warmup.kl_prompts` unlabeled prompts, the same pool as evaluate's C2) falls below it, with
`warmup.steps` as the cap; the metrics record each check and the steps taken.

    s2d warmup
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from s2d_pipeline import arms as arm_specs
from s2d_pipeline import runtime
from s2d_pipeline.config import Config
from s2d_pipeline.data import load_split
from s2d_pipeline.errors import DataError
from s2d_pipeline.io import read_jsonl, write_unit_metrics
from s2d_pipeline.layout import base_model_dir, rollouts_file, student_dir, teacher_dir, unit_metrics_dir
from s2d_pipeline.models import load_tokenizer
from s2d_pipeline.prompts import render
from s2d_pipeline.tasks import get_task
from s2d_pipeline.training import summarise_loss_history, train_arm, train_forward_kl


def run(cfg: Config, arm: str | None = None) -> dict:
    runtime.setup(cfg)
    metrics: dict = {}
    kl_prompts = _kl_prompts(cfg) if cfg.warmup.kl_target is not None else None
    units = arm_specs.bridge_stage_arms("warmup", cfg.arms, cfg.warmup.steps, cfg.opd.steps)
    for unit, spec, steps in arm_specs.only_unit(units, "warmup", arm):
        rollouts = read_rollouts(rollouts_file(cfg, spec.teacher))
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
                kl_prompts,
            ),
            summarise_loss_history,
            teacher=spec.teacher,
            steps=steps,
            loss=cfg.warmup.loss,
            **({"kl_target": cfg.warmup.kl_target} if kl_prompts else {}),
        )
    return write_unit_metrics(unit_metrics_dir(cfg, "warmup"), metrics, prune=arm is None)


def read_rollouts(path: Path) -> list[dict]:
    """The rollouts file's rows, each with the `completion_ids` the teacher sampled. A file written
    before rollouts recorded them is refused rather than re-encoded: re-encoding the text would train
    on the tokenizer's canonical split of it, not on what the teacher sampled."""
    rows = read_jsonl(path)
    for row in rows:
        ids = row.get("completion_ids")
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            got = "missing" if ids is None else f"{type(ids).__name__} {str(ids)[:40]}"
            raise DataError(
                f"{path}:{row.get('_line', '?')}: rule 'completion_ids: the sampled token ids (a list of ints)' "
                f"failed: {got}; the file predates recorded ids: rerun `s2d rollouts`"
            )
    return rows


def _kl_prompts(cfg: Config) -> list[str]:
    """The rendered prompts the C2 stopping rule samples on: the last `warmup.kl_prompts` of the pool."""
    task = get_task(cfg.task)
    tokenizer = load_tokenizer(base_model_dir(cfg, "student"), cfg)
    return [
        render(cfg, task, tokenizer, r["prompt"]) for r in load_split(cfg, task, "prompts")[-cfg.warmup.kl_prompts :]
    ]
