"""The three doors open onto the same stage code: `dvc repro` in a real DVC repo and the Prefect
flow on a real (test) Prefect server give identical metrics for the same params and seed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, STAGE_MICRO, write_dvc_units

# End-to-end runs of the whole pipeline or many stages: `make test-slow` runs only these.
pytestmark = pytest.mark.slow

VENV_BIN = str(Path(sys.executable).parent)


def _make_project(root: Path) -> Path:
    """A git + DVC project holding this repository's pipeline with micro params."""
    from s2d_pipeline.config import deep_merge

    root.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "s2d_pipeline", root / "s2d_pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    # One thread per training: the flow's units, each in a process of its own, then compute exactly
    # what `dvc repro` computes.
    raw = deep_merge(
        yaml.safe_load((REPO / "params.yaml").read_text()), {**STAGE_MICRO, "runtime": {"torch_threads": 1}}
    )
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    write_dvc_units(root)
    return root


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


def _eval_metrics(root: Path) -> dict:
    metrics = json.loads((root / "metrics" / "evaluate.json").read_text())
    metrics.pop("wall_s")
    provenance = metrics.pop("provenance")  # where and when it ran: the two projects differ there
    assert provenance["params_hash"] and provenance["packages"]["trl"]
    return metrics


@pytest.fixture(scope="module")
def dvc_project(tmp_path_factory) -> Path:
    root = _make_project(tmp_path_factory.mktemp("dvc") / "project")
    _run(["git", "init", "-q"], root)
    _run([f"{VENV_BIN}/dvc", "init", "-q"], root)
    _run([f"{VENV_BIN}/dvc", "repro"], root)
    return root


def test_dvc_repro_runs_end_to_end_and_second_run_is_a_no_op(dvc_project):
    assert (dvc_project / "artifacts/evaluate/comparison.md").exists()
    assert (dvc_project / "dvc.lock").exists()
    again = _run([f"{VENV_BIN}/dvc", "repro"], dvc_project)
    assert "Running stage" not in again.stdout
    assert "up to date" in again.stdout


