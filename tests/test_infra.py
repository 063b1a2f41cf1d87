"""infra/: the compose stack, images, Kubernetes template and accelerate configs are consistent with
each other and with the project; the multi-process path of the training stages works end to end with
one CPU process (no multi-GPU machine here)."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest
import yaml

from s2d_pipeline.io import read_unit_metrics
from tests.helpers import REPO, STAGE_MICRO, write_one_cpu_accelerate

INFRA = REPO / "infra"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((INFRA / "docker-compose.yml").read_text())


def _env_example(name: str) -> set[str]:
    return {
        line.split("=", 1)[0] for line in (INFRA / name).read_text().splitlines() if line and not line.startswith("#")
    }


def test_compose_services_and_variables(compose):
    assert set(compose["services"]) >= {"postgres", "minio", "minio-buckets", "prefect-server", "mlflow", "worker"}
    text = (INFRA / "docker-compose.yml").read_text()
    used = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", text))
    assert used <= _env_example(".env.example"), used - _env_example(".env.example")


def test_compose_binds_localhost_and_takes_secrets_from_env(compose):
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert port.startswith("${BIND_ADDRESS:-127.0.0.1}:"), (name, port)
        for key, value in (service.get("environment") or {}).items():
            if "PASSWORD" in key or "SECRET" in key:
                assert str(value).startswith("${"), (name, key)
    assert "127.0.0.1" in [
        line.split("=", 1)[1]
        for line in (INFRA / ".env.example").read_text().splitlines()
        if line.startswith("BIND_ADDRESS=")
    ]
    ignored = (REPO / ".gitignore").read_text().splitlines()
    assert "/infra/.env" in ignored and "/infra/.env.k8s" in ignored


def test_compose_builds_and_wiring_exist(compose):
    services = compose["services"]
    for name, service in services.items():
        if "build" in service:
            dockerfile = (INFRA / service["build"]["context"] / service["build"]["dockerfile"]).resolve()
            assert dockerfile.is_file(), (name, dockerfile)
        for dep in service.get("depends_on", {}):
            assert dep in services, (name, dep)
    worker = services["worker"]
    assert worker["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert worker["environment"]["S2D_TRACKING_URI"] == "http://mlflow:5000"
    assert "5000" in services["mlflow"]["command"] and "4200" in services["prefect-server"]["command"]
    assert (INFRA / "postgres" / "init.sql").read_text().count("CREATE DATABASE") == 2


@pytest.mark.parametrize("dockerfile", ["worker.Dockerfile", "worker-gpu.Dockerfile", "mlflow.Dockerfile"])
def test_dockerfiles_copy_what_exists(dockerfile):
    for line in (INFRA / dockerfile).read_text().splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (REPO / src).exists(), (dockerfile, src)


def test_worker_pools_match_prefect_yaml(compose):
    deployments = {d["name"]: d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}
    assert deployments["train"]["work_pool"]["name"] == "s2d-process"
    assert deployments["train-gpu"]["work_pool"]["name"] == "s2d-gpu"
    assert "s2d-process" in compose["services"]["worker"]["command"]
    assert '"--pool", "s2d-gpu"' in (INFRA / "worker-gpu.Dockerfile").read_text()
    for d in deployments.values():
        module, func = d["entrypoint"].split(":")
        assert (REPO / module).is_file() and f"def {func}(" in (REPO / module).read_text()


def test_kubernetes_job_template_requests_gpus_and_declares_its_variables():
    template = json.loads((INFRA / "k8s" / "gpu-job-template.json").read_text())
    declared = set(template["variables"]["properties"])
    used = set(re.findall(r"\{\{ *([a-z_]+) *\}\}", json.dumps(template["job_configuration"])))
    assert used <= declared, used - declared
    container = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpus }}"
    assert template["variables"]["properties"]["image"]["default"] == "s2d-worker:gpu"
    secret_keys = _env_example(".env.k8s.example")
    assert {"PREFECT_API_URL", "S2D_TRACKING_URI", "AWS_ACCESS_KEY_ID"} <= secret_keys


@pytest.mark.parametrize("name,kind", [("zero3", "DEEPSPEED"), ("fsdp", "FSDP"), ("ddp", "MULTI_GPU")])
def test_accelerate_configs_parse(name, kind):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(INFRA / "accelerate" / f"{name}.yaml"))
    assert cfg.distributed_type.name == kind and cfg.mixed_precision == "bf16"
    if kind == "DEEPSPEED":
        assert cfg.deepspeed_config["zero_stage"] == 3 and cfg.deepspeed_config["zero3_save_16bit_model"]


def test_worker_entry_points_import():
    import flows.s2d as flow_module

    assert callable(flow_module.main) and flow_module.s2d.name == "s2d"
    from s2d_pipeline.cli import launch_command

    assert callable(launch_command)


def test_non_main_ranks_write_nothing(tmp_path, monkeypatch):
    from s2d_pipeline.io import atomic_dir, write_json

    monkeypatch.setenv("RANK", "1")
    write_json(tmp_path / "metrics.json", {"a": 1})
    with atomic_dir(tmp_path / "model") as out:
        (out / "weights").write_text("rank 1")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv("RANK", "0")
    write_json(tmp_path / "metrics.json", {"a": 1})
    assert (tmp_path / "metrics.json").exists()


def test_training_stage_relaunches_under_accelerate(pipeline, tmp_path):
    """`runtime.accelerate_config` set: the stage runs in processes started by `accelerate launch`
    (here one CPU process) and its outputs and metrics come back to the caller."""
    from s2d_pipeline.cli import launch_command, run_stage
    from s2d_pipeline.config import deep_merge, load_config

    cfg, first, _ = pipeline
    root = tmp_path / "project"
    shutil.copytree(cfg.root, root, ignore=shutil.ignore_patterns("checkpoints"))
    shutil.rmtree(root / "artifacts" / "warmup")
    shutil.rmtree(root / "metrics" / "warmup")
    write_one_cpu_accelerate(root / "one-cpu.yaml")
    overrides = deep_merge(STAGE_MICRO, {"runtime": {"accelerate_config": "one-cpu.yaml", "num_processes": 1}})
    launched = load_config(root / "params.yaml", overrides, root=root)
    cmd = launch_command("warmup", launched, "p.yaml")
    assert cmd[1:4] == ["-m", "accelerate.commands.launch", "--config_file"] and cmd[-3:] == [
        "--params",
        "p.yaml",
        "warmup",
    ]

    metrics = run_stage("warmup", launched)
    assert metrics == read_unit_metrics(root / "metrics" / "warmup")
    # Trained in the process `accelerate launch` started, not in this one (an in-process run writes
    # the same files but records this test's pid).
    trainers = {m["trained_by"] for m in metrics.values()}
    assert len(trainers) == 1 and f"pid {os.getpid()}," not in trainers.pop()
    assert set(metrics) == set(first["warmup"])  # the same arms as the in-process run
    for arm in metrics:
        assert (root / "artifacts" / "warmup" / arm / "model.safetensors").exists()
        assert not (root / "artifacts" / "warmup" / arm / "training_args.bin").exists()


def test_units_training_at_once_get_their_own_gpus():
    """`flow.parallel_arms`: the worker's GPUs are dealt out in equal groups, one per concurrent unit."""
    from flows.s2d import gpus_for_slot

    assert [gpus_for_slot(slot, 2, "0,1,2,3") for slot in (0, 1)] == ["0,1", "2,3"]
    assert [gpus_for_slot(slot, 3, "4,5,6,7,8,9") for slot in (0, 1, 2)] == ["4,5", "6,7", "8,9"]
    assert [gpus_for_slot(slot, 2, "3") for slot in (0, 1)] == ["3", "3"]  # fewer GPUs than units: shared
    assert gpus_for_slot(0, 2, "") is None  # no GPUs: the cores are split instead


