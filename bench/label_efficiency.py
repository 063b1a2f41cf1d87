"""Label efficiency: every arm at several label budgets and seeds, paired by seed.

    python -m bench.label_efficiency run                  # 4 budgets x 3 seeds, ~50 min on 2 CPU cores
    python -m bench.label_efficiency run --budgets 64 --seeds 0
    python -m bench.label_efficiency run --params profiles/<name>.yaml   # another profile (own results file)
    python -m bench.label_efficiency report               # tables, plot and curve (RESULTS.md: python -m bench.report)
    python -m bench.label_efficiency size --params profiles/smollm2-arith.yaml   # the derived student's sizing rule

Run from the repository root.

`run` drives the same stage functions as `s2d run` / `dvc repro`, from a scratch root per (seed, budget):
the stages through `validate` run once per seed (same data, base teacher and base student for every
budget), then the stages after it through `evaluate` run per budget (the stage list and its order come
from `s2d_pipeline.stages`). Within one seed every arm therefore starts from the same base models and
draws from the same N labels. Tracking is off (this measures the method, not the store). Accuracy is
read as `avg_at_k` with the evaluate stage's `k`, as recorded in each run's `metrics/evaluate.json`.
Each (seed, budget) cell is a record of `bench/results/label_efficiency.jsonl` (with `--params
profiles/<name>.yaml`: `label_efficiency_<name>.jsonl`), with the students' training tokens per stage
(from the trainers' logs) and the C1 gate's measurement.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import yaml

from bench import harness
from s2d_pipeline.arms import SPECS
from s2d_pipeline.config import deep_merge, load_config
from s2d_pipeline.evaluation import bootstrap_ci
from s2d_pipeline.io import read_unit_metrics
from s2d_pipeline.stages import stages_through
from s2d_pipeline.stages.evaluate import BY_PROBLEM

RESULTS = harness.RESULTS / "label_efficiency.jsonl"
CURVE_CSV = harness.RESULTS / "label_efficiency_curve.csv"
PLOT = harness.REPO / "bench" / "label_efficiency.png"
PARAMS = harness.REPO / "params.yaml"
WORKDIR = Path(os.environ.get("TMPDIR", "/tmp")) / "s2d-bench-label-efficiency"
SAMPLED = "avg_at_k"  # the evaluate stage's sampled accuracy (at its `k`, recorded beside it)
# Run once per seed, shared by every budget: data, base models, validation report.
SEED_STAGES = stages_through("validate")
# Run per (seed, budget): every stage after the shared ones, up to and including evaluate.
BUDGET_STAGES = stages_through("evaluate")[len(SEED_STAGES) :]
# The claims of the principle, as (left arm, right arm) whose difference (left minus right) the paper
# predicts positive; the report gives each a verdict over the cells where it can be read
# (`claim_preconditions`, `claim_verdicts`).
CLAIMS = [
    ("s2d", "raw_bridge"),
    ("s2d", "no_warmup"),
    ("s2d", "no_opd"),
    ("s2d_stage3", "s2d_stage3_replay"),
    ("s2d", "grpo_direct"),
]
# A raw student below this score (greedy or sampled, whichever the claim is read on) leaves nothing for
# a comparison of training methods to read: differences between arms near zero are noise.
STUDENT_FLOOR = 0.05
# A claim's verdict resamples seeds: with fewer testable seeds than this it has none.
MIN_SEEDS = 2
# (left arm, right arm): the paired differences reported, left minus right.
PAIRS = [
    ("s2d", "grpo_direct"),
    ("s2d", "opd_direct"),
    ("s2d", "raw_bridge"),
    ("grpo_direct", "raw_bridge"),
    ("s2d", "no_warmup"),
    ("s2d", "no_opd"),
    ("s2d_stage3", "s2d_stage3_replay"),
]
# Every cell runs to the end: a teacher that fails the C1 gate is still distilled (the benchmark measures
# what that costs), and metrics/teacher_rl/<teacher>.json keeps the gate's measurement.
NO_STOPS = {"tracking": {"enabled": False}, "gates": {"c1": {"override": True}}}
# A profile's cell settings over its own, fixed before its first arm ran (bench/findings.md). SmolLM2: the
# seven arms of the claims, 200 eval problems scored greedy and once sampled (k = 1: with 11 models
# evaluated, k = 4 alone would take a cell past 20 minutes on 2 cores), 64 labels (the largest budget) and
# 64 unlabeled prompts; the C1 gate on 50 problems, 2 samples each.
CELL_SETTINGS = {
    "smollm2-arith": {
        "arms": ["s2d", "grpo_direct", "raw_bridge", "no_warmup", "no_opd", "s2d_stage3", "s2d_stage3_replay"],
        "data": {"n_eval": 200, "n_labels": 64, "n_prompts": 64},
        "evaluate": {"k": 1, "kl_prompts": 16},
        "gates": {"c1": {"problems": 50, "k": 2}},
    }
}


def settings_id(params: Path) -> str | None:
    """A short hash of what a profile's cells run, seed and budget aside (None without CELL_SETTINGS): a record
    carries it, and the report reads only cells run under the current settings."""
    if params.stem not in CELL_SETTINGS:
        return None
    runs = deep_merge(yaml.safe_load(params.read_text()), cell_overrides(params, 0, 0))
    settings = {k: v for k, v in runs.items() if k not in ("seed", "budget")}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]


def results_file(params: Path = PARAMS) -> Path:
    """Where a profile's records go: the default's file (RESULTS), or one named after the profile beside it."""
    if params.resolve() == PARAMS.resolve():
        return RESULTS
    return RESULTS.with_name(f"{RESULTS.stem}_{params.stem}.jsonl")


def workdir_for(params: Path, workdir: Path) -> Path:
    """A profile's scratch cells live beside the default's, never mixed with them."""
    return workdir if params.resolve() == PARAMS.resolve() else workdir.with_name(f"{workdir.name}-{params.stem}")


def cell_overrides(params: Path, seed: int, budget: int) -> dict:
    """What a cell sets over the params: seed, budget, no stops, and the profile's CELL_SETTINGS."""
    return deep_merge({"seed": seed, "budget": budget, **NO_STOPS}, CELL_SETTINGS.get(params.stem, {}))


