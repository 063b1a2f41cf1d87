"""The real-weights profile end to end on this machine: per-stage wall time and peak memory, the
comparison table and C1 (the RL teacher's gain over the raw teacher).

    python -m bench.real_weights                                  # profiles/smollm2-arith.yaml
    python -m bench.real_weights --params profiles/smollm2-arith.yaml -S teacher_rl.steps=40
    python -m bench.real_weights --collect DIR                    # record a finished `s2d run` in DIR

Runs every stage in this process, in a temporary project, through `s2d_pipeline.cli.run_stage` (the
code `s2d run` and `dvc repro` call), with tracking on. Peak memory is this process's resident-set
high-water mark after each stage (`ru_maxrss`). Writes bench/results/real_weights_<profile>.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path

from bench.common import REPO, machine

RESULTS = REPO / "bench" / "results"


def _summary(cfg, stages: dict) -> dict:
    evaluation = stages["evaluate"]["metrics"]
    k = evaluation["k"]
    table = {"student_raw": evaluation["student_raw"], **evaluation["arms"], **evaluation["teachers"]}
    return {
        "profile": cfg.profile,
        "k": k,
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
        return {
            "machine": machine(),
            "params": str(params.relative_to(REPO) if params.is_relative_to(REPO) else params),
            "overrides": overrides,
            "wall_s": round(time.perf_counter() - started, 1),
            "stages": stages,
            **_summary(cfg, stages),
        }


def collect(directory: Path, wall_s: float | None) -> dict:
    """A finished `s2d run` in `directory`: its metrics files (stage wall from the stages' own timers;
    no memory figures)."""
    from s2d_pipeline.arms import PER_ARM_STAGES
    from s2d_pipeline.config import load_config
    from s2d_pipeline.layout import metrics_file, stage_metrics
    from s2d_pipeline.stages import STAGES

    cfg = load_config(directory / "params.yaml", root=directory)
    stages = {}
    for name in STAGES:
        if name not in PER_ARM_STAGES and not metrics_file(cfg, name).exists():
            continue
        if not (metrics := stage_metrics(cfg, name)):
            continue
        walls = [v["wall_s"] for v in metrics.values() if isinstance(v, dict) and "wall_s" in v]
        stages[name] = {"wall_s": metrics.get("wall_s", round(sum(walls), 1)), "metrics": metrics}
    return {
        "machine": machine(),
        "params": str(directory / "params.yaml"),
        "wall_s": wall_s,
        "stages": stages,
        **_summary(cfg, stages),
    }


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.real_weights", description=__doc__.split("\n")[0])
    p.add_argument("--params", type=Path, default=REPO / "profiles" / "smollm2-arith.yaml")
    p.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--collect", type=Path, default=None, help="record a finished `s2d run` in this directory")
    p.add_argument("--wall-s", type=float, default=None, help="with --collect: the run's measured wall time")
    args = p.parse_args()
    result = collect(args.collect, args.wall_s) if args.collect else run(args.params.resolve(), args.overrides)
    out = RESULTS / f"real_weights_{result['profile']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("wall_s", "table", "C1")}, indent=1))


if __name__ == "__main__":
    main()
