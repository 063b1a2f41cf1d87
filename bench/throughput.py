"""Training and rollout throughput.

    python bench/throughput.py cpu     # s2d's trainers vs the same TRL trainer called directly (tiny models)
    python bench/throughput.py gpu     # random-init Qwen3-1.7B / 8B: train step, teacher forward, generation

`cpu` runs each training stage (GRPO, forward-KL warmup, OPD) twice on identical tiny models, data
and batch: once through `s2d_pipeline.training` and once with the TRL trainer constructed here by
hand, interleaved (A B A B ...) so machine noise hits both; it reports tokens/s and the ratio.

`gpu` measures, with randomly initialised models of the real shapes (configs only, no weights),
bf16 and sdpa: a Qwen3-1.7B training step (forward + backward with gradient checkpointing + fused
AdamW, 8 x 2,048 tokens) with MFU counting 6N FLOPs per token; a Qwen3-8B teacher forward over
8 x 2,048 tokens; and HF `generate` of the 1.7B at several batch sizes; vLLM where it is installed.
Results go to bench/results/throughput_{cpu,gpu}.json (machine and versions included).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import REPO, machine, peak_tflops, random_qwen3  # noqa: E402

RESULTS = REPO / "bench" / "results"


# ---------------------------------------------------------------- gpu

def _timed(fn, warmup: int, reps: int) -> float:
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps


def gpu(out: Path, batch: int = 8, seq: int = 2048, gen_batches=(64, 256, 512), new_tokens: int = 128) -> dict:
    import torch

    info = machine()
    peak = peak_tflops(info["gpu"])
    result: dict = {"machine": info, "shape": {"batch": batch, "seq": seq}}

    def save():
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))

    # 1. student training step
    torch.cuda.reset_peak_memory_stats()
    model = random_qwen3("qwen3-1.7b")
    model.gradient_checkpointing_enable()
    model.config.use_cache = False
    n = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), device="cuda")

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    dt = _timed(step, warmup=2, reps=5)
    tps = batch * seq / dt
    result["train_step_qwen3_1.7b"] = {"parameters": n, "step_s": round(dt, 3), "tokens_per_s": round(tps),
                                       "tflops": round(6 * n * tps / 1e12, 1),
                                       "mfu": round(6 * n * tps / 1e12 / peak, 3) if peak else None,
                                       "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1)}
    save()
    del opt
    model.gradient_checkpointing_disable()
    model.config.use_cache = True
    model.eval()

    # 2. generation (the rollout cost) at growing batch sizes
    result["generate_qwen3_1.7b"] = []
    for b in gen_batches:
        torch.cuda.reset_peak_memory_stats()
        prompt = torch.randint(0, model.config.vocab_size, (b, 128), device="cuda")

        def gen():
            with torch.no_grad():
                model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                               min_new_tokens=new_tokens, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                               pad_token_id=0, eos_token_id=None)

        dt = _timed(gen, warmup=1, reps=2)
        result["generate_qwen3_1.7b"].append({"batch": b, "prompt_tokens": 128, "new_tokens": new_tokens,
                                              "s": round(dt, 2), "new_tokens_per_s": round(b * new_tokens / dt),
                                              "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1)})
        save()
    del model
    torch.cuda.empty_cache()

    # 3. teacher forward (OPD scores every student token with it)
    torch.cuda.reset_peak_memory_stats()
    teacher = random_qwen3("qwen3-8b").eval()
    n = sum(p.numel() for p in teacher.parameters())
    ids = torch.randint(0, teacher.config.vocab_size, (batch, seq), device="cuda")

    def fwd():
        with torch.no_grad():
            teacher(input_ids=ids)

    dt = _timed(fwd, warmup=2, reps=5)
    tps = batch * seq / dt
    result["forward_qwen3_8b"] = {"parameters": n, "s": round(dt, 3), "tokens_per_s": round(tps),
                                  "tflops": round(2 * n * tps / 1e12, 1),
                                  "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1)}
    del teacher
    torch.cuda.empty_cache()
    result["vllm"] = "not installed on this machine" if info.get("vllm") is None else "installed; not measured yet"
    save()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("mode", choices=["cpu", "gpu"])
    args = p.parse_args()
    out = RESULTS / f"throughput_{args.mode}.json"
    result = gpu(out) if args.mode == "gpu" else cpu(out)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
