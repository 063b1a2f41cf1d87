"""Write bench/RESULTS.md (and the label-efficiency plot) from the benchmarks' result files.

    python -m bench.report            # from the repository root

Reads bench/results/{label_efficiency.jsonl, ablation_bridge_steps.jsonl, compute_view.jsonl,
overhead.json, throughput_cpu.json, throughput_cpu_smollm2-arith.json, throughput_gpu.json,
gpu_smoke.json, gpu_smoke_final.json, real_weights_smollm2-arith.json}; a missing file becomes a line
saying which command produces it (the ablation and compute-view reruns are left out when absent). The hand-written reading of the numbers lives in bench/findings.md and is placed first.
"""

from __future__ import annotations

import argparse
import json

from bench import label_efficiency
from bench.common import REPO

RESULTS = REPO / "bench" / "results"


def _load(name: str):
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def _machine(m: dict) -> str:
    return (
        f"{m.get('gpu') or 'no GPU'}; CPU {m['cpu']}; Python {m['python']}, torch {m['torch']}, "
        f"transformers {m.get('transformers')}, trl {m.get('trl')}; commit {m.get('commit')}"
    )


def overhead_section(r: dict | None) -> list[str]:
    if r is None:
        return ["Not run yet: `python -m bench.overhead`.", ""]
    lines = [
        f"Machine: {_machine(r['machine'])}.",
        "",
        "| | `dvc repro` (fresh clone) | Prefect flow (`python -m flows.s2d`) |",
        "|---|---|---|",
    ]
    d, f = r["dvc_repro"], r.get("prefect_flow") or {}
    rows = [
        ("total wall time", "total_s"),
        ("training + evaluation compute (incl. their torch imports)", "training_and_eval_compute_s"),
        ("validation (GX)", "validation_s"),
        ("allocate + promote", "allocate_promote_s"),
        ("tracking (MLflow run setup, metric logging)", "tracking_s"),
        ("process start, CLI imports, config load", "process_start_imports_config_s"),
        ("driver itself (DVC hashing/locking/spawning; Prefect server + task bookkeeping)", "driver_s"),
        ("**orchestration overhead** (total − training/eval compute)", "orchestration_overhead_s"),
    ]
    for label, key in rows:
        lines.append(f"| {label} | {d.get(key, '')} s | {f.get(key, '')} s |")
    lines.append(
        f"| **overhead share** (goal ≤ 10 %) | {d['orchestration_overhead_pct']} % | "
        f"{f.get('orchestration_overhead_pct', '')} % |"
    )
    lines += [
        "",
        f"No-op `dvc repro` (nothing changed): **{r['dvc_repro_noop_s']} s** (goal ≤ 10 s), "
        f"stages run: {r['dvc_repro_noop_stages_run']}. `s2d --help`: {r['cli_help_s']} s. Importing torch + "
        f"transformers + trl + datasets costs {r['import_torch_transformers_trl_datasets_s']} s in every "
        "process that trains or generates (counted inside compute above).",
        "",
    ]
    per_unit = r.get("dvc_repro_per_arm_stages")
    if per_unit:
        lines += [
            f"`dvc repro` with `dvc.per_arm_stages: true` (25 DVC stages instead of 10; commit "
            f"{per_unit['measured_at']}): **{per_unit['total_s']} s, {per_unit['orchestration_overhead_pct']} % "
            f"overhead** — tracking {per_unit['tracking_s']} s, DVC itself {per_unit['driver_s']} s, process start "
            f"{per_unit['process_start_imports_config_s']} s, and {per_unit['training_and_eval_compute_s']} s of "
            "compute, which counts each unit process's own torch import. Hence off by default.",
            "",
        ]
    for part, label in (
        ("dvc_repro", "`dvc repro`"),
        ("prefect_flow", "Prefect flow"),
        ("unit_workers", "unit-worker"),
    ):
        if f"{part}_measured_at" in r:
            lines += [f"The {label} figures are from commit {r[f'{part}_measured_at']} (`--only` kept them).", ""]
    fan = r.get("prefect_flow_parallel_arms_2") or {}
    if "total_s" in fan:
        lines += [
            f"Fanned out (`flow.parallel_arms: 2`: two units of a per-arm stage at once, each in its own "
            f"process with half the cores): **{fan['total_s']} s**, {fan['vs_sequential_flow']} × the sequential "
            f"flow's in the same run; evaluation equal to the sequential flow's: {fan['evaluation_equals_sequential']}. "
            "Compute per stage, summed over its units (against the sequential column): "
            + ", ".join(
                f"{k} {v} s ({f.get('stage_compute_s', {}).get(k, '?')} s)" for k, v in fan["stage_compute_s"].items()
            )
            + ".",
            "",
            *([f"Why the evaluations differ: {fan['why_not_equal']}.", ""] if "why_not_equal" in fan else []),
        ]
    elif fan:
        lines += [f"Fanned-out flow: not measured ({fan.get('not_measured', '')}).", ""]
    units = r.get("unit_workers") or {}
    if units:
        lines += [
            "Units dispatched to workers (`--only units`: a Prefect server, the `s2d/train` deployment, "
            "`flow.unit_deployment: s2d-unit/unit` and two unit workers taking one unit each, one thread per "
            f"training): **{units['fanned_out_deployment_run_s']} s** against {units['sequential_deployment_run_s']} s "
            f"for the same deployment run sequentially ({units['vs_sequential']} ×); evaluation equal to the "
            f"sequential run's: {units['evaluation_equals_sequential']} (2 threads per training there).",
            "",
        ]
    return lines


