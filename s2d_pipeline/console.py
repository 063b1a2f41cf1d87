"""What a person sees while s2d runs: one line per stage saying what it does and how big it is,
progress bars with an ETA for the long loops, a short summary when a stage ends, and the result.

- `announce(name, cfg)`: the stage's one-line plan ("teacher_rl: GRPO on the teacher, ...").
- `summary(name, metrics, cfg)`: a few human lines from the stage's metrics (the metrics files and
  `s2d --json` keep the machine-readable form).
- `progress(...)`: a tqdm bar on stderr; to a terminal it redraws in place and is cleared when done
  (the stage's summary says how it went), to a log or pipe it writes at most one update every
  `LOG_INTERVAL_S` seconds and stays as one line.
- `TrainerProgress`: the same bar for a TRL / Transformers trainer (steps, reward or loss, ETA).
- `report(table, promotion)`: the comparison table and the promotion decision (`s2d report`, the end
  of `make run`).

The console renders what it is given: callers read the files and pass in the facts it prints (the
validation report's skipped rules, the gate's metric). Only the standard library and `arms` are
imported at module level (the CLI must start fast).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from s2d_pipeline import arms as arm_specs

LOG_INTERVAL_S = 30.0  # not a terminal: one progress update per half minute at most


def _tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def progress(iterable=None, *, total: int | None = None, desc: str, unit: str = "it"):
    """A progress bar with ETA on stderr (`S2D_PROGRESS=0` turns bars off)."""
    from tqdm.auto import tqdm

    tty = _tty()
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        leave=not tty,
        dynamic_ncols=tty,
        mininterval=0.2 if tty else LOG_INTERVAL_S,
        disable=os.environ.get("S2D_PROGRESS", "1") == "0",
        file=sys.stderr,
    )


def TrainerProgress(desc: str):  # noqa: N802 - a class built on demand (transformers is imported lazily)
    """A trainer callback: one bar over the run's steps with the latest reward (GRPO) or loss and an
    ETA. Transformers' own ProgressCallback also prints every logged dict as a line; this does not."""
    from transformers import TrainerCallback

    class _TrainerProgress(TrainerCallback):
        def __init__(self):
            self.bar = None

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.bar = progress(total=state.max_steps, desc=desc, unit="step")
                self.bar.update(state.global_step)  # a resumed run starts part-way

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.bar is None or not logs:
                return
            # GRPO: the reward (its loss is ~0 by construction); distillation: the loss.
            key = next((k for k in ("reward", "loss") if isinstance(logs.get(k), (int, float))), None)
            if key:
                self.bar.set_postfix({key: f"{logs[key]:.3g}"}, refresh=False)

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return _TrainerProgress()


# ---- stage plans -------------------------------------------------------------------------------


