"""The label-budget ledger: which verified labels each stage of each arm may spend.

Labels are the currency. `allocate` draws the budget N once per seed (the same N labels for every
arm, so arms differ only in how they spend them) and writes the ledger; every stage that needs
labels reads them through `labeled_rows(...)` (which goes through `labels_for`) and nowhere else. Invariants, checked on write and read:
a positive budget no larger than the labels available; within one arm no label is spent twice; an
arm spends at most N; a replay stage (Stage 3's control) re-uses only labels its arm already spent.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from s2d_pipeline.arms import SPECS, STUDENT_RL, TEACHER_RL, LabelUse
from s2d_pipeline.errors import BudgetError
from s2d_pipeline.io import read_data_file, read_json, sha256_file
from s2d_pipeline.layout import data_file, ledger_file
from s2d_pipeline.tasks import get_task

if TYPE_CHECKING:
    from s2d_pipeline.config import Config


@dataclass(frozen=True)
class Allocation:
    budget: int
    stage3_holdout: int


def plan_allocation(budget: int, available: int, stage3_fraction: float, needs_stage3: bool) -> Allocation:
    if budget <= 0:
        raise BudgetError(f"key 'budget': the label budget must be positive, got {budget}")
    if budget > available:
        raise BudgetError(
            f"key 'budget': asks for {budget} labels but only {available} verified labels are "
            "available in data.labels; lower the budget or add labels"
        )
    holdout = round(budget * stage3_fraction) if needs_stage3 else 0
    if needs_stage3 and not 1 <= holdout < budget:
        raise BudgetError(
            f"key 'allocation.stage3_fraction': {stage3_fraction} of a budget of {budget} gives "
            f"{holdout} Stage-3 labels; need at least 1 and fewer than the budget"
        )
    return Allocation(budget=budget, stage3_holdout=holdout)


def build_ledger(label_ids: list[str], arms: list[str], budget: int, stage3_fraction: float, seed: int) -> dict:
    """Draw the budget once (seeded) and assign it to each arm's label-spending stages, as each
    arm's `ArmSpec.labels` says."""
    specs = [SPECS[a] for a in arms]
    needs_stage3 = any(spec.labels.holds_out_stage3 for spec in specs)
    alloc = plan_allocation(budget, len(label_ids), stage3_fraction, needs_stage3)
    drawn = sorted(label_ids)
    random.Random(f"ledger-{seed}").shuffle(drawn)
    spent = drawn[:budget]
    teacher_share = spent[: budget - alloc.stage3_holdout]
    stage3_share = spent[budget - alloc.stage3_holdout :]
    replayed: list[str] = []
    if any(spec.labels is LabelUse.TEACHER_AND_REPLAY for spec in specs):
        if alloc.stage3_holdout > len(teacher_share):
            raise BudgetError(
                f"key 'allocation.stage3_fraction': {stage3_fraction} holds out {alloc.stage3_holdout} of {budget} "
                f"labels, more than the {len(teacher_share)} the teacher spends; the replay control needs as many "
                "spent labels as Stage 3 has new ones (use a fraction of at most 0.5)"
            )
        replayed = sorted(random.Random(f"replay-{seed}").sample(teacher_share, alloc.stage3_holdout))

    plans: dict[str, dict] = {}
    for arm, spec in zip(arms, specs, strict=True):
        stages = {
            LabelUse.TEACHER: {TEACHER_RL: {"ids": spent}},
            LabelUse.TEACHER_AND_STAGE3: {TEACHER_RL: {"ids": teacher_share}, STUDENT_RL: {"ids": stage3_share}},
            # Matched control: Stage 3's updates on as many distinct already-spent labels as Stage 3
            # has new ones, so the two Stage-3 arms differ only in whether the labels are new.
            LabelUse.TEACHER_AND_REPLAY: {
                TEACHER_RL: {"ids": teacher_share},
                STUDENT_RL: {"ids": replayed, "replay_of": TEACHER_RL},
            },
            LabelUse.STUDENT: {STUDENT_RL: {"ids": spent}},
            LabelUse.NONE: {},
        }[spec.labels]
        plans[arm] = {"stages": stages}
    ledger = {
        "budget": budget,
        "seed": seed,
        "stage3_holdout": alloc.stage3_holdout,
        "labels_available": len(label_ids),
        "arms": plans,
    }
    for arm, plan in plans.items():
        plan["spent"] = len(_new_ids(arm, plan))
    check_ledger(ledger, set(label_ids))
    return ledger