def throughput_cpu_section(r: dict | None) -> list[str]:
    if r is None:
        return ["Not run yet: `python -m bench.throughput cpu`.", ""]
    lines = [
        f"Machine: {_machine(r['machine'])}. Steps per run ({r['steps']}), s2d checkpointing "
        f"every {r['checkpoint_steps']} steps (its real cost, counted); {r['repeats']} runs per side after one "
        "untimed run each, interleaved; wall time from model load to the end of `train()`; tokens = prompt + "
        "completion tokens the trainer processed.",
        "",
        "| stage (trainer) | s2d tokens/s (median) | TRL direct tokens/s (median) | ratio (goal ≥ 0.95) |",
        "|---|---|---|---|",
    ]
    names = {
        "grpo": "teacher RL (GRPOTrainer)",
        "warmup": "warmup (GKDTrainer, forward KL)",
        "opd": "OPD (DistillationTrainer)",
    }
    for kind, v in r["stages"].items():
        med = v["median_tokens_per_s"]
        lines.append(f"| {names[kind]} | {med['s2d']:.0f} | {med['trl']:.0f} | {v['ratio_s2d_over_trl']:.3f} |")
    return lines + [""]


def generation_lines(r: dict | None) -> list[str]:
    g = (r or {}).get("generation")
    if not g:
        return []
    return [
        f"HF `generate` of the teacher, batch {g['batch']}, up to {g['max_new_tokens']} new tokens, sampled: "
        f"{g['tokens']} tokens in {g['wall_s']} s = {g['tokens_per_s']} tokens/s"
        + (f" ({g['note']})." if g.get("note") else "."),
        "",
    ]