def test_the_flows_dvc_bookkeeping_works_from_any_working_directory(tmp_path, monkeypatch):
    """The flow asks DVC (in its own process) which stages are out of date and records the ones it ran;
    a worker's working directory need not be the project's."""
    import logging
    import subprocess
    import sys
    from pathlib import Path

    from flows.s2d import DvcState

    project = tmp_path / "project"
    project.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    subprocess.run([str(Path(sys.executable).parent / "dvc"), "init", "-q"], cwd=project, check=True)
    stages = {
        "a": {"cmd": "echo a > a.txt", "outs": ["a.txt"]},
        "b": {"foreach": ["x", "y"], "do": {"cmd": "echo b", "deps": ["a.txt"], "outs": ["b_${item}.txt"]}},
    }
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    for name in ("a", "b_x", "b_y"):
        (project / f"{name}.txt").write_text(name)
    monkeypatch.chdir(tmp_path)  # not the project
    dvc = DvcState(project, logging.getLogger("test"))
    assert dvc.changed("a") == {"a"} and dvc.changed("b") == {"b@x", "b@y"}
    dvc.commit("a", "b@x")
    assert dvc.up_to_date("a") and dvc.changed("b") == {"b@y"}
    assert os.getcwd() == str(tmp_path)  # left as it was
    assert "b@x" in yaml.safe_load((project / "dvc.lock").read_text())["stages"]
