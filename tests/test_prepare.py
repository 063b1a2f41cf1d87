"""`prepare` on the embedded task: the base models' accuracy gate (retry and refusal) and the noisy
pretraining corpus, whose rule the task owns."""

from __future__ import annotations

import random

import numpy as np
import pytest

from s2d_pipeline.config import deep_merge, load_config
from s2d_pipeline.errors import S2DError
from s2d_pipeline.tasks.arithmetic import VOCAB, ArithmeticTask
from tests.helpers import MICRO

# A few pretraining steps: models far from any useful accuracy, built in seconds.
SHORT = deep_merge(MICRO, {"prepare": {"teacher": {"steps": 5}, "student": {"steps": 5}}})


def test_gate_refuses_base_models_outside_the_band_after_every_retry(project):
    from s2d_pipeline.stages import prepare

    cfg = load_config(
        project / "params.yaml",
        deep_merge(SHORT, {"prepare": {"gate_min_accuracy": 0.99, "max_retries": 1}}),
        root=project,
    )
    with pytest.raises(S2DError) as err:
        prepare.run(cfg)
    message = str(err.value)
    assert "the teacher missed the accuracy gate [0.99, " in message and "in 2 attempts" in message
    assert "prepare.teacher.steps" in message
    assert not (project / "artifacts" / "prepare" / "teacher").exists()  # no model passed: none saved


def test_gate_retries_with_a_new_seed_and_records_every_attempt(project, monkeypatch):
    """A base model stuck on a plateau cannot be produced on demand; the fault is injected by making
    the first gate measurement out of band (the real accuracy is used for every later one)."""
    from s2d_pipeline.stages import prepare

    cfg = load_config(
        project / "params.yaml",
        deep_merge(SHORT, {"prepare": {"gate_min_accuracy": 0.0, "gate_max_accuracy": 0.95, "max_retries": 2}}),
        root=project,
    )
    real, calls = prepare.accuracy, []

    def first_out_of_band(*args, **kwargs):
        calls.append(1)
        return 1.0 if len(calls) == 1 else real(*args, **kwargs)

    monkeypatch.setattr(prepare, "accuracy", first_out_of_band)
    metrics = prepare.run(cfg)
    teacher, student = metrics["teacher"]["attempts"], metrics["student"]["attempts"]
    assert [a["gate_greedy_accuracy"] for a in teacher][0] == 1.0 and len(teacher) == 2
    assert teacher[0]["seed"] != teacher[1]["seed"] and len(student) == 1
    assert 0.0 <= teacher[1]["gate_greedy_accuracy"] <= 0.95
    assert (project / "artifacts" / "prepare" / "teacher" / "model.safetensors").exists()


def test_noisy_corpus_writes_the_true_sum_or_the_tasks_carry_free_answer():
    """The corpus is the task's rule, vectorised: decode every example and check it against
    `ArithmeticTask.solve` / `carry_free_answer`; the noise share follows `noise_rate`."""
    task = ArithmeticTask(digits=3)
    vocab = {s: i for i, s in enumerate(["<pad>", "<eos>", "<unk>", *VOCAB])}
    inverse = {i: s for s, i in vocab.items()}
    excluded = set(task.sample_problems(200, random.Random(0), set()))
    corpus = task.pretraining_corpus(vocab, excluded)
    batch = corpus.batch(np.random.default_rng(0), 4000, noise_rate=0.5)
    assert batch.shape == (len(batch), corpus.prompt_len + corpus.answer_len) and len(batch) > 3900
    noisy = clean = 0
    for ids in batch:
        text = "".join(inverse[int(i)] for i in ids)
        problem, completion = text[: corpus.prompt_len], text[corpus.prompt_len :]
        assert problem not in excluded
        answer = int(task.extract_answer(completion))
        true, carry_free = task.solve(problem), task.carry_free_answer(problem)
        assert answer in (true, carry_free), text
        if true != carry_free:
            noisy += answer == carry_free
            clean += answer == true
    assert 0.4 < noisy / (noisy + clean) < 0.6
