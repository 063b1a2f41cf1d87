"""Experiments, kept apart from the default run.

The default run is the project's own `params.yaml`, as `make run` and `dvc repro` run it. A run
whose settings differ from it in what they compute - overrides (`s2d -S`, a flow run's `overrides`),
or another params file (a profile) - is an experiment, through whichever door it comes: its data,
models, metrics and checkpoints go under `experiments/<name>/`, its students are registered as
`<registered_model>-experiments` (so the default's `champion` and `challenger` never move), and its
MLflow parent run and Prefect flow run are named for what it changed. `dvc exp run -S` edits
params.yaml in a workspace of its own, so DVC keeps its experiments apart itself.

    s2d -S budget=16 run          # experiments/tiny-b16-s0-<hash>/
    s2d -S budget=16 report       # that experiment's comparison
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from s2d_pipeline.config import Config, load_config
from s2d_pipeline.errors import ConfigError

EXPERIMENTS_DIR = "experiments"
# Where and how a run executes, not what it computes: a run that changes only these is not an experiment.
WHERE_AND_HOW = ("experiment", "artifacts_dir", "metrics_dir", "checkpoints_dir", "tracking", "runtime", "flow", "dvc")
# Except the runtime settings that change the numbers a run computes (its dtypes), where not at their defaults.
RUNTIME_NUMERICS = ("bf16", "inference_dtype")
REGISTRY_SUFFIX = "-experiments"


def _writes_its_data(cfg: Config) -> bool:
    """True when prepare writes the data files (generated or split from one file): outputs, not inputs."""
    return bool(cfg.data.generate or cfg.data.split_from)


def _settings(cfg: Config) -> dict:
    """The settings that decide what a run computes."""
    settings = cfg.model_dump(mode="json", exclude={"root", *WHERE_AND_HOW})
    fields = type(cfg.runtime).model_fields
    if numerics := {k: v for k in RUNTIME_NUMERICS if (v := getattr(cfg.runtime, k)) != fields[k].default}:
        settings["runtime"] = numerics
    if _writes_its_data(cfg):
        for split in ("labels", "prompts", "eval"):
            del settings["data"][split]
    return settings


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def project_default(cfg: Config) -> Config | None:
    """The project's own params.yaml, loaded; None where there is none (or it is not valid)."""
    path = cfg.root / "params.yaml"
    if not path.is_file():
        return None
    try:
        return load_config(path, root=cfg.root)
    except ConfigError:
        return None


def changes(cfg: Config, default: Config | None = None) -> list[str]:
    """`key=value` for each setting that differs from the project's params.yaml."""
    default = default or project_default(cfg)
    if default is None:
        return []
    mine, theirs = _flat(_settings(cfg)), _flat(_settings(default))
    return [
        f"{k}={json.dumps(mine.get(k))}" for k in sorted(mine.keys() | theirs.keys()) if mine.get(k) != theirs.get(k)
    ]


def experiment_name(cfg: Config) -> str:
    """`<profile>-b<budget>-s<seed>-<hash of the settings that count>`."""
    digest = hashlib.sha256(json.dumps(_settings(cfg), sort_keys=True).encode()).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9_.-]', '-', cfg.profile)}-b{cfg.budget}-s{cfg.seed}-{digest}"


def experiment_root(name: str) -> Path:
    return Path(EXPERIMENTS_DIR) / name


def keep_apart(cfg: Config) -> Config:
    """The run's config with its outputs under its experiment's root when it is one (a name set in
    `experiment`, or settings that differ from params.yaml); the config as it is otherwise. Applying
    it again, or to the resolved config a child process gets, changes nothing."""
    if cfg.experiment is None:
        default = project_default(cfg)
        if default is None or _settings(cfg) == _settings(default):
            return cfg
        name = experiment_name(cfg)
    else:
        name = cfg.experiment
        if Path(cfg.metrics_dir).parts[:2] == experiment_root(name).parts:
            return cfg  # already moved
    root = experiment_root(name)

    def under(path: str) -> str:
        return path if Path(path).is_absolute() else str(root / path)

    update: dict = {
        "experiment": name,
        **{k: under(getattr(cfg, k)) for k in ("artifacts_dir", "metrics_dir", "checkpoints_dir")},
    }
    if _writes_its_data(cfg):  # the experiment's own
        update["data"] = cfg.data.model_copy(
            update={k: under(getattr(cfg.data, k)) for k in ("labels", "prompts", "eval")}
        )
    if not cfg.tracking.registered_model.endswith(REGISTRY_SUFFIX):
        update["tracking"] = cfg.tracking.model_copy(
            update={"registered_model": cfg.tracking.registered_model + REGISTRY_SUFFIX}
        )
    return cfg.model_copy(update=update)


def describe(cfg: Config) -> str | None:
    """One line for the console and the flow's log: which experiment this is and where its outputs go."""
    if cfg.experiment is None:
        return None
    changed = changes(cfg)
    what = f" (differs from params.yaml: {', '.join(changed)})" if changed else ""
    return f"experiment {cfg.experiment}{what}: outputs under {experiment_root(cfg.experiment)}/"
