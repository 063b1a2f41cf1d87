"""Pipeline overhead: where the wall time of the embedded default goes, through DVC and through Prefect.

    python -m bench.overhead               # ~25 min on 2 CPU cores: three full pipeline runs + a no-op repro
    python -m bench.overhead --only flows  # steps 3 and 4 only, back to back (the fan-out ratio in one run)
    python -m bench.overhead --only dvc    # steps 1 and 2 only
    python -m bench.overhead --only units  # step 5 only (~25 min): not part of the default run
                                           # (--only keeps the other part's figures in the results file)

Run from the repository root.

Works on fresh clones of the committed HEAD (so the numbers are those of a user's `make run`):
1. `dvc repro` with S2D_TIMINGS set: every stage process appends its compute seconds (inside the
   stage's `run`), tracking seconds (MLflow run setup/teardown and metric logging) and its age at the
   end of the stage; the rest of a process's life is interpreter start, CLI imports and config load,
   and what is left of the total is DVC itself (hashing, locking, spawning).
2. a second `dvc repro` (nothing changed: must be a no-op).
3. the Prefect flow (`python -m flows.s2d`, temporary local server) in another clone, same split.
4. the same flow with `flow.parallel_arms: 2` (each per-arm stage fans out to `s2d <stage> --arm`
   processes, two at a time) in a third clone: its wall time against step 3's, and whether its
   evaluation equals the sequential flow's.
5. (`--only units`) a Prefect server and process workers on this machine, as infra/README "Arms in
   parallel" lays them out: the `s2d/train` deployment run sequentially, then with its units
   dispatched to the `s2d-unit/unit` deployment and two unit workers (one unit each at a time, one
   thread per training), each from a fresh clone: wall time against the sequential run's.
Also timed: the heavy imports every training process pays (torch, transformers, trl, datasets) and
`s2d --help` (the CLI must start without them). Results: bench/results/overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, machine
from s2d_pipeline.stages import STAGES

VALIDATION = "validate"
BOOKKEEPING = ("allocate", "promote")  # label ledger and promotion gate: no model work
# Stages whose compute is the method's own work (building base models, training, generation,
# evaluation): every stage of the pipeline except validation and the bookkeeping stages, so a stage
# added to `s2d_pipeline.stages` counts here unless it is listed above.
TRAINING = tuple(s for s in STAGES if s != VALIDATION and s not in BOOKKEEPING)


def _clone(dest: Path) -> Path:
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(dest)], check=True)
    return dest


def _env(repo: Path, timings: Path) -> dict:
    venv_bin = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": f"{venv_bin}:{os.environ['PATH']}",
        "PYTHONPATH": str(repo),
        "S2D_TIMINGS": str(timings),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_HOME": str(repo / ".prefect"),
        "DO_NOT_TRACK": "1",
    }


def _timed(cmd: list[str], repo: Path, env: dict) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return time.perf_counter() - t0


def breakdown(total_s: float, timings: list[dict], one_process: bool) -> dict:
    compute: dict[str, float] = {}  # a per-arm stage writes one record per unit: summed
    for r in timings:
        compute[r["stage"]] = compute.get(r["stage"], 0.0) + r["compute_s"]
    tracking = sum(r["tracking_s"] for r in timings)
    training = sum(v for k, v in compute.items() if k in TRAINING)
    validation = compute.get(VALIDATION, 0.0)
    other_stages = sum(v for k, v in compute.items() if k not in TRAINING and k != VALIDATION)
    if one_process:  # the flow: one interpreter, stages back to back
        processes = max(r["process_s"] for r in timings)
        startup = processes - sum(r["compute_s"] + r["tracking_s"] for r in timings)
    else:
        processes = sum(r["process_s"] for r in timings)
        startup = sum(r["process_s"] - r["compute_s"] - r["tracking_s"] for r in timings)
    driver = total_s - processes
    overhead = total_s - training
    return {
        "total_s": round(total_s, 1),
        "stage_compute_s": {k: round(v, 1) for k, v in compute.items()},
        "training_and_eval_compute_s": round(training, 1),
        "validation_s": round(validation, 1),
        "allocate_promote_s": round(other_stages, 1),
        "tracking_s": round(tracking, 1),
        "process_start_imports_config_s": round(startup, 1),
        "driver_s": round(driver, 1),
        "orchestration_overhead_s": round(overhead, 1),
        "orchestration_overhead_pct": round(100 * overhead / total_s, 1),
    }


def _arm_scores(repo: Path) -> dict:
    """Every evaluated model's accuracy (what a fanned-out run must reproduce; wall times differ)."""
    result = json.loads((repo / "metrics" / "evaluate.json").read_text())
    return {k: result[k] for k in ("teachers", "student_raw", "arms", "C1")}


