"""`s2d <stage>`: run one pipeline stage from params.yaml (what `dvc.yaml` and the flow call).

    s2d prepare
    s2d validate
    s2d allocate -S budget=32
    s2d --params profiles/qwen3-math.yaml validate
    s2d run                      # every stage in order, then the report
    s2d report                   # the comparison table and the promotion decision
    s2d --json allocate          # the stage's metrics as one JSON line (for scripts)
    s2d warmup --arm no_opd      # one arm's unit of a per-arm stage (what the flow fans out)
    s2d dvc-units                # rewrite dvc_units.yaml (DVC's per-arm stages) after changing `arms`
                                 # or `dvc.per_arm_stages`

Thin by design: load the config, say what the stage will do, call its `run(cfg)`, print a short
summary (`s2d_pipeline/console.py`; the full metrics are in metrics/<stage>.json, or one file per
unit in metrics/<stage>/ for a per-arm stage). A user error
(bad params, bad data, impossible budget) prints one clear message and exits with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import sys
import time

from s2d_pipeline import console, dvc_units, experiments
from s2d_pipeline.arms import PER_ARM_STAGES, stage_unit
from s2d_pipeline.config import parse_overrides
from s2d_pipeline.errors import S2DError
from s2d_pipeline.gate import GATE_METRIC
from s2d_pipeline.inputs import load_checked_config
from s2d_pipeline.io import read_json
from s2d_pipeline.layout import metrics_file, stage_dir, stage_metrics
from s2d_pipeline.stages import STAGE_INFO, STAGES
from s2d_pipeline.stages.validate import skipped_rules
from s2d_pipeline.tracking import end_pipeline_run, log_flat_metrics, preflight, stage_run, where_to_open

TIMINGS_ENV = "S2D_TIMINGS"  # a file: each stage appends its compute / tracking / process seconds
LAUNCHED_ENV = "S2D_LAUNCHED"  # set in the launched processes, so they run the stage instead of relaunching
DVC_STAGE_ENV = "DVC_STAGE"  # set by `dvc repro` in each stage's command
# Set by a parent s2d process (run_child): a child leaves its user error's message in this directory.
ERROR_DIR_ENV = "S2D_ERROR_DIR"
# Set for a child s2d process, whose params file is its parent's resolved config: an experiment or
# not is the parent's decision (experiments.keep_apart), not taken again against params.yaml.
RESOLVED_ENV = "S2D_RESOLVED_PARAMS"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="s2d", description=__doc__.split("\n")[0])
    p.add_argument("--params", default=None, help="params file (default: $S2D_PARAMS or params.yaml)")
    p.add_argument(
        "-S",
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a param, e.g. -S budget=32 -S teacher_rl.steps=10",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="library INFO logs too")
    p.add_argument(
        "--json", action="store_true", help="print each stage's metrics as one JSON line instead of a summary"
    )
    p.add_argument(
        "--arm",
        default=None,
        help="run only what this arm needs of the stage (its RL teacher, rollouts, bridge or student GRPO)",
    )
    p.add_argument(
        "stage",
        choices=[*STAGES, "run", "report", "dvc-units"],
        help="stage to run ('run' = all, in order; 'report' = print the comparison and promotion decision; "
        "'dvc-units' = rewrite dvc_units.yaml from the params' arms and dvc.per_arm_stages)",
    )
    p.add_argument("--check", action="store_true", help="with dvc-units: only check, exit 2 when out of date")
    return p


def check_arm(name: str, cfg, arm: str) -> None:
    if name not in PER_ARM_STAGES:
        raise S2DError(f"--arm: stage '{name}' runs once for all arms (per-arm stages: {', '.join(PER_ARM_STAGES)})")
    if arm not in cfg.arms:
        raise S2DError(f"--arm: '{arm}' is not a configured arm (key 'arms': {', '.join(cfg.arms)})")


def run_stage(name: str, cfg, arm: str | None = None) -> dict:
    """Run one stage (or, with `arm`, the unit of it that arm needs) inside its MLflow child run
    (under the pipeline's parent) and log its metrics."""
    unit = None
    if arm is not None:
        check_arm(name, cfg, arm)
        unit = stage_unit(name, arm)
        if unit is None:
            return {}  # the arm has no such step (e.g. `warmup --arm no_warmup`): nothing to launch or run
    if STAGE_INFO[name].trains and cfg.runtime.accelerate_config and not os.environ.get(LAUNCHED_ENV):
        return run_distributed(name, cfg, arm)
    entered = time.perf_counter()
    module = importlib.import_module(f"s2d_pipeline.stages.{name}")
    # One arm's unit runs in one run `stage/unit` under the pipeline run (trainers log into it too).
    with stage_run(cfg, name, unit) if STAGE_INFO[name].tracked else contextlib.nullcontext() as run:
        started = time.perf_counter()
        metrics = module.run(cfg, arm=arm) if arm is not None else module.run(cfg)
        computed = time.perf_counter()
        if run is not None:
            log_flat_metrics(metrics)
    if name == STAGES[-1]:
        end_pipeline_run(cfg)  # the parent run's duration is the pipeline's
    if os.environ.get(TIMINGS_ENV):  # bench/overhead.py: where a stage's wall time goes
        _record_timing(
            name, compute_s=computed - started, tracking_s=(started - entered) + (time.perf_counter() - computed)
        )
    return metrics


def _record_timing(name: str, **seconds: float) -> None:
    import psutil  # a TRL dependency; reads when this process started

    since_start = time.time() - psutil.Process().create_time()
    with open(os.environ[TIMINGS_ENV], "a") as f:
        f.write(
            json.dumps(
                {
                    "stage": name,
                    "pid": os.getpid(),
                    "process_s": round(since_start, 3),
                    **{k: round(v, 3) for k, v in seconds.items()},
                }
            )
            + "\n"
        )


def launch_command(name: str, cfg, params_file: str, arm: str | None = None) -> list[str]:
    """`accelerate launch` of `s2d <stage>` with the run's resolved params."""
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(cfg.path(cfg.runtime.accelerate_config)),
    ]
    if cfg.runtime.num_processes:
        cmd += ["--num_processes", str(cfg.runtime.num_processes)]
    return cmd + ["-m", "s2d_pipeline.cli", "--params", params_file, *(["--arm", arm] if arm else []), name]


