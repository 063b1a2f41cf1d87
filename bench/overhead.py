"""Pipeline overhead: where the wall time of the embedded default goes, through DVC and through Prefect.

    python -m bench.overhead run                       # ~25 min on 2 CPU cores
    python -m bench.overhead run --only flows --again  # re-measure steps 3 and 4 (the fan-out ratio in one run)
    python -m bench.overhead report

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
Also timed (`startup`): the heavy imports every training process pays (torch, transformers, trl,
datasets) and `s2d --help` (the CLI must start without them). Each part is a cell of
bench/results/overhead.jsonl: `startup`, `dvc` (steps 1-2), `flows` (3-4). The file also keeps two
measurements made once, which bench/findings.md reads: `dvc` with per-arm DVC stages, and units dispatched
to Prefect unit workers (the infra/README layout; `git log -S measure_unit_workers` finds the code).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import harness
from s2d_pipeline.stages import STAGES

RESULTS = harness.RESULTS / "overhead.jsonl"
PARTS = ("startup", "dvc", "flows")
VALIDATION = "validate"
BOOKKEEPING = ("allocate", "promote")  # label ledger and promotion gate: no model work
# Stages whose compute is the method's own work (building base models, training, generation,
# evaluation): every stage of the pipeline except validation and the bookkeeping stages, so a stage
# added to `s2d_pipeline.stages` counts here unless it is listed above.
TRAINING = tuple(s for s in STAGES if s != VALIDATION and s not in BOOKKEEPING)
PYTHON = sys.executable
BIN = Path(PYTHON).parent


def _clone(dest: Path) -> Path:
    subprocess.run(["git", "clone", "--quiet", str(harness.REPO), str(dest)], check=True)
    return dest


def _env(repo: Path, timings: Path) -> dict:
    return {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
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


def breakdown(total_s: float, timings: Path, one_process: bool) -> dict:
    """Where `total_s` went, from the stages' timing records in `timings`."""
    records = harness.read(timings)
    compute: dict[str, float] = {}  # a per-arm stage writes one record per unit: summed
    for r in records:
        compute[r["stage"]] = compute.get(r["stage"], 0.0) + r["compute_s"]
    tracking = sum(r["tracking_s"] for r in records)
    training = sum(v for k, v in compute.items() if k in TRAINING)
    if one_process:  # the flow: one interpreter, stages back to back
        processes = max(r["process_s"] for r in records)
        startup = processes - sum(r["compute_s"] + r["tracking_s"] for r in records)
    else:
        processes = sum(r["process_s"] for r in records)
        startup = sum(r["process_s"] - r["compute_s"] - r["tracking_s"] for r in records)
    overhead = total_s - training
    return {
        "total_s": round(total_s, 1),
        "stage_compute_s": {k: round(v, 1) for k, v in compute.items()},
        "training_and_eval_compute_s": round(training, 1),
        "validation_s": round(compute.get(VALIDATION, 0.0), 1),
        "allocate_promote_s": round(sum(v for k, v in compute.items() if k in BOOKKEEPING), 1),
        "tracking_s": round(tracking, 1),
        "process_start_imports_config_s": round(startup, 1),
        "driver_s": round(total_s - processes, 1),
        "orchestration_overhead_s": round(overhead, 1),
        "orchestration_overhead_pct": round(100 * overhead / total_s, 1),
    }


def _arm_scores(repo: Path) -> dict:
    """Every evaluated model's accuracy (what a fanned-out run must reproduce; wall times differ)."""
    result = json.loads((repo / "metrics" / "evaluate.json").read_text())
    return {k: result[k] for k in ("teachers", "student_raw", "arms", "C1")}


def measure_startup(tmp: Path) -> dict:
    imports = _timed([PYTHON, "-c", "import torch, transformers, trl, datasets"], harness.REPO, dict(os.environ))
    cli = _timed([PYTHON, "-m", "s2d_pipeline.cli", "--help"], harness.REPO, dict(os.environ))
    return {"import_torch_transformers_trl_datasets_s": round(imports, 2), "cli_help_s": round(cli, 2)}


def measure_dvc(tmp: Path) -> dict:
    """Steps 1 and 2: `dvc repro` from a fresh clone, then the no-op rerun."""
    repo = _clone(tmp / "dvc")
    timings, noop = tmp / "dvc-timings.jsonl", tmp / "noop.jsonl"
    total = _timed([str(BIN / "dvc"), "repro"], repo, _env(repo, timings))
    noop_s = _timed([str(BIN / "dvc"), "repro"], repo, _env(repo, noop))
    return {
        "dvc_repro": breakdown(total, timings, one_process=False),
        "dvc_repro_noop_s": round(noop_s, 2),
        "dvc_repro_noop_stages_run": len(harness.read(noop)),
    }