def _config(root: Path, seed: int, budget: int, params: Path, extra: dict | None = None):
    """A cell's config (`cell_overrides`), with `extra` over it."""
    return load_config(params, deep_merge(cell_overrides(params, seed, budget), extra or {}), root=root)


def _run_stages(cfg, stages: list[str], times_file: Path) -> dict:
    """Run `stages` in order, skipping those a previous, interrupted attempt finished (a stage's time is
    written to `times_file` only once it returned); the seconds each took."""
    from s2d_pipeline.cli import run_stage

    times = json.loads(times_file.read_text()) if times_file.exists() else {}
    for name in stages:
        if name in times:
            continue
        t0 = time.perf_counter()
        run_stage(name, cfg)
        times[name] = round(time.perf_counter() - t0, 1)
        times_file.write_text(json.dumps(times))
    return times


def _train_tokens(metrics_dir: Path) -> dict:
    """Tokens each training run processed, by stage and unit (the trainers' own counts)."""
    out = {}
    for stage in ("teacher_rl", "warmup", "opd", "student_rl"):
        if metrics := read_unit_metrics(metrics_dir / stage):
            out[stage] = {u: m.get("train_tokens") for u, m in metrics.items()}
    return out


def _read(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def params_layout(params: Path) -> tuple[Path, Path]:
    """The params' artifacts and metrics directories, relative to a root (a profile may nest them)."""
    cfg = _config(harness.REPO, 0, 64, params)
    dirs = Path(cfg.artifacts_dir), Path(cfg.metrics_dir)
    if any(d.is_absolute() for d in dirs):
        raise SystemExit(f"{params}: artifacts_dir and metrics_dir must be relative here (every cell is its own root)")
    return dirs


def run(seeds: list[int], budgets: list[int], params: Path, workdir: Path = WORKDIR, again: bool = False) -> None:
    """Every (seed, budget) cell not yet recorded; a seed's shared stages run once, before its first cell."""
    workdir, (artifacts, metrics) = workdir_for(params, workdir), params_layout(params)

    def measure(cell: dict) -> dict:
        seed, budget = cell["seed"], cell["budget"]
        seed_root, settings = workdir / f"seed{seed}", cell_overrides(params, seed, budget)
        made_by = {"params": str(params), "settings": {**settings, "budget": None}}  # what a seed root holds
        if _read(seed_root / "cell.json") != made_by:  # made with other settings: start over
            shutil.rmtree(seed_root, ignore_errors=True)
            seed_root.mkdir(parents=True)
            (seed_root / "cell.json").write_text(json.dumps(made_by))
        _run_stages(_config(seed_root, seed, 64, params), SEED_STAGES, seed_root / "times.json")
        # The cell's own root, its data and shared stages linked to the seed's; an interrupted attempt's
        # finished stages are kept (resumed), a root made with other settings is started over.
        root = seed_root / f"budget{budget}"
        if _read(root / "cell.json") != settings:
            shutil.rmtree(root, ignore_errors=True)
            (root / metrics).mkdir(parents=True)
            (root / artifacts).mkdir(parents=True, exist_ok=True)
            (root / "data").symlink_to((seed_root / "data").resolve())
            for stage in SEED_STAGES:
                (root / artifacts / stage).symlink_to((seed_root / artifacts / stage).resolve())
            (root / "cell.json").write_text(json.dumps(settings))
        times = _run_stages(_config(root, seed, budget, params), BUDGET_STAGES, root / "times.json")
        evaluation = json.loads((root / metrics / "evaluate.json").read_text())
        prepare = json.loads((seed_root / metrics / "prepare.json").read_text())
        by_problem = json.loads((root / artifacts / "evaluate" / BY_PROBLEM).read_text())
        return {
            "wall_s": round(sum(times.values()), 1),
            "stage_s": {**json.loads((seed_root / "times.json").read_text()), **times},
            "evaluate": evaluation,
            "by_problem": by_problem,
            "train_tokens": _train_tokens(root / metrics),
            "c1_gate": {k: m.get("c1_gate") for k, m in read_unit_metrics(root / metrics / "teacher_rl").items()},
            "params": str(params.relative_to(harness.REPO) if params.is_relative_to(harness.REPO) else params),
            "base_models": {
                # attempts: pretraining tries of a built model (an imported or derived one has none)
                r: {"eval_greedy": prepare[r]["eval_greedy_accuracy"], "attempts": len(prepare[r].get("attempts", []))}
                for r in ("teacher", "student")
            },
        }

    harness.run_cells(results_file(params), cells_of(params, seeds, budgets), measure, again)


def cells_of(params: Path, seeds: list[int], budgets: list[int]) -> list[dict]:
    """The (seed, budget) cells `run` measures, keyed by the settings they run under (`settings_id`)."""
    version = {"settings": v} if (v := settings_id(params)) else {}
    return [{"seed": seed, "budget": budget, **version} for seed in seeds for budget in budgets]


# ---------------------------------------------------------------- report


def _sampled(records: list[dict]) -> str:
    """The sampled-accuracy key, once every record is known to be evaluated at one `k` (mixing is an error)."""
    if len(ks := {r["evaluate"]["k"] if "evaluate" in r else r["k"] for r in records}) != 1:
        raise SystemExit(f"results were evaluated at different k ({sorted(ks)}): report them separately")
    return SAMPLED


def report(records: list[dict]) -> str:
    import numpy as np

    sampled = _sampled(records)
    budgets = sorted({r["budget"] for r in records})
    arms = list(records[0]["evaluate"]["arms"])
    by = {(r["seed"], r["budget"]): r["evaluate"] for r in records}
    seeds = sorted({r["seed"] for r in records})
    lines = [
        f"Seeds {seeds}; eval {records[0]['evaluate']['eval_problems']} problems; sampled = {sampled} at "
        f"temperature 1; machine: {harness.machines(records)}. "
        f"Wall time per (seed, budget) cell: {np.median([r['wall_s'] for r in records]):.0f} s median, "
        f"{max(r['wall_s'] for r in records):.0f} s max (plus prepare "
        f"{np.median([r['stage_s']['prepare'] for r in records]):.0f} s once per seed).",
        "",
    ]
    for metric in (sampled, "greedy"):
        lines += [
            f"**{metric}, mean ± std over seeds**",
            "",
            "| arm | " + " | ".join(f"N={b}" for b in budgets) + " |",
            "|---|" + "---|" * len(budgets),
        ]
        for name in arms + ["teacher_rl", "teacher_raw", "student_raw"]:
            cells = []
            for b in budgets:
                vals = [v for s in seeds if (s, b) in by and (v := _metric(by[(s, b)], name, metric)) is not None]
                cells.append(
                    f"{np.mean(vals):.3f} ± {np.std(vals, ddof=1) if len(vals) > 1 else 0:.3f}" if vals else ""
                )
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        f"**Paired differences by seed ({sampled})**: per-seed values, mean, 95 % bootstrap interval of "
        "the mean (10,000 resamples of the seeds), wins",
        "",
        "| difference | N | per seed | mean | 95 % CI | wins |",
        "|---|---|---|---|---|---|",
    ]
    for a, b in PAIRS:
        for budget in budgets:
            cells = [by[(s, budget)] for s in seeds if (s, budget) in by]
            scores = [(_metric(e, a, sampled), _metric(e, b, sampled)) for e in cells]
            if not (d := [x - y for x, y in scores if x is not None and y is not None]):
                continue
            lo, hi = bootstrap_ci(d)
            lines.append(
                f"| {a} − {b} | {budget} | {', '.join(f'{x:+.3f}' for x in d)} | {np.mean(d):+.3f} | "
                f"[{lo:+.3f}, {hi:+.3f}] | {sum(x > 0 for x in d)}/{len(d)} |"
            )
    if rows := paired_by_problem(records):
        lines += [
            "",
            "**Paired by problem, per cell (greedy)**: left minus right over the eval problems both answered, "
            "95 % bootstrap interval resampling problems (10,000), problems only left / only right got right",
            "",
            "| seed | N | difference | mean | 95 % CI | only left / only right |",
            "|---|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r['seed']} | {r['budget']} | {r['left']} − {r['right']} | {r['mean']:+.3f} | "
                f"[{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}] | {r['left_higher']} / {r['right_higher']} |"
            )
    for metric in (sampled, "greedy"):
        lines += [
            "",
            f"**The claims ({metric})**: read only in the (seed, budget) cells where their preconditions hold "
            "- the distilling arm's teacher above the student baseline it is compared with (`grpo_direct`'s "
            "student for `s2d` > `grpo_direct`, the raw student for the others), and the raw student neither "
            f'below {STUDENT_FLOOR} nor at or above the raw teacher; elsewhere "not testable here" with the '
            "reason. Over the testable cells: mean paired difference, 95 % bootstrap interval resampling seeds "
            "(a seed's cells share its base models), cells won, and the verdict: reproduces (interval above 0), "
            "reversed (below 0) or not shown. The two arms' mean scores over every cell beside it, since a "
            "difference between two arms near 0 says little about the mechanism",
            "",
            "| claim | arms' means | cells testable | mean | 95 % CI | cells won | verdict |",
            "|---|---|---|---|---|---|---|",
        ]
        for v in claim_verdicts(records, metric):
            tested = (
                f"{v['mean']:+.3f} | [{v['ci'][0]:+.3f}, {v['ci'][1]:+.3f}] | {v['won']}/{v['testable']}"
                if v["testable"]
                else "— | — | —"
            )
            lines.append(
                f"| {v['left']} > {v['right']} | {v['levels'][0]:.3f} vs {v['levels'][1]:.3f} "
                f"| {v['testable']}/{v['cells']} | {tested} | {v['verdict']} |"
            )
    return "\n".join(lines) + "\n"


