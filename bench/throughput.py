"""Training and rollout throughput.

    python -m bench.throughput run cpu    # s2d's trainers vs the same TRL trainer called directly (tiny models)
    python -m bench.throughput run cpu --params profiles/smollm2-arith.yaml --steps 2 --repeats 2  # real weights
    python -m bench.throughput run gpu    # random-init Qwen3-1.7B / 8B: train step, teacher forward, generation
    python -m bench.throughput report cpu|gpu [--params ...]

Run from the repository root. `cpu` records a cell per stage (GRPO, forward-KL warmup, OPD: `compare`) in
bench/results/throughput_cpu[_<profile>].jsonl; with a real-weights profile also the teacher's generation
in float32 against `runtime.inference_dtype: auto`, and sampling by `torch.multinomial` against the inverse
CDF, side by side. `gpu`: a cell per random-init Qwen3 measurement (bf16, sdpa) in throughput_gpu.jsonl.
"""

from __future__ import annotations

import functools
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple
from unittest import mock

from bench import harness
from bench.gpu_smoke import random_qwen3

BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16, for MFU
GPU_RESULTS = harness.RESULTS / "throughput_gpu.jsonl"
GPU_CELLS = [
    {"measure": "train_step", "model": "qwen3-1.7b", "batch": 8, "seq": 2048},
    {"measure": "forward", "model": "qwen3-8b", "batch": 8, "seq": 2048},
    *(
        {"measure": "generate", "model": "qwen3-1.7b", "batch": b, "seq": 128, "new_tokens": 128}
        for b in (64, 256, 512)
    ),
]
TRAINERS = {
    "grpo": "teacher RL (GRPOTrainer)",
    "warmup": "warmup (GKDTrainer, forward KL)",
    "opd": "OPD (DistillationTrainer)",
}


def cpu_results(params: Path | None) -> Path:
    return harness.RESULTS / f"throughput_cpu{f'_{params.stem}' if params else ''}.jsonl"


# ---------------------------------------------------------------- gpu


def gpu_cell(cell: dict) -> dict:
    """One GPU measurement with its own model, so peak memory counts that model and nothing left over: a
    training step (forward, backward, fused AdamW; gradient checkpointing), a forward pass without
    gradients (how OPD scores student tokens with the teacher), or sampling exactly `new_tokens` a row."""
    import torch

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    model, kind, new = random_qwen3(cell["model"]), cell["measure"], cell.get("new_tokens")
    ids = torch.randint(0, model.config.vocab_size, (cell["batch"], cell["seq"]), device="cuda")
    model.train(kind == "train_step")
    if kind == "train_step":
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
        opt = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True)

        def step():
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    elif kind == "forward":
        step = torch.no_grad()(lambda: model(input_ids=ids))
    else:
        sampling = {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "eos_token_id": None}
        mask = torch.ones_like(ids)
        step = torch.no_grad()(
            lambda: model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, pad_token_id=0, **sampling
            )
        )
    warmup, reps = (1, 2) if kind == "generate" else (2, 5)
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        step()
    torch.cuda.synchronize()
    dt, peak = (time.perf_counter() - t0) / reps, round(torch.cuda.max_memory_allocated() / 2**30, 1)
    if kind == "generate":
        return {"s": round(dt, 2), "new_tokens_per_s": round(cell["batch"] * new / dt), "peak_gib": peak}
    n, tps = sum(p.numel() for p in model.parameters()), cell["batch"] * cell["seq"] / dt
    tflops = (6 if kind == "train_step" else 2) * n * tps / 1e12  # forward 2N per token, backward 4N more
    peak_tflops = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in torch.cuda.get_device_name(0)), None)
    mfu = round(tflops / peak_tflops, 3) if peak_tflops and kind == "train_step" else None
    return dict(parameters=n, s=round(dt, 3), tokens_per_s=round(tps), tflops=round(tflops, 1), mfu=mfu, peak_gib=peak)


