"""Label efficiency: every arm at several label budgets and seeds, paired by seed.

    python -m bench.label_efficiency run                  # 4 budgets x 3 seeds, ~50 min on 2 CPU cores
    python -m bench.label_efficiency run --budgets 64 --seeds 0
    python -m bench.label_efficiency report               # tables and plot (RESULTS.md: `python -m bench.report`)
    python -m bench.label_efficiency ablation             # s2d vs no_warmup / no_opd with fewer bridge steps

Run from the repository root.

`run` drives the same stage functions as `s2d run` / `dvc repro`, from a scratch root per (seed, budget):
the stages through `validate` run once per seed (same data, base teacher and base student for every
budget), then the stages after it through `evaluate` run per budget (the stage list and its order come
from `s2d_pipeline.stages`). Within one seed every arm therefore starts from the same base models and
draws from the same N labels. Tracking is off (this measures the method, not the store). Accuracy is
read as `avg_at_k` with the evaluate stage's `k`, as recorded in each run's `metrics/evaluate.json`.
Finished (seed, budget) cells are appended to `bench/results/label_efficiency.jsonl`; a rerun skips them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from bench.common import REPO, machine
from s2d_pipeline.stages import STAGES, stages_through

RESULTS = REPO / "bench" / "results" / "label_efficiency.jsonl"
# Run once per seed, shared by every budget: data, base models, validation report.
SEED_STAGES = stages_through("validate")
# Run per (seed, budget): every stage after the shared ones, up to and including evaluate.
BUDGET_STAGES = stages_through("evaluate")[len(SEED_STAGES) :]
# (left arm, right arm): the paired differences reported, left minus right.
PAIRS = [
    ("s2d", "grpo_direct"),
    ("s2d", "opd_direct"),
    ("s2d", "raw_bridge"),
    ("grpo_direct", "raw_bridge"),
    ("s2d", "no_warmup"),
    ("s2d", "no_opd"),
    ("s2d_stage3", "s2d_stage3_replay"),
]


def _config(root: Path, seed: int, budget: int):
    from s2d_pipeline.config import load_config

    return load_config(
        REPO / "params.yaml", {"seed": seed, "budget": budget, "tracking": {"enabled": False}}, root=root
    )


def _run_stages(root: Path, seed: int, budget: int, stages) -> dict:
    from s2d_pipeline.cli import run_stage

    cfg = _config(root, seed, budget)
    times = {}
    for name in stages:
        t0 = time.perf_counter()
        run_stage(name, cfg)
        times[name] = round(time.perf_counter() - t0, 1)
    return times


def _done() -> set[tuple[int, int]]:
    if not RESULTS.exists():
        return set()
    return {(r["seed"], r["budget"]) for r in map(json.loads, RESULTS.read_text().splitlines()) if r}


def run(seeds: list[int], budgets: list[int], workdir: Path) -> None:
    done = _done()
    for seed in seeds:
        seed_root = workdir / f"seed{seed}"
        if not (seed_root / "metrics" / f"{SEED_STAGES[-1]}.json").exists():
            seed_root.mkdir(parents=True, exist_ok=True)
            seed_times = _run_stages(seed_root, seed, 64, SEED_STAGES)
            (seed_root / "times.json").write_text(json.dumps(seed_times))
        seed_times = json.loads((seed_root / "times.json").read_text())
        for budget in budgets:
            if (seed, budget) in done:
                continue
            root = workdir / f"seed{seed}" / f"budget{budget}"
            shutil.rmtree(root, ignore_errors=True)
            (root / "artifacts").mkdir(parents=True)
            (root / "metrics").mkdir()
            (root / "data").symlink_to(seed_root / "data")
            for stage in SEED_STAGES:  # shared per seed: same splits, base models, validation report
                (root / "artifacts" / stage).symlink_to(seed_root / "artifacts" / stage)
            t0 = time.perf_counter()
            times = _run_stages(root, seed, budget, BUDGET_STAGES)
            evaluation = json.loads((root / "metrics" / "evaluate.json").read_text())
            prepare = json.loads((seed_root / "metrics" / "prepare.json").read_text())
            sampled = sampled_metric(evaluation["k"])
            record = {
                "seed": seed,
                "budget": budget,
                "wall_s": round(time.perf_counter() - t0, 1),
                "stage_s": {**seed_times, **times},
                "evaluate": evaluation,
                "base_models": {
                    r: {"eval_greedy": prepare[r]["eval_greedy_accuracy"], "attempts": len(prepare[r]["attempts"])}
                    for r in ("teacher", "student")
                },
                **_provenance(),
            }
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            with RESULTS.open("a") as f:
                f.write(json.dumps(record) + "\n")
            print(
                f"seed {seed} budget {budget}: {sampled} s2d {evaluation['arms'].get('s2d', {}).get(sampled)} "
                f"grpo_direct {evaluation['arms'].get('grpo_direct', {}).get(sampled)} ({record['wall_s']} s)",
                flush=True,
            )


def sampled_metric(k: int) -> str:
    """The evaluate stage's sampled-accuracy metric key (`k` is recorded beside it, checked by `_one_k`)."""
    return "avg_at_k"


