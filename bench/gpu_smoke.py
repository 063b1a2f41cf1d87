"""GPU smoke run: every stage of the pipeline on one GPU, with randomly initialised models of the
paper's architectures (Qwen3-8B teacher, Qwen3-1.7B student; configs only, no weights) and 2 steps
per training stage (`profiles/gpu-smoke.yaml`). Records per-stage wall time, the stages' metrics
(training tokens/s) and peak GPU memory. Proves the GPU path; the accuracies are those of random models.

    python -m bench.gpu_smoke run                                          # usually via bash bench/gpu_run.sh
    python -m bench.gpu_smoke run --teacher qwen3-1.7b --student qwen3-0.6b --name gpu_smoke_small
    python -m bench.gpu_smoke run --teacher tiny --student tiny --device cpu --vocab-size 2000 --name dry
    python -m bench.gpu_smoke report

Run from the repository root. A record per stage (and one for building the models) under the run's
`--name` goes to bench/results/gpu_smoke.jsonl; a stopped run resumes while its work directory lasts.

The random models share a tokenizer with the real Qwen3 vocabulary size (151,936 entries): the
arithmetic task's characters plus one filler character per remaining id, so every sampled id decodes
and re-encodes to itself. `validate` is skipped where great_expectations is not installed (it needs
no GPU); every other stage runs through `s2d_pipeline.cli.run_stage`, exactly as `s2d run` does.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import time
from pathlib import Path

from bench import harness
from s2d_pipeline.stages import STAGES

RESULTS = harness.RESULTS / "gpu_smoke.jsonl"
PROFILE = harness.REPO / "profiles" / "gpu-smoke.yaml"
# The published configs of Qwen/Qwen3-*: hidden, intermediate, layers, heads, kv heads, tied embeddings.
# Built with random weights they prove memory, placement and speed, never quality.
QWEN3 = {
    "qwen3-0.6b": (1024, 3072, 28, 16, 8, True),
    "qwen3-1.7b": (2048, 6144, 28, 16, 8, True),
    "qwen3-4b": (2560, 9728, 36, 32, 8, True),
    "qwen3-8b": (4096, 12288, 36, 32, 8, False),
    "qwen3-14b": (5120, 17408, 40, 40, 8, False),
    "tiny": (64, 128, 2, 2, 1, True),  # not a real model: for a CPU dry run of the GPU benchmarks
}
QWEN3_VOCAB = 151_936
# Stand-ins for the runs recorded before the current code, which the report introduces in prose.
NOTES = {
    "gpu_smoke_final": "Re-run on later code (after the resumable data order and `Trainer.save_model`) with a "
    "Qwen3-4B teacher, stopped by a 190 s time limit during `evaluate` "
    "(`SMOKE_TEACHER=qwen3-4b SMOKE_NAME=gpu_smoke_final bash bench/gpu_run.sh`):"
}


def random_qwen3(name: str, device: str = "cuda", dtype: str = "bfloat16", vocab_size: int = QWEN3_VOCAB, **extra):
    """A randomly initialised Qwen3 of the named size, built directly on `device`."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    hidden, inter, layers, heads, kv, tied = QWEN3[name]
    config = Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=hidden // heads if name == "tiny" else 128,
        tie_word_embeddings=tied,
        max_position_embeddings=40960,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        **extra,
    )
    torch.manual_seed(0)
    with torch.device(device):
        return Qwen3ForCausalLM(config).to(getattr(torch, dtype))


