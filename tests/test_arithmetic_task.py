from hypothesis import given
from hypothesis import strategies as st

from s2d_pipeline.tasks.arithmetic import ArithmeticTask

task = ArithmeticTask(digits=3)


def test_format_is_least_significant_digit_first():
    p = task.problem(123, 456)
    assert p == "321+654="
    assert task.solve(p) == 579
    assert task.encode_answer(579) == "9750"
    assert task.verify("9750", "579")
    assert not task.verify("0579", "579")


@given(st.integers(0, 999), st.integers(0, 999))
def test_verifier_accepts_exactly_the_true_sum(a, b):
    p = task.problem(a, b)
    assert task.verify(task.encode_answer(a + b), str(task.solve(p)))
    assert not task.verify(task.encode_answer((a + b + 1) % 10000), str(a + b))


def test_carry_free_answer_drops_every_carry():
    assert task.carry_free_answer(task.problem(158, 267)) == 315  # 8+7=15->5, 5+6+0=11->1, 1+2=3
    assert task.carry_free_answer(task.problem(120, 301)) == 421  # no carries: same as the sum


def test_extraction_rejects_short_or_non_digit_completions():
    assert task.extract_answer("97") is None
    assert task.extract_answer("97a0") is None
    assert task.extract_answer(" 9750xyz") == "579"
    assert task.parse_answer("12a") is None and task.parse_answer("") is None
    assert task.parse_answer(True) is None and task.parse_answer("99999") is None


def test_generator_is_deterministic_and_splits_are_disjoint():
    a = task.generate_splits(seed=7, n_labels=50, n_prompts=80, n_eval=40)
    b = task.generate_splits(seed=7, n_labels=50, n_prompts=80, n_eval=40)
    c = task.generate_splits(seed=8, n_labels=50, n_prompts=80, n_eval=40)
    assert a == b and a != c
    prompts = {s: {r["prompt"] for r in rows} for s, rows in a.items()}
    assert not prompts["eval"] & (prompts["labels"] | prompts["prompts"])
    assert not prompts["labels"] & prompts["prompts"]
    assert all("answer" not in r for r in a["prompts"])
    assert all(task.solve(r["prompt"]) == int(r["answer"]) for r in a["labels"] + a["eval"])


def test_rewards_are_sparse_and_vary():
    p = task.problem(58, 67)  # 125: has carries
    good, carry_free = task.encode_answer(125), task.encode_answer(task.carry_free_answer(p))
    assert task.rewards([good, carry_free, "xx"], ["125"] * 3) == [1.0, 0.0, 0.0]
