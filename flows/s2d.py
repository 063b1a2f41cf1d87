"""The Prefect flow `s2d`: the same stage functions as `s2d <stage>` and `dvc repro`, orchestrated.

No stage logic lives here: each task calls `s2d_pipeline.cli.run_stage`. Training stages retry
with backoff (a worker lost mid-stage reruns it; outputs are written atomically, so a retry never
sees a half-written model). In a DVC project run with its params.yaml, the flow skips the stages
`dvc.lock` says are up to date and records those it runs there, so `dvc repro` and the flow share
state. The flow publishes a progress artifact while it runs, the comparison table and a link to the
MLflow parent run at the end; a user error fails the run with the error as its state message.

    # one machine, no server needed (Prefect starts a temporary one):
    python -m flows.s2d
    # a served deployment on this machine:
    python -m flows.s2d --serve        # then: prefect deployment run s2d/train
    # a worker pool (see prefect.yaml and docs/doors.md):
    prefect deploy --all && prefect worker start -p s2d-process
    prefect deployment run s2d/train --param overrides='{"budget": 32}' --watch
    prefect deployment run s2d/train --param params=profiles/smollm2-arith.yaml --watch
    # each arm's units as runs of the `unit` deployment, on workers polling its queue (infra/README
    # "Arms in parallel"): prefect deploy -n unit, then flow.unit_deployment: s2d-unit/unit
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.runtime import flow_run

from s2d_pipeline import dvc_units, experiments
from s2d_pipeline.arms import PER_ARM_STAGES, stage_unit, stage_units
from s2d_pipeline.cli import run_child, run_stage
from s2d_pipeline.config import load_config
from s2d_pipeline.dvc_units import address
from s2d_pipeline.errors import S2DError
from s2d_pipeline.inputs import load_checked_config
from s2d_pipeline.io import read_json
from s2d_pipeline.layout import metrics_file, unit_metrics_dir, unit_metrics_file
from s2d_pipeline.runtime import health_problem, quiet_offline_env
from s2d_pipeline.stages import PIPELINE
from s2d_pipeline.stages.evaluate import comparison_rows
from s2d_pipeline.tracking import pipeline_run_name, preflight, where_to_open


def _not_a_user_error(task, task_run, state) -> bool:
    """Retry a lost worker or an OOM, not bad input or an impossible budget: those fail the same way
    every time."""
    return not isinstance(state.result(raise_on_failure=False), S2DError)


@task(
    name="stage",
    retries=2,
    retry_delay_seconds=[10, 60],
    retry_condition_fn=_not_a_user_error,
    task_run_name="{name}",
)
def run_stage_task(name: str, params: str, overrides: dict | None) -> dict:
    cfg = load_checked_config(params, overrides)
    return run_stage(name, cfg)


@task(
    name="arm",
    retries=2,
    retry_delay_seconds=[10, 60],
    retry_condition_fn=_not_a_user_error,
    task_run_name="{name}/{unit}",
)
def run_arm_task(name: str, unit: str, arm: str, params: str, overrides: dict | None, slot: int | None) -> dict:
    """One arm's unit of a per-arm stage (`s2d <stage> --arm`): as a run of `flow.unit_deployment`
    (on whichever worker of its queue takes it), in this process, or, as the `slot`-th of several
    training at once, in its own (with its own share of the cores or GPUs and its own RNG state, so
    results do not depend on the interleaving)."""
    cfg = load_checked_config(params, overrides)
    if cfg.flow.unit_deployment:
        return _run_unit_deployment(cfg, name, unit, arm, params, overrides)
    if slot is None:
        return run_stage(name, cfg, arm)
    return _run_arm_process(name, arm, cfg, slot)


@flow(name="s2d-unit")
def s2d_unit(stage: str, arm: str, params: str = "params.yaml", overrides: dict | None = None, pipeline_key: str = ""):
    """One arm's unit of a per-arm stage, as its own flow run: what the `s2d` flow dispatches to the
    `flow.unit_deployment` deployment's workers. Returns the unit's metrics; a user error fails the
    run with `s2d: <error>` as its message, which the dispatching flow raises as that error."""
    from prefect.states import Failed

    quiet_offline_env()
    if pipeline_key:  # the stage's MLflow run goes under the dispatching flow run's parent run
        os.environ["S2D_PIPELINE_RUN_ID"] = pipeline_key
    try:
        return run_stage(stage, load_checked_config(params, overrides), arm)
    except S2DError as exc:
        get_run_logger().error("s2d: %s", exc)
        return Failed(message=f"s2d: {exc}")


def _run_unit_deployment(cfg, name: str, unit: str, arm: str, params: str, overrides: dict | None) -> dict:
    """Run a unit as a run of `flow.unit_deployment` (a subflow of this flow run), wait for it, and
    read its metrics from the shared project directory."""
    from prefect.deployments import run_deployment

    run = run_deployment(
        cfg.flow.unit_deployment,
        parameters={
            "stage": name,
            "arm": arm,
            "params": params,
            "overrides": overrides or {},
            "pipeline_key": os.environ.get("S2D_PIPELINE_RUN_ID", ""),
        },
        flow_run_name=f"{name}/{unit}",
        timeout=0,  # scheduled, not awaited: wait_for_unit_run watches pickup and heartbeats
    )
    state = wait_for_unit_run(
        run.id, cfg.flow.unit_deployment, cfg.flow.unit_pickup_timeout_s, cfg.flow.unit_lost_after_s
    )
    message = state.message or ""
    if message.startswith("s2d: "):  # the unit's user error: the same every time, so not retried
        raise S2DError(message.removeprefix("s2d: "))
    if not state.is_completed():  # a crash, a lost worker, a cancel: retried
        raise RuntimeError(
            f"unit run {run.name} ({run.id}) of {cfg.flow.unit_deployment} ended {state.type.value}: {message}"
        )
    path = unit_metrics_file(cfg, name, unit)
    if not path.is_file():
        raise S2DError(
            f"unit run {run.name} of {cfg.flow.unit_deployment} completed, but its metrics {path} are not in "
            "this flow run's project directory: the unit's worker must work in the same checkout (a shared "
            'volume; infra/README.md "Arms in parallel, and where their outputs go")'
        )
    return {unit: read_json(path)}


def wait_for_unit_run(run_id, deployment: str, pickup_timeout_s: float, lost_after_s: float, poll_s: float = 2.0):
    """Wait for a unit's flow run to end and return its final state. A run that no worker takes
    within `pickup_timeout_s` is cancelled and fails as a user error naming the queue and the worker
    command; a running one whose flow run sends no heartbeat for `lost_after_s` (its worker or host
    died) is marked Crashed, which the calling task retries."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled, Crashed, StateType

    scheduled_at = time.monotonic()
    with get_client(sync_client=True) as client:
        while True:
            unit_run = client.read_flow_run(run_id)
            state = unit_run.state
            if state is not None and state.is_final():
                return state
            now = time.monotonic()
            if state is None or state.type == StateType.SCHEDULED:
                if now - scheduled_at > pickup_timeout_s:
                    client.set_flow_run_state(run_id, Cancelled(message="no worker took this unit"), force=True)
                    found = client.read_deployment_by_name(deployment)
                    pool, queue = found.work_pool_name, found.work_queue_name
                    raise S2DError(
                        f"unit {unit_run.name}: no worker took the run of deployment {deployment} (work pool "
                        f"{pool}, queue {queue}) within flow.unit_pickup_timeout_s = {pickup_timeout_s:g} s. Start "
                        f"one in this checkout: `prefect worker start -p {pool} -q {queue} --limit 1` (infra/README "
                        '"Arms in parallel"), raise the timeout for a busy pool, or set flow.unit_deployment: null'
                    )
            elif state.type in (StateType.PENDING, StateType.RUNNING):  # taken: a worker answers for it
                silent_s = _seconds_since_sign_of_life(client, unit_run)
                if silent_s > lost_after_s:
                    client.set_flow_run_state(
                        run_id,
                        Crashed(message=f"no heartbeat for {silent_s:.0f} s: its worker was lost; retried"),
                        force=True,
                    )
                    return client.read_flow_run(run_id).state
            time.sleep(poll_s)