def claim_preconditions(evaluation: dict, left: str, right: str, metric: str) -> list[str]:
    """Why the claim `left` > `right` cannot be read in one cell (`evaluation`, on `metric`): empty when
    it can. `left` is a student distilled from a teacher, so the claim says something about the method
    only when (a) that teacher is above the student baseline it is compared with - `right` itself when
    `right` learns from labels alone (`grpo_direct`), else the raw student the bridge starts from -
    since a teacher at or below the baseline cannot give its student the lead; and (b) the raw student
    is neither at the floor (`STUDENT_FLOOR`) nor at or above the raw teacher, which would leave the
    teacher nothing to pass on."""
    teacher_key = SPECS[left].teacher
    if teacher_key is None:
        raise ValueError(f"claim {left} > {right}: '{left}' distils from no teacher")
    teacher = "teacher_raw" if teacher_key == "raw" else f"teacher_rl/{teacher_key}"
    teacher_name = "the raw teacher" if teacher_key == "raw" else "the RL teacher"
    baseline, baseline_name = (
        ("student_raw", "the raw student") if SPECS[right].distils else (right, f"{right}'s student")
    )
    scores = {name: _metric(evaluation, name, metric) for name in (teacher, baseline, "student_raw", "teacher_raw")}
    if missing := sorted(name for name, value in scores.items() if value is None):
        return [f"no score for {', '.join(missing)}"]
    unmet = []
    if not scores[teacher] > scores[baseline]:
        unmet.append(f"{teacher_name} not above {baseline_name}")
    if scores["student_raw"] < STUDENT_FLOOR:
        unmet.append(f"the raw student at the floor (below {STUDENT_FLOOR})")
    if scores["student_raw"] >= scores["teacher_raw"]:
        unmet.append("the raw student at or above the raw teacher")
    return unmet


