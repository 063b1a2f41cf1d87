"""`s2d evaluate`: every arm's student and both teachers on `eval`, plus the paper's diagnostics.

- Accuracy, scored by the task verifier: greedy, avg@k (mean over k samples at `evaluate.temperature`)
  and pass@k.
- C1 — the teacher's gain from Stage 1 (RL teacher minus raw teacher).
- C2 — mean per-token KL(student || teacher) on the student's own samples of unlabeled prompts,
  before warmup (raw student), after warmup and after OPD, for every bridge arm.

Writes `metrics/evaluate.json` (one entry per arm and teacher), `artifacts/evaluate/comparison.md`
(the comparison table) and `artifacts/evaluate/comparison.csv` (for `dvc plots`).

    s2d evaluate
"""

from __future__ import annotations

import time
from pathlib import Path

from s2d_pipeline import arms as arm_specs
from s2d_pipeline.config import Config
from s2d_pipeline.io import atomic_path, sha256_file, write_json
from s2d_pipeline.layout import base_model_dir, metrics_file, rl_teacher_dir, stage_dir, student_dir, teacher_dir
from s2d_pipeline.tasks import get_task


def score(task, model, tokenizer, rows: list[dict], cfg: Config) -> dict:
    """Greedy accuracy, avg@k and pass@k of one model on labeled rows."""
    from s2d_pipeline.generation import generate, sample
    from s2d_pipeline.prompts import render

    e = cfg.evaluate
    prompts = [render(cfg, task, tokenizer, r["prompt"]) for r in rows]
    greedy = generate(model, tokenizer, prompts, max_new_tokens=e.max_completion_length, batch_size=e.batch_size)
    sampled = sample(model, tokenizer, prompts, e, n=e.k, seed=cfg.seed)
    return accuracy_metrics(task, [c[0] for c in greedy], sampled, rows)


def accuracy_metrics(task, greedy: list[str], sampled: list[list[str]], rows: list[dict]) -> dict:
    """Greedy accuracy, avg@k and pass@k from completions, scored by the task verifier."""
    k = len(sampled[0]) if sampled else 0
    g = [task.verify(c, r["answer"]) for c, r in zip(greedy, rows, strict=True)]
    hits = [[task.verify(c, r["answer"]) for c in cs] for cs, r in zip(sampled, rows, strict=True)]
    n = max(len(rows), 1)
    return {
        "greedy": round(sum(g) / n, 4),
        f"avg@{k}": round(sum(sum(h) / len(h) for h in hits) / n, 4),
        f"pass@{k}": round(sum(any(h) for h in hits) / n, 4),
    }


def student_teacher_kl(cfg: Config, task, student, teacher, tokenizer, prompts: list[str]) -> float:
    """C2: mean per-token KL(student || teacher) on the student's own samples."""
    from s2d_pipeline.generation import completion_token_stats, generate

    e = cfg.evaluate
    samples = generate(
        student,
        tokenizer,
        prompts,
        max_new_tokens=e.max_completion_length,
        greedy=False,
        temperature=1.0,
        batch_size=e.batch_size,
        seed=cfg.seed,
    )
    return round(
        completion_token_stats(student, teacher, tokenizer, prompts, [s[0] for s in samples], batch_size=e.batch_size)[
            "kl"
        ],
        5,
    )