def _seconds_since_sign_of_life(client, unit_run) -> float:
    """Seconds since the running flow run last said it is alive: its latest heartbeat event, or
    the start of its current state when it has sent none yet."""
    from datetime import UTC, datetime

    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter

    since = unit_run.state.timestamp
    page = client.read_events(
        EventFilter(
            occurred=EventOccurredFilter(since=since),
            event=EventNameFilter(name=["prefect.flow-run.heartbeat"]),
            resource=EventResourceFilter(id=[f"prefect.flow-run.{unit_run.id}"]),
        ),
        limit=1,  # newest first
    )
    last = max([since, *(event.occurred for event in page.events)])
    return (datetime.now(UTC) - last).total_seconds()


def unit_deployment_preflight(deployment: str) -> None:
    """Fail before any stage, naming the setting, when `flow.unit_deployment` is not a deployment
    of the Prefect server this flow run talks to."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            found = client.read_deployment_by_name(deployment)
        except ObjectNotFound:
            found = None
    if found is None or found.entrypoint is None or not found.entrypoint.endswith(":s2d_unit"):
        raise S2DError(
            f"flow.unit_deployment {deployment!r} is not a deployment of the s2d-unit flow on this Prefect "
            f"server ({'not found' if found is None else f'entrypoint {found.entrypoint}'}): create it "
            "with `prefect deploy -n unit` (prefect.yaml), start workers on its queue "
            "(`prefect worker start -p s2d-process -q units`), or set flow.unit_deployment: null"
        )


def gpus_for_slot(slot: int, parallel: int, visible: str | None = None) -> str | None:
    """The GPUs (a CUDA_VISIBLE_DEVICES value) of the `slot`-th of `parallel` units training at
    once: the worker's GPUs dealt out in equal groups. None on a machine without GPUs."""
    import subprocess

    if visible is None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        try:
            listed = subprocess.run(
                ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        visible = ",".join(listed.stdout.split()) if listed.returncode == 0 else ""
    gpus = [g.strip() for g in visible.split(",") if g.strip()]
    if not gpus:
        return None
    per = max(1, len(gpus) // parallel)
    first = (slot * per) % len(gpus)
    return ",".join(gpus[first : first + per])


def _run_arm_process(name: str, arm: str, cfg, slot: int) -> dict:
    import tempfile

    import yaml

    parallel = cfg.flow.parallel_arms
    resolved = cfg.model_dump(mode="json", exclude={"root"})
    env = dict(os.environ)
    if cfg.runtime.torch_threads is None:  # split the cores: N processes with all of them each contend
        resolved["runtime"]["torch_threads"] = max(1, len(os.sched_getaffinity(0)) // parallel)
    gpus = gpus_for_slot(slot, parallel)
    if gpus is not None:  # and the GPUs: each unit (and its accelerate processes) on its own group
        env["CUDA_VISIBLE_DEVICES"] = gpus
        n = gpus.count(",") + 1
        if resolved["runtime"].get("num_processes"):
            resolved["runtime"]["num_processes"] = min(resolved["runtime"]["num_processes"], n)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix=f"s2d-{name}-{arm}-", delete=False) as f:
        yaml.safe_dump(resolved, f)
    try:
        cmd = [sys.executable, "-m", "s2d_pipeline.cli", "--params", f.name, "--arm", arm, name]
        # A user error comes back as S2DError (not retried), a crash or a kill as RuntimeError (retried).
        run_child(cmd, cwd=cfg.root, env=env, what=f"`s2d {name} --arm {arm}`", capture=True)
    finally:
        os.unlink(f.name)
    unit = stage_unit(name, arm)
    return {unit: read_json(unit_metrics_file(cfg, name, unit))}


@task(name="check", task_run_name="{name}")
def run_check_task(name: str, params: str, overrides: dict | None) -> dict:
    """Validation-type stages: a failure is the user's data, so never retried."""
    return run_stage_task.fn(name, params, overrides)


def _flow_run_name() -> str:
    """What the flow runs table shows: the pipeline run's name (profile, budget, seed, commit), as
    on its MLflow parent run, unless the run was given a name (`--flow-run-name`): Prefect's own
    names are two words (`elastic-agama`), which say nothing."""
    import re

    if not re.fullmatch(r"[a-z]+-[a-z]+", flow_run.name or ""):
        return flow_run.name
    parameters = flow_run.parameters
    try:
        cfg = experiments.keep_apart(load_config(parameters.get("params", "params.yaml"), parameters.get("overrides")))
    except Exception:  # noqa: BLE001 - bad params fail the run itself, with their message
        return "s2d · params not loaded"
    return pipeline_run_name(cfg)


class _UserErrorSaidOnce(logging.Filter):
    """A worker's engine reports a failed run again after the flow's own ERROR line: the final
    state with its message escaped onto one line, then its traceback. For an s2d user error the
    ERROR line and the state message already say everything."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("Engine execution exited with unexpected exception") and record.exc_info:
            return not str(record.exc_info[1]).startswith("s2d: ")
        if message.startswith("Finished in state Failed('s2d: "):
            record.msg, record.args = "Finished in state Failed (the s2d error above)", ()
        return True


@flow(name="s2d", flow_run_name=_flow_run_name)
def s2d(params: str = "params.yaml", overrides: dict | None = None):
    """Run the whole pipeline; returns the evaluate stage's metrics. A user error (bad params or
    overrides, bad data, an impossible budget) fails the run with that error as the state message."""
    from prefect.states import Failed

    logger = get_run_logger()
    try:
        return _run_pipeline(params, overrides, logger)
    except S2DError as exc:
        logger.error("s2d: %s", exc)
        logging.getLogger("prefect.flow_runs").addFilter(_UserErrorSaidOnce())
        return Failed(message=f"s2d: {exc}")


def _run_pipeline(params: str, overrides: dict | None, logger) -> dict:
    quiet_offline_env()
    cfg = load_checked_config(params, overrides)
    if experiment := experiments.describe(cfg):
        logger.info(experiment)
    preflight(cfg)  # fail fast on an unreachable tracking server, before any task
    if cfg.flow.unit_deployment:
        unit_deployment_preflight(cfg.flow.unit_deployment)
    run_id = flow_run.get_id()
    if run_id:
        os.environ["S2D_PIPELINE_RUN_ID"] = f"prefect-{run_id}"
    dvc = DvcState.for_run(cfg, params, overrides, logger)
    progress = create_progress_artifact(0.0, key="s2d-progress", description="s2d pipeline stages done")
    results: dict = {}
    for i, stage in enumerate(PIPELINE):
        name = stage.name
        if name in PER_ARM_STAGES:  # DVC runs these per unit too: skipped and recorded unit by unit
            results[name] = _fan_out(cfg, name, params, overrides, dvc, logger)
        elif dvc and dvc.up_to_date(name):
            logger.info("stage %s: up to date in dvc.lock (same params, code and inputs), skipped", name)
            results[name] = read_json(metrics_file(cfg, name))
        else:
            # A stage that can fail for reasons outside the user's data (lost worker, OOM) is retried.
            runner = run_stage_task if stage.transient_failures else run_check_task
            results[name] = runner.with_options(name=name)(name, params, overrides)
            if dvc:
                dvc.commit(name)
            logger.info("stage %s done", name)
        update_progress_artifact(progress, 100.0 * (i + 1) / len(PIPELINE))
    evaluation = results.get("evaluate", {})
    if evaluation:
        _publish_comparison(cfg, evaluation, results.get("promote", {}))
    return evaluation


def _fan_out(cfg, name: str, params: str, overrides: dict | None, dvc: DvcState | None, logger) -> dict:
    """One task per unit of a per-arm stage (an RL teacher, a teacher's rollouts, a bridge, a
    student GRPO run), `flow.parallel_arms` at a time; a unit `dvc.lock` has up to date is skipped,
    and each unit run is recorded there. Returns the stage's metrics."""
    units = stage_units(name, cfg.arms)
    for stale in unit_metrics_dir(cfg, name).glob("*.json"):  # units of arms no longer configured
        if stale.stem not in units:
            stale.unlink()
    changed = dvc.changed(name) if dvc else None  # one `dvc status` for all the stage's units
    metrics: dict = {}
    todo = []
    for unit, arm in units.items():
        if changed is not None and address(cfg, name, unit) not in changed:
            metrics[unit] = read_json(unit_metrics_file(cfg, name, unit))
        else:
            todo.append((unit, arm))
    if len(todo) < len(units):
        logger.info(
            "stage %s: %d of %d units up to date in dvc.lock, skipped", name, len(units) - len(todo), len(units)
        )
    parallel = cfg.flow.parallel_arms
    for start in range(0, len(todo), parallel):
        batch = todo[start : start + parallel]
        futures = [
            run_arm_task.with_options(name=f"{name}/{unit}").submit(
                name, unit, arm, params, overrides, slot if parallel > 1 else None
            )
            for slot, (unit, arm) in enumerate(batch)
        ]
        for future in futures:
            metrics.update(future.result())
    if todo:
        if dvc:
            dvc.commit(*dict.fromkeys(address(cfg, name, unit) for unit, _ in todo))
        logger.info("stage %s done", name)
    return metrics


def _publish_comparison(cfg, evaluation: dict, promotion: dict) -> None:
    """The comparison as a table artifact, and a markdown artifact linking the MLflow parent run."""
    from prefect.artifacts import create_markdown_artifact

    create_table_artifact(
        comparison_rows(evaluation), key="s2d-comparison", description="eval accuracy and C2 KL per model"
    )
    lines = [f"**Promotion:** {'promoted' if promotion.get('promoted') else 'not promoted'}"]
    if experiment := experiments.describe(cfg):
        lines.insert(0, f"**{experiment}**\n")
    lines += [f"- {r}" for r in promotion.get("reasons", [])]

    pointer = where_to_open(cfg)
    if pointer:
        lines.append(f"\nThe parent run (params, the comparison chart, every model's run): {pointer}")
    create_markdown_artifact("\n".join(lines), key="s2d-result", description="promotion and the MLflow run")


class DvcState:
    """Keeps `dvc.lock` in step with a flow run, so `dvc repro` and a rerun of the flow skip the
    stages the flow finished (and the flow skips those `dvc repro` finished). Only when the run is
    the project's own `params.yaml` without overrides: other settings do not match what DVC tracks."""

    def __init__(self, root, logger):
        self.root, self.logger = root, logger

    @classmethod
    def for_run(cls, cfg, params: str, overrides: dict | None, logger) -> DvcState | None:
        from pathlib import Path

        root = cfg.root
        if not ((root / "dvc.yaml").exists() and (root / ".dvc").is_dir()):
            return None
        if overrides or Path(params).resolve() != (root / "params.yaml").resolve():
            logger.info(
                "not a params.yaml run (params %s, overrides %s): dvc.lock is left as it is", params, overrides
            )
            return None

        try:
            dvc_units.check(cfg)
        except S2DError as exc:  # dvc.yaml's per-arm stages are not this run's units
            logger.warning("dvc.lock is left as it is: %s", exc)
            return None
        return cls(root, logger)

    @contextlib.contextmanager
    def _repo(self):
        """The project's DVC repo, opened afresh for each call (its index then sees the stage just run), in
        this process: a `dvc` subprocess per call paid an interpreter start and DVC's imports each time.
        DVC resolves stages against the working directory, so the call runs in the project's; the flow
        calls it only between tasks, and from a project-root flow run the change is none."""
        from dvc.repo import Repo

        logging.getLogger("dvc").setLevel(logging.WARNING)  # as `dvc --quiet`: no line per lock file update
        with contextlib.chdir(self.root), Repo(str(self.root)) as repo:
            yield repo

    def up_to_date(self, stage: str) -> bool:
        return self.changed(stage) == set()

    def changed(self, target: str) -> set[str] | None:
        """The DVC stages of `target` (a stage, or a per-arm stage's group `name` for all its
        `name@unit` stages) that `dvc.lock` does not have up to date; None when DVC cannot say."""
        from dvc.exceptions import DvcException

        try:
            with self._repo() as repo:
                return set(repo.status(targets=[target]))
        except DvcException as exc:
            self.logger.warning("dvc status %s failed (the stage runs): %s", target, exc)
            return None

    def commit(self, *stages: str) -> None:
        from dvc.exceptions import DvcException

        try:
            with self._repo() as repo:
                for stage in stages:
                    repo.commit(stage, force=True)
        except DvcException as exc:  # the stage's outputs are fine; only DVC's record of them is missing
            self.logger.warning("dvc commit %s failed (dvc repro will rerun it): %s", " ".join(stages), exc)


def prefect_api_preflight(timeout_s: float = 5.0) -> None:
    """Fail in seconds, naming the URL, when PREFECT_API_URL points at a server that does not answer
    (instead of Prefect's retries failing the first task after the imports and client timeouts).
    Without PREFECT_API_URL Prefect starts a temporary local server, so there is nothing to check."""
    url = os.environ.get("PREFECT_API_URL", "").rstrip("/")
    if not url:
        return
    problem = health_problem(url, timeout_s)
    if problem is None:
        return
    raise S2DError(
        f"Prefect API {url} is unreachable ({problem}). Start it (`prefect server start`, or "
        "`docker compose -f infra/docker-compose.yml up -d`), point PREFECT_API_URL at a running server, "
        "or unset it to let Prefect start a temporary one. The pipeline also runs without Prefect: "
        "`dvc repro` or `s2d run`."
    )


def main(argv: list[str]) -> int:
    try:
        prefect_api_preflight()
    except S2DError as exc:
        print(f"s2d flow: error: {exc}", file=sys.stderr)
        return exc.exit_code
    if "--serve" in argv:
        s2d.serve(name="train")
    else:
        s2d()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
