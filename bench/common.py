"""Shared by the benchmarks: the machine they ran on, and the real model shapes (configs only).

The Qwen3 shapes below are the published configs of Qwen/Qwen3-{0.6B,1.7B,4B,8B,14B}; building them
with random weights needs no download and proves memory, placement and speed, never quality.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

QWEN3 = {  # hidden, intermediate, layers, heads, kv heads, tied embeddings
    "qwen3-0.6b": (1024, 3072, 28, 16, 8, True),
    "qwen3-1.7b": (2048, 6144, 28, 16, 8, True),
    "qwen3-4b": (2560, 9728, 36, 32, 8, True),
    "qwen3-8b": (4096, 12288, 36, 32, 8, False),
    "qwen3-14b": (5120, 17408, 40, 40, 8, False),
    "tiny": (64, 128, 2, 2, 1, True),  # not a real model: for a CPU dry run of the GPU scripts
}
QWEN3_VOCAB = 151_936
BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16, for MFU


def qwen3_config(name: str, vocab_size: int = QWEN3_VOCAB, **extra):
    from transformers import Qwen3Config

    hidden, inter, layers, heads, kv, tied = QWEN3[name]
    return Qwen3Config(
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


def random_qwen3(name: str, device: str = "cuda", dtype: str = "bfloat16", vocab_size: int = QWEN3_VOCAB, **extra):
    """A randomly initialised Qwen3 of the named size, built directly on `device`."""
    import torch
    from transformers import Qwen3ForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3ForCausalLM(qwen3_config(name, vocab_size, **extra)).to(getattr(torch, dtype))
    return model


def machine() -> dict:
    import torch

    cpu = platform.machine()
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    info = {
        "cpu": f"{os.cpu_count()} cores, {cpu}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": None,
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info["gpu"] = f"{p.name}, {p.total_memory / 2**30:.0f} GiB"
    for pkg in ("transformers", "trl", "accelerate", "datasets", "vllm"):
        try:
            from importlib.metadata import version

            info[pkg] = version(pkg)
        except Exception:  # noqa: BLE001 - not installed
            info[pkg] = None
    info["commit"] = (
        subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        or None
    )
    return info


def peak_tflops(gpu_name: str | None) -> float | None:
    return next((v for k, v in BF16_PEAK_TFLOPS.items() if gpu_name and k in gpu_name), None)
