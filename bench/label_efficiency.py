"""Label efficiency: every arm at several label budgets and seeds, paired by seed.

    python -m bench.label_efficiency run                  # 4 budgets x 3 seeds, ~50 min on 2 CPU cores
    python -m bench.label_efficiency run --budgets 64 --seeds 0
    python -m bench.label_efficiency --params profiles/<name>.yaml run    # another profile (own results file)
    python -m bench.label_efficiency report               # tables and plot (RESULTS.md: `python -m bench.report`)
    python -m bench.label_efficiency ablation             # s2d vs no_warmup / no_opd with fewer bridge steps
    python -m bench.label_efficiency compute --budget 64  # grpo_direct run longer: accuracy vs student compute

Run from the repository root.

`run` drives the same stage functions as `s2d run` / `dvc repro`, from a scratch root per (seed, budget):
the stages through `validate` run once per seed (same data, base teacher and base student for every
budget), then the stages after it through `evaluate` run per budget (the stage list and its order come
from `s2d_pipeline.stages`). Within one seed every arm therefore starts from the same base models and
draws from the same N labels. Tracking is off (this measures the method, not the store). Accuracy is
read as `avg_at_k` with the evaluate stage's `k`, as recorded in each run's `metrics/evaluate.json`.
Finished (seed, budget) cells are appended to `bench/results/label_efficiency.jsonl` (with `--params
profiles/<name>.yaml`: `label_efficiency_<name>.jsonl`); a rerun skips them. Each record keeps the
students' training tokens per stage (from the trainers' logs) and the C1 gate's measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from bench.common import REPO, machine
from s2d_pipeline.arms import SPECS
from s2d_pipeline.io import read_unit_metrics
from s2d_pipeline.stages import STAGES, stages_through

RESULTS = REPO / "bench" / "results" / "label_efficiency.jsonl"
PARAMS = REPO / "params.yaml"
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


def results_file(params: Path = PARAMS, default: Path = RESULTS) -> Path:
    """Where a profile's records go: the default's file, or one named after the profile."""
    if params.resolve() == PARAMS.resolve():
        return default
    return default.with_name(f"{default.stem}_{params.stem}.jsonl")


def _config(root: Path, seed: int, budget: int, params: Path = PARAMS):
    from s2d_pipeline.config import load_config

    return load_config(params, {"seed": seed, "budget": budget, **NO_STOPS}, root=root)


def _run_stages(root: Path, seed: int, budget: int, stages, params: Path = PARAMS) -> dict:
    from s2d_pipeline.cli import run_stage

    cfg = _config(root, seed, budget, params)
    times = {}
    for name in stages:
        t0 = time.perf_counter()
        run_stage(name, cfg)
        times[name] = round(time.perf_counter() - t0, 1)
    return times


def _done(results: Path) -> set[tuple[int, int]]:
    if not results.exists():
        return set()
    return {(r["seed"], r["budget"]) for r in map(json.loads, results.read_text().splitlines()) if r}


def _train_tokens(metrics_dir: Path) -> dict:
    """Tokens each training run processed, by stage and unit (the trainers' own counts)."""
    out = {}
    for stage in ("teacher_rl", "warmup", "opd", "student_rl"):
        if metrics := read_unit_metrics(metrics_dir / stage):
            out[stage] = {u: m.get("train_tokens") for u, m in metrics.items()}
    return out


def params_layout(params: Path) -> tuple[Path, Path]:
    """The params' artifacts and metrics directories, relative to a root (a profile may nest them)."""
    cfg = _config(REPO, 0, 64, params)
    dirs = Path(cfg.artifacts_dir), Path(cfg.metrics_dir)
    if any(d.is_absolute() for d in dirs):
        raise SystemExit(f"{params}: artifacts_dir and metrics_dir must be relative here (every cell is its own root)")
    return dirs


def _link_shared(root: Path, source: Path, stages: list[str], params: Path) -> None:
    """A fresh scratch root whose data and `stages`' artifacts are links to `source`'s."""
    artifacts, metrics = params_layout(params)
    shutil.rmtree(root, ignore_errors=True)
    (root / artifacts).mkdir(parents=True)
    (root / metrics).mkdir(parents=True, exist_ok=True)
    (root / "data").symlink_to((source / "data").resolve())
    for stage in stages:
        (root / artifacts / stage).symlink_to((source / artifacts / stage).resolve())


def run(seeds: list[int], budgets: list[int], workdir: Path, params: Path = PARAMS) -> None:
    results = results_file(params)
    done = _done(results)
    _, metrics = params_layout(params)
    for seed in seeds:
        seed_root = workdir / f"seed{seed}"
        if not (seed_root / metrics / f"{SEED_STAGES[-1]}.json").exists():
            seed_root.mkdir(parents=True, exist_ok=True)
            seed_times = _run_stages(seed_root, seed, 64, SEED_STAGES, params)
            (seed_root / "times.json").write_text(json.dumps(seed_times))
        seed_times = json.loads((seed_root / "times.json").read_text())
        for budget in budgets:
            if (seed, budget) in done:
                continue
            root = workdir / f"seed{seed}" / f"budget{budget}"
            # shared per seed: same splits, base models, validation report
            _link_shared(root, seed_root, SEED_STAGES, params)
            t0 = time.perf_counter()
            times = _run_stages(root, seed, budget, BUDGET_STAGES, params)
            evaluation = json.loads((root / metrics / "evaluate.json").read_text())
            prepare = json.loads((seed_root / metrics / "prepare.json").read_text())
            sampled = sampled_metric(evaluation["k"])
            record = {
                "seed": seed,
                "budget": budget,
                "wall_s": round(time.perf_counter() - t0, 1),
                "stage_s": {**seed_times, **times},
                "evaluate": evaluation,
                "train_tokens": _train_tokens(root / metrics),
                "c1_gate": {k: m.get("c1_gate") for k, m in read_unit_metrics(root / metrics / "teacher_rl").items()},
                "params": str(params.relative_to(REPO) if params.is_relative_to(REPO) else params),
                "base_models": {
                    r: {"eval_greedy": prepare[r]["eval_greedy_accuracy"], "attempts": len(prepare[r]["attempts"])}
                    for r in ("teacher", "student")
                },
                **_provenance(),
            }
            results.parent.mkdir(parents=True, exist_ok=True)
            with results.open("a") as f:
                f.write(json.dumps(record) + "\n")
            print(
                f"seed {seed} budget {budget}: {sampled} s2d {evaluation['arms'].get('s2d', {}).get(sampled)} "
                f"grpo_direct {evaluation['arms'].get('grpo_direct', {}).get(sampled)} ({record['wall_s']} s)",
                flush=True,
            )


def sampled_metric(k: int) -> str:
    """The evaluate stage's sampled-accuracy metric key (`k` is recorded beside it, checked by `_one_k`)."""
    return "avg_at_k"


def _one_k(ks) -> int:
    """The one `k` a set of results was evaluated at; mixing results of different `k` is an error."""
    ks = set(ks)
    if len(ks) != 1:
        raise SystemExit(f"results were evaluated at different k ({sorted(ks)}): report them separately")
    return ks.pop()


def _provenance() -> dict:
    m = machine()
    return {
        "commit": m["commit"],
        "machine": f"{m['cpu']}, {m['gpu'] or 'no GPU'}, Python {m['python']}, torch {m['torch']}",
    }


ABLATION_RESULTS = REPO / "bench" / "results" / "ablation_bridge_steps.jsonl"
ABLATION_ARMS = ["s2d", "no_warmup", "no_opd"]
# Rerun with other step counts: every stage from warmup through evaluate (student_rl trains nothing
# here: none of ABLATION_ARMS ends with student GRPO). The stages before warmup are reused from the cell.
ABLATION_STAGES = stages_through("evaluate")[STAGES.index("warmup") :]
ABLATION_SHARED = STAGES[: STAGES.index("warmup")]


def _rerun_root(workdir: Path, seed: int, budget: int, name: str, shared: list[str], params: Path) -> Path:
    """A fresh scratch root for rerunning later stages of a finished (seed, budget) cell: the seed's data
    and the cell's outputs of the `shared` stages are linked in, read-only by convention."""
    root = workdir / f"seed{seed}" / name
    _link_shared(root, workdir / f"seed{seed}" / f"budget{budget}", shared, params)
    return root


def ablation(
    seeds: list[int], budget: int, bridge_steps: list[tuple[int, int]], workdir: Path, params: Path = PARAMS
) -> None:
    """Do the ablations bite when distillation steps are scarce? Re-runs ABLATION_STAGES (warmup through
    evaluate) for s2d / no_warmup / no_opd on the finished (seed, budget) cells with other (warmup, opd)
    step counts (the ablations still get the removed stage's steps); same RL teacher, rollouts and eval."""
    from s2d_pipeline.cli import run_stage
    from s2d_pipeline.config import load_config

    _, metrics = params_layout(params)
    for seed in seeds:
        for warmup_steps, opd_steps in bridge_steps:
            name = f"ablation-b{budget}-w{warmup_steps}-o{opd_steps}"
            root = _rerun_root(workdir, seed, budget, name, ABLATION_SHARED, params)
            cfg = load_config(
                params,
                {
                    "seed": seed,
                    "budget": budget,
                    **NO_STOPS,
                    "arms": ABLATION_ARMS,
                    # LR warmup scaled with the run, else short runs never reach
                    # the peak LR and the two-stage arm is handicapped twice
                    "warmup": {"steps": warmup_steps, "warmup_steps": 2},
                    "opd": {"steps": opd_steps, "warmup_steps": 2},
                },
                root=root,
            )
            for stage in ABLATION_STAGES:
                run_stage(stage, cfg)
            evaluation = json.loads((root / metrics / "evaluate.json").read_text())
            sampled = sampled_metric(evaluation["k"])
            record = {
                "seed": seed,
                "budget": budget,
                "warmup_steps": warmup_steps,
                "opd_steps": opd_steps,
                "k": evaluation["k"],
                "arms": evaluation["arms"],
                **_provenance(),
            }
            out = results_file(params, ABLATION_RESULTS)
            out.parent.mkdir(parents=True, exist_ok=True)
            with out.open("a") as f:
                f.write(json.dumps(record) + "\n")
            print(
                f"seed {seed} w{warmup_steps}/o{opd_steps} {sampled}: "
                + ", ".join(f"{a} {evaluation['arms'][a][sampled]}" for a in ABLATION_ARMS),
                flush=True,
            )


COMPUTE_RESULTS = REPO / "bench" / "results" / "compute_view.jsonl"
COMPUTE_SHARED = STAGES[: STAGES.index("student_rl")]


def compute_view(seeds: list[int], budget: int, grpo_steps: list[int], workdir: Path, params: Path = PARAMS) -> None:
    """Accuracy against the student's training compute: `grpo_direct` rerun with more GRPO steps on
    finished (seed, budget) cells (same base student, same N labels), beside `s2d`'s bridge from the
    cell. Compute is what the trainers logged: tokens processed (prompt + completion) by the student's
    training runs; the teacher's own RL, which every distilling arm shares, is not counted."""
    from s2d_pipeline.cli import run_stage
    from s2d_pipeline.config import load_config

    cells = {(r["seed"], r["budget"]): r for r in load_records(results_file(params))}
    _, metrics = params_layout(params)
    for seed in seeds:
        cell = cells[(seed, budget)]
        for steps in grpo_steps:
            root = _rerun_root(workdir, seed, budget, f"compute-b{budget}-g{steps}", COMPUTE_SHARED, params)
            cfg = load_config(
                params,
                {"seed": seed, "budget": budget, **NO_STOPS, "arms": ["grpo_direct"], "grpo_direct": {"steps": steps}},
                root=root,
            )
            for stage in ("student_rl", "evaluate"):
                run_stage(stage, cfg)
            evaluation = json.loads((root / metrics / "evaluate.json").read_text())
            record = {
                "seed": seed,
                "budget": budget,
                "params": cell.get("params", "params.yaml"),
                "k": evaluation["k"],
                "grpo_direct": {
                    "steps": steps,
                    "train_tokens": _train_tokens(root / metrics)["student_rl"]["grpo_direct"],
                    **_scores(evaluation["arms"]["grpo_direct"]),
                },
                "grpo_direct_in_cell": {
                    "steps": _config(root, seed, budget, params).grpo_direct.steps,
                    "train_tokens": cell["train_tokens"]["student_rl"]["grpo_direct"],
                    **_scores(cell["evaluate"]["arms"]["grpo_direct"]),
                },
                "s2d": {
                    "train_tokens": sum(cell["train_tokens"][s]["s2d"] or 0 for s in ("warmup", "opd")),
                    **_scores(cell["evaluate"]["arms"]["s2d"]),
                },
                **_provenance(),
            }
            out = results_file(params, COMPUTE_RESULTS)
            out.parent.mkdir(parents=True, exist_ok=True)
            with out.open("a") as f:
                f.write(json.dumps(record) + "\n")
            print(f"seed {seed} grpo_direct {steps} steps: {record['grpo_direct']} vs s2d {record['s2d']}", flush=True)


def _scores(entry: dict) -> dict:
    return {m: entry[m] for m in ("greedy", "avg_at_k", "pass_at_k")}


def compute_report(records: list[dict], cells: list[dict] | None = None) -> str:
    """Per seed: s2d's bridge (student tokens, avg_at_k) and grpo_direct's curve (the cell's run and the
    longer ones), starting from the raw student at 0 tokens when the label-efficiency `cells` are given;
    the student compute grpo_direct needs to reach s2d's accuracy, as a multiple of s2d's (linear between
    measured points), or that it did not within the longest run."""
    raw = {(c["seed"], c["budget"]): c["evaluate"].get("student_raw", {}).get("avg_at_k") for c in cells or []}
    lines = [
        "| seed | s2d bridge: tokens, avg_at_k | grpo_direct: steps: tokens, avg_at_k | compute to reach s2d |",
        "|---|---|---|---|",
    ]
    for seed in sorted({r["seed"] for r in records}):
        rs = [r for r in records if r["seed"] == seed]
        s2d = rs[0]["s2d"]
        runs = {r["grpo_direct_in_cell"]["steps"]: r["grpo_direct_in_cell"] for r in rs}
        runs.update({r["grpo_direct"]["steps"]: r["grpo_direct"] for r in rs})
        if (start := raw.get((seed, rs[0]["budget"]))) is not None:
            runs[0] = {"train_tokens": 0, "avg_at_k": start}
        curve = [(g["train_tokens"], g["avg_at_k"], steps) for steps, g in sorted(runs.items())]
        ratio = f"not reached by {curve[-1][0] / s2d['train_tokens']:.1f}×"
        previous = (0, None)
        for tokens, acc, _ in curve:
            if acc >= s2d["avg_at_k"]:
                t0, a0 = previous
                at = tokens if a0 is None or acc == a0 else t0 + (tokens - t0) * (s2d["avg_at_k"] - a0) / (acc - a0)
                ratio = f"{at / s2d['train_tokens']:.1f}×" + (" (the raw student already is)" if at == 0 else "")
                break
            previous = (tokens, acc)
        lines.append(
            f"| {seed} | {s2d['train_tokens']:,}, {s2d['avg_at_k']:.3f} | "
            + "; ".join(f"{st}: {t:,}, {a:.3f}" for t, a, st in curve)
            + f" | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def _ablation_k(record: dict) -> int:
    """The evaluate `k` of an ablation record."""
    return record["k"]


def load_ablation_records() -> list[dict]:
    if not ABLATION_RESULTS.exists():
        return []
    return [json.loads(line) for line in ABLATION_RESULTS.read_text().splitlines() if line.strip()]


def ablation_k(records: list[dict]) -> int:
    return _one_k(_ablation_k(r) for r in records)


def ablation_report(records: list[dict] | None = None) -> str:
    import numpy as np

    records = load_ablation_records() if records is None else records
    if not records:
        return ""
    sampled = sampled_metric(ablation_k(records))
    lines = [
        f"| warmup + OPD steps (s2d) | N | s2d {sampled} | no_warmup | no_opd | s2d − no_warmup per seed | "
        "s2d − no_opd per seed |",
        "|---|---|---|---|---|---|---|",
    ]
    for key in sorted({(r["warmup_steps"], r["opd_steps"], r["budget"]) for r in records}):
        rs = sorted(
            (r for r in records if (r["warmup_steps"], r["opd_steps"], r["budget"]) == key), key=lambda r: r["seed"]
        )
        val = {a: [r["arms"][a][sampled] for r in rs] for a in ABLATION_ARMS}
        lines.append(
            f"| {key[0]} + {key[1]} | {key[2]} | {np.mean(val['s2d']):.3f} | {np.mean(val['no_warmup']):.3f} | "
            f"{np.mean(val['no_opd']):.3f} | "
            + ", ".join(f"{a - b:+.3f}" for a, b in zip(val["s2d"], val["no_warmup"], strict=True))
            + " | "
            + ", ".join(f"{a - b:+.3f}" for a, b in zip(val["s2d"], val["no_opd"], strict=True))
            + " |"
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- report


def bootstrap_ci(diffs: list[float], n_boot: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean of paired differences."""
    import numpy as np

    d = np.asarray(diffs, dtype=float)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def load_records(results: Path = RESULTS) -> list[dict]:
    return [json.loads(line) for line in results.read_text().splitlines() if line.strip()]


def records_k(records: list[dict]) -> int:
    """The evaluate stage's `k` shared by every (seed, budget) record."""
    return _one_k(r["evaluate"]["k"] for r in records)


def report(records: list[dict]) -> str:
    import numpy as np

    sampled = sampled_metric(records_k(records))
    budgets = sorted({r["budget"] for r in records})
    arms = list(records[0]["evaluate"]["arms"])
    by = {(r["seed"], r["budget"]): r["evaluate"] for r in records}
    seeds = sorted({r["seed"] for r in records})
    lines = [
        f"Seeds {seeds}; eval {records[0]['evaluate']['eval_problems']} problems; sampled = {sampled} at "
        f"temperature 1; commit {records[0]['commit']}; machine: {records[0]['machine']}. "
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
                vals = [_metric(by[(s, b)], name, metric) for s in seeds if (s, b) in by]
                vals = [v for v in vals if v is not None]
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
            d = [
                _metric(by[(s, budget)], a, sampled) - _metric(by[(s, budget)], b, sampled)
                for s in seeds
                if (s, budget) in by
                and _metric(by[(s, budget)], a, sampled) is not None
                and _metric(by[(s, budget)], b, sampled) is not None
            ]
            if not d:
                continue
            lo, hi = bootstrap_ci(d)
            lines.append(
                f"| {a} − {b} | {budget} | {', '.join(f'{x:+.3f}' for x in d)} | {np.mean(d):+.3f} | "
                f"[{lo:+.3f}, {hi:+.3f}] | {sum(x > 0 for x in d)}/{len(d)} |"
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
            rule = "reproduces" if lo > 0 else "reversed" if hi < 0 else "not shown"
            verdict |= {
                "mean": float(np.mean(cells)),
                "ci": (lo, hi),
                "won": sum(d > 0 for d in cells),
                "verdict": rule + (f" (elsewhere not testable: {why})" if unmet else ""),
            }
        out.append(verdict)
    return out


def _metric(evaluation: dict, name: str, metric: str):
    if name in evaluation["arms"]:
        return evaluation["arms"][name][metric]
    if name == "teacher_rl":
        rl = [v for t, v in evaluation["teachers"].items() if t.startswith("teacher_rl/")]
        return rl[0][metric] if rl else None
    if name in evaluation["teachers"]:
        return evaluation["teachers"][name][metric]
    return evaluation.get(name, {}).get(metric)


CURVE_CSV = REPO / "bench" / "results" / "label_efficiency_curve.csv"


def write_curve(records: list[dict], out: Path = CURVE_CSV) -> None:
    """Mean sampled accuracy over seeds per budget, one column per arm (the `dvc plots` curve)."""
    import numpy as np

    sampled = sampled_metric(records_k(records))
    budgets = sorted({r["budget"] for r in records})
    arms = list(records[0]["evaluate"]["arms"])
    lines = [",".join(["budget", *arms])]
    for b in budgets:
        means = [np.mean([_metric(r["evaluate"], a, sampled) for r in records if r["budget"] == b]) for a in arms]
        lines.append(",".join([str(b), *(f"{m:.4f}" for m in means)]))
    out.write_text("\n".join(lines) + "\n")


def plot(records: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    sampled = sampled_metric(records_k(records))
    budgets = sorted({r["budget"] for r in records})
    arms = list(records[0]["evaluate"]["arms"])
    fig, all_axes = plt.subplots(1, 3, figsize=(18, 4.8))
    axes = all_axes[:2]
    for ax, metric in zip(axes, (sampled, "greedy"), strict=True):
        for arm in arms:
            means, stds = [], []
            for b in budgets:
                vals = [_metric(r["evaluate"], arm, metric) for r in records if r["budget"] == b]
                means.append(np.mean(vals))
                stds.append(np.std(vals))
            ax.errorbar(
                budgets,
                means,
                yerr=stds,
                marker="o",
                capsize=3,
                label=arm,
                linewidth=2.5 if arm in ("s2d", "grpo_direct") else 1,
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.set_xlabel("label budget N")
        ax.set_title(f"eval accuracy, {metric} (mean ± std over seeds)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[1].legend(fontsize=8)
    # The seed spread above is mostly the base models; the paired gain is what the claim is about.
    ax = all_axes[2]
    seeds = sorted({r["seed"] for r in records})
    gains = {
        s: [
            next(
                _metric(r["evaluate"], "s2d", sampled) - _metric(r["evaluate"], "grpo_direct", sampled)
                for r in records
                if r["seed"] == s and r["budget"] == b
            )
            for b in budgets
        ]
        for s in seeds
    }
    for s, g in gains.items():
        ax.plot(budgets, g, marker="o", linewidth=1, label=f"seed {s}")
    ax.plot(budgets, np.mean(list(gains.values()), axis=0), marker="s", linewidth=3, color="black", label="mean")
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(budgets, [str(b) for b in budgets])
    ax.set_xlabel("label budget N")
    ax.set_title(f"paired gain s2d − grpo_direct ({sampled})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def workdir_for(workdir: Path, params: Path) -> Path:
    """A profile's scratch cells live beside the default's, never mixed with them."""
    return workdir if params == PARAMS.resolve() else workdir.with_name(f"{workdir.name}-{params.stem}")


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.label_efficiency", description=__doc__.split("\n")[0])
    p.add_argument("--params", type=Path, default=PARAMS, help="params file or profile (default: params.yaml)")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--budgets", type=int, nargs="+", default=[64, 128, 256, 512])
    r.add_argument(
        "--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "s2d-bench-label-efficiency"
    )
    sub.add_parser("report")
    c = sub.add_parser("compute", help="accuracy against student training compute: grpo_direct run longer")
    c.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    c.add_argument("--budget", type=int, default=64)
    c.add_argument("--grpo-steps", type=int, nargs="+", default=[300, 600, 1200])
    c.add_argument(
        "--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "s2d-bench-label-efficiency"
    )
    sub.add_parser("compute-report")
    a = sub.add_parser("ablation")
    a.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    a.add_argument("--budget", type=int, default=64)
    a.add_argument(
        "--bridge-steps",
        nargs="+",
        default=["10,15", "20,30"],
        help="warmup,opd step pairs (the default profile uses 100,150)",
    )
    a.add_argument(
        "--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "s2d-bench-label-efficiency"
    )
    args = p.parse_args()
    params = args.params.resolve()
    if args.cmd == "run":
        run(args.seeds, args.budgets, workdir_for(args.workdir, params), params)
    elif args.cmd == "ablation":
        pairs = [tuple(map(int, x.split(","))) for x in args.bridge_steps]
        ablation(args.seeds, args.budget, pairs, workdir_for(args.workdir, params), params)
    elif args.cmd == "compute":
        compute_view(args.seeds, args.budget, args.grpo_steps, workdir_for(args.workdir, params), params)
    elif args.cmd == "compute-report":
        cells = load_records(results_file(params)) if results_file(params).exists() else []
        print(compute_report(load_records(results_file(params, COMPUTE_RESULTS)), cells))
    else:
        records = load_records(results_file(params))
        print(report(records))
        if params == PARAMS.resolve():
            plot(records, REPO / "bench" / "label_efficiency.png")
            write_curve(records)
            print(f"plot: {REPO / 'bench' / 'label_efficiency.png'}, curve: {CURVE_CSV}", file=sys.stderr)


if __name__ == "__main__":
    main()
