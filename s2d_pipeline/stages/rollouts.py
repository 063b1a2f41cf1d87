"""`s2d rollouts`: teacher trajectory generation on the unlabeled prompt pool (reads no label).

For each teacher a configured arm warms up from (the RL teacher, or the raw one for `raw_bridge`),
samples `rollouts.samples_per_prompt` completions per prompt and writes
`artifacts/rollouts/<teacher>.jsonl` with `prompt_id`, `prompt`, `completion`, `num_tokens` and
`teacher_logprob` (sum over completion tokens), which DVC versions. An RL teacher that fails the C1
gate (`s2d_pipeline.gate`) is not sampled: the stage stops with the gate's report.

    s2d rollouts
"""

from __future__ import annotations

import time

from s2d_pipeline import arms as arm_specs
from s2d_pipeline.config import Config
from s2d_pipeline.io import write_jsonl, write_unit_metrics
from s2d_pipeline.layout import rollouts_file, teacher_dir, unit_metrics_dir
from s2d_pipeline.tasks import get_task

# `prompt` is the rendered text the teacher was conditioned on (chat template included); `finished`
# says the completion ended with the end token (the warmup then teaches the student to stop there).
ROLLOUT_COLUMNS = ("prompt_id", "prompt", "completion", "finished", "num_tokens", "teacher_logprob", "teacher")


def run(cfg: Config, arm: str | None = None) -> dict:
    from s2d_pipeline import runtime
    from s2d_pipeline.data import load_split
    from s2d_pipeline.gate import require_improved_teacher
    from s2d_pipeline.generation import completion_token_stats, generate_vllm, sample
    from s2d_pipeline.models import load_model, load_tokenizer
    from s2d_pipeline.prompts import render

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
            samples, finished = generate_vllm(
                path,
                prompts,
                cfg,
                max_new_tokens=r.max_completion_length,
                temperature=r.temperature,
                num_return_sequences=r.samples_per_prompt,
                seed=cfg.seed,
            )
        model = load_model(path, cfg, for_inference=True)
        if not cfg.runtime.use_vllm:
            samples, finished = sample(
                model,
                tokenizer,
                prompts,
                r,
                n=r.samples_per_prompt,
                seed=cfg.seed,
                with_finished=True,
                desc=f"rollouts/{teacher}",
            )
        flat_prompts = [p for p, cs in zip(prompts, samples, strict=True) for _ in cs]
        flat = [c for cs in samples for c in cs]
        stats = completion_token_stats(None, model, tokenizer, flat_prompts, flat, batch_size=r.batch_size)
        rows = []
        for i, (row, cs) in enumerate(zip(pool, samples, strict=True)):
            for j, completion in enumerate(cs):
                k = i * r.samples_per_prompt + j
                rows.append(
                    {
                        "prompt_id": row["id"],
                        "prompt": prompts[i],
                        "completion": completion,
                        "finished": finished[i][j],
                        "num_tokens": len(tokenizer(completion, add_special_tokens=False)["input_ids"]),
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
