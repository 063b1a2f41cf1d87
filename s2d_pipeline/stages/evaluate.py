"""`s2d evaluate`: every arm's student and both teachers on `eval`, plus the paper's diagnostics.

- Accuracy, scored by the task verifier: `greedy`, `avg_at_k` (mean over k samples at
  `evaluate.temperature`) and `pass_at_k`; `k` is recorded beside them, so the names do not change with it.
- C1 — the teacher's gain from Stage 1 (RL teacher minus raw teacher).
- C2 — mean per-token KL(student || teacher) on the student's own samples of unlabeled prompts,
  before warmup (raw student), after warmup and after OPD, for every bridge arm.

Writes `metrics/evaluate.json` (one entry per arm and teacher), `artifacts/evaluate/comparison.md`
(the comparison table), `artifacts/evaluate/comparison.csv` (for `dvc plots`), the same charts as
PNG (`accuracy.png`, `c2_kl.png`) and `metrics/summary.json` (the headline numbers `dvc metrics show`
prints).

    s2d evaluate
"""

from __future__ import annotations

import time
from pathlib import Path

from s2d_pipeline import arms as arm_specs
from s2d_pipeline import runtime
from s2d_pipeline.arms import BASELINE_ARM, CANDIDATE_ARM
from s2d_pipeline.config import Config
from s2d_pipeline.console import progress
from s2d_pipeline.data import load_split
from s2d_pipeline.evaluation import (
    ACCURACY,
    accuracy_metrics_of,
    paired_difference,
    score_by_problem,
    student_teacher_kl,
)
from s2d_pipeline.gate import GATE_METRIC
from s2d_pipeline.io import atomic_path, read_json, sha256_file, write_json
from s2d_pipeline.layout import (
    base_model_dir,
    ledger_file,
    metrics_file,
    rl_teacher_dir,
    stage_dir,
    student_dir,
    teacher_dir,
)
from s2d_pipeline.models import load_model, load_tokenizer
from s2d_pipeline.prompts import render
from s2d_pipeline.tasks import get_task
from s2d_pipeline.tracking import arm_run, log_flat_metrics, log_to_pipeline_run, provenance, register_student


def run(cfg: Config) -> dict:
    runtime.setup(cfg)
    started = time.perf_counter()
    task = get_task(cfg.task)
    rows = load_split(cfg, task, "eval")[: cfg.evaluate.max_problems]
    tokenizer = load_tokenizer(base_model_dir(cfg, "student"), cfg)
    kl_prompts = [
        render(cfg, task, tokenizer, r["prompt"]) for r in load_split(cfg, task, "prompts")[-cfg.evaluate.kl_prompts :]
    ]
    cache: dict[Path, object] = {}
    by_problem: dict[str, dict] = {}  # every model's verdicts on each eval problem (paired comparisons)
    kl_of: dict[tuple[Path, Path], float] = {}  # C2 of a (student, teacher) pair that several arms share

    def model(path: Path):
        if path not in cache:
            cache[path] = load_model(path, cfg, for_inference=True)
        return cache[path]

    def scored(name: str, path: Path, tok) -> dict:
        by_problem[name] = score_by_problem(task, model(path), tok, rows, cfg)
        return accuracy_metrics_of(by_problem[name])

    def c2(student: Path, teacher: Path) -> float:
        if (student, teacher) not in kl_of:
            kl_of[student, teacher] = student_teacher_kl(
                cfg, task, model(student), model(teacher), tokenizer, kl_prompts
            )
        return kl_of[student, teacher]

    teachers = {"teacher_raw": base_model_dir(cfg, "teacher")}
    teachers.update({f"teacher_rl/{k}": rl_teacher_dir(cfg, k) for k in arm_specs.rl_teachers(cfg.arms)})
    result: dict = {"eval_problems": len(rows), "k": cfg.evaluate.k, "teachers": {}, "arms": {}}

    bar = progress(total=len(teachers) + 1 + len(cfg.arms), desc="evaluate", unit="model")
    for name, path in teachers.items():
        # A teacher is rendered and stopped with its own tokenizer, chat template and end ids.
        result["teachers"][name] = scored(name, path, load_tokenizer(path, cfg))
        bar.update()
    raw = result["teachers"]["teacher_raw"]
    result["C1"] = {
        k.split("/", 1)[1]: {m: round(v[m] - raw[m], 4) for m in v}
        for k, v in result["teachers"].items()
        if k != "teacher_raw"
    }

    base_student = base_model_dir(cfg, "student")
    result["student_raw"] = scored("student_raw", base_student, tokenizer)
    bar.update()
    for arm in cfg.arms:
        final = student_dir(cfg, *arm_specs.final_student_step(arm))
        entry = scored(arm, final, tokenizer)
        entry["model_sha256"] = sha256_file(final / "model.safetensors")[:16]  # what was evaluated
        spec = arm_specs.SPECS[arm]
        if spec.teacher is not None:
            t = teacher_dir(cfg, spec.teacher)
            bridge_arm, _ = arm_specs.bridge_final_step(arm)
            kl = {"before_warmup": c2(base_student, t)}
            if spec.warmup:
                kl["after_warmup"] = c2(student_dir(cfg, bridge_arm, "warmup"), t)
            if spec.opd:
                kl["after_opd"] = c2(student_dir(cfg, bridge_arm, "opd"), t)
            entry["C2_kl"] = kl
        result["arms"][arm] = entry
        bar.update()
    bar.close()
    if CANDIDATE_ARM in result["arms"] and BASELINE_ARM in result["arms"]:
        left, right = by_problem[CANDIDATE_ARM], by_problem[BASELINE_ARM]
        result["paired"] = {
            "left": CANDIDATE_ARM,
            "right": BASELINE_ARM,
            **{m: paired_difference(left, right, m) for m in (GATE_METRIC, "greedy")},
        }

    result["provenance"] = provenance(cfg)
    result["wall_s"] = round(time.perf_counter() - started, 2)
    write_json(metrics_file(cfg, "evaluate"), result)
    write_json(stage_dir(cfg, "evaluate") / BY_PROBLEM, {"ids": [r["id"] for r in rows], "models": by_problem})
    _write_comparison(cfg, result)
    if cfg.tracking.enabled:
        _track(cfg, result)
    return result


