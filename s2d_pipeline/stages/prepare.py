"""`s2d prepare`: the data splits and the base ("raw") teacher and student every later stage loads.

Data: with `data.generate` the task writes `labels`, `prompts` and `eval` from a seeded generator;
with `data.split_from` one labelled file (e.g. GSM8K's train.jsonl) is split, seeded and disjoint,
into the three; otherwise they are the user's files.

Models, by `models.source`:
- `build` (embedded default): a tiny teacher and student pretrained briefly on the task's *noisy*
  corpus (a share of examples drop every carry), so both start imperfect and verified-label RL has
  something to fix. A gate checks greedy accuracy on fresh problems and re-initialises a model that
  lands outside the band (tiny models sometimes stall on a plateau); retries are logged.
- `gguf`: the teacher is imported once from a GGUF checkpoint and saved as safetensors + tokenizer
  (chat template included); the student is cut from it (`models.student.keep_layers`) and healed
  by forward-KL distillation on the teacher's samples (`prepare.heal`).
- `path`: the user's checkpoints; only checks that teacher and student share a vocabulary.

    s2d prepare            # or: dvc repro prepare
"""

from __future__ import annotations

import logging
import time

from s2d_pipeline import runtime
from s2d_pipeline.config import Config
from s2d_pipeline.console import progress
from s2d_pipeline.data import load_split
from s2d_pipeline.errors import ConfigError, DataError, S2DError
from s2d_pipeline.generation import accuracy, sample_completions
from s2d_pipeline.io import atomic_dir, read_data_file, write_json, write_jsonl
from s2d_pipeline.layout import base_model_dir, checkpoint_dir, data_file, metrics_file
from s2d_pipeline.models import (
    build_char_tokenizer,
    build_tiny_model,
    check_gguf,
    check_vocab_compatible,
    count_parameters,
    derive_student,
    import_gguf,
    resolve_gguf,
    save_model,
)
from s2d_pipeline.prompts import render
from s2d_pipeline.tasks import get_task
from s2d_pipeline.training import save_trained, summarise_loss_history, train_forward_kl

log = logging.getLogger(__name__)


def run(cfg: Config) -> dict:
    if cfg.models.source == "gguf":  # an unreadable teacher file is refused before any output is written
        check_gguf(resolve_gguf(cfg.models.teacher.gguf, cfg.root), cfg.models.teacher.gguf)
    runtime.setup(cfg)
    started = time.perf_counter()
    task = get_task(cfg.task)
    metrics: dict = {"profile": cfg.profile, "seed": cfg.seed}
    splits = None
    if cfg.data.generate:
        splits = task.generate_splits(cfg.seed, cfg.data.n_labels, cfg.data.n_prompts, cfg.data.n_eval)
    elif cfg.data.split_from:
        splits = split_file(cfg)
    for split, rows in (splits or {}).items():
        write_jsonl(data_file(cfg, split), rows)
        metrics[f"{split}_rows"] = len(rows)
    if cfg.models.source == "build":
        if task.symbols is None:
            raise ConfigError(
                f"key 'models.source': 'build' (tiny models pretrained from scratch) needs a task with a "
                f"pretraining corpus; task '{task.name}' has none: set models.source: path or gguf"
            )
        metrics.update(_build_base_models(cfg, task, _read_eval(cfg, task)))
    elif cfg.models.source == "gguf":
        metrics.update(_import_and_derive(cfg, task, _read_eval(cfg, task)))
    else:
        check_vocab_compatible(base_model_dir(cfg, "teacher"), base_model_dir(cfg, "student"), cfg)
    metrics["wall_s"] = round(time.perf_counter() - started, 2)
    write_json(metrics_file(cfg, "prepare"), metrics)
    return metrics


def split_file(cfg: Config) -> dict[str, list[dict]]:
    """`data.split_from` split into eval, labels and prompts (answers dropped), seeded and disjoint.
    Rows keep their own `id`, or get `<file stem>-<line>` so an id names its source line."""
    import random

    path = cfg.path(cfg.data.split_from)
    rows = read_data_file(path)
    d = cfg.data
    need = d.n_eval + d.n_labels + d.n_prompts
    if len(rows) < need:
        raise DataError(
            f"{path}: rule 'enough rows to split' failed: {len(rows)} rows, but data.n_eval + n_labels + "
            f"n_prompts = {need}"
        )
    random.Random(f"split-{cfg.seed}").shuffle(rows)
    for row in rows:
        row.setdefault("id", f"{path.stem}-{row['_line']}")
        del row["_line"]
    unlabeled = [{k: v for k, v in r.items() if k not in ("answer", "solution")} for r in rows]
    return {
        "eval": rows[: d.n_eval],
        "labels": rows[d.n_eval : d.n_eval + d.n_labels],
        "prompts": unlabeled[d.n_eval + d.n_labels : need],
    }