def gpu_section() -> str:
    records = harness.read(GPU_RESULTS, "measure", "model", "batch", "seq")
    if not records:
        return "No GPU run yet: `python -m bench.throughput run gpu` on a GPU machine.\n"
    by = {r["measure"]: r for r in records}
    t, fwd = by["train_step"], by["forward"]
    vllm = "installed; not measured yet" if records[0]["machine"].get("vllm") else "not installed on this machine"
    lines = [
        f"Machine: {harness.machines(records)}. Random-init Qwen3 shapes, bf16, sdpa, {t['batch']} × {t['seq']} tokens.",
        "",
        "| measurement | result | H100 80GB reference |",
        "|---|---|---|",
        f"| Qwen3-1.7B train step (fwd + bwd, grad. checkpointing, fused AdamW) | {t['tokens_per_s']:,} tokens/s, "
        f"{t['tflops']} TFLOP/s (6N), MFU {t['mfu']}, peak {t['peak_gib']} GiB | 22.6k tokens/s, 234 TFLOP/s |",
        f"| Qwen3-8B teacher forward | {fwd['tokens_per_s']:,} tokens/s ({fwd['tflops']} TFLOP/s, 2N), "
        f"peak {fwd['peak_gib']} GiB | 28.5k tokens/s |",
    ]
    for g in (r for r in records if r["measure"] == "generate"):
        ref = "1.75k new tokens/s" if g["batch"] == 64 else ""
        lines.append(
            f"| Qwen3-1.7B HF `generate`, batch {g['batch']} ({g['seq']} prompt + {g['new_tokens']} new tokens, "
            f"sampled) | {g['new_tokens_per_s']:,} new tokens/s, peak {g['peak_gib']} GiB | {ref} |"
        )
    return "\n".join([*lines, f"| vLLM rollouts | {vllm} | |", ""])


# ---------------------------------------------------------------- cpu: s2d vs TRL called directly


class Project(NamedTuple):
    """A scratch project and the batches both sides train on."""

    cfg: Any
    task: Any
    rows: list[dict]  # labeled rows (GRPO)
    rollouts: list[dict]  # prompt + stand-in completion (warmup)
    prompts: list  # trainer prompts (OPD)
    root: Path


def _cpu_project(root: Path, steps: int | None, params: Path | None) -> Project:
    """Default (tiny profile): random-init base models and generated data (no pretraining: speed does not
    depend on what the weights know). With `params` (a real-weights profile such as
    profiles/smollm2-arith.yaml): its own `prepare` (GGUF import, the cut student, no healing) and data,
    so the trainers run on the real model, tokenizer and chat-template prompts."""
    from s2d_pipeline import runtime
    from s2d_pipeline.config import load_config
    from s2d_pipeline.data import load_split
    from s2d_pipeline.io import write_jsonl
    from s2d_pipeline.layout import base_model_dir, data_file
    from s2d_pipeline.models import build_char_tokenizer, build_tiny_model, load_tokenizer, save_model
    from s2d_pipeline.prompts import render, trainer_prompt
    from s2d_pipeline.tasks import get_task
    from s2d_pipeline.tasks.arithmetic import VOCAB

    overrides = {
        "tracking": {"enabled": False},
        "runtime": {"torch_threads": None},
        **{s: {"warmup_steps": 0, **({"steps": steps} if steps else {})} for s in ("teacher_rl", "warmup", "opd")},
    }
    (root / "params.yaml").write_text((params or harness.REPO / "params.yaml").read_text())
    if params is not None:
        from s2d_pipeline.stages import prepare

        cfg = load_config(root / "params.yaml", {**overrides, "prepare": {"heal": {"steps": 0}}}, root=root)
        prepare.run(cfg)
        task = get_task(cfg.task)
    else:
        cfg = load_config(root / "params.yaml", overrides, root=root)
        task = get_task(cfg.task)
        for split, rows in task.generate_splits(0, 512, 2048, 64).items():
            write_jsonl(data_file(cfg, split), rows)
        tok = build_char_tokenizer(VOCAB)
        for role in ("teacher", "student"):
            model = build_tiny_model(getattr(cfg.models, role), tok, cfg.models.max_seq_len, 0)
            save_model(model, tok, base_model_dir(cfg, role))
    runtime.setup(cfg)
    tok = load_tokenizer(base_model_dir(cfg, "teacher"), cfg)
    problems = [r["prompt"] for r in load_split(cfg, task, "prompts")]
    if task.name == "arithmetic":
        rollouts = [{"prompt": p, "completion": task.encode_answer(sum(task.operands(p)))} for p in problems[:1024]]
    else:  # the length of a typical answer matters here, not its content
        typical = "Adding the two numbers gives 10. The answer is 10."
        rollouts = [{"prompt": render(cfg, task, tok, p), "completion": typical} for p in problems[:1024]]
    for r in rollouts:  # the warmup trains on sampled ids; these stand-in completions are encoded once
        r["completion_ids"] = tok(r["completion"], add_special_tokens=False)["input_ids"]
    rows = [{k: r[k] for k in ("id", "prompt", "answer")} for r in load_split(cfg, task, "labels")[:64]]
    return Project(cfg, task, rows, rollouts, [trainer_prompt(cfg, task, p) for p in problems], root)


