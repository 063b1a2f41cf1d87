"""`s2d promote`: move the registry alias `champion` to the challenger only when the gate passes.

`evaluate` registers the candidate arm's final student under `tracking.registered_model` and points
alias `challenger` at it. The gate, on `eval` and at the same label budget:
1. the challenger beats `grpo_direct` (the same labels spent on direct student GRPO), and
2. it beats the current champion, whose metric was recorded on the same eval set (same data hash).
The decision and its reasons go to `metrics/promote.json` and to the model version's tags.

    s2d promote
"""

from __future__ import annotations

from s2d_pipeline.config import Config
from s2d_pipeline.io import read_json, write_json
from s2d_pipeline.layout import metrics_file

CANDIDATE_ARM = "s2d"
GATE_METRIC_TAG = "s2d.eval.gate_metric"
EVAL_SHA_TAG = "s2d.data_sha.eval"


def gate_metric_name(result: dict) -> str:
    """Sampled accuracy (avg@k): where the principle's gap lives at small scale."""
    return f"avg@{result['k']}"


def decide(candidate: float, baseline: float | None, champion: float | None, same_eval: bool) -> list[str]:
    """Reasons the gate fails (an empty list means promote)."""
    reasons = []
    if baseline is not None and not candidate > baseline:
        reasons.append(f"challenger {candidate:.4f} does not beat grpo_direct {baseline:.4f} at the same budget")
    if champion is not None:
        if not same_eval:
            reasons.append("the champion was scored on a different eval set; re-evaluate before comparing")
        elif not candidate > champion:
            reasons.append(f"challenger {candidate:.4f} does not beat the champion {champion:.4f}")
    return reasons


def run(cfg: Config) -> dict:
    result = read_json(metrics_file(cfg, "evaluate"))
    metric = gate_metric_name(result)
    name = cfg.tracking.registered_model
    if not cfg.tracking.enabled:
        out = {"model": name, "promoted": False, "reasons": ["tracking.enabled is false: no model registry"]}
        write_json(metrics_file(cfg, "promote"), out)
        return out
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from s2d_pipeline.tracking import open_store

    open_store(cfg)
    client = MlflowClient()
    challenger = client.get_model_version_by_alias(name, "challenger")
    candidate = float(challenger.tags[GATE_METRIC_TAG])
    baseline = result["arms"].get("grpo_direct", {}).get(metric)
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
    )
    promoted = not reasons
    if promoted:
        client.set_registered_model_alias(name, "champion", challenger.version)
    client.set_model_version_tag(
        name, challenger.version, "s2d.promotion", "promoted" if promoted else "; ".join(reasons)
    )
    out = {
        "model": name,
        "challenger_version": challenger.version,
        "metric": metric,
        "challenger": candidate,
        "grpo_direct": baseline,
        "champion_version": champion.version if champion else None,
        "promoted": promoted,
        "reasons": reasons,
    }
    write_json(metrics_file(cfg, "promote"), out)
    return out
