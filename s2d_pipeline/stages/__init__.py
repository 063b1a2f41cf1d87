"""Pipeline stages: each module has `run(cfg) -> dict` (its metrics) and is one DVC stage.

`PIPELINE` is the one definition of the stage list and its order; the CLI, the Prefect flow,
`dvc.yaml` (checked by a test), the benchmarks and the tests all read it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StageInfo:
    name: str  # also the module under s2d_pipeline.stages and the DVC stage name
    trains: bool = False  # runs a trainer: relaunched under `accelerate launch` with runtime.accelerate_config
    transient_failures: bool = False  # may fail for reasons outside the user's data (lost worker, OOM): retried
    # Opens an MLflow run. The data checks and the ledger do not: their reports are DVC outputs, and
    # importing mlflow and opening the store is most of such a stage's wall time.
    tracked: bool = True
    # loads the models (checked at start); validate, allocate and promote read data and metrics only
    uses_models: bool = True


PIPELINE: tuple[StageInfo, ...] = (
    StageInfo("prepare"),
    StageInfo("validate", tracked=False, uses_models=False),
    StageInfo("allocate", tracked=False, uses_models=False),
    StageInfo("teacher_rl", trains=True, transient_failures=True),
    StageInfo("rollouts", transient_failures=True),
    StageInfo("warmup", trains=True, transient_failures=True),
    StageInfo("opd", trains=True, transient_failures=True),
    StageInfo("student_rl", trains=True, transient_failures=True),
    StageInfo("evaluate", transient_failures=True),
    StageInfo("promote", uses_models=False),
)
STAGES: tuple[str, ...] = tuple(s.name for s in PIPELINE)
STAGE_INFO: dict[str, StageInfo] = {s.name: s for s in PIPELINE}


def stages_through(last: str) -> tuple[str, ...]:
    """The stages up to and including `last`, in order."""
    return STAGES[: STAGES.index(last) + 1]