def _n(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def _teacher_labels(cfg) -> dict[str, int]:
    """Labels each RL teacher is trained on (the ledger's split, computed from the params)."""
    holds_out = any(arm_specs.SPECS[a].labels.holds_out_stage3 for a in cfg.arms)
    holdout = round(cfg.budget * cfg.allocation.stage3_fraction) if holds_out else 0
    out = {}
    for key in arm_specs.rl_teachers(cfg.arms):
        arm = arm_specs.ledger_arm_for_teacher(key, cfg.arms)
        out[key] = cfg.budget - holdout if arm_specs.SPECS[arm].labels.holds_out_stage3 else cfg.budget
    return out


def _steps_by_arm(pairs: list[tuple[str, int]]) -> str:
    steps = sorted({s for _, s in pairs})
    if len(steps) == 1:
        return f"{_n(len(pairs), 'student')} × {steps[0]} steps"
    return ", ".join(f"{arm} {s}" for arm, s in pairs) + " steps"


def announce(name: str, cfg, arm: str | None = None) -> str:
    """One line: what stage `name` does on this config and how big it is; with `arm` (`s2d <stage>
    --arm`) whose unit of a per-arm stage has nothing to do, that it does nothing."""
    if arm is not None and arm_specs.stage_unit(name, arm) is None:
        return f"{name}: arm {arm} has no {name} unit; nothing to do"
    arms = list(cfg.arms)
    m, d = cfg.models, cfg.data
    if name == "prepare":
        if d.generate:
            data = f"generates {d.n_labels} labels, {d.n_prompts} prompts and {d.n_eval} eval problems"
        elif d.split_from:
            data = f"splits {d.split_from} into {d.n_labels} labels, {d.n_prompts} prompts, {d.n_eval} eval"
        else:
            data = "uses the data files in params"
        if m.source == "build":
            p = cfg.prepare
            models = (
                f"pretrains the tiny teacher ({p.teacher.steps} steps) and student ({p.student.steps} steps) "
                "from scratch"
            )
        elif m.source == "gguf":
            heal = f", healed {cfg.prepare.heal.steps} steps" if cfg.prepare.heal.steps else ""
            models = f"imports the GGUF teacher, cuts a {len(m.student.keep_layers or [])}-layer student{heal}"
        else:
            models = "checks that teacher and student share a vocabulary"
        return f"prepare: {data}; {models}"
    if name == "validate":
        return "validate: checks labels, prompts and eval against the data rules (Great Expectations)"
    if name == "allocate":
        return f"allocate: spends the budget of {cfg.budget} labels for {_n(len(arms), 'arm')} (the ledger)"
    if name == "teacher_rl":
        labels = _teacher_labels(cfg)
        head = f"teacher_rl: GRPO on the teacher, {_n(len(labels), 'RL teacher')} × {cfg.teacher_rl.steps} steps"
        if len(labels) == 1:
            return f"{head}, {next(iter(labels.values()))} labels"
        return head + " (" + ", ".join(f"{k}: {n} labels" for k, n in labels.items()) + ")"
    if name == "rollouts":
        teachers = arm_specs.rollout_teachers(arms)
        r = cfg.rollouts
        pool = min(d.n_prompts, r.max_prompts or d.n_prompts) if d.generate or d.split_from else r.max_prompts
        where = f"{pool} unlabeled prompts" if pool else "the unlabeled prompts"
        return (
            f"rollouts: {_n(len(teachers), 'teacher')} ({', '.join(teachers)}) sample "
            f"{_n(r.samples_per_prompt, 'completion')} each on {where}"
        )
    if name in ("warmup", "opd"):
        pairs = [(a, s) for a, _, s in arm_specs.bridge_stage_arms(name, arms, cfg.warmup.steps, cfg.opd.steps)]
        what = (
            f"forward KL ({cfg.warmup.loss}) on teacher rollouts"
            if name == "warmup"
            else "on-policy distillation, per-token reverse KL to the teacher"
        )
        return f"{name}: {what}, {_steps_by_arm(pairs) if pairs else 'no arm needs it'}"
    if name == "student_rl":
        runs = []
        for arm in arm_specs.student_rl_arms(arms):
            settings = getattr(cfg, arm_specs.SPECS[arm].student_rl)
            runs.append(f"{arm} {settings.steps} steps")
        return "student_rl: GRPO on the student, " + (", ".join(runs) if runs else "no arm needs it")
    if name == "evaluate":
        e = cfg.evaluate
        problems = min(d.n_eval, e.max_problems or d.n_eval) if d.generate or d.split_from else "the"
        models = len(arms) + len(arm_specs.rl_teachers(arms)) + 2
        return (
            f"evaluate: greedy, avg_at_k and pass_at_k (k = {e.k}) of {models} models on {problems} eval problems, "
            "and the C1/C2 diagnostics"
        )
    if name == "promote":
        return (
            f"promote: alias 'champion' moves to the {arm_specs.CANDIDATE_ARM} student only if it beats "
            f"{arm_specs.BASELINE_ARM} and the current champion"
        )
    return name


# ---- stage summaries ---------------------------------------------------------------------------


def _secs(metrics: dict) -> str:
    s = metrics.get("wall_s")
    return f" ({s:.0f} s)" if isinstance(s, (int, float)) else ""


def _trend(m: dict, key: str) -> str:
    a, b = m.get(f"{key}_first"), m.get(f"{key}_last")
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        return ""
    return f"{key} {a:.3g} → {b:.3g}"


def summary(
    name: str,
    metrics: dict,
    cfg,
    *,
    skipped_rules: dict[str, str] | None = None,
    gate_metric: str | None = None,
) -> list[str]:
    """A few indented lines that say how stage `name` went. What is not in the metrics comes from
    the caller: `skipped_rules` (validate: each rule the validation report skipped, and why) and
    `gate_metric` (evaluate: the metric the promotion gate compares)."""
    lines: list[str] = []
    if name == "prepare":
        rows = [
            f"{metrics[k]} {k.removesuffix('_rows')}"
            for k in ("labels_rows", "prompts_rows", "eval_rows")
            if k in metrics
        ]
        if rows:
            lines.append("data: " + ", ".join(rows) + f" rows in {cfg.data.labels.rsplit('/', 1)[0]}/")
        for role in ("teacher", "student"):
            m = metrics.get(role)
            if isinstance(m, dict):
                acc = m.get("eval_greedy_accuracy")
                attempts = m.get("attempts", [])
                seconds = sum(a.get("pretrain_s", 0) for a in attempts) or m.get("import_s")
                lines.append(
                    f"{role}: {m.get('parameters', 0):,} parameters, eval greedy accuracy {acc}"
                    + (f", {len(attempts)} attempts" if len(attempts) > 1 else "")
                    + (f" ({seconds:.0f} s)" if seconds else "")
                )
    elif name == "validate":
        rows = metrics.get("rows", {})
        lines.append(
            f"passed {metrics.get('rules_passed')} of {metrics.get('rules_checked')} rules on "
            + ", ".join(f"{n} {s}" for s, n in rows.items())
            + " rows"
        )
        for rule, why in (skipped_rules or {}).items():
            lines.append(f"skipped rule '{rule}': {why}")
    elif name == "allocate":
        spent = metrics.get("spent", {})
        lines.append(
            ", ".join(f"{arm} {n}" for arm, n in spent.items())
            + f" labels spent; Stage 3 holds out {metrics.get('stage3_holdout', 0)}"
        )
    elif name in ("teacher_rl", "warmup", "opd", "student_rl"):
        for arm, m in metrics.items():
            if not isinstance(m, dict):
                continue
            trend = _trend(m, "reward") or _trend(m, "loss")
            size = [f"{m['steps']} steps"] if "steps" in m else []
            if "steps_taken" in m and m.get("c2_checks"):  # warmup under the C2 stopping rule
                size = [f"{m['steps_taken']} of {m.get('steps')} steps (C2 {m['c2_checks'][-1][1]:.3g})"]
            for key, word in (("labels_used", "labels"), ("labels_seen", "labels")):
                if key in m:
                    size.append(f"{m[key]} {word}" + ("" if m.get("new_labels", True) else " (replayed)"))
            lines.append(f"{arm}: {', '.join(x for x in [trend, *size] if x)}{_secs(m)}")
            if isinstance(m.get("c1_gate"), dict) and name == "teacher_rl":
                lines.append(_c1_line(m["c1_gate"], cfg.gates.c1))
    elif name == "rollouts":
        for teacher, m in metrics.items():
            lines.append(
                f"{teacher}: {m.get('rows')} completions, mean teacher log-prob {m.get('mean_teacher_logprob')}"
                f"{_secs(m)}"
            )
    elif name == "evaluate":
        lines.append(_headline(metrics, gate_metric))
        if p := metrics.get("paired", {}).get(gate_metric):
            lo, hi = p["ci95"]
            pair = f"{metrics['paired']['left']} - {metrics['paired']['right']}"
            lines.append(f"{pair}, paired by problem: {p['mean']:+.3f}, 95 % interval [{lo:+.3f}, {hi:+.3f}]")
        lines.append(f"table: {Path(cfg.artifacts_dir) / 'evaluate' / 'comparison.md'} (`s2d report` prints it)")
    elif name == "promote":
        lines.append(_decision(metrics))
    return ["  " + line for line in lines if line]


def _c1_line(c1: dict, gate) -> str:
    verdict = "passes" if c1["gain"] > gate.min_gain else "fails" + (", overridden" if gate.override else "")
    return (
        f"  C1: {c1['metric']} {c1['raw_teacher']:.3f} → {c1['rl_teacher']:.3f} ({c1['gain']:+.3f}) on "
        f"{c1['problems']} eval problems; the gate (> {gate.min_gain:+g}) {verdict}"
    )


def _headline(result: dict, metric: str | None) -> str:
    if metric is None:
        return ""
    arms = result.get("arms", {})
    shown = [
        f"{a} {arms[a][metric]:.3f}"
        for a in (arm_specs.CANDIDATE_ARM, arm_specs.BASELINE_ARM)
        if a in arms and metric in arms[a]
    ]
    raw = result.get("student_raw", {}).get(metric)
    if raw is not None:
        shown.append(f"raw student {raw:.3f}")
    where = f"{metric} (k = {result.get('k')}) on {result.get('eval_problems')} eval problems"
    return f"{where}: " + ", ".join(shown) if shown else ""


def _decision(promote: dict) -> str:
    model = promote.get("model")
    if promote.get("promoted"):
        return (
            f"promoted: {model} version {promote.get('challenger_version')} is now 'champion' "
            f"({promote.get('metric')} {promote.get('challenger')} vs {promote.get('baseline_arm')} "
            f"{promote.get('baseline')})"
        )
    reasons = "; ".join(promote.get("reasons") or []) or "no reason recorded"
    return f"not promoted: {reasons}"


# ---- the result ---------------------------------------------------------------------------------


def report(table: str, promotion: dict | None) -> str:
    """The comparison table (the text of `artifacts/evaluate/comparison.md`) and the promotion
    decision (`metrics/promote.json`; None before `s2d promote` ran)."""
    out = [table.rstrip()]
    if promotion is not None:
        out += ["", "Promotion: " + _decision(promotion)]
    else:
        out += ["", "Promotion: not decided yet (run `s2d promote`)"]
    return "\n".join(out)