def _one_k(ks) -> int:
    """The one `k` a set of results was evaluated at; mixing results of different `k` is an error."""
    ks = set(ks)
    if len(ks) != 1:
        raise SystemExit(f"results were evaluated at different k ({sorted(ks)}): report them separately")
    return ks.pop()


def _provenance() -> dict:
    m = machine()
    return {
        "commit": m["commit"],
        "machine": f"{m['cpu']}, {m['gpu'] or 'no GPU'}, Python {m['python']}, torch {m['torch']}",
    }


ABLATION_RESULTS = REPO / "bench" / "results" / "ablation_bridge_steps.jsonl"
ABLATION_ARMS = ["s2d", "no_warmup", "no_opd"]
# Rerun with other step counts: every stage from warmup through evaluate (student_rl trains nothing
# here: none of ABLATION_ARMS ends with student GRPO). The stages before warmup are reused from the cell.
ABLATION_STAGES = stages_through("evaluate")[STAGES.index("warmup") :]
ABLATION_SHARED = STAGES[: STAGES.index("warmup")]


def ablation(seeds: list[int], budget: int, bridge_steps: list[tuple[int, int]], workdir: Path) -> None:
    """Do the ablations bite when distillation steps are scarce? Re-runs ABLATION_STAGES (warmup through
    evaluate) for s2d / no_warmup / no_opd on the finished (seed, budget) cells with other (warmup, opd)
    step counts (the ablations still get the removed stage's steps); same RL teacher, rollouts and eval."""
    from s2d_pipeline.cli import run_stage
    from s2d_pipeline.config import load_config

    for seed in seeds:
        cell = workdir / f"seed{seed}" / f"budget{budget}"
        for warmup_steps, opd_steps in bridge_steps:
            root = workdir / f"seed{seed}" / f"ablation-b{budget}-w{warmup_steps}-o{opd_steps}"
            shutil.rmtree(root, ignore_errors=True)
            (root / "artifacts").mkdir(parents=True)
            (root / "metrics").mkdir()
            (root / "data").symlink_to((workdir / f"seed{seed}" / "data").resolve())
            for stage in ABLATION_SHARED:
                (root / "artifacts" / stage).symlink_to((cell / "artifacts" / stage).resolve())
            cfg = load_config(
                REPO / "params.yaml",
                {
                    "seed": seed,
                    "budget": budget,
                    "tracking": {"enabled": False},
                    "arms": ABLATION_ARMS,
                    # LR warmup scaled with the run, else short runs never reach
                    # the peak LR and the two-stage arm is handicapped twice
                    "warmup": {"steps": warmup_steps, "warmup_steps": 2},
                    "opd": {"steps": opd_steps, "warmup_steps": 2},
                },
                root=root,
            )
            for stage in ABLATION_STAGES:
                run_stage(stage, cfg)
            evaluation = json.loads((root / "metrics" / "evaluate.json").read_text())
            sampled = sampled_metric(evaluation["k"])
            record = {
                "seed": seed,
                "budget": budget,
                "warmup_steps": warmup_steps,
                "opd_steps": opd_steps,
                "k": evaluation["k"],
                "arms": evaluation["arms"],
                **_provenance(),
            }
            ABLATION_RESULTS.parent.mkdir(parents=True, exist_ok=True)
            with ABLATION_RESULTS.open("a") as f:
                f.write(json.dumps(record) + "\n")
            print(
                f"seed {seed} w{warmup_steps}/o{opd_steps} {sampled}: "
                + ", ".join(f"{a} {evaluation['arms'][a][sampled]}" for a in ABLATION_ARMS),
                flush=True,
            )


def _ablation_k(record: dict) -> int:
    """The evaluate `k` of an ablation record."""
    return record["k"]


