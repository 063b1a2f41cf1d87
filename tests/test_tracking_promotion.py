"""MLflow on a temporary SQLite store: run nesting, the registered model and the aliases."""

from __future__ import annotations

import json
from pathlib import Path

from s2d_pipeline.gate import decide


def test_gate_logic():
    assert decide(0.8, 0.6, None, True) == []
    # A margin: a gain at or inside it is not an improvement (0.7 - 0.6 is 0.0999... in floats).
    assert decide(0.61, 0.6, None, True, min_gain=0.01) == [
        "challenger 0.6100 does not beat grpo_direct 0.6000 by more than 0.01 at the same budget"
    ]
    assert decide(0.7, 0.6, 0.65, True, min_gain=0.1) == [
        "challenger 0.7000 does not beat grpo_direct 0.6000 by more than 0.1 at the same budget",
        "challenger 0.7000 does not beat the champion 0.6500 by more than 0.1",
    ]
    assert decide(0.7, 0.6, 0.65, True, min_gain=0.04) == []
    assert decide(0.7, 0.6, 0.65, True, min_gain=0.05) == [
        "challenger 0.7000 does not beat the champion 0.6500 by more than 0.05"
    ]
    assert decide(0.8, None, None, True) == []  # no baseline arm configured, no champion yet
    assert decide(0.6, 0.6, None, True) == ["challenger 0.6000 does not beat grpo_direct 0.6000 at the same budget"]
    assert decide(0.8, 0.6, 0.8, True) == ["challenger 0.8000 does not beat the champion 0.8000"]  # a tie
    assert decide(0.8, None, 0.9, True) == ["challenger 0.8000 does not beat the champion 0.9000"]
    assert "different eval set" in decide(0.8, 0.6, 0.7, False)[0]
    assert len(decide(0.5, 0.6, 0.9, True)) == 2


def _tracked(cfg0, tmp_path, **changes):
    """The session pipeline's project, copied (its shared outputs stay as written), with tracking on."""
    import shutil

    from s2d_pipeline.config import config_from_dict

    root = tmp_path / "project"
    shutil.copytree(cfg0.root, root, ignore=shutil.ignore_patterns("checkpoints", "mlruns", "*.db"))
    raw = cfg0.model_dump(mode="json", exclude={"root"})
    raw["tracking"] = {**raw["tracking"], "enabled": True, "uri": f"sqlite:///{tmp_path}/mlflow.db"}
    return config_from_dict({**raw, **changes}, root=root)


