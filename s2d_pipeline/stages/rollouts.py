"""`s2d rollouts`: teacher trajectory generation on the unlabeled prompt pool (reads no label).

For each teacher a configured arm warms up from (the RL teacher, or the raw one for `raw_bridge`),
samples `rollouts.samples_per_prompt` completions per prompt, rendered and stopped with the teacher's
own tokenizer and end ids, and writes `artifacts/rollouts/<teacher>.jsonl`, which DVC versions. The
warmup trains on `completion_ids`, the ids the teacher sampled; `completion` is their text, for people
and verifiers. An RL teacher that fails the C1 gate (`s2d_pipeline.gate`) is not sampled: the stage
stops with the gate's report.

    s2d rollouts
"""

from __future__ import annotations

import time

from s2d_pipeline import arms as arm_specs
from s2d_pipeline import runtime
from s2d_pipeline.config import Config
from s2d_pipeline.data import load_split
from s2d_pipeline.gate import require_improved_teacher
from s2d_pipeline.generation import encode_prompt, generate_vllm, sample_completions, score_completion_ids
from s2d_pipeline.io import write_jsonl, write_unit_metrics
from s2d_pipeline.layout import rollouts_file, teacher_dir, unit_metrics_dir
from s2d_pipeline.models import load_model, load_tokenizer
from s2d_pipeline.prompts import render
from s2d_pipeline.tasks import get_task

# `prompt`: the rendered text the teacher was conditioned on (chat template included).
# `completion_ids`: the sampled ids, ending with the end token when `finished` (it stopped on one of the
# teacher's end ids; false: it ran to max_completion_length). `num_tokens` and `teacher_logprob` (summed)
# cover the completion's tokens without that end token, as evaluate's C2 counts them.
ROLLOUT_COLUMNS = (
    "prompt_id",
    "prompt",
    "completion",
    "completion_ids",
    "finished",
    "num_tokens",
    "teacher_logprob",
    "teacher",
)


def run(cfg: Config, arm: str | None = None) -> dict:
    runtime.setup(cfg)
    task = get_task(cfg.task)
    r = cfg.rollouts
    pool = load_split(cfg, task, "prompts")[: r.max_prompts]  # unlabeled: ids and prompts only
    metrics: dict = {}
    for teacher in arm_specs.only_unit(arm_specs.rollout_teachers(cfg.arms), "rollouts", arm):
        c1 = require_improved_teacher(cfg, teacher)
        started = time.perf_counter()
        path = teacher_dir(cfg, teacher)
        tokenizer = load_tokenizer(path, cfg)
        prompts = [render(cfg, task, tokenizer, row["prompt"]) for row in pool]
        if cfg.runtime.use_vllm:
            samples = generate_vllm(
                path,
                tokenizer,
                prompts,
                cfg,
                max_new_tokens=r.max_completion_length,
                temperature=r.temperature,
                num_return_sequences=r.samples_per_prompt,
                seed=cfg.seed,
            )
        model = load_model(path, cfg, for_inference=True)
        if not cfg.runtime.use_vllm:
            samples = sample_completions(
                model,
                tokenizer,
                prompts,
                r,
                n=r.samples_per_prompt,
                seed=cfg.seed,
                desc=f"rollouts/{teacher}",
                chat=cfg.models.chat_template,
            )
        prompt_ids = [encode_prompt(tokenizer, p, chat=cfg.models.chat_template) for p in prompts]
        flat = [c for cs in samples for c in cs]
        stats = score_completion_ids(
            None,
            model,
            [ids for ids, cs in zip(prompt_ids, samples, strict=True) for _ in cs],
            [_content_ids(c) for c in flat],
            pad_token_id=tokenizer.pad_token_id,
            batch_size=r.batch_size,
        )
        rows = []
        for i, (row, cs) in enumerate(zip(pool, samples, strict=True)):
            for j, c in enumerate(cs):
                k = i * r.samples_per_prompt + j
                rows.append(
                    {
                        "prompt_id": row["id"],
                        "prompt": prompts[i],
                        "completion": c.text,
                        "completion_ids": c.token_ids,
                        "finished": c.finished,
                        "num_tokens": len(_content_ids(c)),
                        "teacher_logprob": round(stats["teacher_logprob"][k], 5),
                        "teacher": teacher,
                    }
                )
        write_jsonl(rollouts_file(cfg, teacher), rows)
        metrics[teacher] = {
            "rows": len(rows),
            "wall_s": round(time.perf_counter() - started, 2),
            "mean_teacher_logprob": round(sum(stats["teacher_logprob"]) / max(len(rows), 1), 4),
            **({"c1_gate": c1} if c1 else {}),
        }
    return write_unit_metrics(unit_metrics_dir(cfg, "rollouts"), metrics, prune=arm is None)


def _content_ids(completion) -> list[int]:
    """A completion's ids without its end token."""
    return completion.token_ids[:-1] if completion.finished else completion.token_ids
