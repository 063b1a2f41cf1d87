"""Safe defaults: no remote code unless asked, safetensors only, servers on localhost, no secrets in the
repository, the installed versions are the locked ones, and the plain CLI/DVC path needs no Prefect."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest
import yaml

from s2d_pipeline.config import load_config
from tests.helpers import REPO


def test_remote_code_is_off_unless_a_param_turns_it_on(tmp_path):
    for params in [REPO / "params.yaml", *sorted((REPO / "profiles").glob("*.yaml"))]:
        assert load_config(params, root=tmp_path).models.trust_remote_code is False, params


def test_models_are_written_and_read_as_safetensors_only(pipeline, tmp_path):
    import shutil

    from s2d_pipeline.models import load_model

    cfg, _, _ = pipeline
    written = [p for p in cfg.artifacts.rglob("*") if p.suffix in {".bin", ".pt", ".pth", ".pkl", ".safetensors"}]
    assert written and all(p.suffix == ".safetensors" for p in written), written
    # A directory holding only a pickle checkpoint is refused, not unpickled.
    pickled = tmp_path / "pickled"
    shutil.copytree(cfg.artifacts / "prepare" / "student", pickled)
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(str(pickled / "model.safetensors")), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    from s2d_pipeline.errors import S2DError

    with pytest.raises(S2DError, match=r"pickled: rule 'readable safetensors weights' failed: no \*\.safetensors"):
        load_model(pickled, cfg)


def test_no_secret_is_committed():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    assert not [f for f in tracked if re.search(r"(^|/)\.env($|\.)", f) and not f.endswith(".example")]
    secret = re.compile(r"(AKIA[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY-----|ghp_[A-Za-z0-9]{30,})")
    for f in tracked:
        path = REPO / f
        if path.suffix in {".png", ".lock"} or not path.is_file():
            continue
        assert not secret.search(path.read_text(errors="ignore")), f
    for example in (".env.example", ".env.k8s.example"):
        for line in (REPO / "infra" / example).read_text().splitlines():
            if re.match(r"[A-Z_]*(PASSWORD|SECRET)[A-Z_]*=", line):
                assert "change-me" in line, line


def test_installed_versions_are_the_locked_ones():
    from importlib.metadata import version

    def canonical(name: str) -> str:
        return name.lower().replace("_", "-")

    locked = {
        canonical(k): v
        for k, v in (
            line.split("==", 1)
            for line in (REPO / "requirements.lock").read_text().splitlines()
            if "==" in line and not line.startswith("#")
        )
    }
    for pkg in (
        "torch",
        "transformers",
        "trl",
        "accelerate",
        "datasets",
        "mlflow",
        "prefect",
        "dvc",
        "great-expectations",
        "pydantic",
    ):
        assert version(pkg) == locked[pkg], pkg
    pyproject = (REPO / "pyproject.toml").read_text()
    for pkg in ("torch", "transformers", "trl", "accelerate", "datasets", "mlflow", "prefect", "dvc"):
        assert re.search(rf'"{pkg}==[0-9.]+"', pyproject), pkg


def test_servers_default_to_localhost():
    compose = yaml.safe_load((REPO / "infra" / "docker-compose.yml").read_text())
    ports = [p for s in compose["services"].values() for p in s.get("ports", [])]
    assert ports and all(p.startswith("${BIND_ADDRESS:-127.0.0.1}:") for p in ports)
    assert "127.0.0.1" in (REPO / "README.md").read_text()


def test_unreachable_prefect_api_is_reported_in_seconds_and_the_cli_does_not_need_it(pipeline, tmp_path):
    dead = "http://127.0.0.1:9/api"
    env = {**os.environ, "PREFECT_API_URL": dead}
    t0 = time.perf_counter()
    flow = subprocess.run(
        [sys.executable, "-m", "flows.s2d"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert flow.returncode == 2, flow.stderr[-2000:]
    assert dead in flow.stderr and "dvc repro" in flow.stderr
    assert time.perf_counter() - t0 < 60
    # The plain CLI (and so DVC) path needs no Prefect server: a stage runs with the same dead URL set.
    import shutil

    from s2d_pipeline.config import deep_merge
    from tests.helpers import STAGE_MICRO

    cfg, _, _ = pipeline
    project = tmp_path / "project"
    shutil.copytree(cfg.root, project)
    raw = yaml.safe_load((project / "params.yaml").read_text())
    (project / "params.yaml").write_text(yaml.safe_dump(deep_merge(raw, STAGE_MICRO)))
    cli = subprocess.run(
        [sys.executable, "-m", "s2d_pipeline.cli", "allocate"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 0, cli.stderr[-2000:]
