"""The arms of the comparison: one definition, everything else derives from `SPECS`.

Every arm spends the same label budget N, differently:

| arm | labels | teacher | warmup steps | OPD steps | student GRPO |
|---|---|---|---|---|---|
| `s2d` | all N on teacher RL | RL teacher | W | O | - |
| `s2d_stage3` | N - h on teacher RL, h new on Stage 3 | RL teacher (N - h) | W | O | Stage 3 on the h held-out labels |
| `s2d_stage3_replay` | N - h on teacher RL, none new | same as `s2d_stage3` | W | O | the same updates on h already-spent labels |
| `grpo_direct` | all N on student RL | - | - | - | GRPO on the raw student |
| `opd_direct` | none | raw teacher | 0 | W + O | - |
| `raw_bridge` | none | raw teacher | W | O | - |
| `no_warmup` | all N on teacher RL | RL teacher | 0 | W + O | - |
| `no_opd` | all N on teacher RL | RL teacher | W + O | 0 | - |

Ablations move the removed stage's steps to the remaining one, so compute matches. The replay
control (`s2d_stage3_replay`) repeats Stage 3's updates from the same post-bridge student on as many
distinct labels as Stage 3 has new ones (h, drawn seeded from those its teacher already spent), so
the only difference between the two Stage-3 arms is whether the labels are new.

Adding an arm is one entry in `SPECS`: the config accepts it, `allocate` spends its labels as its
`labels` field says, and every stage trains, evaluates and tracks it from the spec.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

# Ledger keys: the stages that spend labels. Distillation stages never appear: they use no labels.
TEACHER_RL, STUDENT_RL = "teacher_rl", "student_rl"


class LabelUse(StrEnum):
    """How an arm spends the budget N (`ledger.build_ledger` reads this, never the arm's name)."""

    TEACHER = "teacher"  # all N on teacher RL
    TEACHER_AND_STAGE3 = "teacher_and_stage3"  # N - h on teacher RL, h new labels on Stage 3
    TEACHER_AND_REPLAY = "teacher_and_replay"  # N - h on teacher RL, Stage 3 replays h of the teacher's labels
    STUDENT = "student"  # all N on student GRPO
    NONE = "none"  # no labels (distillation from the raw teacher)

    @property
    def holds_out_stage3(self) -> bool:
        return self in (LabelUse.TEACHER_AND_STAGE3, LabelUse.TEACHER_AND_REPLAY)


@dataclass(frozen=True)
class ArmSpec:
    labels: LabelUse
    teacher: str | None = None  # "raw", an RL-teacher key, or None (no distillation)
    warmup: bool = False
    opd: bool = False
    # Student GRPO after the bridge (or on the raw student when there is no teacher): the params
    # section holding its settings ("student_rl" for Stage 3, "grpo_direct" for the baseline).
    student_rl: str | None = None
    bridge: str | None = None  # arm whose bridge (warmup + OPD student) this arm reuses

    @property
    def distils(self) -> bool:
        return self.teacher is not None


SPECS: dict[str, ArmSpec] = {
    "s2d": ArmSpec(LabelUse.TEACHER, teacher="s2d", warmup=True, opd=True),
    "s2d_stage3": ArmSpec(
        LabelUse.TEACHER_AND_STAGE3, teacher="s2d_stage3", warmup=True, opd=True, student_rl="student_rl"
    ),
    "s2d_stage3_replay": ArmSpec(
        LabelUse.TEACHER_AND_REPLAY,
        teacher="s2d_stage3",
        warmup=True,
        opd=True,
        student_rl="student_rl",
        bridge="s2d_stage3",
    ),
    "grpo_direct": ArmSpec(LabelUse.STUDENT, student_rl="grpo_direct"),
    "opd_direct": ArmSpec(LabelUse.NONE, teacher="raw", opd=True),
    "raw_bridge": ArmSpec(LabelUse.NONE, teacher="raw", warmup=True, opd=True),
    "no_warmup": ArmSpec(LabelUse.TEACHER, teacher="s2d", opd=True),
    "no_opd": ArmSpec(LabelUse.TEACHER, teacher="s2d", warmup=True),
}

# The promotion gate: the candidate's student must beat the baseline's at the same budget.
CANDIDATE_ARM = "s2d"
BASELINE_ARM = "grpo_direct"


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
    """Arms that train their own bridge (an arm with `bridge` set reuses another arm's)."""
    out = [a for a in arms if SPECS[a].distils and SPECS[a].bridge is None]
    for a in arms:
        b = SPECS[a].bridge
        if b is not None and b not in out:
            out.append(b)
    return out


def bridge_stage_arms(stage: str, arms, warmup_steps: int, opd_steps: int) -> list[tuple[str, ArmSpec, int]]:
    """(arm, spec, steps) for every arm that trains its own bridge and has `stage` ("warmup" or "opd")."""
    out = []
    for arm in bridge_arms(arms):
        spec = SPECS[arm]
        if getattr(spec, stage):
            steps = bridge_steps(arm, warmup_steps, opd_steps)[0 if stage == "warmup" else 1]
            out.append((arm, spec, steps))
    return out


def student_rl_arms(arms) -> list[str]:
    """Arms whose student ends with GRPO (Stage 3, its replay control, the direct baseline)."""
    return [a for a in arms if SPECS[a].student_rl]


def bridge_steps(arm: str, warmup_steps: int, opd_steps: int) -> tuple[int, int]:
    """(warmup, OPD) steps for an arm: a removed stage's steps go to the remaining one."""
    spec = SPECS[arm]
    total = warmup_steps + opd_steps
    if spec.warmup and spec.opd:
        return warmup_steps, opd_steps
    return (total, 0) if spec.warmup else (0, total)


def bridge_final_step(arm: str) -> tuple[str, str]:
    """(arm, stage) of the student at the end of the arm's bridge (before any student GRPO)."""
    spec = SPECS[arm]
    return (spec.bridge or arm), ("opd" if spec.opd else "warmup")


def final_student_step(arm: str) -> tuple[str, str]:
    """(arm, stage) whose output directory holds the arm's final student."""
    if SPECS[arm].student_rl:
        return arm, STUDENT_RL
    return bridge_final_step(arm)


# Stages that run one unit of work per arm (an RL teacher, a teacher's rollouts, a bridge, a
# student GRPO run); `s2d <stage> --arm NAME` runs the unit NAME needs, and the flow fans out by unit.
PER_ARM_STAGES = ("teacher_rl", "rollouts", "warmup", "opd", "student_rl")


def stage_unit(stage: str, arm: str) -> str | None:
    """The unit of `stage` that `arm` needs — its RL teacher (`teacher_rl`), its teacher's rollouts
    (`rollouts`), the bridge it uses (`warmup`, `opd`), itself (`student_rl`) — or None when the arm
    has no such step."""
    spec = SPECS[arm]
    if stage == "teacher_rl":
        return spec.teacher if spec.teacher not in (None, "raw") else None
    if stage == "rollouts":
        return spec.teacher if spec.warmup and spec.teacher else None
    if stage in ("warmup", "opd"):
        bridge = spec.bridge or arm
        return bridge if SPECS[bridge].distils and getattr(SPECS[bridge], stage) else None
    if stage == STUDENT_RL:
        return arm if spec.student_rl else None
    raise ValueError(f"stage '{stage}' does not run per arm (those that do: {', '.join(PER_ARM_STAGES)})")


def stage_units(stage: str, arms) -> dict[str, str]:
    """Each unit of `stage` the configured arms need, with the first arm that needs it."""
    out: dict[str, str] = {}
    for arm in arms:
        unit = stage_unit(stage, arm)
        if unit is not None:
            out.setdefault(unit, arm)
    return out


def only_unit(items, stage: str, arm: str | None):
    """`items` (units, or tuples whose first element is the unit) restricted to what `arm` needs in
    `stage`; all of them when `arm` is None."""
    if arm is None:
        return list(items)
    unit = stage_unit(stage, arm)
    return [x for x in items if (x[0] if isinstance(x, tuple) else x) == unit]