def real_weights_section(r: dict | None) -> list[str]:
    if r is None:
        return ["Not run yet: `python -m bench.real_weights`.", ""]
    k = r["k"]
    lines = [
        f"Machine: {_machine(r['machine'])}. `{r['params']}` {' '.join('-S ' + o for o in r.get('overrides') or [])}"
        + (
            "(metrics collected from a `s2d --params … run`; stage walls from the stages' own timers) "
            if r.get("collected")
            else ""
        )
        + f"— whole pipeline {r['wall_s'] / 60:.1f} min; eval on {r['eval_problems']} problems, avg_at_k with k = {k} at temperature 1.",
        "",
        "| model | greedy | avg_at_k | pass_at_k |",
        "|---|---|---|---|",
    ]
    for name, m in r["table"].items():
        lines.append(f"| {name} | {m['greedy']:.3f} | {m['avg_at_k']:.3f} | {m['pass_at_k']:.3f} |")
    c1 = "; ".join(f"{t}: greedy {v['greedy']:+.3f}, avg_at_k {v['avg_at_k']:+.3f}" for t, v in r["C1"].items())
    lines += ["", f"C1 (RL teacher minus raw teacher): {c1}.", ""]
    c2 = "; ".join(f"{arm}: " + " → ".join(f"{v:.3f}" for v in kl.values()) for arm, kl in (r.get("C2") or {}).items())
    if c2:
        lines += [f"C2 (KL student‖teacher on the student's samples, before warmup → after each stage): {c2}.", ""]
    lines += ["| stage | wall | peak RSS |", "|---|---|---|"]
    for stage, v in r["stages"].items():
        rss = f"{v['peak_rss_gib']} GiB" if "peak_rss_gib" in v else "—"
        lines.append(f"| {stage} | {v['wall_s']} s | {rss} |")
    return lines + [""]


def throughput_gpu_section(r: dict | None) -> list[str]:
    if r is None:
        return ["No GPU run yet: `python -m bench.throughput gpu` on a GPU machine.", ""]
    t, fwd = r["train_step_qwen3_1.7b"], r["forward_qwen3_8b"]
    lines = [
        f"Machine: {_machine(r['machine'])}. Random-init Qwen3 shapes, bf16, sdpa, "
        f"{r['shape']['batch']} × {r['shape']['seq']} tokens.",
        "",
        "| measurement | result | H100 80GB reference |",
        "|---|---|---|",
        f"| Qwen3-1.7B train step (fwd + bwd, grad. checkpointing, fused AdamW) | {t['tokens_per_s']:,} tokens/s, "
        f"{t['tflops']} TFLOP/s (6N), MFU {t['mfu']}, peak {t['peak_gib']} GiB | 22.6k tokens/s, 234 TFLOP/s |",
        f"| Qwen3-8B teacher forward | {fwd['tokens_per_s']:,} tokens/s ({fwd['tflops']} TFLOP/s, 2N), "
        f"peak {fwd['peak_gib']} GiB | 28.5k tokens/s |",
    ]
    for g in r["generate_qwen3_1.7b"]:
        ref = "1.75k new tokens/s" if g["batch"] == 64 else ""
        lines.append(
            f"| Qwen3-1.7B HF `generate`, batch {g['batch']} (128 prompt + {g['new_tokens']} new tokens, "
            f"sampled) | {g['new_tokens_per_s']:,} new tokens/s, peak {g['peak_gib']} GiB | {ref} |"
        )
    lines += [f"| vLLM rollouts | {r['vllm']} | |", ""]
    return lines


def gpu_smoke_section(r: dict | None) -> list[str]:
    if r is None:
        return ["No GPU run yet: `bash bench/gpu_run.sh` on a GPU machine.", ""]
    models = r["models"]
    lines = [
        f"Machine: {_machine(r['machine'])}. Teacher {models['teacher']['architecture']} "
        f"({models['teacher']['parameters'] / 1e9:.2f} B parameters), student {models['student']['architecture']} "
        f"({models['student']['parameters'] / 1e9:.2f} B), random init, `profiles/gpu-smoke.yaml` "
        "(2 steps per training stage, completions of 128 tokens, bf16, gradient checkpointing).",
        "",
        "| stage | wall | peak GPU memory | training tokens/s | note |",
        "|---|---|---|---|---|",
    ]
    for stage, v in r["stages"].items():
        if "skipped" in v:
            lines.append(f"| {stage} | — | — | — | skipped: {v['skipped']} |")
            continue
        if "error" in v:
            lines.append(f"| {stage} | — | — | — | failed: {v['error'][:120]} |")
            continue
        tps = [m.get("train_tokens_per_s") for m in (v.get("metrics") or {}).values() if isinstance(m, dict)]
        tps = [x for x in tps if x]
        lines.append(
            f"| {stage} | {v['wall_s']} s | {v['peak_gpu_gib']} GiB | {', '.join(f'{x:.0f}' for x in tps)} | |"
        )
    return lines + [""]