def _measure_dvc(result: dict, tmp: Path, python: str) -> None:
    """Steps 1 and 2: `dvc repro` from a fresh clone, then the no-op rerun."""
    repo = _clone(tmp / "dvc")
    timings = tmp / "dvc-timings.jsonl"
    total = _timed([str(Path(python).parent / "dvc"), "repro"], repo, _env(repo, timings))
    records = [json.loads(line) for line in timings.read_text().splitlines()]
    result["dvc_repro"] = breakdown(total, records, one_process=False)
    noop_timings = tmp / "noop.jsonl"
    result["dvc_repro_noop_s"] = round(
        _timed([str(Path(python).parent / "dvc"), "repro"], repo, _env(repo, noop_timings)), 2
    )
    result["dvc_repro_noop_stages_run"] = len(noop_timings.read_text().splitlines()) if noop_timings.exists() else 0
    print(json.dumps(result, indent=1), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("dvc", "flows", "units"), help="rerun one part, keep the others' figures")
    args = parser.parse_args()
    out = REPO / "bench" / "results" / "overhead.json"
    result: dict = {"machine": machine()}
    kept = json.loads(out.read_text()) if out.exists() else {}
    parts = {"dvc": "dvc_repro", "flows": "prefect_flow", "units": "unit_workers"}
    measured = {args.only} if args.only else {"dvc", "flows"}
    for part, key in parts.items():  # the parts not rerun keep their figures and when they were measured
        if part not in measured and key in kept:
            result[f"{key}_measured_at"] = kept.get(f"{key}_measured_at", kept["machine"]["commit"])
            result.update({k: v for k, v in kept.items() if k.startswith(key) and not k.endswith("_measured_at")})
    if "dvc_repro_per_arm_stages" in kept:  # a one-off measurement this script does not repeat
        result["dvc_repro_per_arm_stages"] = kept["dvc_repro_per_arm_stages"]
    python = sys.executable
    result["import_torch_transformers_trl_datasets_s"] = round(
        _timed([python, "-c", "import torch, transformers, trl, datasets"], REPO, dict(os.environ)), 2
    )
    result["cli_help_s"] = round(_timed([python, "-m", "s2d_pipeline.cli", "--help"], REPO, dict(os.environ)), 2)
    with tempfile.TemporaryDirectory(prefix="s2d-overhead-") as tmp:
        tmp = Path(tmp)
        if args.only in (None, "dvc"):
            _measure_dvc(result, tmp, python)
        if args.only in (None, "flows"):
            _measure_flows(result, tmp, python)
        if args.only == "units":
            _measure_unit_workers(result, tmp, python)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