def run(cfg: Config) -> dict:
    from s2d_pipeline import runtime
    from s2d_pipeline.data import load_split
    from s2d_pipeline.models import load_model, load_tokenizer
    from s2d_pipeline.prompts import render

    runtime.setup(cfg)
    started = time.perf_counter()
    task = get_task(cfg.task)
    rows = load_split(cfg, task, "eval")[: cfg.evaluate.max_problems]
    tokenizer = load_tokenizer(base_model_dir(cfg, "student"), cfg)
    kl_prompts = [
        render(cfg, task, tokenizer, r["prompt"]) for r in load_split(cfg, task, "prompts")[-cfg.evaluate.kl_prompts :]
    ]
    cache: dict[Path, object] = {}

    def model(path: Path):
        if path not in cache:
            cache[path] = load_model(path, cfg, for_inference=True)
        return cache[path]

    teachers = {"teacher_raw": base_model_dir(cfg, "teacher")}
    teachers.update({f"teacher_rl/{k}": rl_teacher_dir(cfg, k) for k in arm_specs.rl_teachers(cfg.arms)})
    result: dict = {"eval_problems": len(rows), "k": cfg.evaluate.k, "teachers": {}, "arms": {}}
    from s2d_pipeline.console import progress

    bar = progress(total=len(teachers) + 1 + len(cfg.arms), desc="evaluate", unit="model")
    for name, path in teachers.items():
        result["teachers"][name] = score(task, model(path), tokenizer, rows, cfg)
        bar.update()
    raw = result["teachers"]["teacher_raw"]
    result["C1"] = {
        k.split("/", 1)[1]: {m: round(v[m] - raw[m], 4) for m in v}
        for k, v in result["teachers"].items()
        if k != "teacher_raw"
    }

    base_student = model(base_model_dir(cfg, "student"))
    result["student_raw"] = score(task, base_student, tokenizer, rows, cfg)
    bar.update()
    for arm in cfg.arms:
        final = student_dir(cfg, *arm_specs.final_student_step(arm))
        entry = score(task, model(final), tokenizer, rows, cfg)
        entry["model_sha256"] = sha256_file(final / "model.safetensors")[:16]  # what was evaluated
        spec = arm_specs.SPECS[arm]
        if spec.teacher is not None:
            t = model(teacher_dir(cfg, spec.teacher))
            bridge_arm, _ = arm_specs.bridge_final_step(arm)
            c2 = {"before_warmup": student_teacher_kl(cfg, task, base_student, t, tokenizer, kl_prompts)}
            if spec.warmup:
                c2["after_warmup"] = student_teacher_kl(
                    cfg, task, model(student_dir(cfg, bridge_arm, "warmup")), t, tokenizer, kl_prompts
                )
            if spec.opd:
                c2["after_opd"] = student_teacher_kl(
                    cfg, task, model(student_dir(cfg, bridge_arm, "opd")), t, tokenizer, kl_prompts
                )
            entry["C2_kl"] = c2
        result["arms"][arm] = entry
        bar.update()
    bar.close()
    from s2d_pipeline.tracking import provenance

    result["provenance"] = provenance(cfg)
    result["wall_s"] = round(time.perf_counter() - started, 2)
    write_json(metrics_file(cfg, "evaluate"), result)
    _write_comparison(cfg, result)
    if cfg.tracking.enabled:
        _track(cfg, result)
    return result


def _track(cfg: Config, result: dict) -> None:
    """One MLflow run per arm and teacher with its metrics; the candidate arm's student is
    registered and becomes the `challenger` (promotion is `s2d promote`)."""
    import mlflow

    from s2d_pipeline.arms import CANDIDATE_ARM
    from s2d_pipeline.gate import gate_metric_name
    from s2d_pipeline.tracking import arm_run, log_flat_metrics, register_student

    metric = gate_metric_name(result)
    for name, metrics in {**result["arms"], **result["teachers"]}.items():
        with arm_run(cfg, "evaluate", name):
            log_flat_metrics(metrics)
            if name == CANDIDATE_ARM:
                version = register_student(
                    cfg, student_dir(cfg, *arm_specs.final_student_step(name)), name, metric, metrics[metric]
                )
                result["registered"] = {
                    "model": cfg.tracking.registered_model,
                    "version": version,
                    "alias": "challenger",
                }
    mlflow.log_artifacts(str(stage_dir(cfg, "evaluate")), artifact_path="comparison")


def _write_comparison(cfg: Config, result: dict) -> None:
    k = result["k"]
    cols = ["greedy", f"avg@{k}", f"pass@{k}"]
    lines = [
        f"# Comparison on eval ({result['eval_problems']} problems, budget {cfg.budget}, seed {cfg.seed})",
        "",
        "| model | " + " | ".join(cols) + " | C2 KL before → after warmup → after OPD |",
        "|---|" + "---|" * (len(cols) + 1),
    ]
    csv = ["model,greedy,avg_at_k,pass_at_k"]
    rows = [("student_raw", result["student_raw"])] + list(result["arms"].items()) + list(result["teachers"].items())
    for name, m in rows:
        c2 = m.get("C2_kl")
        c2s = (
            " → ".join(f"{c2[s]:.4f}" for s in ("before_warmup", "after_warmup", "after_opd") if s in c2) if c2 else ""
        )
        lines.append(f"| {name} | " + " | ".join(f"{m[c]:.3f}" for c in cols) + f" | {c2s} |")
        csv.append(name + "," + ",".join(str(m[c]) for c in cols))
    c1 = "; ".join(f"{t}: greedy {v['greedy']:+.3f}, avg@{k} {v[f'avg@{k}']:+.3f}" for t, v in result["C1"].items())
    lines += ["", f"C1 (RL teacher minus raw teacher): {c1}"]
    out = stage_dir(cfg, "evaluate")
    for name, text in (("comparison.md", "\n".join(lines) + "\n"), ("comparison.csv", "\n".join(csv) + "\n")):
        with atomic_path(out / name) as tmp:
            tmp.write_text(text)
