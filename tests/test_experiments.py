"""Experiments are kept apart from the default run: a run whose settings differ from the project's
params.yaml writes under experiments/<name>/, registers elsewhere, and says what it changed."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

from s2d_pipeline.config import load_config
from s2d_pipeline.experiments import changes, describe, keep_apart
from s2d_pipeline.inputs import load_checked_config


def test_the_projects_own_params_are_the_default_run(project):
    cfg = keep_apart(load_config(project / "params.yaml", root=project))
    assert cfg.experiment is None and cfg.artifacts_dir == "artifacts" and cfg.data.labels == "data/labels.jsonl"
    assert cfg.tracking.registered_model == "s2d-student" and describe(cfg) is None


def test_where_and_how_a_run_executes_does_not_make_an_experiment(project):
    how = {"flow": {"parallel_arms": 2}, "runtime": {"torch_threads": 1}, "tracking": {"enabled": False}}
    assert keep_apart(load_config(project / "params.yaml", how, root=project)).experiment is None


def test_a_runtime_dtype_changes_what_a_run_computes_so_it_is_an_experiment(project):
    """bf16 training or another inference dtype changes the numbers: its outputs must not replace the
    float32 run's."""
    names = set()
    for dtype in ({"bf16": True}, {"inference_dtype": "float32"}):
        cfg = keep_apart(load_config(project / "params.yaml", {"runtime": dtype}, root=project))
        assert cfg.experiment is not None and changes(cfg) == [
            f"runtime.{k}={json.dumps(v)}" for k, v in dtype.items()
        ]
        names.add(cfg.experiment)
    assert len(names) == 2


def test_an_override_moves_every_output_and_the_registry_and_names_the_change(project):
    base = load_config(project / "params.yaml", root=project)
    cfg = keep_apart(load_config(project / "params.yaml", {"budget": 16, "teacher_rl": {"steps": 3}}, root=project))
    name = cfg.experiment
    assert name.startswith(f"{base.profile}-b16-s{base.seed}-") and len(name.rsplit("-", 1)[1]) == 8
    root = f"experiments/{name}/"
    assert cfg.artifacts_dir == root + "artifacts" and cfg.metrics_dir == root + "metrics"
    assert cfg.checkpoints_dir == root + "checkpoints"
    assert (cfg.data.labels, cfg.data.prompts, cfg.data.eval) == tuple(
        root + p for p in ("data/labels.jsonl", "data/prompts.jsonl", "data/eval.jsonl")
    )
    assert cfg.tracking.registered_model == "s2d-student-experiments"
    assert changes(cfg) == ["budget=16", "teacher_rl.steps=3"]
    assert (
        describe(cfg)
        == f"experiment {name} (differs from params.yaml: budget=16, teacher_rl.steps=3): outputs under {root}"
    )
    # Another change, another experiment; the same change, the same one.
    other = keep_apart(load_config(project / "params.yaml", {"budget": 16}, root=project))
    again = keep_apart(load_config(project / "params.yaml", {"budget": 16, "teacher_rl": {"steps": 3}}, root=project))
    assert other.experiment != name and again.experiment == name


def test_a_childs_resolved_params_stay_in_the_same_experiment(project, tmp_path):
    """What `flow.parallel_arms` and `accelerate launch` give a child process: the resolved config as
    a params file. Loading it through the door again changes nothing."""
    cfg = load_checked_config(project / "params.yaml", {"budget": 16}, root=project, models=False)
    resolved = tmp_path / "resolved.yaml"
    resolved.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude={"root"})))
    child = load_checked_config(resolved, root=project, models=False)
    assert child.model_dump() == cfg.model_dump() and keep_apart(child).model_dump() == cfg.model_dump()


def test_user_data_is_read_where_it_is(project):
    """Data the user supplies (not generated or split by prepare) is an input, never moved."""
    cfg = keep_apart(load_config(project / "params.yaml", {"budget": 16, "data": {"generate": False}}, root=project))
    assert cfg.experiment and cfg.data.labels == "data/labels.jsonl"


def test_a_named_experiment_goes_under_its_name(project):
    cfg = keep_apart(load_config(project / "params.yaml", {"experiment": "lr-sweep-1"}, root=project))
    assert cfg.experiment == "lr-sweep-1" and cfg.metrics_dir == "experiments/lr-sweep-1/metrics"


def test_the_cli_runs_an_override_in_its_experiment_and_leaves_the_default_alone(project):
    from tests.helpers import MICRO

    params = yaml.safe_load((project / "params.yaml").read_text())
    from s2d_pipeline.config import deep_merge

    (project / "params.yaml").write_text(yaml.safe_dump(deep_merge(params, {**MICRO, "tracking": {"enabled": False}})))
    s2d = [sys.executable, "-m", "s2d_pipeline.cli"]
    run = lambda *a: subprocess.run([*s2d, *a], cwd=project, capture_output=True, text=True, timeout=600)  # noqa: E731
    assert run("prepare").returncode == 0
    before = _default_files(project)
    done = run("-S", "budget=8", "prepare")
    assert done.returncode == 0, done.stderr[-2000:]
    (line,) = [x for x in done.stdout.splitlines() if x.startswith("experiment ")]
    assert "(differs from params.yaml: budget=8)" in line
    name = line.split()[1]
    assert (project / "experiments" / name / "data" / "labels.jsonl").is_file()
    assert _default_files(project) == before  # the default's data, models and metrics, byte for byte
    # The experiment's report reads its own root.
    report = run("-S", "budget=8", "report")
    assert report.returncode == 2 and f"experiments/{name}/artifacts/evaluate/comparison.md" in report.stderr


def _default_files(project) -> dict:
    import hashlib

    return {
        str(p.relative_to(project)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(project.rglob("*"))
        if p.is_file() and "experiments" not in p.relative_to(project).parts
    }
