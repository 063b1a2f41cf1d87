"""The embedded synthetic verifiable task: integer addition with every number written
least-significant digit first.

`321+654=` means 123 + 456; the completion `9750` means 0579. Writing operands and answer in the
same (reversed) order puts each answer digit at a fixed distance from the operand digits it needs,
which a small rotary-position transformer learns quickly (with operands written the usual way, a
2-layer Qwen2 sat at chance on the low digits after 1,500 steps); carries then flow left to right.
The answer has a fixed length (digits + 1), so no end token is needed. The verifier is exact match
of every digit. `labels`/`eval` store the answer as an ordinary integer string ("579").
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

from s2d_pipeline.tasks.base import Task

VOCAB = list("0123456789+=")


def lsb_first(value: int, width: int) -> str:
    """`value` zero-padded to `width` digits, least-significant digit first."""
    return f"{value:0{width}d}"[::-1]


def carry_free_add(x: int, y: int, digits: int) -> int:
    """x + y digit by digit over the low `digits` digits, every carry dropped (pretraining noise)."""
    return sum(((x // 10**i + y // 10**i) % 10) * 10**i for i in range(digits))


class ArithmeticTask(Task):
    """Two numbers of `digits` digits, each least-significant digit first, joined by `+` and ending in
    `=`; the answer is their sum, `answer_len` digits least-significant first."""

    name = "arithmetic"
    can_generate = True
    symbols = VOCAB

    def __init__(self, digits: int = 3):
        self.digits = digits
        self.answer_len = digits + 1

    # ---- format -----------------------------------------------------------------------------
    def problem(self, a: int, b: int) -> str:
        return f"{lsb_first(a, self.digits)}+{lsb_first(b, self.digits)}="

    def operands(self, problem: str) -> tuple[int, int]:
        a, b = problem.rstrip("=").split("+")
        return int(a[::-1]), int(b[::-1])

    def format_prompt(self, problem: str) -> str:
        return problem

    def encode_answer(self, value: int) -> str:
        """Completion text for an integer answer: zero-padded, least-significant digit first."""
        return lsb_first(value, self.answer_len)

    # ---- verifier ---------------------------------------------------------------------------
    def extract_answer(self, completion: str) -> str | None:
        head = completion.strip()[: self.answer_len]
        if len(head) < self.answer_len or not head.isdigit():
            return None
        return str(int(head[::-1]))

    def parse_answer(self, answer: Any) -> int | None:
        if isinstance(answer, bool):
            return None
        if isinstance(answer, int):
            value = answer
        elif isinstance(answer, str) and answer.strip().isdigit():
            value = int(answer.strip())
        else:
            return None
        return value if 0 <= value < 10**self.answer_len else None

    def verify(self, completion: str, answer: Any) -> bool:
        got, want = self.extract_answer(completion), self.parse_answer(answer)
        return got is not None and want is not None and int(got) == want

    # ---- generator --------------------------------------------------------------------------
    def solve(self, problem: str) -> int:
        a, b = self.operands(problem)
        return a + b

    def carry_free_answer(self, problem: str) -> int:
        """The systematic wrong answer used as pretraining noise: every carry dropped."""
        a, b = self.operands(problem)
        return carry_free_add(a, b, self.digits)

    def sample_problems(self, n: int, rng: random.Random, exclude: set[str]) -> Iterator[str]:
        space = 10 ** (2 * self.digits)
        if n + len(exclude) > space:
            raise ValueError(f"cannot draw {n} distinct {self.digits}-digit problems")
        made = 0
        while made < n:
            k = rng.randrange(space)  # problem k is a = k // 10**digits, b = k % 10**digits, as in the corpus
            p = self.problem(k // 10**self.digits, k % 10**self.digits)
            if p not in exclude:
                exclude.add(p)
                made += 1
                yield p

    def generate_splits(self, seed: int, n_labels: int, n_prompts: int, n_eval: int) -> dict:
        rng = random.Random(f"{self.name}-{self.digits}-{seed}")
        seen: set[str] = set()
        eval_rows = [
            {"id": f"eval-{i:05d}", "prompt": p, "answer": str(self.solve(p)), "source": "synthetic"}
            for i, p in enumerate(self.sample_problems(n_eval, rng, seen))
        ]
        label_rows = [
            {"id": f"lab-{i:05d}", "prompt": p, "answer": str(self.solve(p)), "source": "synthetic"}
            for i, p in enumerate(self.sample_problems(n_labels, rng, seen))
        ]
        prompt_rows = [
            {"id": f"pro-{i:05d}", "prompt": p} for i, p in enumerate(self.sample_problems(n_prompts, rng, seen))
        ]
        return {"labels": label_rows, "prompts": prompt_rows, "eval": eval_rows}

    def pretraining_corpus(self, vocab: dict[str, int], exclude_prompts: set[str]) -> NoisyAdditionCorpus:
        return NoisyAdditionCorpus(self, vocab, exclude_prompts)


class NoisyAdditionCorpus:
    """Pretraining batches for the tiny base models: `a+b=` and its sum, except that a share of the
    examples (`noise_rate`) drop every carry (`carry_free_add`, vectorised) - a systematic, plausible
    error that RL with verified labels can fix. Problems in `exclude_prompts` (the eval set) never
    appear. Token ids come as one array per batch (numpy: 1,500 steps of 256 examples are built in
    well under a second)."""

    def __init__(self, task: ArithmeticTask, vocab: dict[str, int], exclude_prompts: set[str]):
        import numpy as np

        self.digits = task.digits
        self.answer_len = task.answer_len
        self.prompt_len = 2 * task.digits + 2  # `a+b=`: the loss skips these (uniform random) tokens
        self.space = 10 ** (2 * task.digits)
        # Each problem as its index a * 10**digits + b, the way `batch` draws them; a list of the
        # excluded ones, not a table over all 10**(2 * digits) problems, which wide operands make huge.
        excluded = [a * 10**task.digits + b for a, b in map(task.operands, exclude_prompts)]
        self.excluded = np.array(sorted(excluded), dtype=np.int64)
        self.digit_ids = np.array([vocab[str(d)] for d in range(10)])
        self.plus_id, self.eq_id = vocab["+"], vocab["="]

    def batch(self, rng, size: int, noise_rate: float):
        """Token ids of up to `size` examples (excluded problems drawn are dropped), shape (n, length)."""
        import numpy as np

        digits = self.digits
        k = rng.integers(0, self.space, size=size)
        k = k[~np.isin(k, self.excluded)]
        a, b = k // 10**digits, k % 10**digits
        a_d = (a[:, None] // 10 ** np.arange(digits)) % 10  # least significant first, as the task writes
        b_d = (b[:, None] // 10 ** np.arange(digits)) % 10
        true_sum = a + b
        carry_free = ((a_d + b_d) % 10) @ (10 ** np.arange(digits))
        noisy = rng.random(len(k)) < noise_rate
        answer = np.where(noisy, carry_free, true_sum)
        ans_d = (answer[:, None] // 10 ** np.arange(digits + 1)) % 10  # least significant first
        n = len(k)
        return np.concatenate(
            [
                self.digit_ids[a_d],
                np.full((n, 1), self.plus_id),
                self.digit_ids[b_d],
                np.full((n, 1), self.eq_id),
                self.digit_ids[ans_d],
            ],
            axis=1,
        )
