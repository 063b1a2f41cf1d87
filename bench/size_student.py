"""Sizing probe for a profile's base student: pretrain it once with given steps, noise share and
seed, and report prepare's gate accuracy, greedy and sampled (8 per prompt, T = 1). Nothing is saved;
a line per probe is appended to bench/results/student_sizing.jsonl with the machine it ran on.

    python -m bench.support_mismatch --tasks trace          # once: builds the trace task's data split
    python -m bench.size_student --steps 5000 --noise 0.45 --seed 1100

The seed is prepare's pretraining seed (`seed * 1000 + 100 + attempt` for the student of pipeline
seed `seed`). The probe runs as that pipeline seed, on its data split, which `--root` must hold (a
label-efficiency seed root does). Scored as `evaluate` scores a model (greedy, and avg@k with the
evaluate section's k and temperature, sampled with the pipeline seed). One torch thread, so two probes
can share a 2-core machine. The first 12 lines in the results file predate this: they sampled with the
pretraining seed and all ran on pipeline seed 0's split and global seed, so those of seeds 1100-2102
do not predict prepare's attempts for pipeline seeds 1 and 2.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench.common import REPO, machine

RESULTS = REPO / "bench" / "results" / "student_sizing.jsonl"


def probe(params: Path, root: Path, steps: int, noise: float, seed: int) -> dict:
    from s2d_pipeline import runtime
    from s2d_pipeline.config import load_config
    from s2d_pipeline.layout import metrics_file
    from s2d_pipeline.models import build_char_tokenizer
    from s2d_pipeline.stages import prepare
    from s2d_pipeline.stages.evaluate import score
    from s2d_pipeline.tasks import get_task

    overrides = {
        "seed": seed // 1000,
        "tracking": {"enabled": False},
        "runtime": {"torch_threads": 1},
        "prepare": {"student": {"steps": steps, "noise_rate": noise}},
    }
    cfg = load_config(params, overrides, root=root)
    split_seed = json.loads(metrics_file(cfg, "prepare").read_text()).get("seed")
    if split_seed != cfg.seed:
        raise SystemExit(f"{root} holds pipeline seed {split_seed}'s data split; seed {seed} needs seed {cfg.seed}'s")
    runtime.setup(cfg)
    task = get_task(cfg.task)
    tokenizer = build_char_tokenizer(task.symbols)
    eval_prompts = {r["prompt"] for r in prepare._read_eval(cfg, task)}
    gate_rows = prepare._gate_problems(cfg, task, eval_prompts)
    corpus = task.pretraining_corpus(tokenizer.get_vocab(), eval_prompts, "student")
    started = time.perf_counter()
    model = prepare._pretrain(cfg, corpus, tokenizer, cfg.models.student, cfg.prepare.student, seed, "student")
    pretrain_s = time.perf_counter() - started
    scores = score(task, model, tokenizer, gate_rows, cfg)  # greedy (what the gate checks) and avg@k
    return {
        "params": str(params.relative_to(REPO) if params.is_relative_to(REPO) else params),
        "steps": steps,
        "noise_rate": noise,
        "seed": seed,
        "pipeline_seed": cfg.seed,
        "gate_greedy_accuracy": scores["greedy"],
        f"gate_sampled_avg{cfg.evaluate.k}": scores["avg_at_k"],
        "gate_band": [cfg.prepare.gate_min_accuracy, cfg.prepare.gate_max_accuracy],
        "pretrain_s": round(pretrain_s, 1),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.size_student", description=__doc__.split("\n")[0])
    ap.add_argument("--params", type=Path, default=REPO / "profiles" / "trace.yaml")
    ap.add_argument("--root", type=Path, default=Path("/tmp/s2d-support-mismatch/trace"), help="holds the data split")
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--noise", type=float, required=True)
    ap.add_argument("--seed", type=int, default=100)
    args = ap.parse_args(argv)
    if not (args.root / "data").is_dir():
        raise SystemExit(f"no data split in {args.root}: run `python -m bench.support_mismatch --tasks trace` first")
    result = {**probe(args.params.resolve(), args.root, args.steps, args.noise, args.seed), "machine": machine()}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(json.dumps(result) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
