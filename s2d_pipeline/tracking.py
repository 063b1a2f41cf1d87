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
import time
from collections.abc import Iterator

from s2d_pipeline import experiments
from s2d_pipeline.config import Config
from s2d_pipeline.errors import S2DError
from s2d_pipeline.gate import EVAL_SHA_TAG, GATE_METRIC, GATE_METRIC_TAG
from s2d_pipeline.io import is_main_process, sha256_file
from s2d_pipeline.layout import SPLITS, data_file
from s2d_pipeline.models import load_model, load_tokenizer
from s2d_pipeline.runtime import health_problem, tracking_uri

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
    out = {}
    for split in SPLITS:
        path = data_file(cfg, split)
        if path.is_file():  # a directory in its place is the stage's error to report, not a crash here
            stat = path.stat()
            out[split] = _file_hash(str(path), stat.st_size, stat.st_mtime_ns)
    return out


@functools.cache  # keyed by size and mtime: a rewritten file (prepare) is hashed again
def _file_hash(path: str, size: int, mtime_ns: int) -> str:
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
        **({"s2d.experiment": cfg.experiment} if cfg.experiment else {}),
    }
    tags.update({f"s2d.data_sha.{k}": v for k, v in record["data_sha256"].items()})
    tags.update({f"s2d.pkg.{k}": v for k, v in record["packages"].items()})
    return tags


def pipeline_key(cfg: Config) -> str:
    if os.environ.get("S2D_PIPELINE_RUN_ID"):
        return os.environ["S2D_PIPELINE_RUN_ID"]
    # Not the dirty flag: `dvc repro` rewrites a committed dvc.lock after each stage; nor the data
    # hashes: `prepare` writes the data. Either would split one pipeline's stages across parent runs
    # (the data hashes are still tags of every run).
    tags = {k: v for k, v in run_tags(cfg).items() if k != "s2d.git_dirty" and not k.startswith("s2d.data_sha.")}
    return hashlib.sha256(repr(sorted(tags.items())).encode()).hexdigest()[:16]


# MLflow's client retries a failed request 7 times with doubling waits (built for rate-limited hosted
# servers): against a tracking server that has died, a stage hung ~8 minutes before its traceback.
# Four retries after waits of 0, 2, 4 and 8 s (plus jitter) ride out a quick restart and fail a stage in
# under a minute. The request timeout stays MLflow's (120 s): proxied uploads of large models need it.
# Either variable set in the environment wins.
HTTP_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


def open_store(cfg: Config):
    """mlflow, pointed at the project's store and experiment; returns (mlflow, experiment id)."""
    import mlflow

    for key, value in HTTP_RETRY_DEFAULTS.items():
        os.environ.setdefault(key, value)
    mlflow.set_tracking_uri(tracking_uri(cfg))
    experiment = mlflow.set_experiment(cfg.tracking.experiment)
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != "custom_model_development":
        # The UI then opens on the runs table, not MLflow 3's GenAI overview (traces).
        mlflow.MlflowClient().set_experiment_tag(
            experiment.experiment_id, EXPERIMENT_KIND_TAG, "custom_model_development"
        )
    return mlflow, experiment.experiment_id


EXPERIMENT_KIND_TAG = "mlflow.experimentKind"


def pipeline_run_name(cfg: Config) -> str:
    """What the runs table shows for a pipeline run: profile, budget, seed and short commit; for an
    experiment, that it is one and what it changed."""
    name = f"{cfg.profile} · budget {cfg.budget} · seed {cfg.seed} · {git_commit(cfg)[:7]}"
    if cfg.experiment is None:
        return name
    changed = experiments.changes(cfg)
    return f"experiment · {name}" + (f" · {', '.join(changed)}" if changed else f" · {cfg.experiment}")


def pipeline_params(cfg: Config) -> dict[str, str]:
    """The settings a pipeline comparison is read against (params of the parent run)."""
    params = {
        "profile": cfg.profile,
        "task": cfg.task.name,
        "budget": cfg.budget,
        "seed": cfg.seed,
        "arms": ",".join(cfg.arms),
        "k": cfg.evaluate.k,
        "eval_problems": min(cfg.data.n_eval, cfg.evaluate.max_problems or cfg.data.n_eval),
        "params_hash": cfg.params_hash(),
    }
    for section in ("teacher_rl", "warmup", "opd", "student_rl", "grpo_direct"):
        params[f"{section}.steps"] = getattr(cfg, section).steps
    return {k: str(v) for k, v in params.items()}