def _direct(kind: str, p: Project):
    """The same trainer, model, data and batch, written the way a TRL user would (no s2d code)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from s2d_pipeline.layout import base_model_dir

    cfg = p.cfg
    student_dir, teacher_dir = base_model_dir(cfg, "student"), base_model_dir(cfg, "teacher")
    # The settings s2d's tiny profile gives the trainer (TRL's configs default to gradient checkpointing,
    # which s2d turns off on CPU): the comparison is of the code around the trainer, not of settings.
    common = dict(
        output_dir=str(p.root / "direct"),
        learning_rate=1e-4,
        warmup_steps=0,
        lr_scheduler_type="cosine",
        seed=0,
        use_cpu=True,
        bf16=False,
        activation_checkpointing=cfg.runtime.gradient_checkpointing,
        save_strategy="no",
        report_to="none",
        logging_steps=5,
        disable_tqdm=True,
    )
    tok = AutoTokenizer.from_pretrained(str(student_dir))
    tok.padding_side = "left"
    teacher = AutoModelForCausalLM.from_pretrained(str(teacher_dir))
    student = None if kind == "grpo" else AutoModelForCausalLM.from_pretrained(str(student_dir))
    if kind == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        g = cfg.teacher_rl
        same = "num_generations beta epsilon epsilon_high temperature max_completion_length loss_type".split()
        args = GRPOConfig(
            **common,
            **{k: getattr(g, k) for k in same},  # s2d's settings of the same name
            max_steps=g.steps,
            per_device_train_batch_size=g.prompts_per_step * g.num_generations,
            chat_template_kwargs=cfg.models.chat_template_kwargs,
        )

        def reward(prompts, completions, answer, **_):
            return p.task.rewards([c[0]["content"] if isinstance(c, list) else c for c in completions], answer)

        def prompt(problem):  # a conversation for chat models (TRL applies the template), else text
            text = p.task.format_prompt(problem)
            return [{"role": "user", "content": text}] if cfg.models.chat_template else text

        data = Dataset.from_list([{"prompt": prompt(r["prompt"]), "answer": str(r["answer"])} for r in p.rows])
        return GRPOTrainer(model=teacher, reward_funcs=[reward], args=args, train_dataset=data, processing_class=tok)
    if kind == "warmup":
        from trl.experimental.gkd import GKDConfig, GKDTrainer

        from s2d_pipeline.training import PromptCompletionCollator  # the batch format is not the measure

        args = GKDConfig(
            **common,
            max_steps=cfg.warmup.steps,
            per_device_train_batch_size=cfg.warmup.batch_size,
            lmbda=0.0,
            beta=0.0,
            seq_kd=False,
            temperature=1.0,
            max_length=cfg.models.max_seq_len,
            remove_unused_columns=False,
            include_num_input_tokens_seen="non_padding",
        )
        return GKDTrainer(
            model=student,
            teacher_model=teacher,
            args=args,
            data_collator=PromptCompletionCollator(tok, cfg.models.max_seq_len),
            train_dataset=Dataset.from_list(p.rollouts),
            processing_class=tok,
        )
    from trl import DistillationConfig, DistillationTrainer

    o = cfg.opd
    args = DistillationConfig(
        **common,
        **{k: getattr(o, k) for k in ("beta", "temperature", "max_completion_length")},
        max_steps=o.steps,
        per_device_train_batch_size=o.batch_size,
        chat_template_kwargs=cfg.models.chat_template_kwargs,
    )
    data = Dataset.from_list([{"prompt": x} for x in p.prompts])
    return DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=data, processing_class=tok
    )


def _via_s2d(kind: str, p: Project):
    from s2d_pipeline import training
    from s2d_pipeline.layout import base_model_dir, checkpoint_dir

    cfg = p.cfg
    student, teacher = base_model_dir(cfg, "student"), base_model_dir(cfg, "teacher")
    # Each stage deletes its run's checkpoints once the model is saved; do the same here, or the next
    # run would resume the finished one instead of training.
    shutil.rmtree(checkpoint_dir(cfg, f"bench/{kind}"), ignore_errors=True)
    if kind == "grpo":
        return training.train_grpo(cfg, p.task, teacher, p.rows, cfg.teacher_rl, run_name="bench/grpo")
    if kind == "warmup":
        return training.train_forward_kl(
            cfg, cfg.warmup, student, teacher, p.rollouts, cfg.warmup.steps, run_name="bench/warmup"
        )
    return training.train_opd(cfg, student, teacher, p.prompts, cfg.opd.steps, run_name="bench/opd")


def _via_trl(kind: str, p: Project):
    trainer = _direct(kind, p)
    trainer.train()
    return trainer


def _torch_multinomial(run):
    """`run` drawing tokens as s2d did before `generation.inverse_cdf_sampling`: by `torch.multinomial`."""
    from s2d_pipeline import generation

    as_before = lambda probs: generation._torch_multinomial(probs, 1)  # noqa: E731
    return mock.patch.object(generation, "draw_one_per_row", as_before)(run)


SAMPLERS = {"inverse_cdf": _via_s2d, "torch_multinomial": _torch_multinomial(_via_s2d)}


def compare(kind: str, p: Project, repeats: int, sides: dict | None = None) -> dict:
    """Tokens/s of one stage on identical models, data and batch through `s2d_pipeline.training` and
    through the TRL trainer built here by hand (or two other `sides`), interleaved (A B A B ...) so machine
    noise hits both, after one untimed run of each (imports). Wall time from model load to the end of
    `train()`; the mean logged training loss beside it (a side that trains worse shows there)."""
    from s2d_pipeline import runtime

    sides = sides or {"s2d": _via_s2d, "trl": _via_trl}
    for train in sides.values():  # untimed: first-use imports and caches
        train(kind, p)
    runs = {name: [] for name in sides}
    for _ in range(repeats):
        for name, train in sides.items():
            runtime.setup(p.cfg)  # same seeds for both
            t0 = time.perf_counter()
            state = train(kind, p).state
            wall, tokens = time.perf_counter() - t0, int(state.num_input_tokens_seen)
            losses = [h["loss"] for h in state.log_history if "loss" in h]
            runs[name].append(
                {"wall_s": round(wall, 2), "tokens": tokens, "tokens_per_s": round(tokens / wall, 1)}
                | {"mean_loss": round(statistics.fmean(losses), 4) if losses else None}
            )
    median = {n: statistics.median(r["tokens_per_s"] for r in v) for n, v in runs.items()}
    steps = {"grpo": p.cfg.teacher_rl.steps, "warmup": p.cfg.warmup.steps, "opd": p.cfg.opd.steps}[kind]
    first, second = sides
    return {
        "steps": steps,
        "checkpoint_steps": p.cfg.runtime.checkpoint_steps,
        "repeats": repeats,
        "runs": runs,
        "median_tokens_per_s": median,
        f"ratio_{first}_over_{second}": round(median[first] / median[second], 3),
    }


GENERATION_SIDES = {  # a cell: its sides (inference dtype, batch, sampler) and whether it samples
    "generate_dtype": ({"float32": ("float32", 32, "torch"), "auto": ("auto", 64, "torch")}, False),
    "sample_sampler": ({"torch_multinomial": ("auto", 64, "torch"), "inverse_cdf": ("auto", 64, "inverse")}, True),
}


def generation_side_by_side(p: Project, cell: str, problems: int = 64, repeats: int = 3) -> dict:
    """`generate` of the same chat-rendered problems by the teacher on each side of `cell`
    (`GENERATION_SIDES`: `runtime.inference_dtype`, batch, how tokens are drawn), greedy or one sample a
    problem at the rollouts' temperature, alternating (A B A B ...) after one untimed call each: new
    tokens/s (each row up to its end token), wall time and accuracy. The ratio is the measurement."""
    import os

    from s2d_pipeline.generation import generate_completions
    from s2d_pipeline.layout import base_model_dir
    from s2d_pipeline.models import load_model, load_tokenizer
    from s2d_pipeline.prompts import render

    cfg, task, teacher = p.cfg, p.task, base_model_dir(p.cfg, "teacher")
    tokenizer, chat, new = load_tokenizer(teacher, cfg), cfg.models.chat_template, cfg.evaluate.max_completion_length
    rows = task.to_canonical(task.generate_splits(cfg.seed, 0, 0, problems)["eval"], Path("generated.jsonl"))
    prompts = [render(cfg, task, tokenizer, r["prompt"]) for r in rows]
    sides, sampled = GENERATION_SIDES[cell]
    runs, load, models = {s: [] for s in sides}, [os.getloadavg()[0]], {}

    def run(side: str, seed: int, prompts=prompts):
        dtype, batch, sampler = sides[side]
        if side not in models:
            runtime = cfg.runtime.model_copy(update={"inference_dtype": dtype})
            models[side] = load_model(teacher, cfg.model_copy(update={"runtime": runtime}), for_inference=True)
        generate = generate_completions if sampler == "inverse" else _torch_multinomial(generate_completions)
        kwargs = {"greedy": not sampled, "temperature": cfg.rollouts.temperature, "seed": seed, "chat": chat}
        return generate(models[side], tokenizer, prompts, max_new_tokens=new, batch_size=batch, **kwargs)

    for side in sides:  # untimed: first-use costs
        run(side, 0, prompts[:2])
    for seed in range(repeats):
        for side in sides:
            t0 = time.perf_counter()
            groups = run(side, seed)
            wall, tokens = time.perf_counter() - t0, sum(len(g[0].token_ids) for g in groups)
            hits = sum(task.verify(g[0].text, r["answer"]) for g, r in zip(groups, rows, strict=True))
            runs[side].append({"wall_s": round(wall, 2), "tokens": tokens, "accuracy": hits / len(rows)})
    median = {s: round(statistics.median(r["tokens"] / r["wall_s"] for r in v), 1) for s, v in runs.items()}
    dtypes = {s: str(next(m.parameters()).dtype).removeprefix("torch.") for s, m in models.items()}
    wall = {s: statistics.median(r["wall_s"] for r in v) for s, v in runs.items()}
    first, second = sides
    return {"batch": {s: v[1] for s, v in sides.items()}, "problems": len(rows), "max_new_tokens": new} | {
        "sampled": sampled,
        "dtypes": dtypes,
        "runs": runs,
        f"wall_ratio_{first}_over_{second}": round(wall[first] / wall[second], 2),
        "median_tokens_per_s": median,
        f"ratio_{second}_over_{first}": round(median[second] / median[first], 2),
        "load_average": [*load, os.getloadavg()[0]],
    }


def cpu(params: Path | None, steps: int | None, repeats: int, again: bool) -> None:
    """Each stage's s2d/TRL comparison a cell (and, with a real-weights profile, generation in float32 and at
    `runtime.inference_dtype: auto` side by side first).
    `steps=None`: each stage's steps from the params, i.e. the default run, with s2d's checkpointing as
    configured (every `runtime.checkpoint_steps`) counted as s2d's cost."""
    with tempfile.TemporaryDirectory(prefix="s2d-throughput-") as tmp:
        project = functools.cache(lambda: _cpu_project(Path(tmp), steps, params))

        def measure(cell: dict) -> dict:
            stage = cell["stage"]
            if stage in GENERATION_SIDES:
                return generation_side_by_side(project(), stage, repeats=repeats)
            if stage.endswith("_sampler"):
                return compare(stage.removesuffix("_sampler"), project(), repeats, SAMPLERS)
            return compare(stage, project(), repeats)

        real = [*GENERATION_SIDES, "grpo_sampler", "opd_sampler"] if params else []
        stages = real + list(TRAINERS)
        harness.run_cells(cpu_results(params), [{"stage": s} for s in stages], measure, again)


