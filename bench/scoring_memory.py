"""Peak memory of per-token scoring (teacher log-prob + KL(student || teacher)) at real vocabulary sizes.

    python -m bench.scoring_memory run       # every cell not yet recorded, one fresh child process each
    python -m bench.scoring_memory report    # this benchmark's part of RESULTS.md

Run from the repository root. A cell builds randomly initialised one-layer models with a real
vocabulary (Qwen2 151,936; Llama 3 128,256; small hidden sizes: the vocabulary is what costs memory)
and scores 2 completions of 256, 1,024 or 4,096 tokens after a 64-token prompt, with a student, as
evaluate's C2 does. `chunked` is `generation.score_completion_ids`; `unchunked` is the previous
form (a float32 log_softmax over the whole batch's full logits, both models), kept here only for
comparison. The figure is the child's peak RSS (ru_maxrss) during scoring minus its peak before.
The unchunked form is never run at 4,096 tokens (~25 GB), nor when MemAvailable is below ~10x its
largest logits tensor plus 2 GB. Records: bench/results/scoring_memory.jsonl.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench import harness

RESULTS = harness.RESULTS / "scoring_memory.jsonl"
CELL = ("family", "completion_tokens", "path")
VOCAB = {"qwen": 151_936, "llama": 128_256}
PROMPT_TOKENS, BATCH = 64, 2
CELLS = [
    {"family": family, "completion_tokens": tokens, "path": path}
    for family in ("qwen", "llama")
    for tokens in (256, 1024, 4096)
    for path in ("unchunked", "chunked")
    if not (path == "unchunked" and tokens > 1024)
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


def unchunked_token_stats(student, teacher, prompt_ids, completion_ids, pad_token_id: int) -> dict:
    """The previous scoring, for comparison only: every position's full-vocabulary float32
    log_softmax for the whole batch, teacher and student."""
    import torch

    seqs = [a + b for a, b in zip(prompt_ids, completion_ids, strict=True)]
    width = max(len(s) for s in seqs)
    ids = torch.tensor([[pad_token_id] * (width - len(s)) + s for s in seqs])
    attn = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
    mask = torch.zeros_like(ids, dtype=torch.bool)
    for i, c in enumerate(completion_ids):
        mask[i, width - len(c) :] = True
    target_mask = mask[:, 1:]
    position_ids = (attn.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        t_logp = torch.log_softmax(
            teacher(input_ids=ids, attention_mask=attn, position_ids=position_ids).logits[:, :-1].float(), -1
        )
        tok_logp = t_logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
        logprobs = (tok_logp * target_mask).sum(-1).tolist()
        s_logp = torch.log_softmax(
            student(input_ids=ids, attention_mask=attn, position_ids=position_ids).logits[:, :-1].float(), -1
        )
        kl = (s_logp.exp() * (s_logp - t_logp)).sum(-1)
        tokens = int(target_mask.sum())
        return {"teacher_logprob": logprobs, "kl": float((kl * target_mask).sum()) / tokens, "tokens": tokens}


def child(family: str, tokens: int, path: str) -> dict:
    """One setting, in this process: peak RSS increase of scoring, in MiB."""
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
    if path == "chunked":
        stats = score_completion_ids(student, teacher, prompt_ids, completion_ids, pad_token_id=0)
    else:
        stats = unchunked_token_stats(student, teacher, prompt_ids, completion_ids, pad_token_id=0)
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


def _mem_available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def _fits(cell: dict) -> bool:
    if cell["path"] == "chunked":
        return True
    need = 10 * BATCH * (PROMPT_TOKENS + cell["completion_tokens"]) * VOCAB[cell["family"]] * 4 + 2 * 2**30
    return _mem_available_bytes() >= need


def measure(cell: dict) -> dict:
    """One cell in a fresh child process (its ru_maxrss is this scoring's alone)."""
    cmd = [sys.executable, "-m", "bench.scoring_memory", "child", "--family", cell["family"]]
    cmd += ["--tokens", str(cell["completion_tokens"]), "--path", cell["path"]]
    out = subprocess.run(cmd, cwd=harness.REPO, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run(again: bool = False) -> None:
    cells = []
    for cell in CELLS:
        if _fits(cell):
            cells.append(cell)
        else:
            print(f"{cell}: skipped, not enough free memory for the unchunked form", flush=True)
    harness.run_cells(RESULTS, cells, measure, again)


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
    if sys.argv[1:2] == ["child"]:  # one cell, in this process: prints its measured fields as JSON
        p = argparse.ArgumentParser(prog="python -m bench.scoring_memory child")
        p.add_argument("--family", choices=sorted(VOCAB), required=True)
        p.add_argument("--tokens", type=int, required=True)
        p.add_argument("--path", choices=("chunked", "unchunked"), required=True)
        args = p.parse_args(sys.argv[2:])
        if args.path == "unchunked" and args.tokens > 1024:
            raise SystemExit("the unchunked form is not run above 1,024 tokens (~25 GB at 4,096)")
        print(json.dumps(child(args.family, args.tokens, args.path)))
        return
    args = harness.parse_args("scoring_memory", __doc__)
    if args.command == "report":
        print(section())
    else:
        run(args.again)


if __name__ == "__main__":
    main()