# Per eval problem, every model's verdicts (`evaluation.verdicts`), for comparisons paired by problem.
BY_PROBLEM = "by_problem.json"
C2_STEPS = ("before_warmup", "after_warmup", "after_opd")


def models_evaluated(result: dict) -> dict[str, dict]:
    """Every evaluated model in table order: the raw student, the arms, the teachers."""
    return {"student_raw": result["student_raw"], **result["arms"], **result["teachers"]}


def model_params(cfg: Config, name: str) -> dict:
    """What an evaluated model is, as MLflow params (so the compare view and parallel coordinates
    can line arms up by teacher, steps and labels spent)."""
    if name not in arm_specs.SPECS:
        teacher = name.removeprefix("teacher_rl/") if name.startswith("teacher_rl/") else None
        return {"model": name, "role": "teacher" if name.startswith("teacher") else "student", "rl_teacher": teacher}
    spec = arm_specs.SPECS[name]
    warmup, opd = arm_specs.bridge_steps(name, cfg.warmup.steps, cfg.opd.steps) if spec.distils else (0, 0)
    ledger = read_json(ledger_file(cfg))
    return {
        "model": name,
        "role": "student",
        "teacher": spec.teacher or "none",
        "warmup_steps": warmup,
        "opd_steps": opd,
        "student_rl": spec.student_rl or "none",
        "student_rl_steps": getattr(cfg, spec.student_rl).steps if spec.student_rl else 0,
        "labels_spent": ledger["arms"][name]["spent"],
        "budget": cfg.budget,
    }


def summary(result: dict) -> dict:
    """The headline in a few numbers (`metrics/summary.json`, what `dvc metrics show` prints): the
    candidate's and the baseline's sampled accuracy, their gap, and the RL teachers' C1; the whole
    table is `comparison.md` and the plots."""
    arms = result["arms"]
    headline = {arm: arms[arm][GATE_METRIC] for arm in (CANDIDATE_ARM, BASELINE_ARM) if arm in arms}
    if len(headline) == 2:
        headline["gap"] = round(headline[CANDIDATE_ARM] - headline[BASELINE_ARM], 4)
    return {GATE_METRIC: headline, f"C1_{GATE_METRIC}": {t: v[GATE_METRIC] for t, v in result["C1"].items()}}


def _track(cfg: Config, result: dict) -> None:
    """One MLflow run per evaluated model (params: what it is; metrics: its accuracy and C2), the
    headline numbers, charts and comparison table on the pipeline's parent run; the candidate arm's
    student is registered and becomes the `challenger` (promotion is `s2d promote`)."""
    import mlflow

    for name, metrics in models_evaluated(result).items():
        with arm_run(cfg, "evaluate", name, params=model_params(cfg, name)):
            log_flat_metrics({k: v for k, v in metrics.items() if k != "model_sha256"})
            if name == CANDIDATE_ARM:
                version = register_student(
                    cfg,
                    student_dir(cfg, *arm_specs.final_student_step(name)),
                    name,
                    metrics[GATE_METRIC],
                    description=(stage_dir(cfg, "evaluate") / "comparison.md").read_text(),
                )
                result["registered"] = {
                    "model": cfg.tracking.registered_model,
                    "version": version,
                    "alias": "challenger",
                }
    mlflow.log_artifacts(str(stage_dir(cfg, "evaluate")), artifact_path="comparison")
    table = comparison_rows(result)
    log_to_pipeline_run(
        cfg,
        metrics=_headline_metrics(result),
        figures=[stage_dir(cfg, "evaluate") / f for f in ("accuracy.png", "c2_kl.png")],
        table=table,
    )


