"""The pipeline's gates.

The promotion gate, shared by `evaluate` (which registers the challenger) and `promote`: on `eval`
and at the same label budget, the challenger (the candidate arm's final student) must
1. beat the baseline arm (the same labels spent on direct student GRPO), and
2. beat the current champion, whose metric was recorded on the same eval set (same data hash).

The C1 gate, before distillation: `teacher_rl` scores each RL teacher and the raw teacher on the
first `gates.c1.problems` eval problems (`c1_measurement`); `rollouts` and `opd` distil from an RL
teacher only when it gained more than `gates.c1.min_gain` (`require_improved_teacher`), else they stop
with a report, unless `gates.c1.override` is set; then `teacher_rl` warns once per RL teacher
(`warn_if_overridden`) and every distilling unit records the overridden gate in its metrics.
"""

from __future__ import annotations

import logging

from s2d_pipeline.arms import BASELINE_ARM
from s2d_pipeline.errors import GateError, S2DError
from s2d_pipeline.io import read_json
from s2d_pipeline.layout import unit_metrics_file

GATE_METRIC_TAG = "s2d.eval.gate_metric"
EVAL_SHA_TAG = "s2d.data_sha.eval"


# Sampled accuracy (mean over k samples; k is recorded beside it): where the principle's gap lives
# at small scale.
GATE_METRIC = "avg_at_k"


def decide(
    candidate: float, baseline: float | None, champion: float | None, same_eval: bool, min_gain: float = 0.0
) -> list[str]:
    """Reasons the gate fails (an empty list means promote): the candidate must beat the baseline arm and
    the champion by more than `min_gain` (gates.promote.min_gain)."""
    margin = f" by more than {min_gain}" if min_gain else ""
    reasons = []
    if baseline is not None and not round(candidate - baseline, 4) > min_gain:
        reasons.append(
            f"challenger {candidate:.4f} does not beat {BASELINE_ARM} {baseline:.4f}{margin} at the same budget"
        )
    if champion is not None:
        if not same_eval:
            reasons.append("the champion was scored on a different eval set; re-evaluate before comparing")
        elif not round(candidate - champion, 4) > min_gain:
            reasons.append(f"challenger {candidate:.4f} does not beat the champion {champion:.4f}{margin}")
    return reasons


def c1_measurement(raw: dict, rl: dict, problems: int, k: int) -> dict:
    """What `teacher_rl` records for the C1 gate: both teachers' GATE_METRIC on the same problems."""
    return {
        "metric": GATE_METRIC,
        "k": k,
        "problems": problems,
        "raw_teacher": raw[GATE_METRIC],
        "rl_teacher": rl[GATE_METRIC],
        "gain": round(rl[GATE_METRIC] - raw[GATE_METRIC], 4),
    }


def c1_decision(cfg, teacher: str, measured: dict) -> tuple[dict, str]:
    """The C1 decision on a measurement (`c1_measurement`) with `min_gain` and `passed`, and the report
    that says why a failed gate fails."""
    gate = cfg.gates.c1
    decision = {**measured, "min_gain": gate.min_gain, "passed": measured["gain"] > gate.min_gain}
    report = (
        f"C1 gate: Stage 1 did not improve the teacher '{teacher}'. On {measured['problems']} held-out eval "
        f"problems its {measured['metric']} (k = {measured['k']}) is {measured['rl_teacher']:.4f} against the raw "
        f"teacher's {measured['raw_teacher']:.4f}: a gain of {measured['gain']:+.4f}, not more than "
        f"gates.c1.min_gain = {gate.min_gain}. Distilling an unimproved teacher spends compute for nothing"
    )
    return decision, report


def warn_if_overridden(cfg, teacher: str, measured: dict) -> None:
    """Said once per RL teacher, by the stage that measures it: a failed C1 gate that
    `gates.c1.override` lets through (every unit distilling from that teacher records it, silently)."""
    decision, report = c1_decision(cfg, teacher, measured)
    if not decision["passed"] and cfg.gates.c1.override:
        logging.getLogger("s2d").warning("%s; distilling anyway (gates.c1.override: true).", report)


def require_improved_teacher(cfg, teacher: str) -> dict | None:
    """The C1 decision for distilling from `teacher` (None for the raw teacher, which no gate guards):
    the measurement with `min_gain` and `passed`. Raises GateError when the RL teacher did not gain
    more than `gates.c1.min_gain` and `gates.c1.override` is off."""
    if teacher == "raw":
        return None
    path = unit_metrics_file(cfg, "teacher_rl", teacher)
    measured = read_json(path).get("c1_gate") if path.exists() else None
    if measured is None:
        raise S2DError(f"C1 gate: no measurement for the RL teacher '{teacher}' ({path}); run `s2d teacher_rl` first")
    decision, report = c1_decision(cfg, teacher, measured)
    if decision["passed"]:
        return decision
    if not cfg.gates.c1.override:
        raise GateError(
            f"{report}, so the pipeline stops before distillation. Improve Stage 1 (teacher_rl.steps, "
            "teacher_rl.learning_rate, a larger budget) and rerun, or set gates.c1.override: true to distil anyway."
        )
    return {**decision, "overridden": True}
