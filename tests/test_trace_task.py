"""The reasoning variant of the embedded task (`arithmetic_trace`): format, verifier, generator and
the role-dependent noisy pretraining corpus. Pure Python and numpy: nothing trains here."""

import random

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from s2d_pipeline.tasks.arithmetic_trace import VOCAB, ArithmeticTraceTask
from tests.helpers import REPO

task = ArithmeticTraceTask(operands=4, digits=2)
VOCAB_IDS = {s: i for i, s in enumerate(["<pad>", "<eos>", "<unk>", *VOCAB])}
INVERSE = {i: s for s, i in VOCAB_IDS.items()}


def decode(ids) -> str:
    return "".join(INVERSE[int(i)] for i in ids)


def test_format_of_problem_and_both_roles_traces():
    p = task.problem(21, 43, 65, 87)
    assert p == "12+34+56+78=" and task.operands(p) == (21, 43, 65, 87)
    assert task.running_sums(p) == [64, 129, 216] and task.solve(p) == 216
    assert task.sum_width == 3 and task.completion_len == 12
    assert task.trace(p, "teacher") == "460;921;612;"
    assert task.trace(p, "student") == "460,921,612,"
    small = ArithmeticTraceTask(operands=3, digits=1)  # largest sum 27: width 2
    assert small.problem(9, 9, 9) == "9+9+9=" and small.trace("9+9+9=") == "81;72;" and small.completion_len == 6
    wide = ArithmeticTraceTask(operands=6, digits=4)  # largest sum 59994: width 5
    assert wide.trace(wide.problem(9999, 1, 0, 0, 0, 20)) == "00001;00001;00001;00001;02001;"


def test_carry_free_running_sums_drop_every_carry_and_compound():
    p = task.problem(21, 43, 65, 87)
    # 21+43=64 (no carry); 64+65: 4+5=9, 6+6=12->2 -> 29; 29+87: 9+7=16->6, 2+8=10->0 -> 06
    assert task.carry_free_running_sums(p) == [64, 29, 6]
    assert task.carry_free_running_sums(task.problem(10, 20, 30, 40)) == [30, 60, 0]


def test_verifier_checks_the_final_answer_only():
    assert task.verify("460;921;612;", "216")
    assert task.verify("000;999;612;", "216")  # wrong intermediate sums, right final answer
    assert task.verify("460,921,612,", "216") and task.verify("460;921,612", "216")  # either separator
    assert not task.verify("460;921;712;", "216")  # wrong final answer
    assert not task.verify("460;921;6120", "216") and not task.verify("460;921;61;", "216")  # wrong width
    assert not task.verify("460;921;612;7", "216")  # the last digit group is the answer it commits to
    assert task.extract_answer("460;921;612;") == "216"
    assert task.extract_answer(";;;") is None and task.extract_answer("") is None
    assert task.parse_answer("216") == 216 and task.parse_answer("1000") is None and task.parse_answer(True) is None
    assert task.rewards(["460;921;612;", "460;921;613;", "xx"], ["216"] * 3) == [1.0, 0.0, 0.0]


@given(st.lists(st.integers(0, 99), min_size=4, max_size=4))
def test_both_formats_of_the_true_trace_verify_and_carry_free_ones_do_not_when_a_carry_occurs(values):
    p = task.problem(*values)
    assert task.verify(task.trace(p, "teacher"), str(sum(values)))
    assert task.verify(task.trace(p, "student"), str(sum(values)))
    free = task.carry_free_running_sums(p)
    assert task.verify(task.encode_trace(free), str(sum(values))) == (free[-1] == sum(values))


def test_splits_are_deterministic_disjoint_and_answered():
    a = task.generate_splits(seed=7, n_labels=50, n_prompts=80, n_eval=40)
    assert a == task.generate_splits(seed=7, n_labels=50, n_prompts=80, n_eval=40)
    assert a != task.generate_splits(seed=8, n_labels=50, n_prompts=80, n_eval=40)
    other = ArithmeticTraceTask(operands=3, digits=2).generate_splits(seed=7, n_labels=50, n_prompts=80, n_eval=40)
    assert a["eval"][0]["prompt"] != other["eval"][0]["prompt"]
    prompts = {s: {r["prompt"] for r in rows} for s, rows in a.items()}
    assert not prompts["eval"] & (prompts["labels"] | prompts["prompts"])
    assert not prompts["labels"] & prompts["prompts"]
    assert all("answer" not in r for r in a["prompts"])
    assert all(task.solve(r["prompt"]) == int(r["answer"]) for r in a["labels"] + a["eval"])
    assert all(len(r["prompt"]) == 12 and r["prompt"].count("+") == 3 for r in a["eval"])


@pytest.mark.parametrize("role", ["teacher", "student"])
@pytest.mark.parametrize("noise_rate", [0.0, 1.0])
def test_corpus_writes_the_roles_trace_true_or_carry_free(role, noise_rate):
    corpus = task.pretraining_corpus(VOCAB_IDS, set(), role)
    assert (corpus.prompt_len, corpus.answer_len) == (12, 12)
    batch = corpus.batch(np.random.default_rng(0), 500, noise_rate=noise_rate)
    assert batch.shape == (500, 24)
    differ = 0
    for ids in batch:
        text = decode(ids)
        problem, completion = text[:12], text[12:]
        sums = task.running_sums(problem) if noise_rate == 0 else task.carry_free_running_sums(problem)
        assert completion == task.encode_trace(sums, role), text
        differ += completion != task.trace(problem, role)
    assert differ == 0 if noise_rate == 0 else differ > 400  # four 2-digit operands nearly always carry