def run_distributed(name: str, cfg, arm: str | None = None) -> dict:
    """Run a training stage on every GPU the accelerate config names (DeepSpeed ZeRO-3 / FSDP): the
    same stage code in N processes; rank 0 writes the outputs, metrics and MLflow runs."""
    import tempfile

    import yaml

    if not cfg.path(cfg.runtime.accelerate_config).is_file():
        raise S2DError(
            f"key 'runtime.accelerate_config': {cfg.runtime.accelerate_config} not found (see infra/accelerate/)"
        )
    resolved = cfg.model_dump(mode="json", exclude={"root"})
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix=f"s2d-{name}-", delete=False) as f:
        yaml.safe_dump(resolved, f)
    try:
        run_child(
            launch_command(name, cfg, f.name, arm),
            cwd=cfg.root,
            env={**os.environ, LAUNCHED_ENV: "1"},
            what=f"{name}: the distributed run (`accelerate launch`)",
        )
    finally:
        os.unlink(f.name)
    metrics = stage_metrics(cfg, name)
    if arm is None:
        return metrics
    unit = stage_unit(name, arm)
    return {unit: metrics[unit]} if unit in metrics else {}


def run_child(cmd: list[str], *, cwd, env: dict, what: str, capture: bool = False):
    """Run an `s2d` process (or a launcher of them) and return its CompletedProcess; when it fails,
    raise S2DError with the child's own message if it refused its input (bad input fails the same
    way every time, so the flow does not retry it), else RuntimeError (a crash: a kill, out of
    memory, a lost GPU or NCCL peer, a launcher that failed; worth a retry).

    The exit status alone cannot tell them apart (`accelerate launch` exits 1 however its processes
    failed), and a child's stderr may end in log lines after its error: each child leaves its user
    error in the directory named by ERROR_DIR_ENV. `capture`: keep stdout and stderr (the tail of
    stderr goes into a crash's message) instead of passing them through."""
    import subprocess
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="s2d-errors-") as errors:
        env = {**env, ERROR_DIR_ENV: errors, RESOLVED_ENV: "1"}
        done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=capture, text=True)
        messages = [p.read_text(encoding="utf-8") for p in sorted(Path(errors).iterdir())]
    if done.returncode == 0:
        return done
    if messages:  # the lowest rank's, when several processes refused the same input
        raise S2DError(messages[0])
    stderr = f":\n{done.stderr[-3000:]}" if capture and done.stderr.strip() else ""
    if done.returncode == S2DError.exit_code:  # the status of a user error, without its message
        said = stderr or ("; its stderr is empty" if capture else " (its log is above)")
        raise S2DError(f"{what} exited with status {done.returncode}, a user error's, but left no error message{said}")
    where = stderr or ("" if capture else " (its log is above)")
    raise RuntimeError(
        f"{what} {describe_exit(done.returncode)}: a crash, not bad input, so worth a rerun (training stages "
        f"resume from their last checkpoint){where}"
    )


