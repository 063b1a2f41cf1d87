"""The C1 and C2 gates on a task, as a user meets them at the console: Stage 1 made to fail, then C2 as
warmup's stopping rule.

    python -m bench.gates --params profiles/trace.yaml --from /tmp/s2d-bench-label-efficiency-trace/seed2 \
        --seed 2 --kl-target 2.5 --kl-check-every 25 --warmup-cap 300

Run from the repository root. `--from` is a root whose data and base models are already prepared (a
label-efficiency seed root): its `data/` and `artifacts/{prepare,validate}` are copied into a scratch
root, where the steps below run as `s2d` commands (tracking off):
1. `teacher_rl --arm s2d` with one step at learning rate 1e-12: the RL teacher is the raw teacher, so
   C1's gain is 0 and the gate fails;
2. `rollouts --arm s2d`: stops with the C1 report (exit status and message recorded);
3. the same with `-S gates.c1.override=true`: goes on, the metrics record the overridden gate;
4. `warmup --arm s2d` with `warmup.kl_target` set: stops when KL(student || teacher) on the student's own
   samples falls below the target, or runs to `warmup.steps`; the checks and the steps taken are logged.
Results: bench/results/gates_<params stem>.json, with the machine they ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.common import REPO, machine
from bench.label_efficiency import params_layout

STAGE1_FAILS = ["-S", "teacher_rl.steps=1", "-S", "teacher_rl.learning_rate=1e-12"]


def _shown(params: Path) -> str:
    return str(params.relative_to(REPO)) if params.is_relative_to(REPO) else str(params)


def _s2d(root: Path, params: Path, seed: int, *args: str) -> dict:
    cmd = [sys.executable, "-m", "s2d_pipeline.cli", "--params", str(params), "-S", f"seed={seed}"]
    cmd += ["-S", "tracking.enabled=false", *args]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    shown = " ".join(["s2d", *cmd[cmd.index("--params") :]]).replace(str(params), _shown(params))
    print(f"$ {shown}\n{done.stdout}{done.stderr[-2000:]}exit {done.returncode}\n", flush=True)
    return {
        "command": shown,
        "exit": done.returncode,
        "stdout": done.stdout,
        "stderr_tail": done.stderr[-2000:],
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--from", dest="source", type=Path, required=True, help="a prepared root (data, base models)")
    ap.add_argument("--seed", type=int, default=0, help="the seed the source root was prepared with")
    ap.add_argument("--kl-target", type=float, default=0.5)
    ap.add_argument("--kl-check-every", type=int, default=10)
    ap.add_argument("--warmup-cap", type=int, default=100, help="warmup.steps: the cap of the stopping rule")
    ap.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "s2d-bench-gates")
    args = ap.parse_args(argv)
    params = args.params.resolve()
    root = args.workdir / params.stem
    shutil.rmtree(root, ignore_errors=True)
    artifacts, metrics = params_layout(params)
    shutil.copytree(args.source / "data", root / "data")
    (root / metrics).mkdir(parents=True)
    for stage in ("prepare", "validate"):
        shutil.copytree(args.source / artifacts / stage, root / artifacts / stage)
        shutil.copy(args.source / metrics / f"{stage}.json", root / metrics / f"{stage}.json")

    run = {"allocate": _s2d(root, params, args.seed, "allocate")}
    run["teacher_rl_fails"] = _s2d(root, params, args.seed, *STAGE1_FAILS, "--json", "teacher_rl", "--arm", "s2d")
    run["rollouts_stopped"] = _s2d(root, params, args.seed, *STAGE1_FAILS, "rollouts", "--arm", "s2d")
    override = ["-S", "gates.c1.override=true"]
    run["rollouts_overridden"] = _s2d(root, params, args.seed, *STAGE1_FAILS, *override, "rollouts", "--arm", "s2d")
    c2 = ["-S", f"warmup.kl_target={args.kl_target}", "-S", f"warmup.kl_check_every={args.kl_check_every}"]
    c2 += ["-S", f"warmup.steps={args.warmup_cap}"]
    run["warmup_c2"] = _s2d(root, params, args.seed, *STAGE1_FAILS, *override, *c2, "--json", "warmup", "--arm", "s2d")
    warmup = json.loads((root / metrics / "warmup" / "s2d.json").read_text())
    out = {
        "params": _shown(params),
        "seed": args.seed,
        "c1_gate": json.loads((root / metrics / "teacher_rl" / "s2d.json").read_text()).get("c1_gate"),
        # what a user sees: the gate stops the stage (non-zero exit, its report), the override lets it on
        "c1_stopped_distillation": run["rollouts_stopped"]["exit"] != 0
        and "C1 gate" in run["rollouts_stopped"]["stderr_tail"],
        "override_went_on": run["rollouts_overridden"]["exit"] == 0,
        "c2_stopping_rule": {k: warmup.get(k) for k in ("kl_target", "steps", "steps_taken", "c2_checks")},
        "commands": run,
        "machine": machine(),
    }
    results = REPO / "bench" / "results" / f"gates_{params.stem}.json"
    results.write_text(json.dumps(out, indent=2) + "\n")
    shown = ("c1_gate", "c1_stopped_distillation", "override_went_on", "c2_stopping_rule")
    print(json.dumps({k: out[k] for k in shown}, indent=2))


if __name__ == "__main__":
    main()
