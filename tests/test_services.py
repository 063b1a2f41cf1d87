"""The team-server setup of infra/, for real, without Docker: PostgreSQL (a throwaway cluster) backs
the MLflow tracking server and the Prefect server, an S3 server (moto) holds MLflow's artifacts and the
DVC remote, and a Prefect process worker runs the `s2d/train` deployment on micro settings. Then the
faults: the MLflow server dies mid-stage, PostgreSQL restarts between stages.

Everything binds 127.0.0.1 on free ports and is stopped by the module's fixtures, even on failure
(tests/services.py). The steps follow infra/README.md "Without Docker".
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, STAGE_MICRO, write_dvc_units
from tests.services import VENV_BIN, Server, ServiceStack, wait_until

pytestmark = [pytest.mark.services, pytest.mark.slow]

# Micro settings, barely pretrained base models and three arms: the candidate, the gate's baseline
# and `no_warmup`, whose OPD unit can train alongside s2d's. What is under test is the servers and the
# wiring, not the numbers. One thread per training, so the fanned-out run (two units at once on two
# cores) computes exactly what the sequential run does.
# The RL teacher trains 12 steps with a checkpoint every 2, so a worker killed mid-unit leaves one to resume.
SERVICES_MICRO = {
    "arms": ["s2d", "grpo_direct", "no_warmup"],
    "tracking": {"enabled": True},
    "prepare": {"teacher": {"steps": 30}, "student": {"steps": 30}},
    "teacher_rl": {"steps": 12},
    "runtime": {"torch_threads": 1, "checkpoint_steps": 2},
}
# The same, each per-arm unit a run of the `unit` deployment, two at once (infra/README "Arms in parallel");
# a unit silent for a minute (its worker killed) is taken as lost.
FAN_OUT = {"flow": {"parallel_arms": 2, "unit_deployment": "s2d-unit/unit", "unit_lost_after_s": 60}}
UNIT_RUNS = {"teacher_rl/s2d", "rollouts/s2d", "warmup/s2d", "opd/s2d", "opd/no_warmup", "student_rl/grpo_direct"}
TRAINING_STAGES = ("prepare", "teacher_rl", "rollouts", "warmup", "opd", "student_rl")


def run(
    cmd: list[str], cwd: Path, env: dict, timeout_s: float = 300, check: bool = True
) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{cmd} still running after {timeout_s} s:\n{exc.stdout}\n{exc.stderr}") from None
    if check:
        assert done.returncode == 0, f"{cmd} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def tree_digest(root: Path, parts: tuple[str, ...]) -> dict[str, str]:
    """sha256 of every file under the given project paths."""
    out = {}
    for part in parts:
        for path in sorted(p for p in (root / part).rglob("*") if p.is_file()):
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    services = ServiceStack(tmp_path_factory.mktemp("services"))
    try:
        yield services.start()
    finally:
        services.stop()


@pytest.fixture(scope="module")
def project(stack, tmp_path_factory) -> Path:
    return make_project(stack, tmp_path_factory.mktemp("project"))


def make_project(stack: ServiceStack, root: Path, settings: dict | None = None) -> Path:
    """A git + DVC checkout of this repository's pipeline, flow and prefect.yaml, with micro params."""
    from s2d_pipeline.config import deep_merge

    for name in ("dvc.yaml", ".dvcignore", ".gitignore", "prefect.yaml"):
        shutil.copy(REPO / name, root / name)
    for name in ("s2d_pipeline", "flows"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    params = deep_merge(deep_merge(yaml.safe_load((REPO / "params.yaml").read_text()), STAGE_MICRO), SERVICES_MICRO)
    params = deep_merge(params, settings or {})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    write_dvc_units(root)
    env = project_env(stack, root)
    run(["git", "init", "-q"], root, env)
    run(["dvc", "init", "-q"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-q", "-m", "micro project"], root, env)
    return root


def _metrics_files(project: Path, stage: str) -> list[Path]:
    """A stage's metrics files: its units' (a per-arm stage) or its one file; empty when missing."""
    units = sorted((project / "metrics" / stage).glob("*.json"))
    return units or [p for p in [project / "metrics" / f"{stage}.json"] if p.is_file()]


def project_env(stack: ServiceStack, root: Path) -> dict[str, str]:
    """The stack's client settings, the project's code first on the path (as infra's worker image
    does), and a git identity for the commits."""
    return {
        **stack.client_env(),
        "PYTHONPATH": str(root),
        "PWD": str(root),  # prefect.yaml's working directory is `{{ $PWD }}`: the shell's, not the process cwd
        "GIT_AUTHOR_NAME": "s2d-test",
        "GIT_AUTHOR_EMAIL": "s2d-test@localhost",
        "GIT_COMMITTER_NAME": "s2d-test",
        "GIT_COMMITTER_EMAIL": "s2d-test@localhost",
    }


def start_worker(stack: ServiceStack, project: Path, name: str, *options: str) -> Server:
    """A process worker on the `s2d-process` pool, in the project's checkout, stopped with the stack."""
    prefect = str(VENV_BIN / "prefect")
    worker = Server(
        name,
        [prefect, "worker", "start", "-p", "s2d-process", "--type", "process", "--name", name, *options],
        stack.workdir / f"{name}.log",
        env={**project_env(stack, project), "PREFECT_WORKER_QUERY_SECONDS": "2"},  # seconds, not 10
        cwd=project,
    )
    stack.servers[name] = worker.start()
    return worker


def run_train_deployment(
    stack: ServiceStack, project: Path, run_name: str, workers: list[Server], overrides: dict | None = None
) -> dict:
    """`prefect deployment run s2d/train --watch` (with `overrides`, if any); checks the run completed
    and returns its id, deployment id, wall time and the default run's evaluation."""
    started = time.monotonic()
    extra = ["--param", f"overrides={json.dumps(overrides)}"] if overrides else []
    done = run(
        [str(VENV_BIN / "prefect"), "deployment", "run", "s2d/train", "--flow-run-name", run_name, *extra,
         "--watch", "--watch-interval", "2", "--watch-timeout", "480"],
        project, project_env(stack, project), timeout_s=540, check=False,
    )  # fmt: skip
    seconds = time.monotonic() - started
    rows = stack.psql("prefect", "SELECT id, state_type, deployment_id FROM flow_run WHERE name = %s", (run_name,))
    assert len(rows) == 1 and rows[0][1] == "COMPLETED", (
        f"flow run: {rows}\n{done.stdout[-3000:]}\n{done.stderr[-2000:]}\n"
        + "\n".join(w.log_tail(60) for w in workers)
    )
    return {
        "id": str(rows[0][0]),
        "deployment_id": str(rows[0][2]),
        "seconds": seconds,
        "evaluation": evaluation(project),
    }


def evaluation(project: Path) -> dict:
    """metrics/evaluate.json without where, when and how long it ran."""
    metrics = json.loads((project / "metrics" / "evaluate.json").read_text())
    metrics.pop("wall_s"), metrics.pop("provenance")
    return metrics


@pytest.fixture(scope="module")
def flow_run(stack, project) -> dict:
    """docs/doors.md "Prefect": work pool, `prefect deploy`, a process worker, `prefect deployment run`."""
    env = project_env(stack, project)
    prefect = str(VENV_BIN / "prefect")
    run([prefect, "work-pool", "create", "s2d-process", "--type", "process"], project, env)
    run([prefect, "--no-prompt", "deploy", "-n", "train"], project, env)
    worker = start_worker(stack, project, "worker")
    return run_train_deployment(stack, project, "services-sequential-run", [worker])


def test_deployment_runs_the_micro_pipeline_through_the_worker(stack, project, flow_run):
    # The deployment, its pool and the run are rows in Prefect's PostgreSQL database.
    deployment = stack.psql(
        "prefect",
        "SELECT d.name, w.name FROM deployment d JOIN work_queue q ON d.work_queue_id = q.id "
        "JOIN work_pool w ON q.work_pool_id = w.id WHERE d.id = %s",
        (flow_run["deployment_id"],),
    )
    assert deployment == [("train", "s2d-process")]
    tasks = stack.psql("prefect", "SELECT name, state_type FROM task_run WHERE flow_run_id = %s", (flow_run["id"],))
    # Per-arm stages run one task per arm (`teacher_rl/s2d`, `student_rl/grpo_direct`).
    assert {name for name, _ in tasks} >= {"prepare", "teacher_rl/s2d", "student_rl/grpo_direct", "evaluate"}, tasks
    assert {state for _, state in tasks} == {"COMPLETED"}, tasks
    for stage in (*TRAINING_STAGES, "evaluate", "promote"):
        assert _metrics_files(project, stage), stage
    assert not (project / "mlflow.db").exists()  # tracking went to the server, not a local store


def test_runs_metrics_and_registered_model_are_in_mlflows_postgres(stack, project, flow_run):
    run_ids = stack.psql(
        "mlflow",
        "SELECT r.run_uuid, r.status, t.value FROM runs r JOIN experiments e ON r.experiment_id = e.experiment_id "
        "JOIN tags t ON t.run_uuid = r.run_uuid WHERE e.name = 's2d' AND t.key = 's2d.stage'",
    )
    stages = {stage for _, _, stage in run_ids}
    assert stages >= {*TRAINING_STAGES, "evaluate", "promote"}, stages  # validate and allocate open none
    assert {status for _, status, _ in run_ids} == {"FINISHED"}
    # The flow keyed its pipeline's parent run by the flow-run id; the parent ended with the pipeline.
    parents = stack.psql(
        "mlflow",
        "SELECT r.status FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
        "WHERE t.key = 's2d.pipeline_key' AND t.value = %s",
        (f"prefect-{flow_run['id']}",),
    )
    assert parents == [("FINISHED",)]
    metrics = dict(
        stack.psql(
            "mlflow",
            "SELECT t.value, m.value FROM metrics m JOIN tags t ON t.run_uuid = m.run_uuid "
            "WHERE t.key = 'mlflow.runName' AND m.key = 'avg_at_k'",
        )
    )
    evaluation = json.loads((project / "metrics" / "evaluate.json").read_text())
    for arm in ("s2d", "grpo_direct"):
        assert metrics[f"evaluate/{arm}"] == pytest.approx(evaluation["arms"][arm]["avg_at_k"]), metrics
    assert stack.psql("mlflow", "SELECT count(*) FROM metrics WHERE key LIKE '%%loss%%'")[0][0] > 0  # TRL's curves

    aliases = dict(
        stack.psql("mlflow", "SELECT alias, version FROM registered_model_aliases WHERE name = 's2d-student'")
    )
    promote = json.loads((project / "metrics" / "promote.json").read_text())
    assert aliases["challenger"] == int(promote["challenger_version"]) == _newest_version_from("evaluate/s2d", stack)
    # `champion` exists exactly when the gate promoted the challenger (micro numbers rarely pass it).
    assert ("champion" in aliases) == promote["promoted"], (aliases, promote)
    decision = stack.psql(
        "mlflow",
        "SELECT value FROM model_version_tags WHERE name = 's2d-student' AND version = %s AND key = 's2d.promotion'",
        (aliases["challenger"],),
    )
    expected = "promoted to champion" if promote["promoted"] else "not promoted: " + "; ".join(promote["reasons"])
    assert decision == [(expected,)]


def _newest_version_from(run_name: str, stack: ServiceStack) -> int:
    """The newest registered version, checked to come from a finished run of that name."""
    version, status, name = stack.psql(
        "mlflow",
        "SELECT v.version, r.status, t.value FROM model_versions v JOIN runs r ON r.run_uuid = v.run_id "
        "JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = 'mlflow.runName' "
        "WHERE v.name = 's2d-student' ORDER BY v.version DESC LIMIT 1",
    )[0]
    assert (status, name) == ("FINISHED", run_name)
    return version


def test_registered_model_files_are_in_the_s3_bucket(stack, project, flow_run):
    from safetensors.torch import load, load_file

    (location,) = stack.psql(
        "mlflow",
        "SELECT v.storage_location FROM model_versions v JOIN registered_model_aliases a "
        "ON a.name = v.name AND a.version = v.version WHERE a.alias = 'challenger'",
    )[0]
    # The challenger's own files: the objects under its version's storage location, not any model's.
    # The server proxies artifacts (`mlflow-artifacts:/<path>`) to its destination, the bucket's root.
    assert location.startswith("mlflow-artifacts:/"), location
    prefix = location.removeprefix("mlflow-artifacts:/").strip("/") + "/"
    keys = stack.s3_keys("mlflow")
    weights = [k for k in keys if k.startswith(prefix) and k.endswith("model.safetensors")]
    assert len(weights) == 1, f"{weights} under {location} ({len(keys)} objects in s3://mlflow)"
    # The registered weights are the evaluated s2d student's, tensor for tensor.
    body = stack.s3().get_object(Bucket="mlflow", Key=weights[0])["Body"].read()
    local = load_file(project / "artifacts" / "opd" / "s2d" / "model.safetensors")
    remote = load(body)
    assert remote.keys() == local.keys() and all((remote[k] == local[k]).all() for k in local)


def test_dvc_push_to_s3_and_a_fresh_clone_pulls_identical_outputs(stack, project, flow_run, tmp_path):
    """The flow records each stage it runs in dvc.lock (`dvc commit`); anything `dvc status` still
    reports is committed here, then the outputs are pushed and a fresh clone pulls them."""
    env = project_env(stack, project)
    dvc = str(VENV_BIN / "dvc")
    if "up to date" not in run([dvc, "status"], project, env).stdout:
        run([dvc, "commit", "-f"], project, env)
    run([dvc, "remote", "add", "-d", "s3", "s3://dvc/s2d"], project, env)
    run([dvc, "remote", "modify", "s3", "endpointurl", stack.s3_url], project, env)
    run(["git", "add", "-A"], project, env)  # dvc.lock, the remote, the (uncached) metrics
    run(["git", "commit", "-q", "-m", "outputs of the flow run"], project, env)
    run([dvc, "push"], project, env)
    assert len(stack.s3_keys("dvc")) > 10

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path, env)
    run([dvc, "pull"], clone, env)
    outs = ("data", "artifacts")
    pulled, original = tree_digest(clone, outs), tree_digest(project, outs)
    assert pulled == original and any(k.endswith("model.safetensors") for k in pulled)
    status = run([dvc, "status"], clone, env).stdout
    assert "Data and pipelines are up to date" in status, status


def _evaluate_run_is_open(stack: ServiceStack) -> bool:
    return bool(
        stack.psql(
            "mlflow",
            "SELECT 1 FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
            "WHERE t.key = 'mlflow.runName' AND t.value = 'evaluate' AND r.status = 'RUNNING'",
        )
    )


def test_mlflow_server_stopped_mid_stage_fails_clearly_and_a_rerun_loses_nothing(stack, project, flow_run):
    env = project_env(stack, project)
    s2d = str(VENV_BIN / "s2d")
    trained = tree_digest(project, ("data", *(f"artifacts/{s}" for s in TRAINING_STAGES)))
    trained_metrics = {p: p.read_bytes() for s in TRAINING_STAGES for p in _metrics_files(project, s)}
    finished_before = stack.psql("mlflow", "SELECT run_uuid FROM runs WHERE status = 'FINISHED'")
    version_before = stack.psql("mlflow", "SELECT max(version) FROM model_versions WHERE name = 's2d-student'")[0][0]

    # `s2d evaluate` passes the preflight and opens its run on the live server; the server then dies
    # while the stage scores the models, before it logs them.
    # No MLflow client retries: what is under test is the message and the rerun, not the ~15 s of
    # retries s2d's bound allows (test_tracking_promotion pins that bound).
    no_retries = {**env, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    err = stack.workdir / "evaluate-killed.err"
    with open(err, "w") as stderr:
        stage = subprocess.Popen(
            [s2d, "evaluate"], cwd=project, env=no_retries, stdout=subprocess.DEVNULL, stderr=stderr
        )
    try:
        wait_until(lambda: stage.poll() is not None or _evaluate_run_is_open(stack), 180, "evaluate's run to open")
        assert stage.poll() is None, f"evaluate ended before the server was stopped:\n{err.read_text()[-3000:]}"
        stack.servers["mlflow"].stop()
        try:
            status = stage.wait(240)  # a hang guard, not a speed check
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"evaluate still running 240 s after the server stopped:\n{err.read_text()[-3000:]}"
            ) from None
    finally:
        if stage.poll() is None:
            stage.kill()
        if not stack.servers["mlflow"].alive:  # whatever happened, the next tests get a server
            stack.start_mlflow()
            stack.wait_mlflow()
    message = err.read_text()
    assert status == 2 and "Traceback" not in message, message[-3000:]
    assert f"s2d evaluate: error: MLflow tracking server {stack.mlflow_url} stopped answering" in message, message
    assert "Restart it" in message and "`s2d evaluate`" in message

    run([s2d, "evaluate"], project, env)
    # Nothing lost, nothing retrained: the training stages' outputs and metrics are byte-identical, the
    # earlier runs are all still finished, and the rerun registered the next version as challenger.
    assert tree_digest(project, ("data", *(f"artifacts/{s}" for s in TRAINING_STAGES))) == trained
    assert {p: p.read_bytes() for s in TRAINING_STAGES for p in _metrics_files(project, s)} == trained_metrics
    finished = stack.psql("mlflow", "SELECT run_uuid FROM runs WHERE status = 'FINISHED'")
    assert set(finished_before) < set(finished)
    aliases = dict(stack.psql("mlflow", "SELECT alias, version FROM registered_model_aliases"))
    assert aliases["challenger"] == _newest_version_from("evaluate/s2d", stack) == version_before + 1


def test_postgres_restarted_between_stages_the_pipeline_goes_on(stack, project, flow_run):
    env = project_env(stack, project)
    promotes_before = stack.psql(
        "mlflow", "SELECT count(*) FROM tags WHERE key = 'mlflow.runName' AND value = 'promote'"
    )[0][0]
    stack.stop_postgres()
    stack.start_postgres()
    stack.wait_postgres()

    run([str(VENV_BIN / "s2d"), "promote"], project, env)
    promote = json.loads((project / "metrics" / "promote.json").read_text())
    # The stage's run and its decision went through the MLflow server into the restarted database.
    assert (
        stack.psql("mlflow", "SELECT count(*) FROM tags WHERE key = 'mlflow.runName' AND value = 'promote'")[0][0]
        == promotes_before + 1
    )
    decision = stack.psql(
        "mlflow",
        "SELECT value FROM model_version_tags WHERE name = 's2d-student' AND version = %s AND key = 's2d.promotion'",
        (promote["challenger_version"],),
    )
    expected = "promoted to champion" if promote["promoted"] else "not promoted: " + "; ".join(promote["reasons"])
    assert decision == [(expected,)]
    # The Prefect server reads and writes its restarted database as well.
    with urllib.request.urlopen(f"{stack.prefect_api}/flow_runs/{flow_run['id']}", timeout=10) as response:
        assert json.loads(response.read())["state_type"] == "COMPLETED"
    prefect = str(VENV_BIN / "prefect")
    run([prefect, "work-pool", "create", "after-restart", "--type", "process"], project, env)
    assert stack.psql("prefect", "SELECT count(*) FROM work_pool WHERE name = 'after-restart'") == [(1,)]
    run([prefect, "work-pool", "delete", "after-restart"], project, env)


def test_a_user_error_is_the_failed_runs_state_message_said_once(stack, project, flow_run):
    env = project_env(stack, project)
    prefect = str(VENV_BIN / "prefect")
    run(
        [prefect, "deployment", "run", "s2d/train", "--flow-run-name", "services-typo-run",
         "--param", 'overrides={"budegt": 16}', "--watch", "--watch-interval", "2", "--watch-timeout", "240"],
        project, env, timeout_s=300, check=False,
    )  # fmt: skip
    ((run_id, state, message),) = stack.psql(
        "prefect",
        "SELECT f.id, f.state_type, s.message FROM flow_run f JOIN flow_run_state s ON s.id = f.state_id "
        "WHERE f.name = 'services-typo-run'",
    )
    assert state == "FAILED" and message.startswith("s2d: ") and "unknown key 'budegt'" in message, message
    # One CLI command (docs/troubleshooting.md "A failed Prefect run") prints the reason, as written, and no traceback.
    printed = run([prefect, "flow-run", "logs", str(run_id)], project, env).stdout
    assert "unknown key 'budegt'" in printed and "Traceback" not in printed, printed
    # In the run's logs the reason appears once, and no traceback follows it.
    logs = [m for (m,) in stack.psql("prefect", "SELECT message FROM log WHERE flow_run_id = %s", (run_id,))]
    assert sum("budegt" in m for m in logs) == 1, logs
    assert not any("Traceback" in m or "Engine execution exited" in m for m in logs), logs


def test_a_deployment_run_with_overrides_is_an_experiment_that_leaves_the_default_alone(stack, project, flow_run):
    env = project_env(stack, project)
    dvc = str(VENV_BIN / "dvc")

    def default_state():
        aliases = stack.psql(
            "mlflow", "SELECT alias, version FROM registered_model_aliases WHERE name = 's2d-student'"
        )
        metrics = {str(p.relative_to(project)): p.read_bytes() for p in sorted((project / "metrics").rglob("*.json"))}
        return sorted(aliases), metrics, run([dvc, "status"], project, env).stdout

    before = default_state()
    run_train_deployment(stack, project, "services-experiment-run", [stack.servers["worker"]], {"budget": 8})
    assert default_state() == before  # aliases, every metrics file and `dvc status`, as they were
    (root,) = (project / "experiments").iterdir()
    assert root.name.startswith("tiny-b8-s0-") and (root / "metrics" / "evaluate.json").is_file()
    assert json.loads((root / "artifacts" / "allocate" / "ledger.json").read_text())["budget"] == 8
    # Its students have their own registered model, and its parent run says what it changed.
    aliases = stack.psql("mlflow", "SELECT alias FROM registered_model_aliases WHERE name = 's2d-student-experiments'")
    assert ("challenger",) in aliases, aliases
    names = [n for (n,) in stack.psql("mlflow", "SELECT name FROM runs WHERE name LIKE 'experiment · %%'")]
    assert len(names) == 1 and names[0].endswith(" · budget=8"), names


# Last in the module on purpose: these runs register the newest model versions, which the registry
# tests above expect to be the sequential run's (or their own rerun's).
@pytest.fixture(scope="module")
def unit_project(stack, flow_run, tmp_path_factory) -> Path:
    """The sequential run's settings in a fresh checkout with its units dispatched as runs of the
    `unit` deployment (FAN_OUT); deployed, no worker started yet."""
    stack.servers.pop("worker").stop()  # the sequential run's worker: this run's flow goes to `flows`
    project = make_project(stack, tmp_path_factory.mktemp("fanned-out"), FAN_OUT)
    run([str(VENV_BIN / "prefect"), "--no-prompt", "deploy", "-n", "train", "-n", "unit"], project,
        project_env(stack, project))  # fmt: skip
    return project


def _python(stack: ServiceStack, project: Path, code: str, timeout_s: float = 240) -> str:
    done = run([str(VENV_BIN / "python"), "-c", code], project, project_env(stack, project), timeout_s=timeout_s)
    return done.stdout


def _unit_runs(stack: ServiceStack, name: str) -> list[tuple]:
    return stack.psql(
        "prefect",
        "SELECT f.state_type, f.state_name, s.message FROM flow_run f JOIN deployment d ON f.deployment_id = d.id "
        "LEFT JOIN flow_run_state s ON s.id = f.state_id WHERE d.name = 'unit' AND f.name = %s ORDER BY f.created",
        (name,),
    )


def test_a_unit_no_worker_takes_fails_clearly_within_its_timeout(stack, unit_project):
    # No worker polls the `units` queue yet: the unit is cancelled and the error says how to start one.
    out = _python(
        stack,
        unit_project,
        "from flows.s2d import _run_unit_deployment\n"
        "from s2d_pipeline.config import load_config\n"
        "from s2d_pipeline.errors import S2DError\n"
        "cfg = load_config('params.yaml', {'flow': {'unit_pickup_timeout_s': 4}})\n"
        "try:\n"
        "    _run_unit_deployment(cfg, 'teacher_rl', 'unpicked', 's2d', 'params.yaml', None)\n"
        "except S2DError as exc:\n"
        "    print(f'S2DError: {exc}')\n",
    )
    assert "S2DError: unit teacher_rl/unpicked: no worker took the run of deployment s2d-unit/unit" in out, out
    assert "(work pool s2d-process, queue units) within flow.unit_pickup_timeout_s = 4 s" in out, out
    assert "`prefect worker start -p s2d-process -q units --limit 1`" in out, out
    assert [state for state, *_ in _unit_runs(stack, "teacher_rl/unpicked")] == ["CANCELLED"]


def _kill_the_worker_mid_unit(stack: ServiceStack, project: Path, unit: str, killed: dict) -> None:
    """Once `unit` is running on a worker and has written a checkpoint, SIGKILL that worker with the
    unit's process (a lost host), then start a new worker under the same name."""
    try:

        def running_with_checkpoint():
            rows = stack.psql(
                "prefect",
                "SELECT f.id, f.labels->>'prefect.worker.name' FROM flow_run f JOIN deployment d "
                "ON f.deployment_id = d.id WHERE d.name = 'unit' AND f.name = %s AND f.state_type = 'RUNNING'",
                (unit,),
            )
            checkpoints = list((project / "checkpoints" / unit).glob("checkpoint-*/trainer_state.json"))
            return rows[0] if rows and rows[0][1] and checkpoints else None

        run_id, worker = wait_until(running_with_checkpoint, 300, f"{unit} running with a checkpoint")
        stack.servers.pop(worker).stop(signal.SIGKILL)
        killed.update(run_id=str(run_id), worker=worker)
        start_worker(stack, project, worker, "-q", "units", "--limit", "1")
    except BaseException as exc:  # noqa: BLE001 - reported by the test that reads `killed`
        killed["error"] = repr(exc)


@pytest.fixture(scope="module")
def fanned_out_run(stack, unit_project) -> dict:
    """The fanned-out run: one worker takes flow runs (queue `default`), two take units (queue
    `units`, one at a time each), as infra/README "Arms in parallel" lays them out. The worker that
    runs the RL teacher's unit is killed with it after its first checkpoint."""
    workers = [
        start_worker(stack, unit_project, "flows", "-q", "default"),
        *(start_worker(stack, unit_project, name, "-q", "units", "--limit", "1") for name in ("units-a", "units-b")),
    ]
    killed: dict = {}
    killer = threading.Thread(target=_kill_the_worker_mid_unit, args=(stack, unit_project, "teacher_rl/s2d", killed))
    killer.start()
    try:
        result = run_train_deployment(stack, unit_project, "services-fanned-out", workers)
    finally:
        killer.join(timeout=300)
    return {**result, "project": unit_project, "killed": killed}


def test_units_fan_out_to_two_workers_and_give_the_sequential_results(stack, flow_run, fanned_out_run):
    units = stack.psql(
        "prefect",
        "SELECT f.id, f.name, f.state_type, f.start_time, f.end_time, f.labels->>'prefect.worker.name' "
        "FROM flow_run f JOIN task_run t ON f.parent_task_run_id = t.id JOIN deployment d "
        "ON f.deployment_id = d.id WHERE t.flow_run_id = %s AND d.name = 'unit' ORDER BY f.created",
        (fanned_out_run["id"],),
    )
    # Every unit of the per-arm stages ran as its own run of the `unit` deployment, under this flow run.
    assert {name for _, name, *_ in units} == UNIT_RUNS, units
    completed = {name: row for row in units if (name := row[1]) and row[2] == "COMPLETED"}
    assert completed.keys() == UNIT_RUNS, units
    tasks = stack.psql("prefect", "SELECT name FROM task_run WHERE flow_run_id = %s", (fanned_out_run["id"],))
    assert UNIT_RUNS <= {name for (name,) in tasks}, tasks  # the per-arm task runs in the flow run's graph

    # The two OPD units trained at the same time. Each unit worker takes one run at a time (--limit 1),
    # so they ran on both workers, as the server recorded (the labels the winning worker gave the run).
    (_, _, _, s2d_start, s2d_end, s2d_worker) = completed["opd/s2d"]
    (_, _, _, other_start, other_end, other_worker) = completed["opd/no_warmup"]
    assert s2d_start < other_end and other_start < s2d_end, (completed["opd/s2d"], completed["opd/no_warmup"])
    assert {s2d_worker, other_worker} == {"units-a", "units-b"}, units

    # Each unit's flow run sent heartbeats, which is what tells a lost unit from a long one.
    beating = stack.psql(
        "prefect",
        "SELECT count(DISTINCT resource_id) FROM events WHERE event = 'prefect.flow-run.heartbeat' "
        "AND resource_id = ANY(%s)",
        ([f"prefect.flow-run.{row[0]}" for row in completed.values()],),
    )
    assert beating == [(len(UNIT_RUNS),)], beating

    # Same settings, same seed, one thread per training: the same evaluation as the sequential flow,
    # although the RL teacher's worker was killed mid-unit (next test).
    assert fanned_out_run["evaluation"] == flow_run["evaluation"]
    print(
        f"\nsequential flow run {flow_run['seconds']:.1f} s, fanned out to two unit workers "
        f"{fanned_out_run['seconds']:.1f} s (micro settings, one unit worker killed and its unit retried)"
    )


def test_a_unit_whose_worker_dies_is_retried_and_resumes_from_its_checkpoint(stack, fanned_out_run):
    killed = fanned_out_run["killed"]
    assert "error" not in killed and killed.get("run_id"), killed
    runs = _unit_runs(stack, "teacher_rl/s2d")
    # The lost run was marked Crashed for its silence, and the task's retry ran the unit again.
    assert [(state, name) for state, name, _ in runs] == [("CRASHED", "Crashed"), ("COMPLETED", "Completed")], runs
    assert runs[0][2].startswith("no heartbeat for "), runs
    logs = "".join(stack.servers[name].log.read_text(errors="replace") for name in ("units-a", "units-b"))
    assert re.search(r"teacher_rl/s2d: resuming from \S+/checkpoint-\d+", logs), logs[-3000:]
    # The checkpoints are gone once the unit finished.
    assert not list((fanned_out_run["project"] / "checkpoints" / "teacher_rl" / "s2d").glob("checkpoint-*"))


def test_fanned_out_units_mlflow_runs_nest_under_the_pipelines_parent_run(stack, fanned_out_run):
    (parent,) = stack.psql(
        "mlflow",
        "SELECT r.run_uuid FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
        "WHERE t.key = 's2d.pipeline_key' AND t.value = %s",
        (f"prefect-{fanned_out_run['id']}",),
    )[0]
    children = stack.psql(
        "mlflow",
        "SELECT n.value, r.status FROM runs r JOIN tags p ON p.run_uuid = r.run_uuid AND p.key = 'mlflow.parentRunId' "
        "JOIN tags n ON n.run_uuid = r.run_uuid AND n.key = 'mlflow.runName' WHERE p.value = %s",
        (parent,),
    )
    finished = {name for name, status in children if status == "FINISHED"}
    assert UNIT_RUNS <= finished, children


def test_a_units_user_error_fails_its_task_once_without_a_retry(stack, fanned_out_run):
    # Through the flow's own task and retry rule: a unit's user error comes back from its worker as
    # that error, message and all, and is not retried (a retry would schedule another unit run).
    out = _python(
        stack,
        fanned_out_run["project"],
        "from prefect import flow\n"
        "from flows.s2d import run_arm_task\n"
        "@flow(name='s2d-user-error')\n"
        "def one_unit():\n"
        "    return run_arm_task('warmup', 'raw_bridge', 'raw_bridge', 'params.yaml', None, None)\n"
        "state = one_unit(return_state=True)\n"
        "print(f'STATE {state.type.value}: {state.message}')\n",
    )
    assert "STATE FAILED" in out, out
    message = "--arm: 'raw_bridge' is not a configured arm (key 'arms': s2d, grpo_direct, no_warmup)"
    assert message in out, out
    runs = _unit_runs(stack, "warmup/raw_bridge")
    assert [state for state, *_ in runs] == ["FAILED"], runs
    assert runs[0][2] == f"s2d: {message}", runs