def test_changing_one_param_reruns_only_dependent_stages(dvc_project):
    params = yaml.safe_load((dvc_project / "params.yaml").read_text())
    params["evaluate"]["k"] = 3
    (dvc_project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    done = _run([f"{VENV_BIN}/dvc", "repro"], dvc_project)
    ran = {line.split("'")[1] for line in done.stdout.splitlines() if line.startswith("Running stage")}
    assert ran == {"evaluate", "promote"}  # promote reads the new evaluation; training is untouched
    assert "avg_at_k" in json.loads((dvc_project / "metrics/evaluate.json").read_text())["arms"]["s2d"]
    shown = _run([f"{VENV_BIN}/dvc", "metrics", "show"], dvc_project).stdout
    assert "metrics/summary.json" in shown and "avg_at_k.s2d" in shown
    assert max(len(line) for line in shown.splitlines()) <= 120  # fits a terminal


@pytest.fixture(scope="module")
def per_unit_project(dvc_project, tmp_path_factory) -> Path:
    """The DVC project switched to one DVC stage per unit (`dvc.per_arm_stages: true`): the switch
    makes exactly the per-arm units stale, not prepare, validate or allocate (nor what reads the
    units' outputs). The units' outputs were made with these params, so they are committed as they
    are rather than retrained; a per-unit stage runs through DVC in the test below."""
    from s2d_pipeline.arms import PER_ARM_STAGES, stage_units

    root = tmp_path_factory.mktemp("per-unit") / "project"
    shutil.copytree(dvc_project, root, symlinks=True)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["dvc"] = {"per_arm_stages": True}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run([f"{VENV_BIN}/s2d", "dvc-units"], root)
    units = {f"{stage}@{unit}" for stage in PER_ARM_STAGES for unit in stage_units(stage, params["arms"])}
    assert {"teacher_rl@s2d", "rollouts@raw", "warmup@no_opd", "opd@no_warmup", "student_rl@grpo_direct"} <= units
    stale = json.loads(_run([f"{VENV_BIN}/dvc", "status", "--json"], root).stdout)
    assert set(stale) == units, sorted(set(stale) ^ units)
    _run([f"{VENV_BIN}/dvc", "commit", "--force", "--quiet", *sorted(units)], root)
    assert "up to date" in _run([f"{VENV_BIN}/dvc", "status"], root).stdout
    return root


def test_one_arms_settings_rerun_only_that_arms_unit(per_unit_project):
    """One DVC stage per unit: the baseline's GRPO settings touch only its run."""
    root = per_unit_project
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["grpo_direct"]["learning_rate"] *= 2
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stale = json.loads(_run([f"{VENV_BIN}/dvc", "status", "--json"], root).stdout)
    assert set(stale) == {"student_rl@grpo_direct"}, stale
    done = _run([f"{VENV_BIN}/dvc", "repro"], root)
    ran = {line.split("'")[1] for line in done.stdout.splitlines() if line.startswith("Running stage")}
    assert ran == {"student_rl@grpo_direct", "evaluate", "promote"}


def test_changed_arms_stop_dvc_repro_until_the_units_are_rewritten(per_unit_project, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(per_unit_project, root, symlinks=True)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["arms"] = [a for a in params["arms"] if a != "no_opd"]
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    done = subprocess.run([f"{VENV_BIN}/dvc", "repro"], cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode != 0
    out = done.stdout + done.stderr
    assert "s2d allocate: error:" in out and "does not match params.yaml's `arms`" in out and "s2d dvc-units" in out
    assert "Running stage 'teacher_rl@" not in out  # stopped before training the old units
    _run([f"{VENV_BIN}/s2d", "dvc-units"], root)
    units = _run([f"{VENV_BIN}/dvc", "stage", "list", "--name-only"], root).stdout.split()
    assert "warmup@no_opd" not in units and "warmup@s2d" in units


def test_dvc_plots_put_the_value_on_the_bar_axis(dvc_project):
    """Horizontal bars need the number on x and the model on y (the other way round draws nothing)."""
    shown = json.loads(_run([f"{VENV_BIN}/dvc", "plots", "show", "--json"], dvc_project).stdout)["data"]
    for plot, metric in (("accuracy_sampled", "avg_at_k"), ("accuracy_greedy", "greedy")):
        spec = shown[plot][0]["content"]
        assert spec["encoding"]["x"] == {**spec["encoding"]["x"], "field": metric, "type": "quantitative"}
        assert spec["encoding"]["y"]["field"] == "model"
        values = spec["data"]["values"]
        assert {v["model"] for v in values} >= {"student_raw", "s2d", "teacher_raw"}
        assert all(0.0 <= float(v[metric]) <= 1.0 for v in values)
    assert (dvc_project / "artifacts/evaluate/accuracy.png").stat().st_size > 1000


def _task_run_names(flow_run_id) -> set[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name for r in runs}


def _watch_unit_processes(stop, seen: dict, together: list) -> None:
    """Until `stop` is set, look at this process's descendants every 0.2 s: every `s2d <stage> --arm
    <arm>` process goes into `seen` (pid -> (stage, arm)), and each look that finds more than one
    alive goes into `together`."""
    import psutil

    me = psutil.Process()
    while not stop.is_set():
        alive = {}
        for child in me.children(recursive=True):
            try:
                cmd = child.cmdline()
            except psutil.Error:  # ended between the listing and the look
                continue
            if "s2d_pipeline.cli" in cmd and "--arm" in cmd:
                alive[child.pid] = (cmd[-1], cmd[cmd.index("--arm") + 1])
        seen.update(alive)
        if len(alive) > 1:
            together.append(sorted(alive.values()))
        stop.wait(0.2)


@pytest.fixture(scope="module")
def parallel_flow_run(dvc_project, tmp_path_factory):
    """The Prefect flow on a test server, in a git + DVC project holding the DVC project's params with
    `flow.parallel_arms: 2` in params.yaml (so the flow keeps dvc.lock): the arms of each per-arm
    stage train two at a time, each unit in an `s2d <stage> --arm` process of its own. Yields
    (project, final state, seen: pid -> (stage, arm) of every unit process, together: the moments
    two were alive at once); the server lives until the module's tests are done."""
    import threading

    import torch
    from prefect.testing.utilities import prefect_test_harness

    from flows.s2d import s2d

    root = _make_project(tmp_path_factory.mktemp("flow") / "project")
    params = yaml.safe_load((dvc_project / "params.yaml").read_text())
    params["flow"]["parallel_arms"] = 2
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "init", "-q"], root)
    _run([f"{VENV_BIN}/dvc", "init", "-q"], root)
    seen: dict[int, tuple[str, str]] = {}
    together: list[list[tuple[str, str]]] = []
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_unit_processes, args=(stop, seen, together), daemon=True)
    threads = torch.get_num_threads()  # the stages the flow runs in this process set it from the params
    with pytest.MonkeyPatch.context() as patch, prefect_test_harness(server_startup_timeout=120):
        patch.chdir(root)
        patch.setenv("PATH", f"{VENV_BIN}:{os.environ['PATH']}")
        watcher.start()
        try:
            state = s2d(params="params.yaml", return_state=True)
        finally:
            stop.set()
            watcher.join()
        try:
            yield root, state, seen, together
        finally:
            torch.set_num_threads(threads)


