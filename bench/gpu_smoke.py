"""GPU smoke run: every stage of the pipeline on one GPU, with randomly initialised models of the
paper's architectures (Qwen3-8B teacher, Qwen3-1.7B student; configs only, no weights) and 2 steps
per training stage (`profiles/gpu-smoke.yaml`). Reports per-stage wall time, training tokens/s and
peak GPU memory. Proves the GPU path; the accuracies it prints are those of random models.

    python -m bench.gpu_smoke --workdir /tmp/s2d-gpu-smoke --out bench/results/gpu_smoke.json
    python -m bench.gpu_smoke --teacher qwen3-1.7b --student qwen3-0.6b   # a smaller card
    python -m bench.gpu_smoke --teacher tiny --student tiny --device cpu --vocab-size 2000  # dry run

Run from the repository root. Every stage of `s2d_pipeline.stages.STAGES` runs, in order.

The random models share a tokenizer with the real Qwen3 vocabulary size (151,936 entries): the
arithmetic task's characters plus one filler character per remaining id, so every sampled id decodes
and re-encodes to itself. `validate` is skipped where great_expectations is not installed (it needs
no GPU); every other stage runs through `s2d_pipeline.cli.run_stage`, exactly as `s2d run` does.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import traceback
from pathlib import Path

from bench.common import QWEN3_VOCAB, REPO, machine, random_qwen3
from s2d_pipeline.stages import STAGES


def big_vocab_tokenizer(vocab_size: int):
    from s2d_pipeline.models import build_char_tokenizer
    from s2d_pipeline.tasks.arithmetic import VOCAB

    fillers = [chr(0x10000 + i) for i in range(vocab_size - 3 - len(VOCAB))]  # past the surrogates
    return build_char_tokenizer([*VOCAB, *fillers])


def build_models(workdir: Path, teacher: str, student: str, device: str, vocab_size: int) -> dict:
    import torch

    from s2d_pipeline.models import save_model

    tok = big_vocab_tokenizer(vocab_size)
    assert len(tok) == vocab_size, len(tok)
    out = {}
    for role, name in (("teacher", teacher), ("student", student)):
        t0 = time.perf_counter()
        model = random_qwen3(
            name,
            device=device,
            vocab_size=vocab_size,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            bos_token_id=None,
        )
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


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_smoke", description=__doc__.split("\n")[0])
    p.add_argument("--workdir", type=Path, default=Path("/tmp/s2d-gpu-smoke"))
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gpu_smoke.json")
    p.add_argument("--teacher", default="qwen3-8b")
    p.add_argument("--student", default="qwen3-1.7b")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--vocab-size", type=int, default=QWEN3_VOCAB)
    args = p.parse_args()

    import torch

    from s2d_pipeline.cli import run_stage
    from s2d_pipeline.config import load_config

    on_gpu = args.device == "cuda"
    if on_gpu and not torch.cuda.is_available():
        sys.exit("gpu_smoke: no CUDA device; this benchmark needs a GPU")
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    result: dict = {"machine": machine(), "profile": "profiles/gpu-smoke.yaml", "stages": {}}

    def save():
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1, default=str))

    result["models"] = build_models(args.workdir, args.teacher, args.student, args.device, args.vocab_size)
    save()
    cfg = load_config(REPO / "profiles" / "gpu-smoke.yaml", {"runtime": {"device": args.device}}, root=args.workdir)
    for stage in STAGES:
        if stage == "validate":
            try:
                import great_expectations  # noqa: F401
            except ImportError:
                result["stages"][stage] = {"skipped": "great_expectations not installed here (CPU-only stage)"}
                (args.workdir / "artifacts" / stage).mkdir(parents=True, exist_ok=True)
                continue
        if on_gpu:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        try:
            metrics = run_stage(stage, cfg)
        except Exception as exc:
            result["stages"][stage] = {
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc()[-3000:],
            }
            save()
            raise
        result["stages"][stage] = {
            "wall_s": round(time.perf_counter() - t0, 1),
            "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if on_gpu else None,
            "metrics": metrics,
        }
        save()
        print(stage, json.dumps({k: v for k, v in result["stages"][stage].items() if k != "metrics"}), flush=True)
    print(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