def _new_ids(arm: str, plan: dict) -> set[str]:
    """Labels the arm spends (replay stages spend none); raises on a label spent twice."""
    seen: dict[str, str] = {}
    for stage, entry in plan["stages"].items():
        if "replay_of" in entry:
            continue
        for label_id in entry["ids"]:
            if label_id in seen:
                raise BudgetError(
                    f"ledger: arm '{arm}' spends label '{label_id}' twice (stages '{seen[label_id]}' and '{stage}')"
                )
            seen[label_id] = stage
    return set(seen)


def check_ledger(ledger: dict, available_ids: set[str]) -> None:
    budget = ledger["budget"]
    if budget <= 0:
        raise BudgetError(f"ledger: non-positive budget {budget}")
    if budget > len(available_ids):
        raise BudgetError(f"ledger: budget {budget} exceeds the {len(available_ids)} labels available")
    for arm, plan in ledger["arms"].items():
        new = _new_ids(arm, plan)
        if len(new) > budget:
            raise BudgetError(f"ledger: arm '{arm}' spends {len(new)} labels, over the budget of {budget}")
        unknown = sorted(new - available_ids)
        if unknown:
            raise BudgetError(f"ledger: arm '{arm}' spends label ids not in data.labels: {unknown[:5]}")
        if plan.get("spent", len(new)) != len(new):
            raise BudgetError(f"ledger: arm '{arm}' records {plan['spent']} spent but spends {len(new)}")
        for stage, entry in plan["stages"].items():
            source = entry.get("replay_of")
            if source is None:
                continue
            if source not in plan["stages"] or not set(entry["ids"]) <= set(plan["stages"][source]["ids"]):
                raise BudgetError(
                    f"ledger: arm '{arm}' stage '{stage}' replays labels its stage '{source}' did not spend"
                )


def labels_for(ledger: dict, arm: str, stage: str) -> list[str]:
    """The label ids `stage` of `arm` may use: the only way a stage obtains labels."""
    try:
        return list(ledger["arms"][arm]["stages"][stage]["ids"])
    except KeyError:
        raise BudgetError(f"ledger: arm '{arm}' has no label allocation for stage '{stage}'") from None


def label_rows(cfg: Config) -> list[dict]:
    """Every row of `data.labels` in canonical form (id, prompt, answer)."""
    labels_path = data_file(cfg, "labels")
    return get_task(cfg.task).to_canonical(read_data_file(labels_path), labels_path)


def read_ledger(cfg: Config, rows: list[dict] | None = None) -> dict:
    """The ledger, re-checked against the current labels file (refuses a stale one)."""
    ledger = read_json(ledger_file(cfg))
    labels_path = data_file(cfg, "labels")
    if ledger.get("labels_sha256") != sha256_file(labels_path):
        raise BudgetError(f"{ledger_file(cfg)} was allocated from a different {labels_path}; rerun `s2d allocate`")
    rows = label_rows(cfg) if rows is None else rows
    check_ledger(ledger, {str(r["id"]) for r in rows})
    return ledger


def labeled_rows(cfg: Config, arm: str, stage: str) -> list[dict]:
    """The labeled rows `stage` of `arm` may train on, through the ledger."""
    rows = label_rows(cfg)
    allowed = labels_for(read_ledger(cfg, rows), arm, stage)
    by_id = {str(r["id"]): r for r in rows}
    return [by_id[i] for i in allowed]
