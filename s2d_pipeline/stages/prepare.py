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
  by forward-KL distillation on the teacher's samples (`prepare.heal`). The healed student is an
  input, like a downloaded model: healed once and kept in the cache (`runtime.cache_dir`), keyed by
  what made it (`heal_key`); a later prepare with the same key copies it instead of healing. The
  healing has its own seed (`prepare.heal.seed`), not the run's, and samples the teacher on the
  task's reserved problems (`Task.reserved_problems`, in no seed's splits), so every run seed and
  budget shares one healed student that has seen no seed's eval question.
- `path`: the user's checkpoints; only checks that teacher and student share a vocabulary.

    s2d prepare            # or: dvc repro prepare
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from s2d_pipeline import runtime
from s2d_pipeline.config import Config
from s2d_pipeline.console import progress
from s2d_pipeline.data import load_split
from s2d_pipeline.errors import ConfigError, DataError, S2DError
from s2d_pipeline.generation import accuracy, sample_completions
from s2d_pipeline.io import COMPLETE_MARKER, atomic_dir, read_data_file, write_json, write_jsonl
from s2d_pipeline.layout import base_model_dir, checkpoint_dir, data_file, metrics_file
from s2d_pipeline.models import (
    build_char_tokenizer,
    build_tiny_model,
    check_gguf,
    check_vocab_compatible,
    count_parameters,
    derive_student,
    import_gguf,
    load_model,
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
    """The GGUF teacher as safetensors; the student cut from it and healed (or taken from the cache);
    both scored on eval."""
    t0 = time.perf_counter()
    teacher_dir = base_model_dir(cfg, "teacher")
    teacher, tokenizer, gguf = import_teacher(cfg, teacher_dir)
    out: dict = {
        "teacher": {
            "gguf": str(gguf),
            "parameters": count_parameters(teacher),
            "import_s": round(time.perf_counter() - t0, 2),
        }
    }
    keep = cfg.models.student.keep_layers
    out["student"] = {"keep_layers": keep}
    if cfg.prepare.heal.steps:
        entry = healed_student(cfg, task, teacher, tokenizer, teacher_dir, file_sha256(gguf))
        with atomic_dir(base_model_dir(cfg, "student")) as tmp:
            shutil.copytree(entry.path, tmp, dirs_exist_ok=True)
        student = load_model(base_model_dir(cfg, "student"), cfg)
        out["student"]["heal"] = {**entry.record["heal"], "cache": {"entry": str(entry.path), "hit": entry.hit}}
    else:
        student = derive_student(teacher, keep)
        with atomic_dir(base_model_dir(cfg, "student")) as tmp:
            save_model(student, tokenizer, tmp)
    out["student"]["parameters"] = count_parameters(student)
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


def import_teacher(cfg: Config, directory: Path):
    """(model, tokenizer, GGUF path): the teacher imported from `models.teacher.gguf` and saved as
    safetensors + tokenizer in `directory`, its tokenizer set up as load_tokenizer sets every later stage's."""
    gguf = resolve_gguf(cfg.models.teacher.gguf, cfg.root)
    log.warning("prepare: importing %s", gguf)
    teacher, tokenizer = import_gguf(gguf, cfg)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # batched sampling
    with atomic_dir(directory) as tmp:
        save_model(teacher, tokenizer, tmp)
    return teacher, tokenizer, gguf


# What a cache entry holds besides the model: the key's inputs and the healing's summary.
HEALED_RECORD = "s2d_healed.json"


@dataclass(frozen=True)
class CacheEntry:
    path: Path
    record: dict
    hit: bool  # False: healed by this call


def cache_root(cfg: Config) -> Path:
    """`runtime.cache_dir`, else $S2D_CACHE, else ~/.cache/s2d."""
    if cfg.runtime.cache_dir:
        return cfg.path(cfg.runtime.cache_dir)
    return Path(os.environ.get("S2D_CACHE") or Path.home() / ".cache" / "s2d")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def heal_pool(cfg: Config, task) -> list[dict]:
    """The problems the healing samples the teacher on: the first `prepare.heal.prompts` of the task's
    reserved problems (seeded by the healing's seed) when the run generates its data, so the student
    every seed shares has seen none of any seed's eval questions; else the run's own prompts file."""
    reserved = task.reserved_problems(cfg.prepare.heal.seed) if cfg.data.generate else None
    pool = reserved if reserved is not None else load_split(cfg, task, "prompts")
    return pool[: cfg.prepare.heal.prompts]


def heal_key(cfg: Config, teacher_sha256: str, prompts: list[str]) -> dict:
    """Everything that makes a healed student: the teacher file, the cut, the healing's settings and seed,
    how the teacher's samples were drawn, and the rendered prompts it healed on (task, template, chat)."""
    r = cfg.rollouts
    return {
        "teacher_sha256": teacher_sha256,
        "dtype": cfg.models.dtype,
        "keep_layers": cfg.models.student.keep_layers,
        "heal": cfg.prepare.heal.model_dump(mode="json"),
        "samples": {
            "max_completion_length": r.max_completion_length,
            "temperature": r.temperature,
            "batch_size": r.batch_size,
        },  # fmt: skip
        "max_seq_len": cfg.models.max_seq_len,
        "prompts_sha256": hashlib.sha256(json.dumps(prompts).encode()).hexdigest(),
    }


def healed_student(cfg: Config, task, teacher, tokenizer, teacher_dir: Path, teacher_sha256: str) -> CacheEntry:
    """The cache entry of the student cut from `teacher` (saved in `teacher_dir`) and healed as `cfg`
    says: the stored one when an entry with the same key is complete, else healed now and stored. An
    entry is written into a temporary directory and renamed into place whole (`atomic_dir`), so one
    left half-written by a kill is never taken for an entry."""
    prompts = [render(cfg, task, tokenizer, r["prompt"]) for r in heal_pool(cfg, task)]
    key = heal_key(cfg, teacher_sha256, prompts)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    path = cache_root(cfg) / "healed-students" / digest
    if (path / COMPLETE_MARKER).is_file() and (path / HEALED_RECORD).is_file():
        log.warning("prepare: the healed student from the cache: %s", path)
        return CacheEntry(path, json.loads((path / HEALED_RECORD).read_text()), hit=True)
    # The healing's own seed in place of the run's: the entry is the same whichever seed the run has.
    heal_cfg = cfg.model_copy(update={"seed": cfg.prepare.heal.seed})
    heal = cfg.prepare.heal
    derived = checkpoint_dir(cfg, "prepare/derived-student")
    save_model(derive_student(teacher, cfg.models.student.keep_layers), tokenizer, derived)
    samples = sample_completions(
        teacher,
        tokenizer,
        prompts,
        cfg.rollouts,
        n=1,
        seed=heal.seed,
        desc="heal: teacher samples",
        chat=cfg.models.chat_template,
    )
    rollouts = [{"prompt": p, "completion_ids": c[0].token_ids} for p, c in zip(prompts, samples, strict=True)]
    t0 = time.perf_counter()
    trainer = train_forward_kl(heal_cfg, heal, derived, teacher_dir, rollouts, heal.steps, "prepare/heal")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(path) as tmp:
        history = save_trained(trainer, tmp)
        record = {
            "key": key,
            "heal": {
                "steps": heal.steps,
                **summarise_loss_history(history),
                "heal_s": round(time.perf_counter() - t0, 2),
            },
        }
        (tmp / HEALED_RECORD).write_text(json.dumps(record, indent=1))
    shutil.rmtree(derived, ignore_errors=True)  # the unhealed cut: scratch once healed
    return CacheEntry(path, record, hit=False)


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
