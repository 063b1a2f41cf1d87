"""Peak memory of per-token scoring (teacher log-prob + KL(student || teacher)) at real vocabulary sizes.

    python -m bench.scoring_memory run       # every cell not yet recorded, one fresh child process each
    python -m bench.scoring_memory report    # this benchmark's part of RESULTS.md

Run from the repository root. A cell builds randomly initialised one-layer models with a real
vocabulary (Qwen2 151,936; Llama 3 128,256; small hidden sizes: the vocabulary is what costs memory)
and scores 2 completions of 256, 1,024 or 4,096 tokens after a 64-token prompt with
`generation.score_completion_ids`, teacher and student, as evaluate's C2 does. The figure is the child's
peak RSS (ru_maxrss) during scoring minus its peak before. Records: bench/results/scoring_memory.jsonl.
The records also keep the previous, unchunked form (a float32 log_softmax over the whole batch's full
logits, both models), measured once beside it up to 1,024 tokens; `git log -S unchunked_token_stats`
finds its code.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from bench import harness

RESULTS = harness.RESULTS / "scoring_memory.jsonl"
CELL = ("family", "completion_tokens", "path")
VOCAB = {"qwen": 151_936, "llama": 128_256}
PROMPT_TOKENS, BATCH = 64, 2
CELLS = [
    {"family": family, "completion_tokens": tokens, "path": "chunked"}
    for family in ("qwen", "llama")
    for tokens in (256, 1024, 4096)
]


def _models(family: str):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    cls, config = (Qwen2ForCausalLM, Qwen2Config) if family == "qwen" else (LlamaForCausalLM, LlamaConfig)

    def build(hidden: int, seed: int):
        torch.manual_seed(seed)
        return cls(
            config(
                vocab_size=VOCAB[family],
                hidden_size=hidden,
                intermediate_size=2 * hidden,
                num_hidden_layers=1,
                num_attention_heads=2,
                num_key_value_heads=2,
                max_position_embeddings=PROMPT_TOKENS + 4096 + 8,
                tie_word_embeddings=True,
            )
        ).eval()

    return build(32, 1), build(64, 2)


def child(family: str, tokens: int) -> dict:
    """One cell, in this process: the peak RSS increase of scoring, in MiB."""
    import resource

    import torch

    from s2d_pipeline.generation import score_completion_ids

    student, teacher = _models(family)
    g = torch.Generator().manual_seed(0)
    vocab = VOCAB[family]
    prompt_ids = [torch.randint(3, vocab, (PROMPT_TOKENS,), generator=g).tolist() for _ in range(BATCH)]
    completion_ids = [torch.randint(3, vocab, (tokens,), generator=g).tolist() for _ in range(BATCH)]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    started = time.perf_counter()
    stats = score_completion_ids(student, teacher, prompt_ids, completion_ids, pad_token_id=0)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "vocab": vocab,
        "batch": BATCH,
        "prompt_tokens": PROMPT_TOKENS,
        "peak_rss_increase_mib": round((after - before) / 1024, 1),
        "peak_rss_mib": round(after / 1024, 1),
        "wall_s": round(wall, 2),
        "teacher_logprob": [round(x, 3) for x in stats["teacher_logprob"]],
        "kl": round(stats["kl"], 6),
        "tokens": stats["tokens"],
        "torch_threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d"),
    }


def measure(cell: dict) -> dict:
    """One cell in a fresh child process (its ru_maxrss is this scoring's alone)."""
    code = f"import json; from bench.scoring_memory import child; print(json.dumps(child({cell['family']!r}, "
    code += f"{cell['completion_tokens']})))"
    out = subprocess.run([sys.executable, "-c", code], cwd=harness.REPO, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def section() -> str:
    records = [r for r in harness.read(RESULTS, *CELL) if "error" not in r]
    if not records:
        return harness.not_run("scoring_memory")
    by = {tuple(r[k] for k in CELL): r for r in records}
    lines = [
        f"Machine: {harness.machines(records)}; measured {', '.join(sorted({r['date'] for r in records}))}. "
        f"One child process per cell. Batch {BATCH}, {PROMPT_TOKENS}-token "
        "prompt, one-layer random models with the real vocabulary, teacher and student scored (teacher log-prob "
        "+ KL, as C2). Peak RSS increase during scoring, MiB (unchunked: the previous form; chunked: "
        "`generation.score_completion_ids`).",
        "",
        "| vocabulary | completion tokens | unchunked | chunked | chunked, s | same result |",
        "|---|---|---|---|---|---|",
    ]
    for family in VOCAB:
        for tokens in (256, 1024, 4096):
            old, new = by.get((family, tokens, "unchunked"), {}), by.get((family, tokens, "chunked"), {})
            same = ("yes" if _close(old, new) else "NO") if "kl" in old and "kl" in new else "—"
            lines.append(
                f"| {family} {VOCAB[family]:,} | {tokens:,} | {old.get('peak_rss_increase_mib', 'not run')} | "
                f"{new.get('peak_rss_increase_mib', 'not run')} | {new.get('wall_s', '')} | {same} |"
            )
    ratios = []
    for family in VOCAB:
        for path in ("unchunked", "chunked"):
            short, long = by.get((family, 256, path), {}), by.get((family, 1024, path), {})
            if "peak_rss_increase_mib" in short and "peak_rss_increase_mib" in long:
                ratios.append(f"{family} {path} {long['peak_rss_increase_mib'] / short['peak_rss_increase_mib']:.2f}x")
    lines += [
        "",
        f"Peak at 1,024 tokens over the peak at 256: {', '.join(ratios)}. The chunked peak is set by "
        "`generation.SCORING_CHUNK_BYTES` (128 MiB per float32 vocabulary-wide tensor, at most three held at "
        "once), not by batch x length; the unchunked form is not run at 4,096 tokens (it would need ~4x its "
        "1,024-token peak). Wall times come from a machine shared with other jobs.",
        "",
    ]
    return "\n".join(lines)


def _close(a: dict, b: dict) -> bool:
    import math

    pairs = zip(a["teacher_logprob"], b["teacher_logprob"], strict=True)
    return math.isclose(a["kl"], b["kl"], rel_tol=1e-4, abs_tol=1e-5) and all(
        math.isclose(x, y, rel_tol=1e-5, abs_tol=0.05) for x, y in pairs
    )


def main() -> None:
    harness.main(
        "scoring_memory", __doc__, lambda a: harness.run_cells(RESULTS, CELLS, measure, a.again), lambda _: section()
    )


if __name__ == "__main__":
    main()
