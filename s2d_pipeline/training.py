"""The TRL trainers behind every training stage, configured once.

- GRPO (`trl.GRPOTrainer`): teacher RL (Stage 1), student RL (Stage 3) and the direct-GRPO baseline;
  the reward is the task verifier (sparse, 0/1 per completion).
- Forward KL on teacher rollouts (`trl.experimental.gkd.GKDTrainer`, `lmbda=0, beta=0`): Stage 2a,
  token-level KL to the teacher's full next-token distribution on the teacher's own samples;
  `warmup.loss: sft` swaps in `trl.SFTTrainer` (cross-entropy on the sampled tokens only).
- On-policy distillation (`trl.DistillationTrainer`, `beta=1`): Stage 2b, the student samples and
  the loss is per-token reverse KL to the teacher.

Trainer defaults that are slow or wrong at tiny scale on a CPU (bf16, gradient checkpointing) come
from `runtime` params, so real profiles get the GPU settings. All imports are local: torch,
transformers and TRL cost seconds.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from s2d_pipeline.config import Config


def training_args(cfg: Config, out_dir: Path, *, steps: int, learning_rate: float, warmup_steps: int,
                  batch_size: int, run_name: str, seed_offset: int = 0) -> dict:
    """TrainingArguments shared by every trainer (TRL configs extend TrainingArguments)."""
    from s2d_pipeline.runtime import device

    on_cpu = device(cfg) == "cpu"
    return dict(
        output_dir=str(out_dir),
        run_name=run_name,
        max_steps=steps,
        learning_rate=learning_rate,
        warmup_steps=warmup_steps,
        lr_scheduler_type="cosine",
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=1,
        seed=cfg.seed + seed_offset,
        data_seed=cfg.seed + seed_offset,
        bf16=cfg.runtime.bf16 and not on_cpu,
        use_cpu=on_cpu,
        gradient_checkpointing=cfg.runtime.gradient_checkpointing,
        logging_steps=max(1, steps // 20),
        save_strategy="no",
        report_to=["mlflow"] if cfg.tracking.enabled else "none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def quiet(trainer):
    """Drop the stdout printer that `disable_tqdm` installs: metrics go to MLflow and JSON."""
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer


def _verifier_reward(task) -> Callable:
    def verifier(prompts, completions, answer, **_):
        return task.rewards(completions, answer)

    return verifier


def train_grpo(cfg: Config, task, model_dir: Path, rows: list[dict], stage, out_dir: Path, run_name: str,
               seed_offset: int = 0):
    """GRPO on `rows` (canonical labeled rows) from the model in `model_dir`; returns the trainer."""
    from trl import GRPOConfig, GRPOTrainer

    from s2d_pipeline.models import load_model, load_tokenizer

    model, tokenizer = load_model(model_dir, cfg), load_tokenizer(model_dir, cfg)
    dataset = rows_dataset([{"prompt": task.format_prompt(r["prompt"]), "answer": str(r["answer"])} for r in rows])
    args = GRPOConfig(
        **training_args(cfg, out_dir, steps=stage.steps, learning_rate=stage.learning_rate,
                        warmup_steps=stage.warmup_steps,
                        batch_size=stage.prompts_per_step * stage.num_generations,
                        run_name=run_name, seed_offset=seed_offset),
        num_generations=stage.num_generations,
        beta=stage.beta,
        epsilon=stage.epsilon,
        epsilon_high=stage.epsilon_high,
        temperature=stage.temperature,
        max_completion_length=stage.max_completion_length,
        loss_type=stage.loss_type,
        use_vllm=cfg.runtime.use_vllm,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=[_verifier_reward(task)], args=args,
                          train_dataset=dataset, processing_class=tokenizer)
    quiet(trainer).train()
    return trainer


def rows_dataset(rows: list[dict]):
    """A `datasets.Dataset` of `rows`, fingerprinted by content. `Dataset.from_list` pickles the Arrow
    table to fingerprint it, which fails with dill on Python 3.12 + pyarrow 25 (seen on the GPU
    machine: "Can't pickle <class 'MonthDayNano'>"); hashing the rows is cheaper and deterministic."""
    import hashlib
    import json

    import pyarrow as pa
    from datasets import Dataset

    fingerprint = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]
    return Dataset(pa.Table.from_pylist(rows), fingerprint=fingerprint)


class PromptCompletionCollator:
    """Tokenises (prompt, completion) text pairs; labels cover completion tokens only.

    Used by the forward-KL warmup (GKD with lmbda=0 never generates, so it only needs
    `input_ids`, `attention_mask` and `labels`) and by its SFT variant.
    """

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        tok = self.tokenizer
        seqs, labels = [], []
        for ex in examples:
            p = tok(ex["prompt"], add_special_tokens=False)["input_ids"]
            c = tok(ex["completion"], add_special_tokens=False)["input_ids"]
            ids = (p + c)[: self.max_length]
            seqs.append(ids)
            labels.append(([-100] * len(p) + c)[: self.max_length])
        width = max(len(s) for s in seqs)
        pad = tok.pad_token_id
        # Right padding for teacher-forced training; the model sees real positions from 0.
        input_ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
        attention = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
        label_t = torch.tensor([lab + [-100] * (width - len(lab)) for lab in labels])
        return {"input_ids": input_ids, "attention_mask": attention, "labels": label_t}


def train_forward_kl(cfg: Config, student_dir: Path, teacher_dir: Path, rollouts: list[dict], steps: int,
                     out_dir: Path, run_name: str):
    """Stage 2a on teacher rollouts: full-distribution forward KL (GKD, lmbda=0, beta=0) or SFT."""
    from s2d_pipeline.models import load_model, load_tokenizer

    w = cfg.warmup
    student, tokenizer = load_model(student_dir, cfg), load_tokenizer(student_dir, cfg)
    dataset = rows_dataset([{"prompt": r["prompt"], "completion": r["completion"]} for r in rollouts])
    collator = PromptCompletionCollator(tokenizer, cfg.models.max_seq_len)
    common = training_args(cfg, out_dir, steps=steps, learning_rate=w.learning_rate,
                           warmup_steps=w.warmup_steps, batch_size=w.batch_size, run_name=run_name)
    common["remove_unused_columns"] = False
    common["include_num_input_tokens_seen"] = "non_padding"  # GRPO and OPD count their own tokens
    if w.loss == "forward_kl":
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        from trl.experimental.gkd import GKDConfig, GKDTrainer

        args = GKDConfig(**common, lmbda=0.0, beta=0.0, seq_kd=False, temperature=1.0,
                         max_length=cfg.models.max_seq_len)
        trainer = GKDTrainer(model=student, teacher_model=load_model(teacher_dir, cfg), args=args,
                             data_collator=collator, train_dataset=dataset, processing_class=tokenizer)
    else:
        from trl import SFTConfig, SFTTrainer

        args = SFTConfig(**common, dataset_kwargs={"skip_prepare_dataset": True},
                         max_length=cfg.models.max_seq_len)
        trainer = SFTTrainer(model=student, args=args, data_collator=collator, train_dataset=dataset,
                             processing_class=tokenizer)
    quiet(trainer).train()
    return trainer


def train_opd(cfg: Config, student_dir: Path, teacher_dir: Path, prompts: list[str], steps: int,
              out_dir: Path, run_name: str):
    """Stage 2b: the student samples on unlabeled prompts; per-token reverse KL to the teacher."""
    from trl import DistillationConfig, DistillationTrainer

    from s2d_pipeline.models import load_model, load_tokenizer

    o = cfg.opd
    student, tokenizer = load_model(student_dir, cfg), load_tokenizer(student_dir, cfg)
    args = DistillationConfig(
        **training_args(cfg, out_dir, steps=steps, learning_rate=o.learning_rate,
                        warmup_steps=o.warmup_steps, batch_size=o.batch_size, run_name=run_name),
        beta=o.beta,
        temperature=o.temperature,
        max_completion_length=o.max_completion_length,
        use_vllm=cfg.runtime.use_vllm,
    )
    trainer = DistillationTrainer(model=student, teacher_model=load_model(teacher_dir, cfg), args=args,
                                  train_dataset=rows_dataset([{"prompt": p} for p in prompts]),
                                  processing_class=tokenizer)
    quiet(trainer).train()
    return trainer


def save_trained(trainer, directory: Path) -> list[dict]:
    """Save the trained model + tokenizer as safetensors into `directory`; return the log history."""
    import shutil

    from s2d_pipeline.models import save_model

    save_model(trainer.model, trainer.processing_class, directory)
    shutil.rmtree(directory / "_trainer", ignore_errors=True)
    return trainer.state.log_history


def summarise_rl_history(history: list[dict]) -> dict:
    """Mean GRPO reward over the first and last fifth of logged steps, the mean in-group spread, and
    training throughput."""
    rewards = [h["reward"] for h in history if "reward" in h]
    if not rewards:
        return summarise_throughput(history)
    k = max(1, len(rewards) // 5)
    return {"reward_first": round(sum(rewards[:k]) / k, 4), "reward_last": round(sum(rewards[-k:]) / k, 4),
            "reward_std_mean": round(sum(h.get("reward_std", 0.0) for h in history) / len(history), 4),
            **summarise_throughput(history)}


def summarise_loss_history(history: list[dict]) -> dict:
    """First and last logged training loss (distillation stages), and training throughput."""
    losses = [h["loss"] for h in history if "loss" in h]
    return {"loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
            **summarise_throughput(history)}


def summarise_throughput(history: list[dict]) -> dict:
    """Tokens the trainer processed (prompt + completion; TRL's `num_tokens` or the Trainer's
    non-padding count) per second of `train()`, generation included."""
    tokens = max((h.get("num_tokens", h.get("num_input_tokens_seen", 0)) for h in history), default=0)
    runtime = next((h["train_runtime"] for h in reversed(history) if "train_runtime" in h), None)
    if not tokens or not runtime:
        return {}
    return {"train_tokens": int(tokens), "train_runtime_s": round(runtime, 2),
            "train_tokens_per_s": round(tokens / runtime, 1)}
