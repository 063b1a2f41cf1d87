"""The real-weights profile end to end on this machine: per-stage wall time and peak memory, the
comparison table and C1 (the RL teacher's gain over the raw teacher).

    python -m bench.real_weights run                                  # profiles/smollm2-arith.yaml
    python -m bench.real_weights run --params profiles/smollm2-arith.yaml -S teacher_rl.steps=40
    python -m bench.real_weights run --collect experiments/<name> --wall-s 845   # a finished run (its --params, -S)
    python -m bench.real_weights report

Runs every stage in this process, in a temporary project, through `s2d_pipeline.cli.run_stage` (the
code `s2d run` and `dvc repro` call), with tracking on. Peak memory is this process's resident-set
high-water mark after each stage (`ru_maxrss`). One record per run, named by its params and overrides,
in bench/results/real_weights.jsonl; the report shows the newest of each profile.
"""

from __future__ import annotations

import resource
import shutil
import tempfile
import time
from pathlib import Path

from bench import harness

RESULTS = harness.RESULTS / "real_weights.jsonl"


def _summary(cfg, stages: dict) -> dict:
    evaluation = stages["evaluate"]["metrics"]
    table = {"student_raw": evaluation["student_raw"], **evaluation["arms"], **evaluation["teachers"]}
    return {
        "profile": cfg.profile,
        "k": evaluation["k"],
        "eval_problems": evaluation["eval_problems"],
        "table": {name: {m: v[m] for m in ("greedy", "avg_at_k", "pass_at_k")} for name, v in table.items()},
        "C1": evaluation["C1"],
        "C2": {arm: v.get("C2_kl") for arm, v in evaluation["arms"].items() if v.get("C2_kl")},
    }


def run(params: Path, overrides: list[str]) -> dict:
    from s2d_pipeline.cli import run_stage
    from s2d_pipeline.config import load_config, parse_overrides
    from s2d_pipeline.stages import STAGES

    with tempfile.TemporaryDirectory(prefix="s2d-real-weights-") as tmp:
        root = Path(tmp)
        shutil.copy(params, root / "params.yaml")
        cfg = load_config(root / "params.yaml", parse_overrides(overrides), root=root)
        stages, started = {}, time.perf_counter()
        for name in STAGES:
            t0 = time.perf_counter()
            metrics = run_stage(name, cfg)
            stages[name] = {
                "wall_s": round(time.perf_counter() - t0, 1),
                "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
                "metrics": metrics,
            }
            print(name, stages[name]["wall_s"], "s", flush=True)
        return {"wall_s": round(time.perf_counter() - started, 1), "stages": stages, **_summary(cfg, stages)}


def collect(directory: Path, params: Path, overrides: list[str], wall_s: float | None) -> dict:
    """A finished `s2d --params <params> [-S overrides] run` whose outputs are under `directory` (an experiment's
    root): its metrics files (stage wall from the stages' own timers; no memory figures)."""
    from s2d_pipeline.arms import PER_ARM_STAGES
    from s2d_pipeline.config import load_config, parse_overrides
    from s2d_pipeline.layout import metrics_file, stage_metrics
    from s2d_pipeline.stages import STAGES

    cfg = load_config(params, parse_overrides(overrides), root=directory)
    if not (evaluated := metrics_file(cfg, "evaluate")).exists():
        raise SystemExit(f"{directory}: no finished run of {params.name} there ({evaluated} is missing)")
    stages = {}
    for name in STAGES:
        if name not in PER_ARM_STAGES and not metrics_file(cfg, name).exists():
            continue
        if not (metrics := stage_metrics(cfg, name)):
            continue
        walls = [v["wall_s"] for v in metrics.values() if isinstance(v, dict) and "wall_s" in v]
        stages[name] = {"wall_s": metrics.get("wall_s", round(sum(walls), 1)), "metrics": metrics}
    return {"wall_s": wall_s, "stages": stages, **_summary(cfg, stages)}


def section() -> str:
    if not (records := harness.read(RESULTS, "profile")):
        return harness.not_run("real_weights")
    out = []
    for r in records:
        k, overrides = r["k"], " ".join("-S " + o for o in r.get("overrides") or [])
        where = f" in `{r['collected']}`" if isinstance(r.get("collected"), str) else ""
        how = f"(metrics collected from a `s2d --params … run`{where}; stage walls from the stages' own timers) "
        out += [
            f"Machine: {harness.machines([r])}. `{r['params']}` {overrides}{how if r.get('collected') else ''}"
            f"— whole pipeline {r['wall_s'] / 60:.1f} min; eval on {r['eval_problems']} problems, avg_at_k with "
            f"k = {k} at temperature 1.",
            "",
            "| model | greedy | avg_at_k | pass_at_k |",
            "|---|---|---|---|",
            *(
                f"| {n} | {m['greedy']:.3f} | {m['avg_at_k']:.3f} | {m['pass_at_k']:.3f} |"
                for n, m in r["table"].items()
            ),
            "",
            "C1 (RL teacher minus raw teacher): "
            + "; ".join(f"{t}: greedy {v['greedy']:+.3f}, avg_at_k {v['avg_at_k']:+.3f}" for t, v in r["C1"].items())
            + ".",
            "",
        ]
        if c2 := "; ".join(f"{a}: " + " → ".join(f"{v:.3f}" for v in kl.values()) for a, kl in r["C2"].items()):
            out += [f"C2 (KL student‖teacher on the student's samples, before warmup → after each stage): {c2}.", ""]
        out += ["| stage | wall | peak RSS |", "|---|---|---|"]
        for stage, v in r["stages"].items():
            rss = f"{v['peak_rss_gib']} GiB" if "peak_rss_gib" in v else "—"
            out.append(f"| {stage} | {v['wall_s']} s | {rss} |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    def run_options(p):
        p.add_argument("--params", type=Path, default=harness.REPO / "profiles" / "smollm2-arith.yaml")
        p.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
        p.add_argument("--collect", type=Path, default=None, help="record a finished run of --params, -S here")
        p.add_argument("--wall-s", type=float, default=None, help="with --collect: the run's measured wall time")

    def run_args(a):
        params, collected = a.params.resolve(), a.collect.resolve() if a.collect else None
        name = str(params.relative_to(harness.REPO) if params.is_relative_to(harness.REPO) else params)
        cell = {"params": name, "overrides": a.overrides, "collected": str(collected) if collected else False}

        def measure(_):
            return collect(collected, params, a.overrides, a.wall_s) if collected else run(params, a.overrides)

        harness.run_cells(RESULTS, [cell], measure, a.again)

    harness.main("real_weights", __doc__, run_args, lambda _: section(), run_options=run_options)


if __name__ == "__main__":
    main()
