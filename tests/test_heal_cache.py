"""The healed student as a cached input (`prepare.healed_student`): healed once, keyed by what made it,
copied by every later prepare with the same key whatever the run's seed, healed anew when the cut or
the healing changes, and never taken from an entry a kill left half-written. A tiny Llama stands in
for the GGUF import (the real import is covered by tests/test_real_weights.py); the cut, the teacher's
samples, TRL's forward-KL trainer and the cache are the real ones."""

from __future__ import annotations

import json
import os
import shutil
import string

import pytest

from tests.helpers import SMOLLM2_PROFILE

TINY = {
    "tracking": {"enabled": False},
    "task": {"prompt_template": "{problem} =", "sums": {"operands": 2, "max_operand": 99}},
    "data": {"n_labels": 4, "n_prompts": 4, "n_eval": 4, **{f"{s}_rows": {"min": 4} for s in ("labels", "prompts", "eval")}},
    "models": {"teacher": {"gguf": "teacher.gguf"}, "student": {"keep_layers": [0, 2]}, "max_seq_len": 32, "chat_template": False},
    "prepare": {"heal": {"steps": 1, "batch_size": 2, "prompts": 4, "warmup_steps": 0}},
    "rollouts": {"max_completion_length": 4, "batch_size": 4},
    "evaluate": {"max_completion_length": 4, "batch_size": 4},
    "runtime": {"device": "cpu", "checkpoint_steps": None},
}  # fmt: skip


def _tiny_teacher():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from s2d_pipeline.models import build_char_tokenizer

    tokenizer = build_char_tokenizer(sorted(set(string.ascii_letters + string.digits + " +?=.")))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config), tokenizer


@pytest.fixture
def gguf_free(monkeypatch, tmp_path):
    """prepare with a tiny teacher in place of the GGUF import; returns `prepare_in(name, **changes)`,
    which runs prepare in its own project root with the shared cache `tmp_path/cache` and returns
    (cfg, metrics), and `heals`: the healings the cache did not spare, each with the seeds its teacher
    samples and its trainer were given."""
    from s2d_pipeline.config import deep_merge, load_config
    from s2d_pipeline.stages import prepare

    teacher_file = tmp_path / "teacher.gguf"
    teacher_file.write_bytes(b"GGUF tiny teacher stand-in")
    monkeypatch.setattr(prepare, "check_gguf", lambda path, ref: None)
    monkeypatch.setattr(prepare, "resolve_gguf", lambda ref, root: teacher_file)
    monkeypatch.setattr(prepare, "import_gguf", lambda path, cfg: _tiny_teacher())
    heals, real_train, real_sample = [], prepare.train_forward_kl, prepare.sample_completions

    def counted_train(cfg, *args, **kwargs):
        heals.append({**heals.pop(), "train_seed": cfg.seed})
        return real_train(cfg, *args, **kwargs)

    def counted_sample(*args, seed, **kwargs):
        heals.append({"sample_seed": seed})
        return real_sample(*args, seed=seed, **kwargs)

    monkeypatch.setattr(prepare, "train_forward_kl", counted_train)
    monkeypatch.setattr(prepare, "sample_completions", counted_sample)

    def prepare_in(name: str, **changes):
        root = tmp_path / name
        root.mkdir()
        overrides = deep_merge(TINY, {"runtime": {"cache_dir": str(tmp_path / "cache")}})
        cfg = load_config(SMOLLM2_PROFILE, deep_merge(overrides, changes), root=root)
        return cfg, prepare.run(cfg)

    return prepare_in, heals


def _entries(cfg) -> list:
    from s2d_pipeline.stages.prepare import cache_root

    return sorted(p.name for p in (cache_root(cfg) / "healed-students").iterdir())


def _weights(directory) -> bytes:
    return (directory / "model.safetensors").read_bytes()