SIZING = harness.RESULTS / "student_sizing.jsonl"
# The student sizing rule (bench/findings.md): on SIZING_PROBLEMS of the task's reserved sums, the raw
# student's greedy accuracy in SIZING_BAND and the raw teacher at least SIZING_MARGIN above it; the
# candidates (kept layers: the first k - 1 and the last; heal steps) in the rule's order.
SIZING_PROBLEMS, SIZING_BAND, SIZING_MARGIN = 100, (0.15, 0.45), 0.15
# The first rule's candidates, (27, 10), (28, 10), (27, 30), (28, 30), (29, 30), left every student within
# 0.15 of the teacher (findings); the second rule's weaken the student, cheapest healing first.
SIZING_CANDIDATES = [(26, 10), (25, 10), (24, 10), (26, 30), (25, 30), (24, 30)]


def sizing_split(cfg, task):
    """(greedy, rows): the last SIZING_PROBLEMS of the task's reserved sums (the healing samples the first
    prepare.heal.prompts of the same list; no seed's split holds any) and greedy accuracy on them."""
    from s2d_pipeline.generation import accuracy

    reserved = task.reserved_problems(cfg.prepare.heal.seed)
    if len(reserved) < SIZING_PROBLEMS + cfg.prepare.heal.prompts:
        raise SystemExit(f"{len(reserved)} reserved sums, fewer than the sizing split and the heal pool")
    rows = reserved[-SIZING_PROBLEMS:]
    kwargs = {"max_new_tokens": cfg.evaluate.max_completion_length, "batch_size": cfg.evaluate.batch_size}
    return lambda model, tokenizer: round(accuracy(cfg, task, model, tokenizer, rows, **kwargs), 4), rows