def _headline_metrics(result: dict) -> dict[str, float]:
    """`<metric>/<model>`, the model spelled as everywhere else (`teacher_rl/s2d`): the MLflow chart
    view groups a parent run's metrics by the first segment, so each chart compares the models on
    one metric."""
    out = {f"{m}/{name}": v[m] for name, v in models_evaluated(result).items() for m in ("greedy", "avg_at_k")}
    arms = result["arms"]
    if CANDIDATE_ARM in arms and BASELINE_ARM in arms:
        for m in ("greedy", "avg_at_k"):
            out[f"{m}/{CANDIDATE_ARM}_minus_{BASELINE_ARM}"] = round(arms[CANDIDATE_ARM][m] - arms[BASELINE_ARM][m], 4)
    out.update({f"C1_avg_at_k/{t}": v["avg_at_k"] for t, v in result["C1"].items()})
    return out


def comparison_rows(result: dict) -> list[dict]:
    """One row per evaluated model: accuracy and C2 (the table of MLflow, Prefect and the CSV)."""
    return [{"model": name, **_table_row(m)} for name, m in models_evaluated(result).items()]


def _table_row(m: dict) -> dict:
    c2 = m.get("C2_kl") or {}
    return {**{c: m[c] for c in ACCURACY}, **{f"C2_{s}": c2.get(s) for s in C2_STEPS}}


def _write_comparison(cfg: Config, result: dict) -> None:
    k = result["k"]
    lines = [
        f"# Comparison on eval ({result['eval_problems']} problems, budget {cfg.budget}, seed {cfg.seed}, k = {k})",
        "",
        "| model | " + " | ".join(ACCURACY) + " | C2 KL before → after warmup → after OPD |",
        "|---|" + "---|" * (len(ACCURACY) + 1),
    ]
    csv = ["model,greedy,avg_at_k,pass_at_k,C2_before_warmup,C2_after_warmup,C2_after_opd"]
    for name, m in models_evaluated(result).items():
        row = _table_row(m)
        c2s = " → ".join(f"{row[f'C2_{s}']:.4f}" for s in C2_STEPS if row[f"C2_{s}"] is not None)
        lines.append(f"| {name} | " + " | ".join(f"{m[c]:.3f}" for c in ACCURACY) + f" | {c2s} |")
        csv.append(name + "," + ",".join("" if v is None else str(v) for v in row.values()))
    c1 = "; ".join(f"{t}: greedy {v['greedy']:+.3f}, avg_at_k {v['avg_at_k']:+.3f}" for t, v in result["C1"].items())
    lines += ["", f"C1 (RL teacher minus raw teacher): {c1}"]
    if paired := result.get("paired"):
        gaps = "; ".join(
            f"{p['metric']} {p['mean']:+.3f} [{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}], higher on "
            f"{p['left_higher']} problems, lower on {p['right_higher']}"
            for p in (paired[GATE_METRIC], paired["greedy"])
        )
        lines += [
            "",
            f"{paired['left']} minus {paired['right']}, paired by problem (95 % bootstrap interval over the "
            f"{result['eval_problems']} problems; it leaves out the spread across seeds): {gaps}",
        ]
    out = stage_dir(cfg, "evaluate")
    for name, text in (("comparison.md", "\n".join(lines) + "\n"), ("comparison.csv", "\n".join(csv) + "\n")):
        with atomic_path(out / name) as tmp:
            tmp.write_text(text)
    _write_charts(result, out)
    write_json(cfg.metrics / "summary.json", summary(result))


def _write_charts(result: dict, out: Path) -> None:
    """The comparison as PNG (for readers without a browser's vega, and the MLflow parent run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = models_evaluated(result)
    names = list(models)
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.2))
    for offset, metric in ((-0.2, "greedy"), (0.2, "avg_at_k")):
        ax.barh([i + offset for i in range(len(names))], [models[n][metric] for n in names], height=0.4, label=metric)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"accuracy on {result['eval_problems']} eval problems (avg_at_k: k = {result['k']})")
    ax.legend(loc="lower right")
    ax.set_title("Accuracy per model")
    fig.tight_layout()
    with atomic_path(out / "accuracy.png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for arm, m in result["arms"].items():
        c2 = m.get("C2_kl")
        if c2:
            steps = [s for s in C2_STEPS if s in c2]
            ax.plot([C2_STEPS.index(s) for s in steps], [c2[s] for s in steps], marker="o", label=arm)
    ax.set_xticks(range(len(C2_STEPS)), [s.replace("_", " ") for s in C2_STEPS])
    ax.set_ylabel("KL(student ‖ teacher) per token")
    ax.set_title("C2: student-teacher KL on the student's own samples")
    if ax.lines:
        ax.legend()
    fig.tight_layout()
    with atomic_path(out / "c2_kl.png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
