"""The promotion gate, shared by `evaluate` (which registers the challenger) and `promote`.

On `eval` and at the same label budget, the challenger (the candidate arm's final student) must
1. beat the baseline arm (the same labels spent on direct student GRPO), and
2. beat the current champion, whose metric was recorded on the same eval set (same data hash).
"""

from __future__ import annotations

GATE_METRIC_TAG = "s2d.eval.gate_metric"
EVAL_SHA_TAG = "s2d.data_sha.eval"


# Sampled accuracy (mean over k samples; k is recorded beside it): where the principle's gap lives
# at small scale.
GATE_METRIC = "avg_at_k"


def decide(candidate: float, baseline: float | None, champion: float | None, same_eval: bool) -> list[str]:
    """Reasons the gate fails (an empty list means promote)."""
    from s2d_pipeline.arms import BASELINE_ARM

    reasons = []
    if baseline is not None and not candidate > baseline:
        reasons.append(f"challenger {candidate:.4f} does not beat {BASELINE_ARM} {baseline:.4f} at the same budget")
    if champion is not None:
        if not same_eval:
            reasons.append("the champion was scored on a different eval set; re-evaluate before comparing")
        elif not candidate > champion:
            reasons.append(f"challenger {candidate:.4f} does not beat the champion {champion:.4f}")
    return reasons