def size(params: Path, workdir: Path) -> None:
    """The sizing rule: the raw teacher once, then each candidate cut and healed through prepare's cache
    (so the one taken is already there for the profile's runs), greedy, one record each in
    student_sizing.jsonl; stops at the first candidate that satisfies the rule. `eval` is never read."""
    from s2d_pipeline import runtime
    from s2d_pipeline.models import load_model
    from s2d_pipeline.stages.prepare import file_sha256, healed_student, import_teacher
    from s2d_pipeline.tasks import get_task

    quiet = {"tracking": {"enabled": False}}  # measures the student, not the store
    cfg = load_config(params, quiet, root=workdir)
    runtime.setup(cfg)
    task = get_task(cfg.task)
    greedy, rows = sizing_split(cfg, task)
    teacher, tokenizer, gguf = import_teacher(cfg, workdir / "teacher")
    teacher_sha256, layers = file_sha256(gguf), teacher.config.num_hidden_layers
    record = functools.partial(harness.record, SIZING)

    base = {"profile": cfg.profile, "task": cfg.task.sums.model_dump(), "problems": len(rows)}
    teacher_acc = record({**base, "model": "teacher"}, lambda: {"greedy": greedy(teacher, tokenizer)})["greedy"]
    if teacher_acc < SIZING_BAND[0] + SIZING_MARGIN:
        print(f"the raw teacher scores {teacher_acc:.3f}: no student can satisfy the rule on this task")
        return
    for kept, steps in SIZING_CANDIDATES:
        keep = [*range(kept - 1), layers - 1]
        change = {"models": {"student": {"keep_layers": keep}}, "prepare": {"heal": {"steps": steps}}}
        c = load_config(params, {**quiet, **change}, root=workdir)

        def measure(c=c):
            entry = healed_student(c, task, teacher, tokenizer, workdir / "teacher", teacher_sha256)
            return {
                "greedy": greedy(load_model(entry.path, c), tokenizer),
                "heal": entry.record["heal"],
                "entry": str(entry.path),
            }

        acc = record({**base, "model": "student", "kept_layers": kept, "heal_steps": steps}, measure)["greedy"]
        ok = SIZING_BAND[0] <= acc <= SIZING_BAND[1] and teacher_acc - acc >= SIZING_MARGIN
        print(f"keep {kept}, heal {steps}: student {acc:.3f}, teacher {teacher_acc:.3f}: {'taken' if ok else 'no'}")
        if ok:
            return