def _measure_flows(result: dict, tmp: Path, python: str) -> None:
    """Steps 3 and 4: the sequential flow, then the fanned-out one, each from a fresh clone."""
    repo = _clone(tmp / "flow")
    timings = tmp / "flow-timings.jsonl"
    total = _timed([python, "-m", "flows.s2d"], repo, _env(repo, timings))
    records = [json.loads(line) for line in timings.read_text().splitlines()]
    result["prefect_flow"] = breakdown(total, records, one_process=True)
    sequential = _arm_scores(repo)
    print(json.dumps(result, indent=1), flush=True)

    repo = _clone(tmp / "fan-out")
    params = repo / "params.yaml"
    params.write_text(params.read_text().replace("parallel_arms: 1 ", "parallel_arms: 2 ", 1))
    timings = tmp / "fan-out-timings.jsonl"
    total = _timed([python, "-m", "flows.s2d"], repo, _env(repo, timings))
    records = [json.loads(line) for line in timings.read_text().splitlines()]
    result["prefect_flow_parallel_arms_2"] = {
        "total_s": round(total, 1),
        # summed over the units, which now share the cores: against the sequential flow's, the contention
        "stage_compute_s": breakdown(total, records, one_process=False)["stage_compute_s"],
        "vs_sequential_flow": round(total / result["prefect_flow"]["total_s"], 3),
        "evaluation_equals_sequential": _arm_scores(repo) == sequential,
    }


def _measure_unit_workers(result: dict, tmp: Path, python: str) -> None:
    """Step 5: a Prefect server (SQLite) and process workers; the deployment run sequentially, then
    with its units sent to two unit workers, each from a fresh clone. The server and workers are
    managed as in tests/test_services.py."""
    from tests.services import Server, free_port, http_ok, wait_until

    prefect = str(Path(python).parent / "prefect")
    port = free_port()
    env = {
        **_env(tmp, tmp / "unused-timings.jsonl"),
        "PREFECT_HOME": str(tmp / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
    }
    del env["S2D_TIMINGS"], env["PYTHONPATH"]
    runs = {
        "sequential": {"flow": {"parallel_arms": 1}},
        "unit_workers": {
            "flow": {"parallel_arms": 2, "unit_deployment": "s2d-unit/unit"},
            "runtime": {"torch_threads": 1},
        },
    }
    measured: dict = {}
    server = Server(
        "prefect", [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)], tmp / "server.log", env
    )
    workers: list[Server] = []
    try:
        server.start()
        wait_until(lambda: http_ok(f"{env['PREFECT_API_URL']}/health"), 180, "the Prefect server", server)
        _timed([prefect, "work-pool", "create", "s2d-process", "--type", "process"], tmp, env)
        for name, overrides in runs.items():
            repo = _clone(tmp / f"units-{name}")
            repo_env = {**env, "PYTHONPATH": str(repo), "PWD": str(repo)}  # prefect.yaml works in $PWD
            _timed([prefect, "--no-prompt", "deploy", "-n", "train", "-n", "unit"], repo, repo_env)
            worker = [prefect, "worker", "start", "-p", "s2d-process", "--type", "process"]
            workers = [
                Server(f"flows-{name}", [*worker, "-q", "default"], tmp / f"flows-{name}.log", repo_env, repo),
                *(
                    Server(f"units-{name}-{i}", [*worker, "-q", "units", "--limit", "1", "--name", f"units-{name}-{i}"],
                           tmp / f"units-{name}-{i}.log", repo_env, repo)
                    for i in range(2)
                ),
            ]  # fmt: skip
            for w in workers:
                w.start()
            total = _timed(
                [prefect, "deployment", "run", "s2d/train", "--param", f"overrides={json.dumps(overrides)}",
                 "--watch", "--watch-interval", "5"],
                repo, repo_env,
            )  # fmt: skip
            print(name, round(total, 1), "s", flush=True)
            measured[name] = (total, _arm_scores(repo))
            for w in workers:
                w.stop()
    finally:
        for w in [*workers, server]:
            w.stop()
    (sequential, scores), (fanned_out, fanned_scores) = measured["sequential"], measured["unit_workers"]
    result["unit_workers"] = {
        "sequential_deployment_run_s": round(sequential, 1),
        "fanned_out_deployment_run_s": round(fanned_out, 1),
        "vs_sequential": round(fanned_out / sequential, 3),
        # 1 thread per unit against 2 for the sequential run: CPU training is not bitwise equal across those
        "evaluation_equals_sequential": fanned_scores == scores,
    }


if __name__ == "__main__":
    main()