def _import_and_derive(cfg: Config, task, eval_rows: list[dict]) -> dict:
    """The GGUF teacher as safetensors; the student cut from it and healed; both scored on eval."""
    import shutil

    gguf = resolve_gguf(cfg.models.teacher.gguf, cfg.root)
    t0 = time.perf_counter()
    log.warning("prepare: importing %s", gguf)
    teacher, tokenizer = import_gguf(gguf, cfg)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # as load_tokenizer sets it for every later stage (batched sampling)
    with atomic_dir(base_model_dir(cfg, "teacher")) as tmp:
        save_model(teacher, tokenizer, tmp)
    out: dict = {
        "teacher": {
            "gguf": str(gguf),
            "parameters": count_parameters(teacher),
            "import_s": round(time.perf_counter() - t0, 2),
        }
    }
    keep = cfg.models.student.keep_layers
    student = derive_student(teacher, keep)
    out["student"] = {"keep_layers": keep, "parameters": count_parameters(student)}
    heal = cfg.prepare.heal
    if heal.steps:
        derived = checkpoint_dir(cfg, "prepare/derived-student")
        save_model(student, tokenizer, derived)
        pool = load_split(cfg, task, "prompts")[: heal.prompts]
        prompts = [render(cfg, task, tokenizer, r["prompt"]) for r in pool]
        samples = sample_completions(
            teacher,
            tokenizer,
            prompts,
            cfg.rollouts,
            n=1,
            seed=cfg.seed,
            desc="heal: teacher samples",
            chat=cfg.models.chat_template,
        )
        rollouts = [{"prompt": p, "completion_ids": c[0].token_ids} for p, c in zip(prompts, samples, strict=True)]
        t0 = time.perf_counter()
        trainer = train_forward_kl(
            cfg, heal, derived, base_model_dir(cfg, "teacher"), rollouts, heal.steps, "prepare/heal"
        )
        with atomic_dir(base_model_dir(cfg, "student")) as tmp:
            history = save_trained(trainer, tmp)
        shutil.rmtree(derived, ignore_errors=True)  # the unhealed cut: scratch once healed
        out["student"]["heal"] = {
            "steps": heal.steps,
            **summarise_loss_history(history),
            "heal_s": round(time.perf_counter() - t0, 2),
        }
        student = trainer.model
    else:
        with atomic_dir(base_model_dir(cfg, "student")) as tmp:
            save_model(student, tokenizer, tmp)
    for role, model in (("teacher", teacher), ("student", student)):
        out[role]["eval_greedy_accuracy"] = round(
            accuracy(
                cfg,
                task,
                model,
                tokenizer,
                eval_rows,
                max_new_tokens=cfg.evaluate.max_completion_length,
                batch_size=cfg.evaluate.batch_size,
            ),
            4,
        )
    p, acc = cfg.prepare, out["teacher"]["eval_greedy_accuracy"]
    # The same band the tiny models are held to: a raw teacher already near-perfect leaves RL nothing
    # to show, one near zero gives GRPO no reward signal. Recorded, not enforced: a real model is
    # what it is; the task's difficulty is the knob.
    out["teacher"]["in_gate"] = p.gate_min_accuracy <= acc <= p.gate_max_accuracy
    if not out["teacher"]["in_gate"]:
        log.warning(
            "prepare: the raw teacher's eval accuracy %.3f is outside [%s, %s]; adjust the task's difficulty",
            acc,
            p.gate_min_accuracy,
            p.gate_max_accuracy,
        )
    return out


def _read_eval(cfg: Config, task) -> list[dict]:
    return load_split(cfg, task, "eval")


def _build_base_models(cfg: Config, task, eval_rows: list[dict]) -> dict:
    tokenizer = build_char_tokenizer(task.symbols)
    p = cfg.prepare
    eval_prompts = {r["prompt"] for r in eval_rows}
    corpus = task.pretraining_corpus(tokenizer.get_vocab(), eval_prompts)
    gate_rows = _gate_problems(cfg, task, eval_prompts)
    out: dict = {}
    for role_index, role in enumerate(("teacher", "student")):
        spec = getattr(cfg.models, role)
        attempts = []
        for attempt in range(p.max_retries + 1):
            seed = cfg.seed * 1000 + role_index * 100 + attempt
            t0 = time.perf_counter()
            model = _pretrain(cfg, corpus, tokenizer, spec, getattr(p, role), seed, role)
            gate_acc = accuracy(cfg, task, model, tokenizer, gate_rows, max_new_tokens=corpus.answer_len)
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
        eval_acc = accuracy(cfg, task, model, tokenizer, eval_rows, max_new_tokens=corpus.answer_len)
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


def _pretrain(cfg: Config, corpus, tokenizer, spec, schedule, seed: int, role: str = "model"):
    """Next-token pretraining on the answer tokens of the task's (noisy) pretraining corpus."""
    import numpy as np
    import torch
    from transformers import get_cosine_schedule_with_warmup

    p = cfg.prepare
    model = build_tiny_model(spec, tokenizer, cfg.models.max_seq_len, seed)
    model.train()
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=p.learning_rate, weight_decay=0.01)
    sched = get_cosine_schedule_with_warmup(opt, p.warmup_steps, schedule.steps)
    for _ in progress(range(schedule.steps), desc=f"pretrain {role} (seed {seed})", unit="step"):
        input_ids = torch.from_numpy(corpus.batch(rng, p.batch_size, schedule.noise_rate)).long()
        labels = input_ids.clone()
        labels[:, : corpus.prompt_len] = -100  # learn the answer, not the (uniform random) operands
        loss = model(input_ids=input_ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
    return model
