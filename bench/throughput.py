"""Training and rollout throughput.

    python -m bench.throughput cpu     # s2d's trainers vs the same TRL trainer called directly (tiny models)
    python -m bench.throughput gpu     # random-init Qwen3-1.7B / 8B: train step, teacher forward, generation

Run from the repository root.

`cpu` runs each training stage (GRPO, forward-KL warmup, OPD) twice on identical tiny models, data
and batch: once through `s2d_pipeline.training` and once with the TRL trainer constructed here by
hand, interleaved (A B A B ...) so machine noise hits both, after one untimed run of each (imports); it
reports tokens/s and the ratio.

`gpu` measures, with randomly initialised models of the real shapes (configs only, no weights),
bf16 and sdpa: a Qwen3-1.7B training step (forward + backward with gradient checkpointing + fused
AdamW, 8 x 2,048 tokens) with MFU counting 6N FLOPs per token; a Qwen3-8B teacher forward over
8 x 2,048 tokens; and HF `generate` of the 1.7B at several batch sizes; vLLM where it is installed.
Results go to bench/results/throughput_{cpu,gpu}.json (machine and versions included).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from bench.common import REPO, machine, peak_tflops, random_qwen3

RESULTS = REPO / "bench" / "results"


# ---------------------------------------------------------------- gpu


def _timed(fn, *args, warmup: int, reps: int) -> float:
    """Mean seconds of `fn(*args)` over `reps` calls, after `warmup` untimed ones. The arguments are
    referenced only during the call, so a model or optimizer the caller deletes afterwards is freed
    before the next measurement (its peak memory must not include them)."""
    import torch

    for _ in range(warmup):
        fn(*args)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn(*args)
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps


def _train_step(model, opt, ids) -> None:
    """One causal-LM training step on `ids`: forward, backward, optimizer step."""
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def _generate(model, prompt, new_tokens: int) -> None:
    """Sample exactly `new_tokens` tokens after each row of `prompt` (no early stop)."""
    import torch

    with torch.no_grad():
        model.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            pad_token_id=0,
            eos_token_id=None,
        )


def _forward(model, ids) -> None:
    """A forward pass over `ids` without gradients (how OPD scores student tokens with the teacher)."""
    import torch

    with torch.no_grad():
        model(input_ids=ids)


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
    dt = _timed(_train_step, model, opt, ids, warmup=2, reps=5)
    tps = batch * seq / dt
    result["train_step_qwen3_1.7b"] = {
        "parameters": n,
        "step_s": round(dt, 3),
        "tokens_per_s": round(tps),
        "tflops": round(6 * n * tps / 1e12, 1),
        "mfu": round(6 * n * tps / 1e12 / peak, 3) if peak else None,
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1),
    }
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
        dt = _timed(_generate, model, prompt, new_tokens, warmup=1, reps=2)
        result["generate_qwen3_1.7b"].append(
            {
                "batch": b,
                "prompt_tokens": 128,
                "new_tokens": new_tokens,
                "s": round(dt, 2),
                "new_tokens_per_s": round(b * new_tokens / dt),
                "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1),
            }
        )
        save()
    del model
    torch.cuda.empty_cache()

    # 3. teacher forward (OPD scores every student token with it)
    torch.cuda.reset_peak_memory_stats()
    teacher = random_qwen3("qwen3-8b").eval()
    n = sum(p.numel() for p in teacher.parameters())
    ids = torch.randint(0, teacher.config.vocab_size, (batch, seq), device="cuda")
    dt = _timed(_forward, teacher, ids, warmup=2, reps=5)
    tps = batch * seq / dt
    result["forward_qwen3_8b"] = {
        "parameters": n,
        "s": round(dt, 3),
        "tokens_per_s": round(tps),
        "tflops": round(2 * n * tps / 1e12, 1),
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1),
    }
    del teacher
    torch.cuda.empty_cache()
    result["vllm"] = "not installed on this machine" if info.get("vllm") is None else "installed; not measured yet"
    save()
    return result


# ---------------------------------------------------------------- cpu: s2d vs TRL called directly


def _cpu_project(root: Path, steps: int | None, params: Path | None = None):
    """A project for the CPU comparison. Default (tiny profile): random-init base models and generated
    data (no pretraining: speed does not depend on what the weights know). With `params` (a real-weights
    profile such as profiles/smollm2-arith.yaml): its own `prepare` (GGUF import, the cut student, no
    healing) and data, so the trainers run on the real model, tokenizer and chat-template prompts."""
    from s2d_pipeline.config import load_config
    from s2d_pipeline.io import write_jsonl
    from s2d_pipeline.layout import base_model_dir, data_file
    from s2d_pipeline.models import build_char_tokenizer, build_tiny_model, save_model
    from s2d_pipeline.tasks import get_task
    from s2d_pipeline.tasks.arithmetic import VOCAB

    overrides = {
        "tracking": {"enabled": False},
        "runtime": {"torch_threads": None},
        **{
            stage: {"warmup_steps": 0, **({"steps": steps} if steps else {})}
            for stage in ("teacher_rl", "warmup", "opd")
        },
    }
    (root / "params.yaml").write_text((params or REPO / "params.yaml").read_text())
    if params is not None:
        from s2d_pipeline.stages import prepare

        cfg = load_config(root / "params.yaml", {**overrides, "prepare": {"heal": {"steps": 0}}}, root=root)
        prepare.run(cfg)
        return cfg, get_task(cfg.task)
    cfg = load_config(root / "params.yaml", overrides, root=root)
    task = get_task(cfg.task)
    for split, rows in task.generate_splits(0, 512, 2048, 64).items():
        write_jsonl(data_file(cfg, split), rows)
    tok = build_char_tokenizer(VOCAB)
    for role in ("teacher", "student"):
        save_model(
            build_tiny_model(getattr(cfg.models, role), tok, cfg.models.max_seq_len, 0), tok, base_model_dir(cfg, role)
        )
    return cfg, task


def _direct(kind: str, cfg, task, rows, rollouts, prompts, out: Path):
    """The same trainer, model, data and batch, written the way a TRL user would (no s2d code)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from s2d_pipeline.layout import base_model_dir

    student_dir, teacher_dir = base_model_dir(cfg, "student"), base_model_dir(cfg, "teacher")
    # The settings s2d's tiny profile gives the trainer (TRL's configs default to gradient checkpointing,
    # which s2d turns off on CPU): the comparison is of the code around the trainer, not of settings.
    common = dict(
        output_dir=str(out),
        learning_rate=1e-4,
        warmup_steps=0,
        lr_scheduler_type="cosine",
        seed=0,
        use_cpu=True,
        bf16=False,
        # `activation_checkpointing` (transformers 5): the old name warns on every trainer
        activation_checkpointing=cfg.runtime.gradient_checkpointing,
        save_strategy="no",
        report_to="none",
        logging_steps=5,
        disable_tqdm=True,
    )
    tok = AutoTokenizer.from_pretrained(str(student_dir))
    tok.padding_side = "left"
    if kind == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        g = cfg.teacher_rl
        model = AutoModelForCausalLM.from_pretrained(str(teacher_dir))
        args = GRPOConfig(
            **common,
            max_steps=g.steps,
            per_device_train_batch_size=g.prompts_per_step * g.num_generations,
            num_generations=g.num_generations,
            beta=g.beta,
            epsilon=g.epsilon,
            epsilon_high=g.epsilon_high,
            temperature=g.temperature,
            max_completion_length=g.max_completion_length,
            loss_type=g.loss_type,
            chat_template_kwargs=cfg.models.chat_template_kwargs,
        )

        def reward(prompts, completions, answer, **_):
            texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
            return task.rewards(texts, answer)

        def prompt(problem):  # a conversation for chat models (TRL applies the template), else text
            if cfg.models.chat_template:
                return [{"role": "user", "content": task.format_prompt(problem)}]
            return task.format_prompt(problem)

        data = Dataset.from_list([{"prompt": prompt(r["prompt"]), "answer": str(r["answer"])} for r in rows])
        return GRPOTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=data, processing_class=tok)
    if kind == "warmup":
        from trl.experimental.gkd import GKDConfig, GKDTrainer

        from s2d_pipeline.training import PromptCompletionCollator  # the batch format is not the measure

        w = cfg.warmup
        args = GKDConfig(
            **common,
            max_steps=w.steps,
            per_device_train_batch_size=w.batch_size,
            lmbda=0.0,
            beta=0.0,
            seq_kd=False,
            temperature=1.0,
            max_length=cfg.models.max_seq_len,
            remove_unused_columns=False,
            include_num_input_tokens_seen="non_padding",
        )
        return GKDTrainer(
            model=AutoModelForCausalLM.from_pretrained(str(student_dir)),
            teacher_model=AutoModelForCausalLM.from_pretrained(str(teacher_dir)),
            args=args,
            data_collator=PromptCompletionCollator(tok, cfg.models.max_seq_len),
            train_dataset=Dataset.from_list(rollouts),
            processing_class=tok,
        )
    from trl import DistillationConfig, DistillationTrainer

    o = cfg.opd
    args = DistillationConfig(
        **common,
        max_steps=o.steps,
        per_device_train_batch_size=o.batch_size,
        beta=o.beta,
        temperature=o.temperature,
        max_completion_length=o.max_completion_length,
        chat_template_kwargs=cfg.models.chat_template_kwargs,
    )
    return DistillationTrainer(
        model=AutoModelForCausalLM.from_pretrained(str(student_dir)),
        teacher_model=AutoModelForCausalLM.from_pretrained(str(teacher_dir)),
        args=args,
        train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
        processing_class=tok,
    )


