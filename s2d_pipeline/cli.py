"""`s2d <stage>`: run one pipeline stage from params.yaml (what `dvc.yaml` and the flow call).

    s2d prepare
    s2d validate
    s2d allocate -S budget=32
    s2d --params profiles/qwen3-math.yaml validate
    s2d run                      # every stage in order

Thin by design: load the config, call the stage's `run(cfg)`, print its metrics. A user error
(bad params, bad data, impossible budget) prints one clear message and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys

from s2d_pipeline.errors import S2DError

# Stage name -> module under s2d_pipeline.stages (imported only when run).
STAGES = {name: name for name in ("prepare", "validate", "allocate", "teacher_rl", "rollouts", "warmup",
                                   "opd", "student_rl", "evaluate", "promote")}
PIPELINE = list(STAGES)  # dependency order


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="s2d", description=__doc__.split("\n")[0])
    p.add_argument("--params", default=None, help="params file (default: $S2D_PARAMS or params.yaml)")
    p.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a param, e.g. -S budget=32 -S teacher_rl.steps=10")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("stage", choices=[*STAGES, "run"], help="stage to run ('run' = all, in order)")
    return p


def run_stage(name: str, cfg) -> dict:
    """Run one stage inside its MLflow child run (under the pipeline's parent) and log its metrics."""
    from s2d_pipeline.tracking import log_flat_metrics, stage_run

    module = importlib.import_module(f"s2d_pipeline.stages.{STAGES[name]}")
    with stage_run(cfg, name) as run:
        metrics = module.run(cfg)
        if run is not None:
            log_flat_metrics(metrics)
    return metrics


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        from s2d_pipeline.config import load_config, parse_overrides

        from s2d_pipeline.tracking import preflight

        cfg = load_config(args.params, parse_overrides(args.overrides))
        preflight(cfg)
        for name in PIPELINE if args.stage == "run" else [args.stage]:
            metrics = run_stage(name, cfg)
            print(json.dumps({"stage": name, **metrics}, default=str))
    except S2DError as exc:
        print(f"s2d {args.stage}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
