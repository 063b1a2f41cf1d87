"""MLflow tracking: one store for the project, a parent run per pipeline run, a child per stage/arm.

Every stage runs in its own process (DVC) or task (Prefect), so the parent run is found by a key:
`S2D_PIPELINE_RUN_ID` when a driver (the Prefect flow) sets it, else a hash of the params, the git
commit and the data. Children attach to it with `parent_run_id`; TRL's MLflow callback logs into the
active child run without ending it. mlflow is imported inside functions (3 s).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import subprocess
from collections.abc import Iterator

from s2d_pipeline.config import Config

PIPELINE_KEY_TAG = "s2d.pipeline_key"


def git_commit(cfg: Config) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=cfg.root, capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def data_hashes(cfg: Config) -> dict[str, str]:
    from s2d_pipeline.layout import SPLITS, data_file

    out = {}
    for split in SPLITS:
        path = data_file(cfg, split)
        if path.is_file():  # a directory in its place is the stage's error to report, not a crash here
            stat = path.stat()
            out[split] = _file_hash(str(path), stat.st_size, stat.st_mtime_ns)
    return out


@functools.cache  # keyed by size and mtime: a rewritten file (prepare) is hashed again
def _file_hash(path: str, size: int, mtime_ns: int) -> str:
    from s2d_pipeline.io import sha256_file

    return sha256_file(path)[:16]


RECORDED_PACKAGES = (
    "torch",
    "transformers",
    "trl",
    "accelerate",
    "datasets",
    "tokenizers",
    "safetensors",
    "math-verify",
    "great-expectations",
    "mlflow",
    "prefect",
    "dvc",
    "vllm",
    "deepspeed",
)


def package_versions() -> dict[str, str]:
    return dict(_package_versions())


@functools.cache
def _package_versions() -> dict[str, str]:
    """Versions of the packages that decide a run's numbers (absent ones omitted)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in RECORDED_PACKAGES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def provenance(cfg: Config) -> dict:
    """What reproduces a run: commit (and whether the tree was dirty), params hash, seed, data hashes
    and package versions. Kept in `metrics/evaluate.json` and as tags on every MLflow run."""
    return {
        "git_commit": git_commit(cfg),
        "git_dirty": git_dirty(cfg),
        "params_hash": cfg.params_hash(),
        "seed": cfg.seed,
        "budget": cfg.budget,
        "profile": cfg.profile,
        "data_sha256": data_hashes(cfg),
        "packages": package_versions(),
    }


def git_dirty(cfg: Config) -> bool | None:
    """Read every time (one `git status`, milliseconds): the tree can change during a run."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cfg.root,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return bool(out.stdout.strip()) if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def run_tags(cfg: Config) -> dict[str, str]:
    record = provenance(cfg)
    tags = {
        "s2d.git_commit": record["git_commit"],
        "s2d.git_dirty": str(record["git_dirty"]),
        "s2d.params_hash": record["params_hash"],
        "s2d.budget": str(cfg.budget),
        "s2d.seed": str(cfg.seed),
        "s2d.profile": cfg.profile,
    }
    tags.update({f"s2d.data_sha.{k}": v for k, v in record["data_sha256"].items()})
    tags.update({f"s2d.pkg.{k}": v for k, v in record["packages"].items()})
    return tags


def pipeline_key(cfg: Config) -> str:
    if os.environ.get("S2D_PIPELINE_RUN_ID"):
        return os.environ["S2D_PIPELINE_RUN_ID"]
    # Not the dirty flag: `dvc repro` rewrites a committed dvc.lock after each stage, which would
    # split one pipeline's stages across parent runs.
    tags = {k: v for k, v in run_tags(cfg).items() if k != "s2d.git_dirty"}
    return hashlib.sha256(repr(sorted(tags.items())).encode()).hexdigest()[:16]


def open_store(cfg: Config):
    """mlflow, pointed at the project's store and experiment; returns (mlflow, experiment id)."""
    import mlflow

    from s2d_pipeline.runtime import tracking_uri

    mlflow.set_tracking_uri(tracking_uri(cfg))
    experiment = mlflow.set_experiment(cfg.tracking.experiment)
    return mlflow, experiment.experiment_id


