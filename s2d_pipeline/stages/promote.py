"""`s2d promote`: move the registry alias `champion` to the challenger only when the gate passes.

`evaluate` registers the candidate arm's final student under `tracking.registered_model` and points
alias `challenger` at it; the gate is `s2d_pipeline.gate.decide`. The decision and its reasons go to `metrics/promote.json` and to the model version's tags.

    s2d promote
"""

from __future__ import annotations

from s2d_pipeline.arms import BASELINE_ARM
from s2d_pipeline.config import Config
from s2d_pipeline.gate import EVAL_SHA_TAG, GATE_METRIC, GATE_METRIC_TAG, decide
from s2d_pipeline.io import read_json, write_json
from s2d_pipeline.layout import metrics_file
from s2d_pipeline.tracking import open_store

GATE_LINE = "**Gate"


def run(cfg: Config) -> dict:
    result = read_json(metrics_file(cfg, "evaluate"))
    metric = GATE_METRIC
    name = cfg.tracking.registered_model
    if not cfg.tracking.enabled:
        out = {"model": name, "promoted": False, "reasons": ["tracking.enabled is false: no model registry"]}
        write_json(metrics_file(cfg, "promote"), out)
        return out
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    open_store(cfg)
    client = MlflowClient()
    challenger = client.get_model_version_by_alias(name, "challenger")
    candidate = float(challenger.tags[GATE_METRIC_TAG])
    baseline = result["arms"].get(BASELINE_ARM, {}).get(metric)
    try:
        champion = client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        champion = None
    if champion is not None and champion.version == challenger.version:
        champion = None  # re-running promote on the same version is a no-op, not a self-comparison
    reasons = decide(
        candidate,
        baseline,
        float(champion.tags[GATE_METRIC_TAG]) if champion else None,
        champion is None or champion.tags.get(EVAL_SHA_TAG) == challenger.tags.get(EVAL_SHA_TAG),
        cfg.gates.promote.min_gain,
    )
    promoted = not reasons
    if promoted:
        client.set_registered_model_alias(name, "champion", challenger.version)
    decision = "promoted to champion" if promoted else "not promoted: " + "; ".join(reasons)
    client.set_model_version_tag(name, challenger.version, "s2d.promotion", decision)
    comparison = challenger.description or ""
    if comparison.startswith(GATE_LINE):  # promote rerun on the same version: replace the old decision
        comparison = comparison.split("\n\n", 1)[-1]
    client.update_model_version(
        name,
        challenger.version,
        description=f"{GATE_LINE} ({metric}, k = {result['k']}): {decision}.**\n\n{comparison}",
    )
    out = {
        "model": name,
        "challenger_version": challenger.version,
        "metric": metric,
        "challenger": candidate,
        "baseline_arm": BASELINE_ARM,
        "baseline": baseline,
        "paired": result.get("paired", {}).get(metric),  # the gap problem by problem, with its interval
        "min_gain": cfg.gates.promote.min_gain,
        "champion_version": champion.version if champion else None,
        "promoted": promoted,
        "reasons": reasons,
    }
    write_json(metrics_file(cfg, "promote"), out)
    return out