def describe_exit(returncode: int) -> str:
    """'exited with status 1', or 'was killed by SIGKILL (...)' for a process a signal ended."""
    import signal

    if returncode >= 0:
        return f"exited with status {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    oom = " (out of memory? the kernel's OOM killer sends it)" if -returncode == signal.SIGKILL else ""
    return f"was killed by {name}{oom}"


def _leave_message_for_parent(exc: S2DError) -> None:
    """The user error's message, for the parent that started this process (run_child)."""
    from pathlib import Path

    directory = os.environ.get(ERROR_DIR_ENV)
    if not directory:
        return
    rank = int(os.environ.get("RANK", "0"))
    with contextlib.suppress(OSError):  # the message is on stderr too
        (Path(directory) / f"{rank:05d}-{os.getpid()}.txt").write_text(str(exc), encoding="utf-8")


def summary_facts(name: str, cfg) -> dict:
    """What stage `name`'s summary prints besides its metrics (the console reads no files)."""
    if name == "validate":
        return {"skipped_rules": skipped_rules(cfg)}
    if name == "evaluate":
        return {"gate_metric": GATE_METRIC}
    return {}


def report(cfg) -> str:
    """`s2d report`: the comparison table and the promotion decision."""
    table = stage_dir(cfg, "evaluate") / "comparison.md"
    if not table.is_file():
        raise S2DError(f"{table}: no comparison yet; run the pipeline first (`make run`, `dvc repro` or `s2d run`)")
    promotion = metrics_file(cfg, "promote")
    return console.report(table.read_text(), read_json(promotion) if promotion.is_file() else None)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if not args.verbose:  # MLflow configures its own loggers at INFO ("Creating initial MLflow database tables")
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    try:
        stages = [*STAGES] if args.stage == "run" else [] if args.stage in ("report", "dvc-units") else [args.stage]
        cfg = load_checked_config(
            args.params,
            parse_overrides(args.overrides),
            models=any(STAGE_INFO[name].uses_models for name in stages),
            apart=args.stage != "dvc-units" and not os.environ.get(RESOLVED_ENV),
        )
        if args.arm is not None and args.stage in ("run", "report", "dvc-units"):
            raise S2DError("--arm runs one stage's unit: name the stage, e.g. `s2d warmup --arm no_opd`")
        if args.arm is not None:
            check_arm(args.stage, cfg, args.arm)
        if args.stage == "dvc-units" or os.environ.get(DVC_STAGE_ENV):
            if args.stage != "dvc-units" or args.check:
                dvc_units.check(cfg)  # under DVC: its per-arm stages must be this config's units
            else:
                print(f"wrote {dvc_units.write(cfg)}", flush=True)
        if stages:
            preflight(cfg)
        # Under `accelerate launch` (run_distributed) the launching process prints the plan and summary.
        human = not args.json and not os.environ.get(LAUNCHED_ENV)
        if human and (line := experiments.describe(cfg)):
            print(line, flush=True)
        for name in stages:
            if human:
                print(console.announce(name, cfg, args.arm), flush=True)
            metrics = run_stage(name, cfg, args.arm)
            if args.json:
                print(json.dumps({"stage": name, **metrics}, default=str), flush=True)
            elif human and (lines := console.summary(name, metrics, cfg, **summary_facts(name, cfg))):
                print("\n".join(lines), flush=True)
        if args.stage == "report" or (args.stage == "run" and not args.json):
            print(("\n" if stages else "") + report(cfg), flush=True)
            if pointer := where_to_open(cfg):
                print(pointer, flush=True)
    except S2DError as exc:
        print(f"s2d {args.stage}: error: {exc}", file=sys.stderr)
        _leave_message_for_parent(exc)
        return exc.exit_code
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
