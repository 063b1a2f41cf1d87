"""Evaluation arithmetic (`accuracy_metrics`) by hand, and `generation.generate`'s grouping of
completions per prompt across batches, on a tiny deterministic model."""

from __future__ import annotations

import pytest

from s2d_pipeline.errors import S2DError
from s2d_pipeline.evaluation import accuracy_metrics
from s2d_pipeline.tasks.arithmetic import ArithmeticTask
from tests.helpers import sharp_tiny_model

TASK = ArithmeticTask(digits=1)  # "3+4=" means 3 + 4; completions are 2 digits, least significant first

# answers 7, 12, 0, 9 (stored as integer strings) and their correct completions
ROWS = [{"prompt": "3+4=", "answer": "7"}, {"prompt": "5+7=", "answer": "12"}]
ROWS += [{"prompt": "0+0=", "answer": "0"}, {"prompt": "9+0=", "answer": "9"}]
RIGHT = ["70", "21", "00", "90"]
WRONG = ["07", "12", "01", "9"]  # most significant digit first, or one digit short


def test_completion_format_assumed_by_these_tests():
    assert [TASK.verify(c, r["answer"]) for c, r in zip(RIGHT, ROWS, strict=True)] == [True] * 4
    assert [TASK.verify(c, r["answer"]) for c, r in zip(WRONG, ROWS, strict=True)] == [False] * 4


def test_k1_all_metrics_are_the_hit_rate():
    greedy = [RIGHT[0], WRONG[1], RIGHT[2], WRONG[3]]  # 2 / 4
    sampled = [[WRONG[0]], [RIGHT[1]], [WRONG[2]], [WRONG[3]]]  # 1 / 4
    assert accuracy_metrics(TASK, greedy, sampled, ROWS) == {"greedy": 0.5, "avg_at_k": 0.25, "pass_at_k": 0.25}


def test_k3_avg_and_pass_by_hand():
    greedy = [RIGHT[0], RIGHT[1], WRONG[2], WRONG[3]]  # 2/4 = 0.5
    sampled = [
        [RIGHT[0], WRONG[0], RIGHT[0]],  # 2/3, pass
        [WRONG[1], WRONG[1], WRONG[1]],  # 0, no pass (greedy right, no sample right)
        [RIGHT[2], RIGHT[2], WRONG[2]],  # 2/3, pass
        [WRONG[3], RIGHT[3], WRONG[3]],  # 1/3, pass (greedy wrong)
    ]
    got = accuracy_metrics(TASK, greedy, sampled, ROWS)
    assert got == {"greedy": 0.5, "avg_at_k": round((2 / 3 + 0 + 2 / 3 + 1 / 3) / 4, 4), "pass_at_k": 0.75}
    assert got["avg_at_k"] == 0.4167


def test_all_right_and_all_wrong():
    assert accuracy_metrics(TASK, RIGHT, [[c] * 3 for c in RIGHT], ROWS) == {
        "greedy": 1.0,
        "avg_at_k": 1.0,
        "pass_at_k": 1.0,
    }
    assert accuracy_metrics(TASK, WRONG, [[c] * 3 for c in WRONG], ROWS) == {
        "greedy": 0.0,
        "avg_at_k": 0.0,
        "pass_at_k": 0.0,
    }


def test_empty_input_gives_zeros_not_a_crash():
    got = accuracy_metrics(TASK, [], [], [])
    assert got["greedy"] == 0.0
    assert set(got) == {"greedy", "avg_at_k", "pass_at_k"}
    assert all(v == 0.0 and isinstance(v, float) for v in got.values())


@pytest.mark.parametrize(
    ("greedy", "sampled"),
    [
        (RIGHT[:3], [[c] for c in RIGHT]),  # a greedy completion missing
        (RIGHT, [[c] for c in RIGHT[:3]]),  # a sample group missing
        (RIGHT + ["00"], [[c] for c in RIGHT]),  # one too many
    ],
)
def test_mismatched_lengths_raise(greedy, sampled):
    with pytest.raises((ValueError, S2DError)):
        accuracy_metrics(TASK, greedy, sampled, ROWS)


# ---- generation.generate ----------------------------------------------------------------------

PROMPTS = ["3+4=", "12+9=", "1+1=", "999+0=", "7+88="]  # different lengths: batches are left-padded


@pytest.fixture(scope="module")
def sharp_model():
    return sharp_tiny_model()


def test_greedy_is_independent_of_batching(sharp_model):
    from s2d_pipeline.generation import generate

    model, tok = sharp_model
    one = [generate(model, tok, [p], max_new_tokens=4, batch_size=1)[0] for p in PROMPTS]
    assert len({c[0] for c in one}) >= 4  # precondition: prompts give different completions
    for batch_size in (2, 64):
        assert generate(model, tok, PROMPTS, max_new_tokens=4, batch_size=batch_size) == one


def test_sampled_groups_stay_with_their_prompt_across_batches(sharp_model):
    from s2d_pipeline.generation import generate

    model, tok = sharp_model
    greedy, greedy_ended = generate(model, tok, PROMPTS, max_new_tokens=4, batch_size=64, with_finished=True)
    assert 0 < sum(e[0] for e in greedy_ended) < len(PROMPTS)  # precondition: some stop early, some not
    out, finished = generate(
        model,
        tok,
        PROMPTS,
        max_new_tokens=4,
        greedy=False,
        num_return_sequences=3,
        batch_size=2,
        seed=0,
        with_finished=True,
    )
    assert [len(g) for g in out] == [3] * 5
    assert [len(f) for f in finished] == [3] * 5
    assert out == [[g[0]] * 3 for g in greedy]  # each group is its own prompt's (near-certain) answer
    assert finished == [[e[0]] * 3 for e in greedy_ended]  # end flags grouped the same way


# ---- training.summarise_rl_history --------------------------------------------------------------


def _grpo_step(step: int, reward: float, reward_std: float) -> dict:
    """One logged step as TRL 1.16's GRPOTrainer writes it into `trainer.state.log_history`."""
    return {
        "loss": 0.0,
        "grad_norm": 0.1,
        "learning_rate": 1e-5,
        "num_tokens": 96.0 * step,
        "completions/mean_length": 2.0,
        "rewards/verifier/mean": reward,
        "rewards/verifier/std": reward_std,
        "reward": reward,
        "reward_std": reward_std,
        "frac_reward_zero_std": 0.5,
        "entropy": 1.2,
        "epoch": 0.1 * step,
        "step": step,
    }


# The trainer's own last entry: no reward and no reward_std.
TRAIN_END = {"train_runtime": 2.0, "train_samples_per_second": 8.0, "train_steps_per_second": 1.0, "step": 2}


def test_rl_summary_averages_reward_std_over_the_steps_that_logged_it():
    from s2d_pipeline.training import summarise_rl_history

    one = summarise_rl_history([_grpo_step(1, 0.5, 0.4), {**TRAIN_END, "step": 1}])
    assert one["reward_std_mean"] == 0.4
    two = summarise_rl_history([_grpo_step(1, 0.5, 0.4), _grpo_step(2, 0.75, 0.2), TRAIN_END])
    assert two["reward_std_mean"] == 0.3
    assert (two["reward_first"], two["reward_last"]) == (0.5, 0.75)


def test_rl_summary_without_reward_std_says_none_rather_than_zero():
    from s2d_pipeline.training import summarise_rl_history

    step = {k: v for k, v in _grpo_step(1, 0.5, 0.4).items() if k != "reward_std"}
    assert summarise_rl_history([step, TRAIN_END])["reward_std_mean"] is None
