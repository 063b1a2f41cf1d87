"""Support mismatch of the raw (pre-warmup) models: is the raw student sampling inside the raw
teacher's support? Measured for the embedded default (params.yaml) and the reasoning variant
(profiles/trace.yaml), whose base teacher and student are pretrained on different trace formats.

    nice -n 10 python -m bench.support_mismatch                    # prepare both tasks, then measure
    nice -n 10 python -m bench.support_mismatch --reuse --tasks trace   # base models already in the root
    python -m bench.support_mismatch --reuse --tasks trace --seed 2 --workdir W  # W/trace: seed 2's root

Run from the repository root. Each task gets its own scratch root (`--workdir`/<task>, all relative
paths of its params resolve there); `prepare` builds its data and base models (tracking off), unless
`--reuse` finds them there already (they must come from the same params: `params_hash` is recorded).
On the last `evaluate.kl_prompts` unlabeled prompts (the prompts evaluate's C2 uses), with the raw
models:
- `c2_kl`: C2 before warmup, mean per-token KL(raw student || raw teacher) on the raw student's own
  samples (T = 1), by `s2d_pipeline.stages.evaluate.student_teacher_kl`;
- `teacher_logprob_of_student_samples`: the raw teacher's mean per-token log-probability of those
  samples, and for reference `teacher_logprob_of_own_samples` (its own samples, T = 1) and the
  student's of its own;
- the characters other than digits in each model's samples (the trace formats' separators).
Results: bench/results/support_mismatch.json, with the machine they ran on.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

from bench.common import REPO, machine

RESULTS = REPO / "bench" / "results" / "support_mismatch.json"
PARAMS = {"default": REPO / "params.yaml", "trace": REPO / "profiles" / "trace.yaml"}


def _config(task: str, root: Path, seed: int | None = None):
    from s2d_pipeline.config import load_config

    seed_override = {} if seed is None else {"seed": seed}
    return load_config(PARAMS[task], {"tracking": {"enabled": False}, **seed_override}, root=root)


def _non_digits(samples: list[str]) -> dict[str, int]:
    return dict(sorted(Counter(ch for s in samples for ch in s if not ch.isdigit()).items()))


def measure(task_name: str, root: Path, reuse: bool, seed: int | None = None) -> dict:
    from s2d_pipeline import runtime
    from s2d_pipeline.cli import run_stage
    from s2d_pipeline.data import load_split
    from s2d_pipeline.generation import completion_token_stats
    from s2d_pipeline.layout import base_model_dir, metrics_file
    from s2d_pipeline.models import load_model, load_tokenizer
    from s2d_pipeline.prompts import render
    from s2d_pipeline.stages.evaluate import own_samples, student_teacher_kl
    from s2d_pipeline.tasks import get_task

    root.mkdir(parents=True, exist_ok=True)
    cfg = _config(task_name, root, seed)
    built = all((base_model_dir(cfg, r) / "config.json").exists() for r in ("teacher", "student"))
    t0 = time.perf_counter()
    if not (reuse and built):
        run_stage("prepare", cfg)
    prepare_s = round(time.perf_counter() - t0, 1)
    prepared = json.loads(metrics_file(cfg, "prepare").read_text())
    runtime.setup(cfg)
    task = get_task(cfg.task)
    tokenizer = load_tokenizer(base_model_dir(cfg, "student"), cfg)
    teacher = load_model(base_model_dir(cfg, "teacher"), cfg, for_inference=True)
    student = load_model(base_model_dir(cfg, "student"), cfg, for_inference=True)
    e = cfg.evaluate
    prompts = [render(cfg, task, tokenizer, r["prompt"]) for r in load_split(cfg, task, "prompts")[-e.kl_prompts :]]
    t0 = time.perf_counter()
    c2 = student_teacher_kl(cfg, task, student, teacher, tokenizer, prompts)

    def samples_of(model) -> list[str]:
        return own_samples(cfg, model, tokenizer, prompts)

    def per_token(scorer, samples) -> tuple[float, dict]:
        stats = completion_token_stats(student, scorer, tokenizer, prompts, samples, batch_size=e.batch_size)
        return round(sum(stats["teacher_logprob"]) / max(stats["tokens"], 1), 5), stats

    student_samples, teacher_samples = samples_of(student), samples_of(teacher)
    t_on_s, s_stats = per_token(teacher, student_samples)
    t_on_t, t_stats = per_token(teacher, teacher_samples)
    s_on_s, _ = per_token(student, student_samples)
    s_on_t, _ = per_token(student, teacher_samples)
    return {
        "params": str(PARAMS[task_name].relative_to(REPO)),
        "params_hash": cfg.params_hash(),
        "seed": cfg.seed,
        "task": cfg.task.model_dump(),
        "prompts": len(prompts),
        "completion_tokens": s_stats["tokens"],
        "max_completion_length": e.max_completion_length,
        "c2_kl": c2,
        "c2_kl_recomputed": round(s_stats["kl"], 5),  # the same samples drawn again: must equal c2_kl
        "teacher_logprob_of_student_samples": t_on_s,
        "teacher_logprob_of_own_samples": t_on_t,
        "student_logprob_of_own_samples": s_on_s,
        "student_logprob_of_teacher_samples": s_on_t,
        "kl_student_teacher_on_teacher_samples": round(t_stats["kl"], 5),
        "non_digit_chars": {"student": _non_digits(student_samples), "teacher": _non_digits(teacher_samples)},
        "examples": {"prompt": prompts[:3], "student": student_samples[:3], "teacher": teacher_samples[:3]},
        "prepare": {
            "ran_here": not (reuse and built),
            "wall_s": prepare_s,
            **{r: prepared.get(r) for r in ("teacher", "student")},
        },
        "measure_s": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/s2d-support-mismatch"))
    ap.add_argument("--tasks", nargs="+", choices=list(PARAMS), default=list(PARAMS))
    ap.add_argument("--reuse", action="store_true", help="use base models already prepared in the task's root")
    ap.add_argument("--seed", type=int, help="pipeline seed (default: the params'); results keyed `<task>/seed<N>`")
    args = ap.parse_args(argv)
    out = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"tasks": {}}
    for task in args.tasks:
        name = task if args.seed is None else f"{task}/seed{args.seed}"
        out["tasks"][name] = measure(task, args.workdir / task, args.reuse, args.seed)
        print(
            json.dumps(
                {
                    name: {
                        k: out["tasks"][name][k]
                        for k in ("c2_kl", "teacher_logprob_of_student_samples", "teacher_logprob_of_own_samples")
                    }
                }
            )
        )
    out["machine"] = machine()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