def test_prefect_flow_matches_dvc_repro(dvc_project, parallel_flow_run):
    from flows.s2d import s2d

    root, state, _, _ = parallel_flow_run
    assert state.is_completed(), state
    assert _eval_metrics(root) == _eval_metrics(dvc_project)
    # Per-arm stages fan out: one task run per unit (an RL teacher, a bridge, a student GRPO run).
    names = _task_run_names(state.state_details.flow_run_id)
    assert {"warmup/s2d", "opd/s2d", "opd/no_warmup", "teacher_rl/s2d", "prepare", "evaluate"} <= names
    # The run is named for what it is, as its MLflow parent run, not with Prefect's two random words.
    from prefect.client.orchestration import get_client

    from s2d_pipeline.config import load_config
    from s2d_pipeline.tracking import pipeline_run_name

    with get_client(sync_client=True) as client:
        run_name = client.read_flow_run(state.state_details.flow_run_id).name
    assert run_name == pipeline_run_name(load_config(root / "params.yaml")), run_name

    # The flow recorded what it ran in dvc.lock: DVC sees nothing to do ...
    assert "up to date" in _run([f"{VENV_BIN}/dvc", "status"], root).stdout
    assert "Running stage" not in _run([f"{VENV_BIN}/dvc", "repro"], root).stdout
    # ... and a second flow run with the same params skips every stage.
    before = {p: p.stat().st_mtime_ns for p in (root / "metrics").rglob("*.json")}
    assert s2d(params="params.yaml", return_state=True).is_completed()
    assert {p: p.stat().st_mtime_ns for p in (root / "metrics").rglob("*.json")} == before

    # A typo in an override fails the run with the error as its state message, naming the override.
    failed = s2d(params="params.yaml", overrides={"budegt": 32}, return_state=True)
    assert failed.is_failed()
    assert 'overrides {"budegt": 32}' in failed.message and "unknown key 'budegt'" in failed.message
    # Units sent to a deployment this server does not have: the run fails before any stage.
    missing = s2d(params="params.yaml", overrides={"flow": {"unit_deployment": "s2d-unit/unit"}}, return_state=True)
    assert missing.is_failed() and "flow.unit_deployment 's2d-unit/unit'" in missing.message, missing.message
    assert "not found" in missing.message and "prefect deploy -n unit" in missing.message


def test_arms_trained_in_parallel_processes_give_the_sequential_results(dvc_project, parallel_flow_run):
    """`flow.parallel_arms: 2`: two arms of a stage train at once, each in its own `s2d <stage>
    --arm` process; the evaluation equals the sequential DVC run's."""
    from s2d_pipeline.io import read_unit_metrics

    root, state, seen, together = parallel_flow_run
    assert state.is_completed(), state
    # Each training unit ran in a child process of its own (the pid its metrics record), not in the
    # flow's, and at some moment two units' processes were alive at once.
    for stage in ("teacher_rl", "warmup", "opd", "student_rl"):
        trained_by = {unit: m["trained_by"] for unit, m in read_unit_metrics(root / "metrics" / stage).items()}
        pids = {unit: int(text.split(",")[0].removeprefix("pid ")) for unit, text in trained_by.items()}
        assert trained_by and os.getpid() not in pids.values(), trained_by
        assert len(set(pids.values())) == len(pids), f"{stage}: units shared a process: {trained_by}"
        assert all(seen.get(pid, (None, None))[0] == stage for pid in pids.values()), (stage, trained_by, seen)
    assert together, f"no two unit processes were ever alive at once: {sorted(seen.values())}"
    assert _eval_metrics(root) == _eval_metrics(dvc_project)