def main() -> None:
    argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n")[0]).parse_args()
    out = REPO / "bench" / "RESULTS.md"
    parts = [
        "# Benchmark results",
        "",
        "Produced by `python -m bench.report` from `bench/results/`; each section names the command "
        "that made its numbers and the machine it ran on.",
        "",
    ]
    findings = REPO / "bench" / "findings.md"
    if findings.exists():
        parts += [findings.read_text().strip(), ""]
    parts += ["## 1. Label efficiency (`python -m bench.label_efficiency run`)", ""]
    if (RESULTS / "label_efficiency.jsonl").exists():
        records = label_efficiency.load_records()
        parts += [label_efficiency.report(records), "![accuracy against label budget](label_efficiency.png)", ""]
        ablation_records = label_efficiency.load_ablation_records()
        if ablation_records:
            sampled = label_efficiency.sampled_metric(label_efficiency.ablation_k(ablation_records))
            budgets = ", ".join(f"N={b}" for b in sorted({r["budget"] for r in ablation_records}))
            parts += [
                "**Ablations with fewer distillation steps** (`python -m bench.label_efficiency ablation`: "
                f"warmup → OPD → evaluate rerun on the {budgets} cells above, same RL teacher and "
                f"rollouts; each ablation gets the removed stage's steps; {sampled})",
                "",
                label_efficiency.ablation_report(ablation_records),
            ]
        if label_efficiency.COMPUTE_RESULTS.exists():
            parts += [
                "**Compute view** (`python -m bench.label_efficiency compute`): student training tokens and "
                "avg_at_k; `grpo_direct`'s curve starts at the raw student (0 tokens)",
                "",
                label_efficiency.compute_report(
                    label_efficiency.load_records(label_efficiency.COMPUTE_RESULTS), records
                ),
            ]
        label_efficiency.plot(records, REPO / "bench" / "label_efficiency.png")
        label_efficiency.write_curve(records)
    else:
        parts += ["Not run yet.", ""]
    parts += [
        "## 2. Pipeline overhead (`python -m bench.overhead`)",
        "",
        *overhead_section(_load("overhead.json")),
        "## 3. Training throughput, CPU (`python -m bench.throughput cpu`)",
        "",
        *throughput_cpu_section(_load("throughput_cpu.json")),
        "## 3b. Training and generation throughput, CPU, real weights "
        "(`python -m bench.throughput cpu --params profiles/smollm2-arith.yaml --steps 2 --repeats 2`)",
        "",
        *throughput_cpu_section(_load("throughput_cpu_smollm2-arith.json")),
        *generation_lines(_load("throughput_cpu_smollm2-arith.json")),
        "## 4. GPU: real shapes (`python -m bench.throughput gpu`)",
        "",
        *throughput_gpu_section(_load("throughput_gpu.json")),
        "## 5. GPU smoke run of the whole pipeline (`python -m bench.gpu_smoke`, via `bash bench/gpu_run.sh`)",
        "",
        *gpu_smoke_section(_load("gpu_smoke.json")),
        "Re-run on later code (after the resumable data order and `Trainer.save_model`) with a Qwen3-4B "
        "teacher, stopped by a 190 s time limit during `evaluate` "
        "(`SMOKE_TEACHER=qwen3-4b SMOKE_NAME=gpu_smoke_final bash bench/gpu_run.sh`):",
        "",
        *gpu_smoke_section(_load("gpu_smoke_final.json")),
        "## 6. Real weights on the CPU: SmolLM2-135M-Instruct, whole pipeline (`python -m bench.real_weights`)",
        "",
        *real_weights_section(_load("real_weights_smollm2-arith.json")),
    ]
    out.write_text("\n".join(parts))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