def test_a_prepare_with_another_run_seed_copies_the_cached_student_without_healing(gguf_free):
    from s2d_pipeline.layout import base_model_dir

    prepare_in, heals = gguf_free
    first_cfg, first = prepare_in("seed3", seed=3)
    # The healing's own seed (prepare.heal.seed, 0), not the run's: the entry is the same for every run seed.
    assert heals == [{"sample_seed": 0, "train_seed": 0}] and first["student"]["heal"]["cache"]["hit"] is False
    entry = first["student"]["heal"]["cache"]["entry"]
    second_cfg, second = prepare_in("seed4", seed=4)
    assert len(heals) == 1, "the second prepare healed again instead of taking the cached student"
    assert second["student"]["heal"]["cache"] == {"entry": entry, "hit": True}
    # The healing's summary travels with the entry, so every run reports the healing its student had.
    assert second["student"]["heal"]["loss_first"] == first["student"]["heal"]["loss_first"] is not None
    assert _entries(second_cfg) == [os.path.basename(entry)]
    student = _weights(base_model_dir(second_cfg, "student"))
    assert student == _weights(base_model_dir(first_cfg, "student")) == _weights(first_cfg.path(entry))
    # The run's own data still follows its seed: only the healed student is shared.
    eval_3, eval_4 = ((cfg.path("data/smollm2/eval.jsonl")).read_text() for cfg in (first_cfg, second_cfg))
    assert eval_3 != eval_4


@pytest.mark.parametrize(
    "change",
    [{"models": {"student": {"keep_layers": [0, 1]}}}, {"prepare": {"heal": {"steps": 2}}}],
    ids=["keep_layers", "heal.steps"],
)
def test_a_changed_cut_or_healing_makes_a_new_entry(gguf_free, change):
    prepare_in, heals = gguf_free
    _, first = prepare_in("before")
    cfg, second = prepare_in("after", **change)
    assert len(heals) == 2, "a student cut or healed differently was taken from the cache"
    assert second["student"]["heal"]["cache"]["hit"] is False
    assert second["student"]["heal"]["cache"]["entry"] != first["student"]["heal"]["cache"]["entry"]
    assert len(_entries(cfg)) == 2


@pytest.mark.parametrize("left_by", ["temp dir of a killed write", "entry without its completion marker"])
def test_a_half_written_entry_is_not_used(gguf_free, left_by):
    from s2d_pipeline.io import COMPLETE_MARKER

    prepare_in, heals = gguf_free
    cfg, first = prepare_in("first")
    entry = cfg.path(first["student"]["heal"]["cache"]["entry"])
    # What a kill leaves: the model files written, the completion marker and the record not yet.
    (entry / COMPLETE_MARKER).unlink()
    (entry / "s2d_healed.json").unlink()
    if left_by == "temp dir of a killed write":
        shutil.move(entry, entry.with_name(f".{entry.name}.s2d-tmp-killed.tmp"))
    _, second = prepare_in("second")
    assert len(heals) == 2, f"prepare took a half-written entry ({left_by}) for a healed student"
    assert second["student"]["heal"]["cache"] == {"entry": str(entry), "hit": False}
    assert (entry / COMPLETE_MARKER).is_file()
    assert json.loads((entry / "s2d_healed.json").read_text())["heal"]["steps"] == 1


def test_the_reserved_sums_are_the_same_for_every_seed_and_in_no_seeds_splits():
    from s2d_pipeline.tasks.math import MathTask

    task = MathTask("{problem}", sums={"operands": 2, "max_operand": 40})
    reserved = {seed: [r["prompt"] for r in task.reserved_problems(seed)] for seed in range(4)}
    assert len(reserved[0]) > 40 and all(set(r) == set(reserved[0]) for r in reserved.values())
    assert reserved[0] != reserved[1]  # shuffled by the seed it is drawn with
    for seed in range(4):
        split = task.generate_splits(seed, 300, 400, 100)
        held = {r["question"] for rows in split.values() for r in rows}
        assert len(held) == 800 and not held & set(reserved[0])
    assert MathTask("{problem}").reserved_problems(0) is None  # a task on the user's files keeps none
