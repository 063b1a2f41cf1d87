"""What a run reads from disk, checked before it starts: the models and data files the params point
at, and a task that can generate the data it is asked to generate. s2d never downloads, so a missing
input is the user's to fix: each problem names its key, and all of them are reported at once
(ConfigError, exit status 2) before anything trains.

`config` validates the settings themselves; these checks need the filesystem, the model loaders
(`models.resolve_gguf`) and the task adapters, so they sit above all three. Every driver loads its
params through `load_checked_config`.
"""

from __future__ import annotations

import re
from pathlib import Path

from s2d_pipeline.config import Config, ModelSpec, load_config, params_source
from s2d_pipeline.errors import ConfigError
from s2d_pipeline.experiments import keep_apart
from s2d_pipeline.layout import resolve_model_ref
from s2d_pipeline.models import resolve_gguf
from s2d_pipeline.tasks import get_task


def load_checked_config(
    params: str | Path | None = None,
    overrides: dict | None = None,
    *,
    root: str | Path | None = None,
    models: bool = True,
    apart: bool = True,
) -> Config:
    """`load_config`, then `check_inputs_exist` (blaming the params file, or the overrides when there
    are any). `models=False` skips the model checks (stages that read only data: validate, allocate,
    promote). A run that is an experiment gets its own root (`experiments.keep_apart`)."""
    cfg = load_config(params, overrides, root=root)
    if apart:  # an experiment's outputs under its own root (not for `s2d dvc-units`: DVC runs params.yaml)
        cfg = keep_apart(cfg)
    check_inputs_exist(cfg, params_source(params, overrides), models=models)
    return cfg


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_path(ref: str, root: Path) -> bool:
    """True when a model reference can only be a local path, not a hub id (`org/name`): absolute,
    relative with `.`/`~`, no or several slashes, or under a directory that exists in the project."""
    if Path(ref).is_absolute() or ref.startswith((".", "~")) or "\\" in ref or not _HUB_ID.match(ref):
        return True
    return (root / ref.split("/", 1)[0]).is_dir()


def missing_model_problem(key: str, ref: str, root: Path, role: str) -> str:
    """Why `ref` is not a usable model, and what to do: a path names what is missing there; only a
    reference that can be a hub id gets the hint to fetch it (s2d never downloads)."""
    p = Path(ref).expanduser()
    p = p if p.is_absolute() else root / p
    if p.is_dir():
        return (
            f"key '{key}': {p} has no config.json, so it is not a Transformers model directory "
            "(save the model there with `save_pretrained`, or point the key at the directory that has it)"
        )
    if p.exists():
        return f"key '{key}': {p} is a file; point the key at the model's directory (config.json, *.safetensors)"
    if looks_like_path(ref, root):
        return (
            f"key '{key}': the path '{ref}' does not exist ({p}); point the key at a local model directory "
            "(s2d never downloads)"
        )
    return (
        f"key '{key}': '{ref}' is neither a local model directory ({p} does not exist) nor a model in the "
        f"local Hugging Face cache. s2d never downloads: fetch it yourself (e.g. `hf download {ref} "
        f"--local-dir models/{role}`) and point the key at that directory"
    )


def check_inputs_exist(cfg: Config, source: str = "params", *, models: bool = True) -> None:
    """Fail at start, with a clear message, when a real profile's models or data are missing.
    `models=False` skips the model checks (stages that read only data: validate, allocate, promote)."""
    problems: list[str] = []
    if models and cfg.models.source == "path":
        for role in ("teacher", "student"):
            spec: ModelSpec = getattr(cfg.models, role)
            if not spec.path:
                problems.append(f"key 'models.{role}.path' is required when models.source is 'path'")
            elif resolve_model_ref(spec.path, cfg.root) is None:
                problems.append(missing_model_problem(f"models.{role}.path", spec.path, cfg.root, role))
    if models and cfg.models.source == "gguf":
        if not cfg.models.teacher.gguf:
            problems.append("key 'models.teacher.gguf' is required when models.source is 'gguf'")
        else:
            try:
                resolve_gguf(cfg.models.teacher.gguf, cfg.root)
            except ConfigError as exc:
                problems.append(str(exc))
        if not cfg.models.student.keep_layers:
            problems.append(
                "key 'models.student.keep_layers' is required when models.source is 'gguf' "
                "(the teacher layers the student is cut from)"
            )
    if cfg.data.split_from:
        if cfg.data.generate:
            problems.append("keys 'data.split_from' and 'data.generate' exclude each other: set data.generate: false")
        elif cfg.path(cfg.data.split_from).is_dir():
            problems.append(
                f"key 'data.split_from': '{cfg.data.split_from}' is a directory; point the key at the .jsonl file itself"
            )
        elif not cfg.path(cfg.data.split_from).is_file():
            problems.append(f"key 'data.split_from': file '{cfg.data.split_from}' does not exist")
    elif not cfg.data.generate:
        for key in ("labels", "prompts", "eval"):
            rel = getattr(cfg.data, key)
            if not cfg.path(rel).exists():
                problems.append(f"key 'data.{key}': file '{rel}' does not exist")
            elif not cfg.path(rel).is_file():
                problems.append(f"key 'data.{key}': '{rel}' is a directory; point the key at the .jsonl file itself")
    if cfg.data.generate and not get_task(cfg.task).can_generate:
        problems.append(
            f"key 'data.generate' is true but task '{cfg.task.name}' has no generator: "
            "set data.generate: false and point data.labels/prompts/eval at your files"
        )
    if problems:
        raise ConfigError(f"{source}: cannot start:\n" + "\n".join(f"  - {p}" for p in problems))