def cpu(out: Path, steps: int | None = None, repeats: int = 3, params: Path | None = None) -> dict:
    """Tokens/s of GRPO, forward-KL warmup and OPD through s2d vs TRL directly; A B A B interleaved.
    `steps=None`: each stage's steps from params.yaml (150 / 100 / 150), i.e. the default run, with
    s2d's checkpointing as configured (every `runtime.checkpoint_steps`) counted as s2d's cost.
    `params`: a real-weights profile instead of the tiny models; HF `generate` tokens/s is added."""
    import statistics

    from s2d_pipeline import runtime, training
    from s2d_pipeline.data import load_split
    from s2d_pipeline.layout import base_model_dir, checkpoint_dir

    with tempfile.TemporaryDirectory(prefix="s2d-throughput-") as tmp:
        cfg, task = _cpu_project(Path(tmp), steps, params)
        result: dict = {
            "machine": machine(),
            "repeats": repeats,
            "stages": {},
            "steps": {"grpo": cfg.teacher_rl.steps, "warmup": cfg.warmup.steps, "opd": cfg.opd.steps},
            "checkpoint_steps": cfg.runtime.checkpoint_steps,
            "profile": cfg.profile,
        }
        runtime.setup(cfg)
        rows = [
            {"id": r["id"], "prompt": r["prompt"], "answer": r["answer"]} for r in load_split(cfg, task, "labels")[:64]
        ]
        from s2d_pipeline.models import load_model, load_tokenizer
        from s2d_pipeline.prompts import render, trainer_prompt

        student, teacher = base_model_dir(cfg, "student"), base_model_dir(cfg, "teacher")
        tok = load_tokenizer(teacher, cfg)
        problems = [r["prompt"] for r in load_split(cfg, task, "prompts")]
        prompts = [trainer_prompt(cfg, task, p) for p in problems]
        if task.name == "arithmetic":
            rollouts = [
                {"prompt": p, "completion": task.encode_answer(sum(task.operands(p)))} for p in problems[:1024]
            ]
        else:  # the length of a typical answer matters here, not its content
            rollouts = [
                {
                    "prompt": render(cfg, task, tok, p),
                    "completion": "Adding the two numbers gives 10. The answer is 10.",
                }
                for p in problems[:1024]
            ]
        for r in rollouts:  # the warmup trains on sampled ids; these stand-in completions are encoded once
            r["completion_ids"] = tok(r["completion"], add_special_tokens=False)["input_ids"]
        if params is not None:
            result["generation"] = _generation_speed(
                cfg, load_model(teacher, cfg), tok, [r["prompt"] for r in rollouts]
            )

        def via_s2d(kind):
            # Each stage deletes its run's checkpoints once the model is saved; do the same here, or the
            # next run would resume the finished one instead of training.
            shutil.rmtree(checkpoint_dir(cfg, f"bench/{kind}"), ignore_errors=True)
            if kind == "grpo":
                return training.train_grpo(cfg, task, teacher, rows, cfg.teacher_rl, run_name="bench/grpo")
            if kind == "warmup":
                return training.train_forward_kl(
                    cfg, cfg.warmup, student, teacher, rollouts, cfg.warmup.steps, run_name="bench/warmup"
                )
            return training.train_opd(cfg, student, teacher, prompts, cfg.opd.steps, run_name="bench/opd")

        def via_trl(kind):
            trainer = _direct(kind, cfg, task, rows, rollouts, prompts, Path(tmp) / "direct")
            trainer.train()
            return trainer

        for kind in ("grpo", "warmup", "opd"):
            runs = {"s2d": [], "trl": []}
            for fn in (via_s2d, via_trl):  # untimed: first-use imports and caches
                fn(kind)
            for _ in range(repeats):
                for name, fn in (("s2d", via_s2d), ("trl", via_trl)):
                    runtime.setup(cfg)  # same seeds for both
                    t0 = time.perf_counter()
                    trainer = fn(kind)
                    wall = time.perf_counter() - t0
                    tokens = trainer.state.num_input_tokens_seen
                    runs[name].append(
                        {"wall_s": round(wall, 2), "tokens": int(tokens), "tokens_per_s": round(tokens / wall, 1)}
                    )
            med = {n: statistics.median(r["tokens_per_s"] for r in v) for n, v in runs.items()}
            result["stages"][kind] = {
                "runs": runs,
                "median_tokens_per_s": med,
                "ratio_s2d_over_trl": round(med["s2d"] / med["trl"], 3),
            }
            print(
                kind,
                result["stages"][kind]["median_tokens_per_s"],
                result["stages"][kind]["ratio_s2d_over_trl"],
                flush=True,
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    return result


def _generation_speed(cfg, model, tokenizer, prompts: list[str], batch: int = 32) -> dict:
    """HF `generate` of the teacher: sampled tokens per second at one batch size (after one untimed call)."""
    from s2d_pipeline.generation import generate

    prompts = (prompts * batch)[:batch]
    new = cfg.rollouts.max_completion_length
    generate(model, tokenizer, prompts[:2], max_new_tokens=4, greedy=False, seed=0)
    t0 = time.perf_counter()
    texts = generate(model, tokenizer, prompts, max_new_tokens=new, greedy=False, seed=0, batch_size=batch)
    wall = time.perf_counter() - t0
    tokens = sum(len(tokenizer(t[0], add_special_tokens=False)["input_ids"]) for t in texts)
    return {
        "batch": batch,
        "max_new_tokens": new,
        "tokens": tokens,
        "wall_s": round(wall, 2),
        "tokens_per_s": round(tokens / wall, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__.split("\n")[0])
    p.add_argument("mode", choices=["cpu", "gpu"])
    p.add_argument(
        "--params", type=Path, default=None, help="cpu: a real-weights profile, e.g. profiles/smollm2-arith.yaml"
    )
    p.add_argument("--steps", type=int, default=None, help="cpu: steps per stage (default: the params' steps)")
    p.add_argument("--repeats", type=int, default=3, help="cpu: timed runs of each side")
    args = p.parse_args()
    suffix = f"_{args.params.stem}" if args.params else ""
    out = RESULTS / f"throughput_{args.mode}{suffix}.json"
    if args.mode == "gpu":
        result = gpu(out)
    else:
        result = cpu(
            out, steps=args.steps, repeats=args.repeats, params=args.params.resolve() if args.params else None
        )
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
