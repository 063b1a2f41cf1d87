"""The Prefect flow `s2d`: the same stage functions as `s2d <stage>` and `dvc repro`, orchestrated.

No stage logic lives here: each task calls `s2d_pipeline.cli.run_stage`. Training stages retry
with backoff (a worker lost mid-stage reruns it; outputs are written atomically, so a retry never
sees a half-written model). The flow publishes a progress artifact while it runs and the method
comparison as a table artifact at the end, and tags the MLflow parent run with its flow-run id.

    # one machine, no server needed (Prefect starts a temporary one):
    python -m flows.s2d
    # a served deployment on this machine:
    python -m flows.s2d --serve        # then: prefect deployment run s2d/train
    # a worker pool (see prefect.yaml and README "Orchestration"):
    prefect deploy --all && prefect worker start -p s2d-process
    prefect deployment run s2d/train --param overrides='{"budget": 32}' --watch
"""

from __future__ import annotations

import os
import sys

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.runtime import flow_run


@task(name="stage", retries=2, retry_delay_seconds=[10, 60], task_run_name="{name}")
def run_stage_task(name: str, params: str, overrides: dict | None) -> dict:
    from s2d_pipeline.cli import run_stage
    from s2d_pipeline.config import load_config

    cfg = load_config(params, overrides)
    return run_stage(name, cfg)


@task(name="check", task_run_name="{name}")
def run_check_task(name: str, params: str, overrides: dict | None) -> dict:
    """Validation-type stages: a failure is the user's data, so never retried."""
    return run_stage_task.fn(name, params, overrides)


@flow(name="s2d")
def s2d(params: str = "params.yaml", overrides: dict | None = None) -> dict:
    """Run the whole pipeline; returns the evaluate stage's metrics."""
    from s2d_pipeline.config import load_config
    from s2d_pipeline.stages import PIPELINE

    logger = get_run_logger()
    from s2d_pipeline.tracking import preflight

    preflight(load_config(params, overrides))  # fail fast on bad params or tracking, before any task
    run_id = flow_run.get_id()
    if run_id:
        os.environ["S2D_PIPELINE_RUN_ID"] = f"prefect-{run_id}"
    progress = create_progress_artifact(0.0, key="s2d-progress", description="s2d pipeline stages done")
    results: dict = {}
    for i, stage in enumerate(PIPELINE):
        name = stage.name
        # A stage that can fail for reasons outside the user's data (lost worker, OOM) is retried.
        runner = run_stage_task if stage.transient_failures else run_check_task
        results[name] = runner(name, params, overrides)
        update_progress_artifact(progress, 100.0 * (i + 1) / len(PIPELINE))
        logger.info("stage %s done", name)
    evaluation = results.get("evaluate", {})
    if evaluation:
        rows = [
            {"model": name, **{k: v for k, v in m.items() if not isinstance(v, dict)}}
            for name, m in {**evaluation["arms"], **evaluation["teachers"]}.items()
        ]
        create_table_artifact(rows, key="s2d-comparison", description="eval accuracy per arm and teacher")
    return evaluation


def prefect_api_preflight(timeout_s: float = 5.0) -> None:
    """Fail in seconds, naming the URL, when PREFECT_API_URL points at a server that does not answer
    (instead of Prefect's retries failing the first task after the imports and client timeouts).
    Without PREFECT_API_URL Prefect starts a temporary local server, so there is nothing to check."""
    from s2d_pipeline.errors import S2DError
    from s2d_pipeline.runtime import health_problem

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
    from s2d_pipeline.errors import S2DError

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