def sizing_section() -> str:
    """The sizing rule's records: the raw teacher and each candidate measured, in the rule's order."""
    if not (records := harness.read(SIZING, "profile", "task", "model", "kept_layers", "heal_steps")):
        return harness.not_run("label_efficiency", " (size)")
    r0 = records[0]
    lines = [
        f"Machine: {harness.machines(records)}. `{r0['profile']}`, sums {r0['task']}, {r0['problems']} reserved "
        f"problems, greedy; the rule: student in {list(SIZING_BAND)}, teacher at least {SIZING_MARGIN} above.",
        "",
        "| model | kept layers | heal steps | greedy | wall |",
        "|---|---|---|---|---|",
    ]
    for r in records:
        kept, steps = r.get("kept_layers", "all"), r.get("heal_steps", "—")
        lines.append(f"| {r['model']} | {kept} | {steps} | {r['greedy']:.3f} | {r['wall_s']} s |")
    return "\n".join(lines) + "\n"


def claim_verdicts(records: list[dict], metric: str) -> list[dict]:
    """Each claim in CLAIMS over the cells where both arms ran and its preconditions hold
    (`claim_preconditions`): the mean paired difference, a bootstrap interval over seeds (each seed's
    mean over those cells, resampled), cells won, and the verdict: "reproduces" when the interval is above
    0, "reversed" when it is below, "not shown" otherwise.
    A claim testable in no cell gets "not testable here" and the unmet preconditions, each with the
    number of cells it failed in; one testable in some cells adds those to its verdict. The
    arms' mean scores are over every cell where both ran."""
    import numpy as np

    out = []
    for left, right in CLAIMS:
        per_seed: dict[int, list[float]] = {}
        levels, unmet = [], {}
        for r in records:
            a, b = _metric(r["evaluate"], left, metric), _metric(r["evaluate"], right, metric)
            if a is None or b is None:
                continue
            levels.append((a, b))
            if reasons := claim_preconditions(r["evaluate"], left, right, metric):
                for reason in reasons:
                    unmet[reason] = unmet.get(reason, 0) + 1
                continue
            per_seed.setdefault(r["seed"], []).append(a - b)
        if not levels:
            continue
        cells = [d for ds in per_seed.values() for d in ds]
        why = "; ".join(
            f"{reason} ({n}/{len(levels)} cells)" for reason, n in sorted(unmet.items(), key=lambda x: (-x[1], x[0]))
        )
        verdict = {
            "left": left,
            "right": right,
            "cells": len(levels),
            "testable": len(cells),
            "levels": tuple(float(np.mean(x)) for x in zip(*levels, strict=True)),
            "mean": None,
            "ci": None,
            "won": None,
            "verdict": f"not testable here: {why}",
        }
        if cells:
            lo, hi = bootstrap_ci([float(np.mean(ds)) for ds in per_seed.values()])
            if len(per_seed) < MIN_SEEDS:  # an interval over one seed is that seed's value, not a spread
                rule = f"no verdict: {len(per_seed)} seed, {MIN_SEEDS} needed"
            else:
                rule = "reproduces" if lo > 0 else "reversed" if hi < 0 else "not shown"
            verdict |= {
                "mean": float(np.mean(cells)),
                "ci": (lo, hi),
                "won": sum(d > 0 for d in cells),
                "verdict": rule + (f" (elsewhere not testable: {why})" if unmet else ""),
            }
        out.append(verdict)
    return out


