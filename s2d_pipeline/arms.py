"""What each arm of the comparison does, at the same label budget.

| arm | teacher | warmup steps | OPD steps | Stage 3 |
|---|---|---|---|---|
| `s2d` | RL teacher (all N labels) | W | O | - |
| `s2d_stage3` | RL teacher (N - h labels) | W | O | GRPO on h held-out labels |
| `s2d_stage3_replay` | same as `s2d_stage3` | W | O | same updates on already-spent labels |
| `grpo_direct` | - | - | - | (student GRPO on all N labels) |
| `opd_direct` | raw teacher | 0 | W + O | - |
| `raw_bridge` | raw teacher | W | O | - |
| `no_warmup` | RL teacher (N) | 0 | W + O | - |
| `no_opd` | RL teacher (N) | W + O | 0 | - |

Ablations move the removed stage's steps to the remaining one, so compute matches.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ArmSpec:
    teacher: str | None  # "raw", an RL-teacher key, or None (no distillation)
    warmup: bool
    opd: bool
    stage3: str | None = None  # "new" labels, "replay", or None
    bridge: str | None = None  # arm whose bridge (warmup + OPD student) this arm reuses


SPECS: dict[str, ArmSpec] = {
    "s2d": ArmSpec(teacher="s2d", warmup=True, opd=True),
    "s2d_stage3": ArmSpec(teacher="s2d_stage3", warmup=True, opd=True, stage3="new"),
    "s2d_stage3_replay": ArmSpec(teacher="s2d_stage3", warmup=True, opd=True, stage3="replay", bridge="s2d_stage3"),
    "grpo_direct": ArmSpec(teacher=None, warmup=False, opd=False),
    "opd_direct": ArmSpec(teacher="raw", warmup=False, opd=True),
    "raw_bridge": ArmSpec(teacher="raw", warmup=True, opd=True),
    "no_warmup": ArmSpec(teacher="s2d", warmup=False, opd=True),
    "no_opd": ArmSpec(teacher="s2d", warmup=True, opd=False),
}


def rl_teachers(arms) -> list[str]:
    """RL-teacher keys (ledger arms whose `teacher_rl` labels train them) the arms need."""
    keys = {SPECS[a].teacher for a in arms} - {None, "raw"}
    return sorted(keys)


def ledger_arm_for_teacher(key: str, arms) -> str:
    """A configured arm whose ledger `teacher_rl` labels train RL teacher `key` (arms sharing a
    teacher get identical teacher labels, so any of them will do)."""
    for arm in arms:
        if SPECS[arm].teacher == key:
            return arm
    raise ValueError(f"no configured arm uses RL teacher '{key}'")


def rollout_teachers(arms) -> list[str]:
    """Teachers whose rollouts the warmup stage needs ("raw" or an RL-teacher key)."""
    return sorted({SPECS[a].teacher for a in arms if SPECS[a].warmup and SPECS[a].teacher})


def bridge_arms(arms) -> list[str]:
    """Arms that train their own bridge (the Stage-3 replay control reuses `s2d_stage3`'s)."""
    out = [a for a in arms if SPECS[a].teacher is not None and SPECS[a].bridge is None]
    for a in arms:
        b = SPECS[a].bridge
        if b is not None and b not in out:
            out.append(b)
    return out


def bridge_steps(arm: str, warmup_steps: int, opd_steps: int) -> tuple[int, int]:
    """(warmup, OPD) steps for an arm: a removed stage's steps go to the remaining one."""
    spec = SPECS[arm]
    total = warmup_steps + opd_steps
    if spec.warmup and spec.opd:
        return warmup_steps, opd_steps
    return (total, 0) if spec.warmup else (0, total)


def final_student_step(arm: str) -> tuple[str, str]:
    """(arm, stage) whose output directory holds the arm's final student."""
    spec = SPECS[arm]
    if arm == "grpo_direct" or spec.stage3:
        return arm, "student_rl"
    return (spec.bridge or arm), ("opd" if spec.opd else "warmup")


def bridge_final_step(arm: str) -> tuple[str, str]:
    """The student at the end of the arm's bridge (before any Stage 3)."""
    spec = SPECS[arm]
    return (spec.bridge or arm), ("opd" if spec.opd else "warmup")
