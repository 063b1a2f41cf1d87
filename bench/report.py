"""Write bench/RESULTS.md from the benchmarks' records in bench/results/: the hand-written reading of the
numbers (bench/findings.md) first, then each benchmark's section (the label-efficiency plot and curve too).

    python -m bench.report            # from the repository root
"""

from __future__ import annotations

import argparse

from bench import gpu_smoke, harness, label_efficiency, overhead, real_weights, scoring_memory, throughput

SMOLLM2 = harness.REPO / "profiles" / "smollm2-arith.yaml"
SECTIONS = [
    ("1. Label efficiency (`python -m bench.label_efficiency run`)", label_efficiency.section),
    (
        "1b. Sizing the real-weights student (`python -m bench.label_efficiency size --params "
        "profiles/smollm2-arith.yaml`)",
        label_efficiency.sizing_section,
    ),
    (
        "1c. Label efficiency on real weights (`python -m bench.label_efficiency run --params "
        "profiles/smollm2-arith.yaml --budgets 16 64`)",
        lambda: label_efficiency.section(SMOLLM2),
    ),
    ("2. Pipeline overhead (`python -m bench.overhead run`)", overhead.section),
    ("3. Training throughput, CPU (`python -m bench.throughput run cpu`)", throughput.cpu_section),
    (
        "3b. Training and generation throughput, CPU, real weights "
        "(`python -m bench.throughput run cpu --params profiles/smollm2-arith.yaml --steps 2 --repeats 2`)",
        lambda: throughput.cpu_section(SMOLLM2),
    ),
    ("4. GPU: real shapes (`python -m bench.throughput run gpu`)", throughput.gpu_section),
    (
        "5. GPU smoke run of the whole pipeline (`python -m bench.gpu_smoke run`, via `bash bench/gpu_run.sh`)",
        gpu_smoke.section,
    ),
    (
        "6. Real weights on the CPU: SmolLM2-135M-Instruct, whole pipeline (`python -m bench.real_weights run`)",
        real_weights.section,
    ),
    ("7. Per-token scoring memory, CPU (`python -m bench.scoring_memory run`)", scoring_memory.section),
]


def main() -> None:
    argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n")[0]).parse_args()
    parts = [
        "# Benchmark results",
        "",
        "Produced by `python -m bench.report` from `bench/results/`; each section names the command "
        "that made its numbers and the machine it ran on.",
        "",
    ]
    findings = harness.REPO / "bench" / "findings.md"
    if findings.exists():
        parts += [findings.read_text().strip(), ""]
    for heading, section in SECTIONS:
        parts += [f"## {heading}", "", section()]
    out = harness.REPO / "bench" / "RESULTS.md"
    out.write_text("\n".join(parts))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