def parent_run_id(cfg: Config) -> str:
    """The pipeline's parent run (created on first use, tagged for reproducibility)."""
    mlflow, experiment_id = open_store(cfg)
    key = pipeline_key(cfg)
    found = mlflow.search_runs(
        [experiment_id], filter_string=f"tags.`{PIPELINE_KEY_TAG}` = '{key}'", max_results=1, output_format="list"
    )
    if found:
        return found[0].info.run_id
    client = mlflow.MlflowClient()
    run = client.create_run(
        experiment_id, run_name=f"pipeline-{key[:8]}", tags={PIPELINE_KEY_TAG: key, **run_tags(cfg)}
    )
    client.log_param(run.info.run_id, "params_hash", cfg.params_hash())
    client.set_terminated(run.info.run_id)
    return run.info.run_id


@contextlib.contextmanager
def stage_run(cfg: Config, stage: str, arm: str | None = None, metrics: dict | None = None) -> Iterator:
    """A child run `stage/arm` under the pipeline's parent; yields the run (None when disabled, and on
    the non-main ranks of a multi-process stage)."""
    from s2d_pipeline.io import is_main_process

    if not cfg.tracking.enabled or not is_main_process():
        yield None
        return
    mlflow, _ = open_store(cfg)
    parent = parent_run_id(cfg)
    name = f"{stage}/{arm}" if arm else stage
    with mlflow.start_run(
        run_name=name,
        parent_run_id=parent,
        nested=True,
        tags={"s2d.stage": stage, "s2d.arm": arm or "", **run_tags(cfg)},
    ) as run:
        yield run


def log_flat_metrics(metrics: dict, prefix: str = "") -> None:
    """Log the numeric leaves of a nested metrics dict to the active run."""
    import mlflow

    flat: dict[str, float] = {}

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{path}.{k}" if path else str(k))
        elif isinstance(node, (int, float)) and not isinstance(node, bool):
            flat[path.replace("@", "_at_")] = float(node)

    walk(metrics, prefix)
    if flat:
        mlflow.log_metrics(flat)


@contextlib.contextmanager
def arm_run(cfg: Config, stage: str, arm: str) -> Iterator:
    """A run for one arm nested under the active stage run (TRL's callback logs into it)."""
    from s2d_pipeline.io import is_main_process

    if not cfg.tracking.enabled or not is_main_process():
        yield None
        return
    import mlflow

    if mlflow.active_run() is None:  # stage called directly (tests, notebooks): attach to the pipeline
        with stage_run(cfg, stage, arm) as run:
            yield run
        return
    with mlflow.start_run(run_name=f"{stage}/{arm}", nested=True, tags={"s2d.stage": stage, "s2d.arm": arm}) as run:
        yield run


def register_student(cfg: Config, model_dir, arm: str, gate_metric: str, gate_value: float) -> str:
    """Log an arm's final student (transformers flavor) into the active run, register it under
    `tracking.registered_model`, tag it with its eval result and point alias `challenger` at it."""
    import mlflow
    from mlflow import MlflowClient

    from s2d_pipeline.models import load_model, load_tokenizer

    name = cfg.tracking.registered_model
    info = mlflow.transformers.log_model(
        transformers_model={"model": load_model(model_dir, cfg), "tokenizer": load_tokenizer(model_dir, cfg)},
        name="student",
        task="text-generation",
        registered_model_name=name,
        pip_requirements=_pinned_requirements(),
    )
    version = str(info.registered_model_version)
    client = MlflowClient()
    tags = {
        "s2d.arm": arm,
        "s2d.eval.gate_metric_name": gate_metric,
        "s2d.eval.gate_metric": str(gate_value),
        **run_tags(cfg),
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.set_registered_model_alias(name, "challenger", version)
    return version


def _pinned_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in ("torch", "transformers", "safetensors")]


def preflight(cfg: Config, timeout_s: float = 5.0) -> None:
    """Fail before any compute when the configured MLflow server cannot be reached."""
    from s2d_pipeline.runtime import tracking_uri

    uri = tracking_uri(cfg)
    if not cfg.tracking.enabled or not uri.startswith(("http://", "https://")):
        return
    from s2d_pipeline.errors import S2DError
    from s2d_pipeline.runtime import health_problem

    problem = health_problem(uri, timeout_s)
    if problem is None:
        return
    raise S2DError(
        f"MLflow tracking server {uri} is unreachable ({problem}). Start it (README: 'MLflow'), fix "
        "key 'tracking.uri' (or S2D_TRACKING_URI), or run without a server: tracking.uri: sqlite:///mlflow.db"
    )