def paired_by_problem(records: list[dict]) -> list[dict]:
    """For each cell that kept its verdicts per problem and each pair in PAIRS, greedy: the product's
    `evaluation.paired_difference` (the mean over the problems, its interval resampling problems). Within a
    cell this is the comparison's noise from the eval sample alone; across seeds the base models vary too
    (the seed tables)."""
    from s2d_pipeline.evaluation import paired_difference

    return [
        {"seed": r["seed"], "budget": r["budget"], "left": left, "right": right}
        | paired_difference(models[left], models[right], "greedy")
        for r in records
        if (models := r.get("by_problem", {}).get("models", {}))
        for left, right in PAIRS
        if left in models and right in models
    ]


def _metric(evaluation: dict, name: str, metric: str):
    if name in evaluation["arms"]:
        return evaluation["arms"][name][metric]
    if name == "teacher_rl":
        rl = [v for t, v in evaluation["teachers"].items() if t.startswith("teacher_rl/")]
        return rl[0][metric] if rl else None
    if name in evaluation["teachers"]:
        return evaluation["teachers"][name][metric]
    return evaluation.get(name, {}).get(metric)


def write_curve(records: list[dict], out: Path = CURVE_CSV) -> None:
    """Mean sampled accuracy over seeds per budget, one column per arm (the `dvc plots` curve)."""
    import numpy as np

    sampled = _sampled(records)
    budgets = sorted({r["budget"] for r in records})
    arms = list(records[0]["evaluate"]["arms"])
    lines = [",".join(["budget", *arms])]
    for b in budgets:
        means = [np.mean([_metric(r["evaluate"], a, sampled) for r in records if r["budget"] == b]) for a in arms]
        lines.append(",".join([str(b), *(f"{m:.4f}" for m in means)]))
    out.write_text("\n".join(lines) + "\n")