def measure_flows(tmp: Path) -> dict:
    """Steps 3 and 4: the sequential flow, then the fanned-out one, each from a fresh clone."""
    repo = _clone(tmp / "flow")
    timings = tmp / "flow-timings.jsonl"
    sequential = breakdown(_timed([PYTHON, "-m", "flows.s2d"], repo, _env(repo, timings)), timings, one_process=True)
    scores = _arm_scores(repo)

    repo = _clone(tmp / "fan-out")
    params = repo / "params.yaml"
    params.write_text(params.read_text().replace("parallel_arms: 1 ", "parallel_arms: 2 ", 1))
    timings = tmp / "fan-out-timings.jsonl"
    total = _timed([PYTHON, "-m", "flows.s2d"], repo, _env(repo, timings))
    fanned_out = {
        "total_s": round(total, 1),
        # summed over the units, which now share the cores: against the sequential flow's, the contention
        "stage_compute_s": breakdown(total, timings, one_process=False)["stage_compute_s"],
        "vs_sequential_flow": round(total / sequential["total_s"], 3),
        "evaluation_equals_sequential": _arm_scores(repo) == scores,
    }
    return {"prefect_flow": sequential, "prefect_flow_parallel_arms_2": fanned_out}


def run(parts: list[str], again: bool) -> None:
    measure = {"startup": measure_startup, "dvc": measure_dvc, "flows": measure_flows}
    with tempfile.TemporaryDirectory(prefix="s2d-overhead-") as tmp:
        cells = [{"part": part} for part in parts]
        harness.run_cells(RESULTS, cells, lambda cell: measure[cell["part"]](Path(tmp)), again)


def section() -> str:
    records = harness.read(RESULTS, "part")
    if not records:
        return harness.not_run("overhead")
    r = {k: v for record in records for k, v in record.items()}
    at = {record["part"]: record["machine"]["commit"] for record in records}
    lines = [
        f"Machine: {' / '.join(dict.fromkeys(harness.describe(x['machine']) for x in records))}.",
        "",
        f"| | `dvc repro` (fresh clone; commit {at.get('dvc')}) | Prefect flow (`python -m flows.s2d`; "
        f"commit {at.get('flows')}) |",
        "|---|---|---|",
    ]
    d, f = r.get("dvc_repro") or {}, r.get("prefect_flow") or {}
    rows = [
        ("total wall time", "total_s"),
        ("training + evaluation compute (incl. their torch imports)", "training_and_eval_compute_s"),
        ("validation (GX)", "validation_s"),
        ("allocate + promote", "allocate_promote_s"),
        ("tracking (MLflow run setup, metric logging)", "tracking_s"),
        ("process start, CLI imports, config load", "process_start_imports_config_s"),
        ("driver itself (DVC hashing/locking/spawning; Prefect server + task bookkeeping)", "driver_s"),
        ("**orchestration overhead** (total − training/eval compute)", "orchestration_overhead_s"),
    ]
    lines += [f"| {label} | {d.get(key, '')} s | {f.get(key, '')} s |" for label, key in rows]
    lines += [
        f"| **overhead share** (goal ≤ 10 %) | {d.get('orchestration_overhead_pct', '')} % | "
        f"{f.get('orchestration_overhead_pct', '')} % |",
        "",
    ]
    if "dvc_repro_noop_s" in r and "cli_help_s" in r:
        lines += [
            f"No-op `dvc repro` (nothing changed): **{r['dvc_repro_noop_s']} s** (goal ≤ 10 s), stages run: "
            f"{r['dvc_repro_noop_stages_run']}. `s2d --help`: {r['cli_help_s']} s. Importing torch + transformers + "
            f"trl + datasets costs {r['import_torch_transformers_trl_datasets_s']} s in every process that trains "
            f"or generates (counted inside compute above; commit {at['startup']}).",
            "",
        ]
    if fan := r.get("prefect_flow_parallel_arms_2"):
        lines += [
            f"Fanned out (`flow.parallel_arms: 2`: two units of a per-arm stage at once, each in its own "
            f"process with half the cores): **{fan['total_s']} s**, {fan['vs_sequential_flow']} × the sequential "
            f"flow's in the same run; evaluation equal to the sequential flow's: {fan['evaluation_equals_sequential']}. "
            "Compute per stage, summed over its units (against the sequential column): "
            + ", ".join(
                f"{k} {v} s ({f.get('stage_compute_s', {}).get(k, '?')} s)" for k, v in fan["stage_compute_s"].items()
            )
            + ".",
            "",
            *([f"Why the evaluations differ: {fan['why_not_equal']}.", ""] if "why_not_equal" in fan else []),
        ]
    return "\n".join(lines)


def main() -> None:
    def run_options(p):
        p.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS), help="the parts to measure")

    harness.main("overhead", __doc__, lambda a: run(a.only, a.again), lambda _: section(), run_options=run_options)


if __name__ == "__main__":
    main()
