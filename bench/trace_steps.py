"""Where in the trace each model goes wrong (the reasoning variant, `profiles/trace.yaml`): the greedy
completion of every eval problem, split into its running sums and scored sum by sum, for the base
models, the RL teacher and the students of a finished label-efficiency cell.

    python -m bench.trace_steps /tmp/s2d-bench-label-efficiency-trace/seed2/budget64

Run from the repository root. For each model and each running sum i: the share of problems whose
i-th digit group is the correct running sum, the share where it is the carry-dropping sum of the
pretraining noise instead, and the separators the model writes. Results:
bench/results/trace_steps.json (keyed by cell), with the machine they ran on.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

from bench.common import REPO, machine

RESULTS = REPO / "bench" / "results" / "trace_steps.json"
PARAMS = REPO / "profiles" / "trace.yaml"
# (name, path under the cell's artifacts dir): the base models, the RL teacher, the students.
MODELS = [
    ("teacher_raw", "prepare/teacher"),
    ("teacher_rl", "teacher_rl/s2d"),
    ("student_raw", "prepare/student"),
    ("s2d after warmup", "warmup/s2d"),
    ("s2d", "opd/s2d"),
    ("no_warmup", "opd/no_warmup"),
    ("no_opd", "warmup/no_opd"),
    ("grpo_direct", "student_rl/grpo_direct"),
]


def trace_scores(task, completions: list[str], rows: list[dict]) -> dict:
    from s2d_pipeline.tasks.arithmetic import lsb_first

    n_sums = task.n_operands - 1
    right, carry_free = [0] * n_sums, [0] * n_sums
    problems = [r["prompt"] for r in rows]
    for completion, problem in zip(completions, problems, strict=True):
        groups = re.findall(r"\d+", completion)
        for i, (s, cf) in enumerate(
            zip(task.running_sums(problem), task.carry_free_running_sums(problem), strict=True)
        ):
            got = groups[i] if i < len(groups) else None
            right[i] += got == lsb_first(s, task.sum_width)
            carry_free[i] += s != cf and got == lsb_first(cf, task.sum_width)
    n = max(len(problems), 1)
    return {
        "sum_right": [round(x / n, 4) for x in right],
        "sum_carry_dropped": [round(x / n, 4) for x in carry_free],
        "answer_right": round(sum(task.verify(c, r["answer"]) for c, r in zip(completions, rows, strict=True)) / n, 4),
        "separators": dict(Counter(ch for c in completions for ch in c if not ch.isdigit()).most_common(4)),
        "examples": completions[:3],
    }


def measure(cell: Path, seed: int) -> dict:
    from s2d_pipeline import runtime
    from s2d_pipeline.config import load_config
    from s2d_pipeline.data import load_split
    from s2d_pipeline.generation import generate
    from s2d_pipeline.models import load_model, load_tokenizer
    from s2d_pipeline.prompts import render
    from s2d_pipeline.tasks import get_task

    cfg = load_config(PARAMS, {"seed": seed, "tracking": {"enabled": False}}, root=cell)
    runtime.setup(cfg)
    task = get_task(cfg.task)
    rows = load_split(cfg, task, "eval")
    out = {}
    for name, sub in MODELS:
        path = cfg.artifacts / sub
        if not (path / "config.json").exists():
            continue
        tokenizer = load_tokenizer(path, cfg)
        model = load_model(path, cfg, for_inference=True)
        prompts = [render(cfg, task, tokenizer, r["prompt"]) for r in rows]
        greedy = generate(model, tokenizer, prompts, max_new_tokens=cfg.evaluate.max_completion_length)
        out[name] = trace_scores(task, [c[0] for c in greedy], rows)
    return {"problems": len(rows), "task": cfg.task.model_dump(), "models": out}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "cells", type=Path, nargs="+", help="finished label-efficiency cells (<workdir>/seed<S>/budget<N>)"
    )
    args = ap.parse_args(argv)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"cells": {}}
    for cell in args.cells:
        key = f"{cell.parent.name}/{cell.name}"
        results["cells"][key] = measure(cell, int(cell.parent.name.removeprefix("seed")))
        for name, m in results["cells"][key]["models"].items():
            print(
                f"{key} {name:18s} sums right {m['sum_right']} carry dropped {m['sum_carry_dropped']} {m['separators']}"
            )
    results["machine"] = machine()
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