def test_evaluate_registers_challenger_and_promote_moves_champion_only_through_the_gate(pipeline, tmp_path):
    """The real gate on real eval numbers, nothing set by hand: without a baseline arm the first
    challenger becomes champion; the same student evaluated again ties the champion and is refused."""
    import mlflow
    from mlflow import MlflowClient

    from s2d_pipeline.cli import run_stage

    cfg0, _, _ = pipeline
    cfg = _tracked(cfg0, tmp_path, arms=["s2d", "no_opd"])  # no grpo_direct: the gate has no baseline
    evaluated = run_stage("evaluate", cfg)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    client = MlflowClient()
    name = cfg.tracking.registered_model
    challenger = client.get_model_version_by_alias(name, "challenger")
    assert float(challenger.tags["s2d.eval.gate_metric"]) == evaluated["arms"]["s2d"]["avg_at_k"]
    assert challenger.tags["s2d.arm"] == "s2d" and "s2d.git_commit" in challenger.tags
    first = run_stage("promote", cfg)
    assert first["promoted"] is True and first["reasons"] == [] and first["baseline"] is None
    assert client.get_model_version_by_alias(name, "champion").version == challenger.version
    assert client.get_model_version(name, challenger.version).tags["s2d.promotion"] == "promoted to champion"

    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    by_id = {r.info.run_id: r for r in runs}
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].data.tags["s2d.params_hash"] == cfg.params_hash()
    evaluate_run = next(r for r in runs if r.info.run_name == "evaluate")
    assert evaluate_run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
    arm_runs = {r.info.run_name: r for r in runs if r.info.run_name.startswith("evaluate/")}
    assert set(arm_runs) == {f"evaluate/{m}" for m in ["student_raw", *cfg.arms, "teacher_raw", "teacher_rl/s2d"]}
    # Two levels: every arm run sits directly under the pipeline run, beside the stage runs.
    assert {by_id[r.data.tags["mlflow.parentRunId"]].info.run_id for r in arm_runs.values()} == {
        parents[0].info.run_id
    }
    s2d_run = arm_runs["evaluate/s2d"].data
    assert s2d_run.params["teacher"] == "s2d" and s2d_run.params["labels_spent"] == str(cfg.budget)
    assert s2d_run.params["warmup_steps"] == str(cfg.warmup.steps) and s2d_run.params["opd_steps"] == str(
        cfg.opd.steps
    )
    assert arm_runs["evaluate/no_opd"].data.params["opd_steps"] == "0"
    assert s2d_run.metrics["avg_at_k"] == evaluated["arms"]["s2d"]["avg_at_k"]
    assert s2d_run.metrics["C2_kl.after_opd"] == evaluated["arms"]["s2d"]["C2_kl"]["after_opd"]

    # The parent run: named for what it is, with the settings as params and the headline numbers.
    parent = parents[0]
    assert parent.info.run_name.startswith(f"{cfg.profile} · budget {cfg.budget} · seed {cfg.seed} · ")
    assert parent.data.params["k"] == str(cfg.evaluate.k) and parent.data.params["arms"] == "s2d,no_opd"
    assert parent.data.params["warmup.steps"] == str(cfg.warmup.steps)
    assert parent.data.metrics["avg_at_k/s2d"] == evaluated["arms"]["s2d"]["avg_at_k"]
    assert parent.data.metrics["greedy/student_raw"] == evaluated["student_raw"]["greedy"]
    assert parent.info.status == "FINISHED" and parent.info.end_time >= evaluate_run.info.end_time
    # Marked as model training, so the UI opens on these runs rather than on the GenAI (traces) overview.
    assert client.get_experiment(parent.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    # The result points to it, with what opens a local store (the flow's artifact and `s2d report`).
    from s2d_pipeline.tracking import where_to_open

    assert where_to_open(cfg) == (
        f"MLflow run {parent.info.run_id}: `mlflow ui --backend-store-uri sqlite:///{tmp_path}/mlflow.db`, then "
        f"http://127.0.0.1:5000/#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}"
    )
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "charts")}
    assert artifacts == {"charts/accuracy.png", "charts/c2_kl.png"}
    # The same charts as keyed images, which MLflow's Charts view shows (plain artifacts it does not).
    images = {a.path for a in client.list_artifacts(parent.info.run_id, "images")}
    assert any("accuracy" in p for p in images) and any("c2_kl" in p for p in images), images
    assert "mlflow.loggedImages" in parent.data.tags
    table = json.loads(
        Path(client.download_artifacts(parent.info.run_id, "comparison.json", str(tmp_path))).read_text()
    )
    assert [row[0] for row in table["data"]] == ["student_raw", *cfg.arms, "teacher_raw", "teacher_rl/s2d"]

    # The registry version: the comparison and the gate's decision as its description, few tags.
    version = client.get_model_version(name, challenger.version)
    assert version.description.startswith("**Gate (avg_at_k, k = ") and "| s2d |" in version.description
    assert len(version.tags) <= 8

    # The same student again: a tie with the champion is not an improvement.
    run_stage("evaluate", cfg)
    newer = client.get_model_version_by_alias(name, "challenger")
    assert newer.version != challenger.version
    second = run_stage("promote", cfg)
    metric = evaluated["arms"]["s2d"]["avg_at_k"]
    assert second["promoted"] is False
    margin = cfg.gates.promote.min_gain
    assert second["reasons"] == [
        f"challenger {metric:.4f} does not beat the champion {metric:.4f} by more than {margin}"
    ]
    assert client.get_model_version_by_alias(name, "champion").version == challenger.version
    assert (
        client.get_model_version(name, newer.version).tags["s2d.promotion"] == "not promoted: " + second["reasons"][0]
    )


def test_promote_compares_with_grpo_direct_at_the_same_budget(pipeline, tmp_path):
    """With the baseline arm configured, the decision follows the evaluated numbers of both arms."""
    from s2d_pipeline.cli import run_stage

    cfg0, _, _ = pipeline
    cfg = _tracked(cfg0, tmp_path, arms=["s2d", "grpo_direct"])
    evaluated = run_stage("evaluate", cfg)
    ours, baseline = evaluated["arms"]["s2d"]["avg_at_k"], evaluated["arms"]["grpo_direct"]["avg_at_k"]
    decision = run_stage("promote", cfg)
    assert decision["baseline"] == baseline and decision["challenger"] == ours
    margin = cfg.gates.promote.min_gain
    assert decision["min_gain"] == margin
    assert decision["promoted"] is (round(ours - baseline, 4) > margin)
    if not decision["promoted"]:
        assert decision["reasons"] == [
            f"challenger {ours:.4f} does not beat grpo_direct {baseline:.4f} by more than {margin} at the same budget"
        ]


def test_mlflow_client_retries_are_bounded_unless_the_environment_sets_them(micro_cfg, monkeypatch):
    """MLflow's own retry schedule hangs a stage ~8 minutes on a dead tracking server; s2d's bounds it,
    and a value the user exported wins (the services test of a dead server exports 0 retries)."""
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR, MLFLOW_HTTP_REQUEST_MAX_RETRIES

    from s2d_pipeline.tracking import open_store

    monkeypatch.delenv("S2D_TRACKING_URI", raising=False)
    monkeypatch.delenv(MLFLOW_HTTP_REQUEST_MAX_RETRIES.name, raising=False)
    monkeypatch.setenv(MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.name, "3")
    open_store(micro_cfg)  # a SQLite store in the test's project
    assert MLFLOW_HTTP_REQUEST_MAX_RETRIES.get() == 4
    assert MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.get() == 3
    monkeypatch.delenv(MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.name)
    open_store(micro_cfg)
    assert MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.get() == 1
