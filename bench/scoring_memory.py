"""Peak memory of per-token scoring (teacher log-prob + KL(student || teacher)) at real vocabulary sizes.

    python -m bench.scoring_memory            # every setting below, one fresh child process each
    python -m bench.scoring_memory child --family qwen --tokens 1024 --path chunked   # one setting
    python -m bench.scoring_memory report     # the RESULTS.md section again, from the records

Run from the repository root. Each setting builds randomly initialised one-layer models with a real
vocabulary (Qwen2 151,936; Llama 3 128,256; small hidden sizes: the vocabulary is what costs memory)
and scores 2 completions of 256, 1,024 or 4,096 tokens after a 64-token prompt, with a student, as
evaluate's C2 does. `chunked` is `generation.score_completion_ids`; `unchunked` is the previous
form (a float32 log_softmax over the whole batch's full logits, both models), kept here only for
comparison. The figure is the child's peak RSS (ru_maxrss) during scoring minus its peak before.
The unchunked form is never run at 4,096 tokens (~48 GB), nor when MemAvailable is below ~10x its
largest logits tensor plus 2 GB. Records go to bench/results/scoring_memory.jsonl and a section of
bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
RECORDS = RESULTS / "scoring_memory.jsonl"
SECTION = "## 7. Per-token scoring memory, CPU (`python -m bench.scoring_memory`)"
VOCAB = {"qwen": 151_936, "llama": 128_256}
PROMPT_TOKENS, BATCH = 64, 2
SETTINGS = [
    (family, tokens, path)
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
        "family": family,
        "vocab": vocab,
        "batch": BATCH,
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": tokens,
        "path": path,
        "peak_rss_increase_mib": round((after - before) / 1024, 1),
        "peak_rss_mib": round(after / 1024, 1),
        "wall_s": round(wall, 2),
        "teacher_logprob": [round(x, 3) for x in stats["teacher_logprob"]],
        "kl": round(stats["kl"], 6),
        "tokens": stats["tokens"],
        "torch_threads": torch.get_num_threads(),
    }


def _mem_available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def _host() -> dict:
    import platform

    import torch

    lines = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((x.split(":", 1)[1].strip() for x in lines if x.startswith("model name")), platform.machine())
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return {
        "cpu": f"{len([x for x in lines if x.startswith('processor')])} cores, {model}",
        "torch": torch.__version__,
        "commit": git.stdout.strip(),
    }


def run_all() -> list[dict]:
    host = _host()
    records = []
    for family, tokens, path in SETTINGS:
        if path == "unchunked":
            need = 10 * BATCH * (PROMPT_TOKENS + tokens) * VOCAB[family] * 4 + 2 * 2**30
            if _mem_available_bytes() < need:
                records.append(
                    {"family": family, "completion_tokens": tokens, "path": path, "skipped": "not enough free memory"}
                )
                continue
        cmd = [sys.executable, "-m", "bench.scoring_memory", "child", "--family", family]
        cmd += ["--tokens", str(tokens), "--path", path]
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True).stdout
        record = json.loads(out.strip().splitlines()[-1])
        print(json.dumps(record), flush=True)
        records.append(record)
    stamp = time.strftime("%Y-%m-%d")
    RESULTS.mkdir(exist_ok=True)
    with RECORDS.open("w") as f:
        for r in records:
            f.write(json.dumps({**r, "date": stamp, **host}) + "\n")
    write_section(records, host["cpu"], stamp)
    return records


def section(records: list[dict], cpu: str, date: str) -> str:
    by = {(r["family"], r["completion_tokens"], r["path"]): r for r in records}
    lines = [
        SECTION,
        "",
        f"{date}, {cpu}, one child process per cell. Batch {BATCH}, {PROMPT_TOKENS}-token prompt, one-layer random "
        "models with the real vocabulary, teacher and student scored (teacher log-prob + KL, as C2). Peak RSS "
        "increase during scoring, MiB (unchunked: the previous form; chunked: `generation.score_completion_ids`).",
        "",
        "| vocabulary | completion tokens | unchunked | chunked | chunked, s | same result |",
        "|---|---|---|---|---|---|",
    ]
    for family in VOCAB:
        for tokens in (256, 1024, 4096):
            old, new = by.get((family, tokens, "unchunked"), {}), by.get((family, tokens, "chunked"), {})
            same = "—"
            if "kl" in old and "kl" in new:
                same = "yes" if _close(old, new) else "NO"
            lines.append(
                f"| {family} {VOCAB[family]:,} | {tokens:,} | {old.get('peak_rss_increase_mib', 'not run')} | "
                f"{new.get('peak_rss_increase_mib', 'not run')} | {new.get('wall_s', '')} | {same} |"
            )
    ratios = []
    for family in VOCAB:
        for path in ("unchunked", "chunked"):
            short, long = by.get((family, 256, path), {}), by.get((family, 1024, path), {})
            if "peak_rss_increase_mib" in short and "peak_rss_increase_mib" in long:
                ratio = long["peak_rss_increase_mib"] / short["peak_rss_increase_mib"]
                ratios.append(f"{family} {path} {ratio:.2f}x")
    lines += [
        "",
        f"Peak at 1,024 tokens over the peak at 256: {', '.join(ratios)}. The chunked peak is set by "
        "`generation.SCORING_CHUNK_BYTES` (128 MiB per float32 vocabulary-wide tensor, at most three held at "
        "once), not by batch x length; the unchunked form is not run at 4,096 tokens (it would need ~4x its "
        "1,024-token peak). Wall times come from a machine shared with other jobs.",
    ]
    return "\n".join(lines) + "\n"


def _close(a: dict, b: dict) -> bool:
    import math

    pairs = zip(a["teacher_logprob"], b["teacher_logprob"], strict=True)
    return math.isclose(a["kl"], b["kl"], rel_tol=1e-4, abs_tol=1e-5) and all(
        math.isclose(x, y, rel_tol=1e-5, abs_tol=0.05) for x, y in pairs
    )


def write_section(records: list[dict], cpu: str, date: str) -> None:
    """Replace this benchmark's section of bench/RESULTS.md (or append it)."""
    out = REPO / "bench" / "RESULTS.md"
    text = out.read_text() if out.exists() else ""
    if SECTION in text:
        head, _, rest = text.partition(SECTION)
        tail = rest[rest.index("\n## ") :] if "\n## " in rest else ""
        text = head + section(records, cpu, date) + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section(records, cpu, date)
    out.write_text(text)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.scoring_memory", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd")
    one = sub.add_parser("child", help="one setting in this process (prints one JSON record)")
    one.add_argument("--family", choices=sorted(VOCAB), required=True)
    one.add_argument("--tokens", type=int, required=True)
    one.add_argument("--path", choices=("chunked", "unchunked"), required=True)
    sub.add_parser("report", help="rewrite the RESULTS.md section from bench/results/scoring_memory.jsonl")
    args = p.parse_args()
    if args.cmd == "report":
        records = [json.loads(line) for line in RECORDS.read_text().splitlines() if line.strip()]
        measured = [r for r in records if "cpu" in r]
        write_section(records, measured[0]["cpu"], measured[0]["date"])
    elif args.cmd == "child":
        if args.path == "unchunked" and args.tokens > 1024:
            raise SystemExit("the unchunked form is not run above 1,024 tokens (~48 GB at 4,096)")
        print(json.dumps(child(args.family, args.tokens, args.path)))
    else:
        run_all()


if __name__ == "__main__":
    main()