def test_teacher_and_student_corpora_differ_only_in_separators():
    teacher = task.pretraining_corpus(VOCAB_IDS, set(), "teacher").batch(np.random.default_rng(3), 300, 0.5)
    student = task.pretraining_corpus(VOCAB_IDS, set(), "student").batch(np.random.default_rng(3), 300, 0.5)
    assert teacher.shape == student.shape and (teacher != student).any()
    assert set(np.unique(teacher[teacher != student])) == {VOCAB_IDS[";"]}
    assert set(np.unique(student[teacher != student])) == {VOCAB_IDS[","]}
    # every separator position, and only those, differs
    assert (teacher != student).sum() == 300 * 3
    with pytest.raises(ValueError, match="role"):
        task.pretraining_corpus(VOCAB_IDS, set(), "tutor")


def test_corpus_never_writes_an_excluded_problem():
    small = ArithmeticTraceTask(operands=3, digits=1)  # 1,000 problems: half excluded
    excluded = set(small.sample_problems(500, random.Random(0), set()))
    corpus = small.pretraining_corpus(VOCAB_IDS, excluded, "student")
    batch = corpus.batch(np.random.default_rng(0), 4000, noise_rate=0.5)
    assert 1700 < len(batch) < 2300
    assert not {decode(ids)[: corpus.prompt_len] for ids in batch} & excluded


def test_a_space_too_large_for_one_index_still_draws_and_excludes():
    wide = ArithmeticTraceTask(operands=6, digits=4)  # 10**24 problems
    excluded = set(wide.sample_problems(5, random.Random(0), set()))
    corpus = wide.pretraining_corpus(VOCAB_IDS, excluded, "teacher")
    batch = corpus.batch(np.random.default_rng(0), 200, noise_rate=0.0)
    assert batch.shape == (200, corpus.prompt_len + corpus.answer_len) == (200, 30 + 30)
    for ids in batch[:50]:
        text = decode(ids)
        assert text[30:] == wide.trace(text[:30], "teacher")


def test_gate_problems_come_from_sample_problems_and_solve():
    rng, exclude = random.Random("gate-0"), {"12+34+56+78="}
    problems = list(task.sample_problems(100, rng, set(exclude)))
    assert len(set(problems)) == 100 and "12+34+56+78=" not in problems
    assert all(task.verify(task.trace(q, "student"), str(task.solve(q))) for q in problems)


def test_config_and_profile():
    from s2d_pipeline.config import TASK_NAMES, ConfigError, config_from_dict, load_config
    from s2d_pipeline.tasks import get_task

    assert "arithmetic_trace" in TASK_NAMES
    cfg = config_from_dict({"task": {"name": "arithmetic_trace"}}, root=REPO, check_paths=False)
    got = get_task(cfg.task)
    assert isinstance(got, ArithmeticTraceTask) and (got.n_operands, got.digits) == (4, 2)
    with pytest.raises(ConfigError, match="task.operands"):
        config_from_dict({"task": {"name": "arithmetic_trace", "operands": 2}}, root=REPO, check_paths=False)
    with pytest.raises(ConfigError, match="task.digits"):
        config_from_dict({"task": {"name": "arithmetic_trace", "digits": 5}}, root=REPO, check_paths=False)
    cfg = load_config(REPO / "profiles" / "trace.yaml", root=REPO, check_paths=False)
    trace = get_task(cfg.task)
    lengths = {
        s: getattr(cfg, s).max_completion_length
        for s in ("teacher_rl", "rollouts", "opd", "student_rl", "grpo_direct", "evaluate")
    }
    assert set(lengths.values()) == {trace.completion_len}, lengths
    assert 12 + trace.completion_len <= cfg.models.max_seq_len


def test_prepare_pretrains_each_role_on_its_own_format(monkeypatch, tmp_path):
    """prepare builds the corpus per role: the teacher learns `;`, the student `,` (nothing trains:
    pretraining, the gate and saving are stubbed)."""
    from s2d_pipeline import generation, models
    from s2d_pipeline.config import config_from_dict
    from s2d_pipeline.stages import prepare

    cfg = config_from_dict({"task": {"name": "arithmetic_trace"}}, root=tmp_path, check_paths=False)
    seen: dict[str, str] = {}

    def fake_pretrain(cfg, corpus, tokenizer, spec, schedule, seed, role="model"):
        ids = corpus.batch(np.random.default_rng(seed), 1, schedule.noise_rate)[0]
        seen[role] = "".join(tokenizer.convert_ids_to_tokens(ids.tolist()))
        return object()

    monkeypatch.setattr(prepare, "_pretrain", fake_pretrain)
    monkeypatch.setattr(generation, "accuracy", lambda *args, **kwargs: 0.5)
    monkeypatch.setattr(models, "save_model", lambda model, tokenizer, path: None)
    monkeypatch.setattr(models, "count_parameters", lambda model: 0)
    prepare._build_base_models(cfg, task, task.generate_splits(0, 1, 1, 20)["eval"])
    assert set(seen) == {"teacher", "student"}
    assert seen["teacher"][12:].count(";") == 3 and "," not in seen["teacher"]
    assert seen["student"][12:].count(",") == 3 and ";" not in seen["student"]
