"""`s2d teacher_rl`: Stage 1 — GRPO with the sparse verifiable reward on the teacher.

Spends the ledger's teacher labels (and nothing else) on the raw teacher and saves the RL teacher.
One RL teacher serves every arm whose ledger gives its teacher the same labels (`s2d`, `no_warmup`,
`no_opd`); the Stage-3 arms hold labels out, so their teacher is trained separately.

Then the C1 gate's measurement: each RL teacher and the raw teacher are scored (avg_at_k, k =
`gates.c1.k` samples as Stage 1 samples) on the first `gates.c1.problems` eval problems; `rollouts` and `opd` read it before distilling (`s2d_pipeline.gate`).

    s2d teacher_rl                 # every RL teacher the configured arms need
"""

from __future__ import annotations

from functools import partial

from s2d_pipeline import arms as arm_specs
from s2d_pipeline import runtime
from s2d_pipeline.config import Config
from s2d_pipeline.data import load_split
from s2d_pipeline.evaluation import score
from s2d_pipeline.gate import c1_measurement, warn_if_overridden
from s2d_pipeline.io import write_unit_metrics
from s2d_pipeline.layout import base_model_dir, rl_teacher_dir, unit_metrics_dir
from s2d_pipeline.ledger import TEACHER_RL, labeled_rows
from s2d_pipeline.models import load_model, load_tokenizer
from s2d_pipeline.prompts import require_chat_template
from s2d_pipeline.tasks import get_task
from s2d_pipeline.training import summarise_rl_history, train_arm, train_grpo


def run(cfg: Config, arm: str | None = None) -> dict:
    runtime.setup(cfg)
    task = get_task(cfg.task)
    metrics: dict = {}
    gate_rows = load_split(cfg, task, "eval")[: cfg.gates.c1.problems]
    raw_teacher = base_model_dir(cfg, "teacher")
    tokenizer = load_tokenizer(raw_teacher, cfg)
    require_chat_template(cfg, tokenizer)

    # Sampled as in Stage 1 (its temperature and completion length), k per problem.
    sampling = cfg.evaluate.model_copy(
        update={
            "k": cfg.gates.c1.k,
            "temperature": cfg.teacher_rl.temperature,
            "max_completion_length": cfg.teacher_rl.max_completion_length,
        }
    )

    def gate_score(model_dir) -> dict:
        return score(task, load_model(model_dir, cfg, for_inference=True), tokenizer, gate_rows, cfg, sampling)

    def c1_gates(keys: list[str]) -> dict[str, dict]:
        raw_scores = gate_score(raw_teacher)
        return {
            key: c1_measurement(raw_scores, gate_score(rl_teacher_dir(cfg, key)), len(gate_rows), cfg.gates.c1.k)
            for key in keys
        }

    for key in arm_specs.only_unit(arm_specs.rl_teachers(cfg.arms), "teacher_rl", arm):
        rows = labeled_rows(cfg, arm_specs.ledger_arm_for_teacher(key, cfg.arms), TEACHER_RL)
        metrics[key] = train_arm(
            cfg,
            "teacher_rl",
            key,
            rl_teacher_dir(cfg, key),
            partial(train_grpo, cfg, task, base_model_dir(cfg, "teacher"), rows, cfg.teacher_rl, f"teacher_rl/{key}"),
            summarise_rl_history,
            labels_used=len(rows),
        )
    # Scored once, after every RL teacher is trained: under `accelerate launch` by the main process
    # alone, which may spread each teacher over all the GPUs the training processes give back.
    for key, gate in (runtime.run_on_main_process(partial(c1_gates, list(metrics))) or {}).items():
        metrics[key]["c1_gate"] = gate
        warn_if_overridden(cfg, key, gate)
    return write_unit_metrics(unit_metrics_dir(cfg, "teacher_rl"), metrics, prune=arm is None)
