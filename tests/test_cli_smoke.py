"""The whole pipeline through the real CLI entry point (`s2d run`), on micro settings."""

import json
import subprocess
import sys

import pytest
import yaml

from tests.helpers import MICRO, STAGE_MICRO


def _write_micro_params(project):
    from s2d_pipeline.config import deep_merge

    raw = yaml.safe_load((project / "params.yaml").read_text())
    (project / "params.yaml").write_text(yaml.safe_dump(deep_merge(raw, STAGE_MICRO)))  # every stage, a few steps


def _s2d(project, *args):
    return subprocess.run(
        [sys.executable, "-m", "s2d_pipeline.cli", *args], cwd=project, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_whole_pipeline_through_cli(project):
    _write_micro_params(project)
    done = _s2d(project, "run")
    assert done.returncode == 0, done.stderr[-3000:]
    from s2d_pipeline.stages import STAGES

    # One plan line per stage, in order, each followed by its summary; the run ends with the result.
    lines = done.stdout.splitlines()
    announced = [line.split(":", 1)[0] for line in lines if line.split(":", 1)[0] in STAGES]
    assert announced == list(STAGES), done.stdout
    assert not any(line.startswith("{") for line in lines), done.stdout
    assert (project / "artifacts/evaluate/comparison.md").exists()
    assert "| s2d |" in done.stdout
    assert lines[-1].startswith("Promotion: not promoted"), lines[-1]
    assert "FutureWarning" not in done.stderr and "Writing model shards" not in done.stderr

    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(project / "artifacts/prepare/teacher")
    student = AutoModelForCausalLM.from_pretrained(project / "artifacts/prepare/student")
    assert sum(p.numel() for p in teacher.parameters()) > 2 * sum(p.numel() for p in student.parameters())
    assert (project / "artifacts/prepare/teacher/model.safetensors").exists()
    assert json.loads((project / "artifacts/validate/report.json").read_text())["passed"] is True
    ledger = json.loads((project / "artifacts/allocate/ledger.json").read_text())
    assert ledger["budget"] == MICRO["budget"]
    assert len(ledger["arms"]["s2d"]["stages"]["teacher_rl"]["ids"]) == MICRO["budget"]

    # A bad budget is refused with the key named, and the good ledger is left as it was.
    before = (project / "artifacts/allocate/ledger.json").read_bytes()
    good = (project / "params.yaml").read_text()
    (project / "params.yaml").write_text(good.replace(f"budget: {MICRO['budget']}\n", "budget: 100000\n"))
    bad = _s2d(project, "allocate")
    (project / "params.yaml").write_text(good)
    assert bad.returncode == 2 and "key 'budget'" in bad.stderr and "only 40 verified labels" in bad.stderr
    assert (project / "artifacts/allocate/ledger.json").read_bytes() == before
    assert _s2d(project, "allocate", "-S", "budget=0").returncode == 2
    typo = _s2d(project, "allocate", "-S", "budgt=3")
    assert typo.returncode == 2 and "unknown key 'budgt'" in typo.stderr

    # Labels edited after allocation: label-spending stages refuse the stale ledger.
    labels = project / "data/labels.jsonl"
    labels.write_text(labels.read_text().replace('"source": "synthetic"', '"source": "edited"', 1))
    stale = _s2d(project, "teacher_rl")
    assert stale.returncode == 2 and "was allocated from a different" in stale.stderr


def test_cli_starts_without_heavy_imports():
    code = (
        "import sys; from s2d_pipeline import cli, config; "
        "print(sorted(m for m in ('torch','transformers','great_expectations','mlflow','prefect','trl') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unreachable_tracking_server_is_reported_before_any_stage(project):
    done = _s2d(project, "-S", "tracking.uri=http://127.0.0.1:9", "prepare")
    assert done.returncode == 2
    assert "MLflow tracking server http://127.0.0.1:9 is unreachable" in done.stderr
    assert not (project / "data").exists()  # nothing ran


def test_tracking_server_lost_during_a_stage_is_reported_with_what_to_do(micro_cfg):
    """The preflight passed, then the server went away: the stage's error names the URL and the rerun
    (tests/test_services.py does it against a real server); other errors pass through untouched."""
    from s2d_pipeline.errors import S2DError
    from s2d_pipeline.tracking import server_guard

    dead = micro_cfg.model_copy(
        update={"tracking": micro_cfg.tracking.model_copy(update={"uri": "http://127.0.0.1:9"})}
    )
    with pytest.raises(S2DError, match=r"http://127.0.0.1:9 stopped answering during stage 'warmup'.*`s2d warmup`"):
        with server_guard(dead, "warmup"):
            raise ConnectionError("refused")
    with pytest.raises(ConnectionError):  # a local store: nothing to blame on a server
        with server_guard(micro_cfg, "warmup"):
            raise ConnectionError("refused")


def test_arm_without_a_unit_of_the_stage_says_so_and_does_nothing(project, monkeypatch, capsys):
    """`s2d warmup --arm grpo_direct`: that arm has no warmup. One line says so; no other arm's plan
    is announced, nothing is launched (the accelerate config named here does not even exist) and
    nothing is written."""
    from s2d_pipeline.cli import main

    _write_micro_params(project)
    monkeypatch.chdir(project)
    before = sorted(p.relative_to(project) for p in project.rglob("*"))
    assert main(["warmup", "--arm", "grpo_direct", "-S", "runtime.accelerate_config=no-such.yaml"]) == 0
    out, err = capsys.readouterr()
    assert out == "warmup: arm grpo_direct has no warmup unit; nothing to do\n", out
    assert "error" not in err, err
    assert sorted(p.relative_to(project) for p in project.rglob("*")) == before
