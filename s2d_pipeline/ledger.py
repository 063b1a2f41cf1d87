"""The label-budget ledger: which verified labels each stage of each arm may spend.

Labels are the currency. `allocate` draws the budget N once per seed (the same N labels for every
arm, so arms differ only in how they spend them) and writes the ledger; every stage that needs
labels reads them through `labels_for(...)` and nowhere else. Invariants, checked on write and read:
a positive budget no larger than the labels available; within one arm no label is spent twice; an
arm spends at most N; a replay stage (Stage 3's control) re-uses only labels its arm already spent.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from s2d_pipeline.errors import BudgetError

# Which stages spend labels in each arm. Distillation stages never appear: they use no labels.
TEACHER_RL, STUDENT_RL, GRPO_DIRECT = "teacher_rl", "student_rl", "grpo_direct"


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
    """Draw the budget once (seeded) and assign it to each arm's label-spending stages."""
    needs_stage3 = any(a.startswith("s2d_stage3") for a in arms)
    alloc = plan_allocation(budget, len(label_ids), stage3_fraction, needs_stage3)
    drawn = sorted(label_ids)
    random.Random(f"ledger-{seed}").shuffle(drawn)
    spent = drawn[:budget]
    teacher_share = spent[: budget - alloc.stage3_holdout]
    stage3_share = spent[budget - alloc.stage3_holdout :]

    plans: dict[str, dict] = {}
    for arm in arms:
        if arm in ("s2d", "no_warmup", "no_opd"):
            stages = {TEACHER_RL: {"ids": spent}}
        elif arm == "s2d_stage3":
            stages = {TEACHER_RL: {"ids": teacher_share}, STUDENT_RL: {"ids": stage3_share}}
        elif arm == "s2d_stage3_replay":
            # Matched control: the same number of Stage-3 updates on labels already spent.
            stages = {TEACHER_RL: {"ids": teacher_share}, STUDENT_RL: {"ids": teacher_share, "replay_of": TEACHER_RL}}
        elif arm == GRPO_DIRECT:
            stages = {GRPO_DIRECT: {"ids": spent}}
        elif arm in ("opd_direct", "raw_bridge"):
            stages = {}
        else:
            raise BudgetError(f"key 'arms': unknown arm '{arm}'")
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