def load_ablation_records() -> list[dict]:
    if not ABLATION_RESULTS.exists():
        return []
    return [json.loads(line) for line in ABLATION_RESULTS.read_text().splitlines() if line.strip()]


def ablation_k(records: list[dict]) -> int:
    return _one_k(_ablation_k(r) for r in records)


def ablation_report(records: list[dict] | None = None) -> str:
    import numpy as np

    records = load_ablation_records() if records is None else records
    if not records:
        return ""
    sampled = sampled_metric(ablation_k(records))
    lines = [
        f"| warmup + OPD steps (s2d) | N | s2d {sampled} | no_warmup | no_opd | s2d − no_warmup per seed | "
        "s2d − no_opd per seed |",
        "|---|---|---|---|---|---|---|",
    ]
    for key in sorted({(r["warmup_steps"], r["opd_steps"], r["budget"]) for r in records}):
        rs = sorted(
            (r for r in records if (r["warmup_steps"], r["opd_steps"], r["budget"]) == key), key=lambda r: r["seed"]
        )
        val = {a: [r["arms"][a][sampled] for r in rs] for a in ABLATION_ARMS}
        lines.append(
            f"| {key[0]} + {key[1]} | {key[2]} | {np.mean(val['s2d']):.3f} | {np.mean(val['no_warmup']):.3f} | "
            f"{np.mean(val['no_opd']):.3f} | "
            + ", ".join(f"{a - b:+.3f}" for a, b in zip(val["s2d"], val["no_warmup"], strict=True))
            + " | "
            + ", ".join(f"{a - b:+.3f}" for a, b in zip(val["s2d"], val["no_opd"], strict=True))
            + " |"
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- report


def bootstrap_ci(diffs: list[float], n_boot: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean of paired differences."""
    import numpy as np

    d = np.asarray(diffs, dtype=float)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def load_records() -> list[dict]:
    return [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]


def records_k(records: list[dict]) -> int:
    """The evaluate stage's `k` shared by every (seed, budget) record."""
    return _one_k(r["evaluate"]["k"] for r in records)


def report(records: list[dict]) -> str:
    import numpy as np

    sampled = sampled_metric(records_k(records))
    budgets = sorted({r["budget"] for r in records})
    arms = list(records[0]["evaluate"]["arms"])
    by = {(r["seed"], r["budget"]): r["evaluate"] for r in records}
    seeds = sorted({r["seed"] for r in records})
    lines = [
        f"Seeds {seeds}; eval {records[0]['evaluate']['eval_problems']} problems; sampled = {sampled} at "
        f"temperature 1; commit {records[0]['commit']}; machine: {records[0]['machine']}. "
        f"Wall time per (seed, budget) cell: {np.median([r['wall_s'] for r in records]):.0f} s median, "
        f"{max(r['wall_s'] for r in records):.0f} s max (plus prepare "
        f"{np.median([r['stage_s']['prepare'] for r in records]):.0f} s once per seed).",
        "",
    ]
    for metric in (sampled, "greedy"):
        lines += [
            f"**{metric}, mean ± std over seeds**",
            "",
            "| arm | " + " | ".join(f"N={b}" for b in budgets) + " |",
            "|---|" + "---|" * len(budgets),
        ]
        for name in arms + ["teacher_rl", "teacher_raw", "student_raw"]:
            cells = []
            for b in budgets:
                vals = [_metric(by[(s, b)], name, metric) for s in seeds if (s, b) in by]
                vals = [v for v in vals if v is not None]
                cells.append(
                    f"{np.mean(vals):.3f} ± {np.std(vals, ddof=1) if len(vals) > 1 else 0:.3f}" if vals else ""
                )
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        f"**Paired differences by seed ({sampled})**: per-seed values, mean, 95 % bootstrap interval of "
        "the mean (10,000 resamples of the seeds), wins",
        "",
        "| difference | N | per seed | mean | 95 % CI | wins |",
        "|---|---|---|---|---|---|",
    ]
    for a, b in PAIRS:
        for budget in budgets:
            d = [
                _metric(by[(s, budget)], a, sampled) - _metric(by[(s, budget)], b, sampled)
                for s in seeds
                if (s, budget) in by
                and _metric(by[(s, budget)], a, sampled) is not None
                and _metric(by[(s, budget)], b, sampled) is not None
            ]
            if not d:
                continue
            lo, hi = bootstrap_ci(d)
            lines.append(
                f"| {a} − {b} | {budget} | {', '.join(f'{x:+.3f}' for x in d)} | {np.mean(d):+.3f} | "
                f"[{lo:+.3f}, {hi:+.3f}] | {sum(x > 0 for x in d)}/{len(d)} |"
            )
    return "\n".join(lines) + "\n"


def _metric(evaluation: dict, name: str, metric: str):
    if name in evaluation["arms"]:
        return evaluation["arms"][name][metric]
    if name == "teacher_rl":
        rl = [v for t, v in evaluation["teachers"].items() if t.startswith("teacher_rl/")]
        return rl[0][metric] if rl else None
    if name in evaluation["teachers"]:
        return evaluation["teachers"][name][metric]
    return evaluation.get(name, {}).get(metric)


CURVE_CSV = REPO / "bench" / "results" / "label_efficiency_curve.csv"


def write_curve(records: list[dict], out: Path = CURVE_CSV) -> None:
    """Mean sampled accuracy over seeds per budget, one column per arm (the `dvc plots` curve)."""
    import numpy as np

    sampled = sampled_metric(records_k(records))
    budgets = sorted({r["budget"] for r in records})
    arms = list(records[0]["evaluate"]["arms"])
    lines = [",".join(["budget", *arms])]
    for b in budgets:
        means = [np.mean([_metric(r["evaluate"], a, sampled) for r in records if r["budget"] == b]) for a in arms]
        lines.append(",".join([str(b), *(f"{m:.4f}" for m in means)]))
    out.write_text("\n".join(lines) + "\n")


def plot(records: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    sampled = sampled_metric(records_k(records))
    budgets = sorted({r["budget"] for r in records})
    arms = list(records[0]["evaluate"]["arms"])
    fig, all_axes = plt.subplots(1, 3, figsize=(18, 4.8))
    axes = all_axes[:2]
    for ax, metric in zip(axes, (sampled, "greedy"), strict=True):
        for arm in arms:
            means, stds = [], []
            for b in budgets:
                vals = [_metric(r["evaluate"], arm, metric) for r in records if r["budget"] == b]
                means.append(np.mean(vals))
                stds.append(np.std(vals))
            ax.errorbar(
                budgets,
                means,
                yerr=stds,
                marker="o",
                capsize=3,
                label=arm,
                linewidth=2.5 if arm in ("s2d", "grpo_direct") else 1,
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.set_xlabel("label budget N")
        ax.set_title(f"eval accuracy, {metric} (mean ± std over seeds)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[1].legend(fontsize=8)
    # The seed spread above is mostly the base models; the paired gain is what the claim is about.
    ax = all_axes[2]
    seeds = sorted({r["seed"] for r in records})
    gains = {
        s: [
            next(
                _metric(r["evaluate"], "s2d", sampled) - _metric(r["evaluate"], "grpo_direct", sampled)
                for r in records
                if r["seed"] == s and r["budget"] == b
            )
            for b in budgets
        ]
        for s in seeds
    }
    for s, g in gains.items():
        ax.plot(budgets, g, marker="o", linewidth=1, label=f"seed {s}")
    ax.plot(budgets, np.mean(list(gains.values()), axis=0), marker="s", linewidth=3, color="black", label="mean")
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(budgets, [str(b) for b in budgets])
    ax.set_xlabel("label budget N")
    ax.set_title(f"paired gain s2d − grpo_direct ({sampled})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.label_efficiency", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--budgets", type=int, nargs="+", default=[64, 128, 256, 512])
    r.add_argument(
        "--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "s2d-bench-label-efficiency"
    )
    sub.add_parser("report")
    a = sub.add_parser("ablation")
    a.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    a.add_argument("--budget", type=int, default=64)
    a.add_argument(
        "--bridge-steps",
        nargs="+",
        default=["10,15", "20,30"],
        help="warmup,opd step pairs (the default profile uses 100,150)",
    )
    a.add_argument(
        "--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "s2d-bench-label-efficiency"
    )
    args = p.parse_args()
    if args.cmd == "run":
        run(args.seeds, args.budgets, args.workdir)
    elif args.cmd == "ablation":
        ablation(args.seeds, args.budget, [tuple(map(int, x.split(","))) for x in args.bridge_steps], args.workdir)
    else:
        records = load_records()
        print(report(records))
        plot(records, REPO / "bench" / "label_efficiency.png")
        write_curve(records)
        print(f"plot: {REPO / 'bench' / 'label_efficiency.png'}, curve: {CURVE_CSV}", file=sys.stderr)


if __name__ == "__main__":
    main()