def cpu_section(params: Path | None = None) -> str:
    records = harness.read(cpu_results(params), "stage")
    if not records:
        return harness.not_run("throughput", f" cpu{f' --params {params}' if params else ''}")
    by = {r["stage"]: r for r in records}
    first = by.get("grpo") or records[0]
    lines = [
        f"Machine: {harness.machines(records)}. s2d checkpointing every {first['checkpoint_steps']} steps (its real "
        f"cost, counted); {first['repeats']} runs per side after one untimed run each, interleaved; wall time from "
        "model load to the end of `train()`; tokens = prompt + completion tokens the trainer processed.",
        "",
        "| stage (trainer) | steps | s2d tokens/s (median) | TRL direct tokens/s (median) | ratio (goal ≥ 0.95) |",
        "|---|---|---|---|---|",
    ]
    for kind, name in TRAINERS.items():
        if v := by.get(kind):
            med = v["median_tokens_per_s"]
            lines.append(
                f"| {name} | {v['steps']} | {med['s2d']:.0f} | {med['trl']:.0f} | {v['ratio_s2d_over_trl']:.3f} |"
            )
    if d := by.get("generate_dtype"):
        acc = {s: d["runs"][s][0]["accuracy"] for s in d["runs"]}
        batch = d["batch"]
        lines += [
            "",
            f"Generation, float32 at batch {batch['float32']} vs `runtime.inference_dtype: auto` "
            f"({d['dtypes']['auto']}) at batch {batch['auto']}: greedy `generate` of {d['problems']} problems, up "
            f"to {d['max_new_tokens']} new tokens, {len(d['runs']['auto'])} runs each, alternating: "
            f"**{d['ratio_auto_over_float32']}x** the new tokens/s, "
            f"{d.get('wall_ratio_float32_over_auto', '–')}x less wall time (medians); greedy accuracy "
            f"{acc['float32']:.3f} (float32) vs {acc['auto']:.3f}. Load average "
            f"{d['load_average'][0]:.1f} to {d['load_average'][1]:.1f} on the shared machine: the ratio, not the speeds "
            f"({harness.describe(d['machine'])}).",
        ]
    if d := by.get("sample_sampler"):
        ratio, acc = "ratio_inverse_cdf_over_torch_multinomial", d["runs"]
        ratios = [f"sampled `generate` (batch {d['batch']['inverse_cdf']}) **{d[ratio]}x**"] + [
            f"{TRAINERS[k]}, {v['steps']} steps, **{v[ratio]}x**"
            for k in ("grpo", "opd")
            if (v := by.get(f"{k}_sampler"))
        ]
        lines += [
            "\nTokens drawn by the inverse CDF (`generation.inverse_cdf_sampling`) against `torch.multinomial`, "
            f"alternating, tokens/s: {'; '.join(ratios)} (sampled accuracy {acc['inverse_cdf'][0]['accuracy']:.3f} "
            f"vs {acc['torch_multinomial'][0]['accuracy']:.3f}; {harness.describe(d['machine'])}).",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    def options(p):
        p.add_argument("mode", choices=["cpu", "gpu"])
        p.add_argument("--params", type=Path, help="cpu: a real-weights profile, e.g. profiles/smollm2-arith.yaml")

    def run_options(p):
        p.add_argument("--steps", type=int, default=None, help="cpu: steps per stage (default: the params' steps)")
        p.add_argument("--repeats", type=int, default=3, help="cpu: timed runs of each side")

    def report(a):
        return cpu_section(a.params and a.params.resolve()) if a.mode == "cpu" else gpu_section()

    def run_args(a):
        if a.mode == "gpu":
            harness.run_cells(GPU_RESULTS, GPU_CELLS, gpu_cell, a.again)
        else:
            cpu(a.params and a.params.resolve(), a.steps, a.repeats, a.again)

    harness.main("throughput", __doc__, run_args, report, options, run_options)


if __name__ == "__main__":
    main()