def build_models(workdir: Path, teacher: str, student: str, device: str, vocab_size: int) -> dict:
    import torch

    from s2d_pipeline.models import build_char_tokenizer, save_model
    from s2d_pipeline.tasks.arithmetic import VOCAB

    fillers = [chr(0x10000 + i) for i in range(vocab_size - 3 - len(VOCAB))]  # past the surrogates
    tok = build_char_tokenizer([*VOCAB, *fillers])
    assert len(tok) == vocab_size, len(tok)
    out = {}
    for role, name in (("teacher", teacher), ("student", student)):
        t0 = time.perf_counter()
        ids = {"pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id, "bos_token_id": None}
        model = random_qwen3(name, device=device, vocab_size=vocab_size, **ids)
        save_model(model, tok, workdir / "models" / role)
        out[role] = {
            "architecture": name,
            "parameters": sum(p.numel() for p in model.parameters()),
            "build_and_save_s": round(time.perf_counter() - t0, 1),
        }
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    return out


def run(name: str, workdir: Path, teacher: str, student: str, device: str, vocab_size: int, again: bool) -> None:
    import torch

    from s2d_pipeline.cli import run_stage
    from s2d_pipeline.config import load_config

    on_gpu = device == "cuda"
    if on_gpu and not torch.cuda.is_available():
        sys.exit("gpu_smoke: no CUDA device; this benchmark needs a GPU")
    if again or not (workdir / "models").exists():  # the stages' inputs are gone: start over
        shutil.rmtree(workdir, ignore_errors=True)
        again = True

    def measure(cell: dict) -> dict:
        stage = cell["stage"]
        if stage == "models":
            return {"models": build_models(workdir, teacher, student, device, vocab_size)}
        if stage == "validate" and importlib.util.find_spec("great_expectations") is None:
            (workdir / "artifacts" / stage).mkdir(parents=True, exist_ok=True)
            return {"skipped": "great_expectations not installed here (CPU-only stage)"}
        if on_gpu:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        metrics = run_stage(stage, load_config(PROFILE, {"runtime": {"device": device}}, root=workdir))
        return {
            "wall_s": round(time.perf_counter() - t0, 1),
            "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if on_gpu else None,
            "metrics": metrics,
        }

    cells = [{"run": name, "stage": stage} for stage in ("models", *STAGES)]
    harness.run_cells(RESULTS, cells, measure, again)


def section() -> str:
    records = harness.read(RESULTS, "run", "stage")
    if not records:
        return "No GPU run yet: `bash bench/gpu_run.sh` on a GPU machine.\n"
    out = []
    for run_name in dict.fromkeys(r["run"] for r in records):
        stages = {r["stage"]: r for r in records if r["run"] == run_name}
        head = stages.pop("models")
        if "models" not in head:
            out += [f"Run `{run_name}`: building the models failed: {head['error'][:200]}", ""]
            continue
        t, s = head["models"]["teacher"], head["models"]["student"]
        out += [
            *([NOTES[run_name], ""] if run_name in NOTES else []),
            f"Machine: {harness.machines([head])}. Teacher {t['architecture']} "
            f"({t['parameters'] / 1e9:.2f} B parameters), student {s['architecture']} ({s['parameters'] / 1e9:.2f} B), "
            "random init, `profiles/gpu-smoke.yaml` (2 steps per training stage, completions of 128 tokens, bf16, "
            "gradient checkpointing).",
            "",
            "| stage | wall | peak GPU memory | training tokens/s | note |",
            "|---|---|---|---|---|",
        ]
        for stage, v in stages.items():
            if "skipped" in v or "error" in v:
                note = f"skipped: {v['skipped']}" if "skipped" in v else f"failed: {v['error'][:120]}"
                out.append(f"| {stage} | — | — | — | {note} |")
                continue
            tps = [m.get("train_tokens_per_s") for m in (v.get("metrics") or {}).values() if isinstance(m, dict)]
            tps_text = ", ".join(f"{x:.0f}" for x in tps if x)
            out.append(f"| {stage} | {v['wall_s']} s | {v['peak_gpu_gib']} GiB | {tps_text} | |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    def options(p):
        p.add_argument("--name", default="gpu_smoke", help="the run's name in the results file")
        p.add_argument("--workdir", type=Path, default=Path("/tmp/s2d-gpu-smoke"))
        p.add_argument("--teacher", default="qwen3-8b", choices=sorted(QWEN3))
        p.add_argument("--student", default="qwen3-1.7b", choices=sorted(QWEN3))
        p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
        p.add_argument("--vocab-size", type=int, default=QWEN3_VOCAB)

    def run_args(a):
        run(a.name, a.workdir, a.teacher, a.student, a.device, a.vocab_size, a.again)

    harness.main("gpu_smoke", __doc__, run_args, lambda _: section(), run_options=options)


if __name__ == "__main__":
    main()