def parent_run_id(cfg: Config) -> str:
    """The pipeline's parent run, created by the first stage and RUNNING until `promote` (the last
    stage) or a failed stage ends it; a stage rerun after a failure sets it RUNNING again."""
    mlflow, experiment_id = open_store(cfg)
    client = mlflow.MlflowClient()
    found = find_pipeline_run(cfg)
    if found is not None:
        if found.info.status != "RUNNING":
            client.update_run(found.info.run_id, status="RUNNING")
        return found.info.run_id
    tags = {PIPELINE_KEY_TAG: pipeline_key(cfg), **run_tags(cfg)}
    run = client.create_run(experiment_id, run_name=pipeline_run_name(cfg), tags=tags)
    from mlflow.entities import Param

    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in pipeline_params(cfg).items()])
    return run.info.run_id


def find_pipeline_run(cfg: Config):
    """The pipeline's parent run, or None before its first stage (nothing is created or changed)."""
    mlflow, experiment_id = open_store(cfg)
    found = mlflow.search_runs(
        [experiment_id],
        filter_string=f"tags.`{PIPELINE_KEY_TAG}` = '{pipeline_key(cfg)}'",
        max_results=1,
        output_format="list",
    )
    return found[0] if found else None


def where_to_open(cfg: Config) -> str | None:
    """How a person opens the pipeline's parent run in the MLflow UI: its page on a tracking
    server, or the `mlflow ui` command for a local store and the page it then serves. None when
    tracking is off or the run does not exist yet."""
    uri = tracking_uri(cfg)
    if not cfg.tracking.enabled or (uri.startswith("sqlite:///") and not os.path.exists(uri[len("sqlite:///") :])):
        return None  # (opening a missing store would create an empty one)
    run = find_pipeline_run(cfg)  # never `parent_run_id`: that would set an ended run RUNNING again
    if run is None:
        return None
    page = f"#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    if uri.startswith(("http://", "https://")):
        return f"MLflow run {run.info.run_id}: {uri.rstrip('/')}/{page}"
    return f"MLflow run {run.info.run_id}: `mlflow ui --backend-store-uri {uri}`, then http://127.0.0.1:5000/{page}"


def end_pipeline_run(cfg: Config, status: str = "FINISHED") -> None:
    """Mark the parent run ended (its duration is then the pipeline's)."""
    if not cfg.tracking.enabled:
        return
    mlflow, _ = open_store(cfg)
    mlflow.MlflowClient().set_terminated(parent_run_id(cfg), status=status)


@contextlib.contextmanager
def stage_run(cfg: Config, stage: str, arm: str | None = None, metrics: dict | None = None) -> Iterator:
    """A child run `stage/arm` under the pipeline's parent; yields the run (None when disabled, and on
    the non-main ranks of a multi-process stage)."""
    if not cfg.tracking.enabled or not is_main_process():
        yield None
        return
    with server_guard(cfg, stage):
        mlflow, _ = open_store(cfg)
        parent = parent_run_id(cfg)
        name = f"{stage}/{arm}" if arm else stage
        try:
            with mlflow.start_run(
                run_name=name,
                parent_run_id=parent,
                nested=True,
                tags={"s2d.stage": stage, "s2d.arm": arm or "", **run_tags(cfg)},
            ) as run:
                yield run
        except BaseException:
            if _store_answers(cfg):  # a server that went away is the error to report, not to retry
                mlflow.MlflowClient().set_terminated(parent, status="FAILED")
            raise


def _store_answers(cfg: Config) -> bool:
    uri = tracking_uri(cfg)
    return not uri.startswith(("http://", "https://")) or health_problem(uri, timeout_s=2.0) is None