def plot(records: list[dict], out: Path) -> None:
    """Accuracy against the budget (sampled, greedy: mean ± std over seeds), and the paired gain s2d −
    grpo_direct by seed: the seed spread is mostly the base models, the paired gain is what the claim is about."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    sampled, budgets = _sampled(records), sorted({r["budget"] for r in records})
    by = {(r["seed"], r["budget"]): r["evaluate"] for r in records}
    fig, axes = plt.subplots(1, 3, figsize=(18, 4.8))
    for ax, metric in zip(axes[:2], (sampled, "greedy"), strict=True):
        for arm in records[0]["evaluate"]["arms"]:
            vals = [[_metric(e, arm, metric) for (_, b), e in by.items() if b == budget] for budget in budgets]
            width = 2.5 if arm in ("s2d", "grpo_direct") else 1
            ax.errorbar(budgets, [np.mean(v) for v in vals], yerr=[np.std(v) for v in vals], marker="o", capsize=3,
                        label=arm, linewidth=width)  # fmt: skip
        ax.set_title(f"eval accuracy, {metric} (mean ± std over seeds)")
    gains = {
        s: [_metric(by[(s, b)], "s2d", sampled) - _metric(by[(s, b)], "grpo_direct", sampled) for b in budgets]
        for s in sorted({s for s, _ in by})
    }
    for s, g in gains.items():
        axes[2].plot(budgets, g, marker="o", linewidth=1, label=f"seed {s}")
    axes[2].plot(budgets, np.mean(list(gains.values()), axis=0), marker="s", linewidth=3, color="black", label="mean")
    axes[2].axhline(0, color="grey", linewidth=0.8)
    axes[2].set_title(f"paired gain s2d − grpo_direct ({sampled})")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.set_xlabel("label budget N")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[1].legend(fontsize=8)
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def section(params: Path = PARAMS) -> str:
    """The tables (and, for the default params, the plot and curve files) from the recorded cells."""
    current, every = settings_id(params), harness.read(results_file(params), "seed", "budget", "settings")
    if not (records := [r for r in every if r.get("settings") == current]):
        if every:  # measured, but under settings that have changed since
            return (
                f"No cell under the current settings yet; {len(every)} under earlier settings, read in "
                "bench/findings.md. `run` measures the current ones.\n"
            )
        return harness.not_run("label_efficiency")
    out = [report(records)]
    if params.resolve() == PARAMS.resolve():
        plot(records, PLOT)
        write_curve(records, CURVE_CSV)
        out.append(f"![accuracy against label budget]({PLOT.name})\n")
    return "\n".join(out)


def main() -> None:
    def options(p):
        p.add_argument("--params", type=Path, default=PARAMS, help="params file or profile (default: params.yaml)")

    def run_options(p):
        p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
        p.add_argument("--budgets", type=int, nargs="+", default=[64, 128, 256, 512])
        p.add_argument("--workdir", type=Path, default=WORKDIR, help="scratch cells (a profile's beside it)")

    def run_args(a):
        run(a.seeds, a.budgets, a.params.resolve(), a.workdir, a.again)

    def size_command(p):
        p.add_argument("--params", type=Path, default=harness.REPO / "profiles" / "smollm2-arith.yaml")
        p.add_argument("--workdir", type=Path, default=WORKDIR.with_name("s2d-bench-student-sizing"))
        return lambda a: size(a.params.resolve(), a.workdir)

    harness.main(
        "label_efficiency",
        __doc__,
        run_args,
        lambda a: section(a.params.resolve()),
        options,
        run_options,
        commands={"size": size_command},
    )


if __name__ == "__main__":
    main()
