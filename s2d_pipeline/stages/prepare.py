"""`s2d prepare`: the embedded default's data and base ("raw") models.

Writes the synthetic task's `labels`, `prompts` and `eval` from a seeded generator, then builds a
tiny teacher and student and pretrains each briefly on a *noisy* corpus of the task (a share of
examples drop every carry), so both start imperfect and verified-label RL has something to fix.
A gate checks greedy accuracy on fresh problems and re-initialises a model that lands outside the
band (tiny models sometimes stall on a plateau); retries are logged in the metrics.

With real profiles (`data.generate: false`, `models.source: path`) it only checks that the user's
data and models exist and that teacher and student share a vocabulary.

    s2d prepare            # or: dvc repro prepare
"""

from __future__ import annotations

import logging
import time

from s2d_pipeline.config import Config
from s2d_pipeline.errors import ConfigError, S2DError
from s2d_pipeline.io import atomic_dir, write_json, write_jsonl
from s2d_pipeline.layout import base_model_dir, data_file, metrics_file
from s2d_pipeline.tasks import get_task

log = logging.getLogger(__name__)


def run(cfg: Config) -> dict:
    from s2d_pipeline import runtime

    runtime.setup(cfg)
    started = time.perf_counter()
    task = get_task(cfg.task)
    metrics: dict = {"profile": cfg.profile, "seed": cfg.seed}
    if cfg.data.generate:
        splits = task.generate_splits(cfg.seed, cfg.data.n_labels, cfg.data.n_prompts, cfg.data.n_eval)
        for split, rows in splits.items():
            write_jsonl(data_file(cfg, split), rows)
            metrics[f"{split}_rows"] = len(rows)
    if cfg.models.source == "build":
        if task.name != "arithmetic":
            raise ConfigError(
                "key 'models.source': 'build' (tiny pretrained models) exists only for the embedded "
                "arithmetic task; real tasks need models.source: path"
            )
        eval_rows = splits["eval"] if cfg.data.generate else _read_eval(cfg, task)
        metrics.update(_build_base_models(cfg, task, eval_rows))
    else:
        from s2d_pipeline.models import check_vocab_compatible

        check_vocab_compatible(base_model_dir(cfg, "teacher"), base_model_dir(cfg, "student"), cfg)
    metrics["wall_s"] = round(time.perf_counter() - started, 2)
    write_json(metrics_file(cfg, "prepare"), metrics)
    return metrics


def _read_eval(cfg: Config, task) -> list[dict]:
    from s2d_pipeline.data import load_split

    return load_split(cfg, task, "eval")


def _build_base_models(cfg: Config, task, eval_rows: list[dict]) -> dict:
    from s2d_pipeline.generation import accuracy
    from s2d_pipeline.models import build_char_tokenizer, count_parameters, save_model
    from s2d_pipeline.tasks.arithmetic import VOCAB

    tokenizer = build_char_tokenizer(VOCAB)
    p = cfg.prepare
    gate_rows = _gate_problems(cfg, task, {r["prompt"] for r in eval_rows})
    out: dict = {}
    for role_index, role in enumerate(("teacher", "student")):
        spec = getattr(cfg.models, role)
        attempts = []
        for attempt in range(p.max_retries + 1):
            seed = cfg.seed * 1000 + role_index * 100 + attempt
            t0 = time.perf_counter()
            model = _pretrain(cfg, task, tokenizer, spec, getattr(p, role), seed, {r["prompt"] for r in eval_rows})
            gate_acc = accuracy(task, model, tokenizer, gate_rows, max_new_tokens=task.answer_len)
            attempts.append(
                {
                    "seed": seed,
                    "gate_greedy_accuracy": round(gate_acc, 4),
                    "pretrain_s": round(time.perf_counter() - t0, 2),
                }
            )
            log.info("%s attempt %d: gate greedy accuracy %.3f", role, attempt, gate_acc)
            if p.gate_min_accuracy <= gate_acc <= p.gate_max_accuracy:
                break
        else:
            raise S2DError(
                f"prepare: the {role} missed the accuracy gate [{p.gate_min_accuracy}, "
                f"{p.gate_max_accuracy}] in {len(attempts)} attempts ({attempts}); adjust "
                f"prepare.{role}.steps / prepare.{role}.noise_rate or the model size"
            )
        eval_acc = accuracy(task, model, tokenizer, eval_rows, max_new_tokens=task.answer_len)
        with atomic_dir(base_model_dir(cfg, role)) as tmp:
            save_model(model, tokenizer, tmp)
        out[role] = {
            "parameters": count_parameters(model),
            "attempts": attempts,
            "eval_greedy_accuracy": round(eval_acc, 4),
        }
    return out


def _gate_problems(cfg: Config, task, exclude: set[str]) -> list[dict]:
    import random

    rng = random.Random(f"gate-{cfg.seed}")
    prompts = task.sample_problems(cfg.prepare.gate_eval_size, rng, set(exclude))
    return [{"prompt": q, "answer": str(task.solve(q))} for q in prompts]


def _pretrain(cfg: Config, task, tokenizer, spec, schedule, seed: int, exclude_prompts: set[str]):
    """Next-token pretraining on answer tokens of a noisy corpus (eval problems excluded)."""
    import numpy as np
    import torch
    from transformers import get_cosine_schedule_with_warmup

    from s2d_pipeline.models import build_tiny_model

    p = cfg.prepare
    model = build_tiny_model(spec, tokenizer, cfg.models.max_seq_len, seed)
    model.train()
    rng = np.random.default_rng(seed)
    digits = task.digits
    space = 10 ** (2 * digits)
    excluded = np.zeros(space, dtype=bool)
    for q in exclude_prompts:
        a, b = task.operands(q)
        excluded[a * 10**digits + b] = True
    vocab = tokenizer.get_vocab()
    digit_ids = np.array([vocab[str(d)] for d in range(10)])
    plus_id, eq_id = vocab["+"], vocab["="]
    prompt_len = 2 * digits + 2

    opt = torch.optim.AdamW(model.parameters(), lr=p.learning_rate, weight_decay=0.01)
    sched = get_cosine_schedule_with_warmup(opt, p.warmup_steps, schedule.steps)
    for _ in range(schedule.steps):
        k = rng.integers(0, space, size=p.batch_size)
        k = k[~excluded[k]]
        a, b = k // 10**digits, k % 10**digits
        a_d = (a[:, None] // 10 ** np.arange(digits)) % 10  # least significant first, as the task writes
        b_d = (b[:, None] // 10 ** np.arange(digits)) % 10
        true_sum = a + b
        carry_free = ((a_d + b_d) % 10) @ (10 ** np.arange(digits))
        noisy = rng.random(len(k)) < schedule.noise_rate
        answer = np.where(noisy, carry_free, true_sum)
        ans_d = (answer[:, None] // 10 ** np.arange(digits + 1)) % 10  # least significant first
        ids = np.concatenate(
            [
                digit_ids[a_d],
                np.full((len(k), 1), plus_id),
                digit_ids[b_d],
                np.full((len(k), 1), eq_id),
                digit_ids[ans_d],
            ],
            axis=1,
        )
        input_ids = torch.from_numpy(ids).long()
        labels = input_ids.clone()
        labels[:, :prompt_len] = -100  # learn the answer, not the (uniform random) operands
        loss = model(input_ids=input_ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
    return model