@contextlib.contextmanager
def server_guard(cfg: Config, stage: str) -> Iterator[None]:
    """A stage that fails while the tracking server is down fails with the URL and what to do (the
    preflight only sees a server that is down before the stage starts); any other error passes."""
    try:
        yield
    except S2DError:
        raise
    except Exception as exc:
        uri = tracking_uri(cfg)
        problem = health_problem(uri) if uri.startswith(("http://", "https://")) else None
        if problem is None:
            raise
        raise S2DError(
            f"MLflow tracking server {uri} stopped answering during stage '{stage}' ({problem}). Restart it "
            f"(infra/README.md), then rerun this stage and the ones after it (`s2d {stage}`, ..., or `dvc repro`, "
            "which reruns only what is not up to date); the earlier stages' outputs are kept."
        ) from exc


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
def arm_run(cfg: Config, stage: str, arm: str, params: dict | None = None) -> Iterator:
    """A run for one arm, active while the arm runs (TRL's callback logs into it), with `params`."""
    if not cfg.tracking.enabled or not is_main_process():
        yield None
        return
    import mlflow

    active = mlflow.active_run()
    if active is not None and (active.data.tags.get("s2d.stage"), active.data.tags.get("s2d.arm")) == (stage, arm):
        # `s2d <stage> --arm`: the one-arm stage run is this arm's run.
        if params:
            mlflow.log_params({k: str(v) for k, v in params.items()})
        yield active
        return
    if active is None:  # stage called directly (tests, notebooks): attach to the pipeline
        with stage_run(cfg, stage, arm) as run:
            if params:
                mlflow.log_params({k: str(v) for k, v in params.items()})
            yield run
        return
    # A direct child of the pipeline run, not of the stage run: one expansion in the runs table
    # shows every arm of every stage side by side.
    tags = {"s2d.stage": stage, "s2d.arm": arm, "mlflow.parentRunId": parent_run_id(cfg)}
    with mlflow.start_run(run_name=f"{stage}/{arm}", nested=True, tags=tags) as run:
        mlflow.set_tag("mlflow.parentRunId", tags["mlflow.parentRunId"])
        if params:
            mlflow.log_params({k: str(v) for k, v in params.items()})
        yield run


def register_student(cfg: Config, model_dir, arm: str, gate_value: float, description: str = "") -> str:
    """Log an arm's final student (transformers flavor) into the active run, register it under
    `tracking.registered_model` with the comparison as its description and a handful of tags (the
    full provenance is the run's `provenance.json`), and point alias `challenger` at it."""
    import mlflow
    from mlflow import MlflowClient

    name = cfg.tracking.registered_model
    record = provenance(cfg)
    mlflow.log_dict(record, "provenance.json")
    from huggingface_hub import ModelCard

    info = mlflow.transformers.log_model(
        transformers_model={"model": load_model(model_dir, cfg), "tokenizer": load_tokenizer(model_dir, cfg)},
        name="student",
        task="text-generation",
        registered_model_name=name,
        pip_requirements=_pinned_requirements(),
        # Our own card: without one mlflow asks the hub for the base model's (a warning offline).
        model_card=ModelCard(f"# s2d student (arm {arm})\n\n{description}"),
    )
    version = str(info.registered_model_version)
    client = MlflowClient()
    if description:
        client.update_model_version(name, version, description=description)
    tags = {
        "s2d.arm": arm,
        GATE_METRIC_TAG: str(gate_value),
        "s2d.eval.gate_metric_name": f"{GATE_METRIC} (k = {cfg.evaluate.k})",
        EVAL_SHA_TAG: record["data_sha256"].get("eval", ""),
        "s2d.git_commit": record["git_commit"],
        "s2d.params_hash": record["params_hash"],
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.set_registered_model_alias(name, "challenger", version)
    return version


def log_to_pipeline_run(cfg: Config, metrics: dict[str, float], figures: list, table: list[dict]) -> None:
    """Headline metrics, chart images and the comparison table on the pipeline's parent run."""
    if not cfg.tracking.enabled or not is_main_process():
        return
    import PIL.Image
    from mlflow import MlflowClient

    open_store(cfg)
    client, parent = MlflowClient(), parent_run_id(cfg)
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client.log_batch(parent, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
    for path in figures:
        if path.exists():
            client.log_artifact(parent, str(path), artifact_path="charts")
            # Also as a keyed image: MLflow's Charts view shows those (an "Image grid"), not plain artifacts,
            # so every model's bars are side by side where the run's metrics are (one metric per chart there).
            with PIL.Image.open(path) as image:
                client.log_image(parent, image.convert("RGB"), key=path.stem, step=0)
    columns = list(table[0]) if table else []
    client.log_table(parent, data={c: [row[c] for row in table] for c in columns}, artifact_file="comparison.json")


def _pinned_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in ("torch", "transformers", "safetensors")]


def preflight(cfg: Config, timeout_s: float = 5.0) -> None:
    """Fail before any compute when the configured MLflow server cannot be reached."""
    uri = tracking_uri(cfg)
    if not cfg.tracking.enabled or not uri.startswith(("http://", "https://")):
        return

    problem = health_problem(uri, timeout_s)
    if problem is None:
        return
    raise S2DError(
        f"MLflow tracking server {uri} is unreachable ({problem}). Start it (README: 'MLflow'), fix "
        "key 'tracking.uri' (or S2D_TRACKING_URI), or run without a server: tracking.uri: sqlite:///mlflow.db"
    )
