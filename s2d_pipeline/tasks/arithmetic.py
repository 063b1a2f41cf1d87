"""The embedded synthetic verifiable task: integer addition with every number written
least-significant digit first.

`321+654=` means 123 + 456; the completion `9750` means 0579. Writing operands and answer in the
same (reversed) order puts each answer digit at a fixed distance from the operand digits it needs,
which a small rotary-position transformer learns quickly (with operands written the usual way, a
2-layer Qwen2 sat at chance on the low digits after 1,500 steps); carries then flow left to right.
The answer has a fixed length (digits + 1), so no end token is needed. The verifier is exact match
of every digit. `labels`/`eval` store the answer as an ordinary integer string ("579").

`LsbFirstAddition` and `NoisyAdditionCorpus` hold what this task shares with its reasoning variant
(`arithmetic_trace`: several operands, a completion of running sums): the number format, the
generator, the answer parser and the vectorised noisy pretraining corpus.
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


class LsbFirstAddition(Task):
    """`n_operands` numbers of `digits` digits, each least-significant digit first, joined by `+` and
    ending in `=`; the answer is their sum, which has at most `sum_width` digits. Subclasses set the
    three sizes and `_settings` (what seeds the generator besides the seed) and own the completion."""

    can_generate = True
    n_operands: int
    digits: int
    sum_width: int
    _settings: tuple[int, ...]

    # ---- format -----------------------------------------------------------------------------
    def problem(self, *values: int) -> str:
        return "+".join(lsb_first(v, self.digits) for v in values) + "="

    def operands(self, problem: str) -> tuple[int, ...]:
        return tuple(int(x[::-1]) for x in problem.rstrip("=").split("+"))

    def format_prompt(self, problem: str) -> str:
        return problem

    # ---- verifier ---------------------------------------------------------------------------
    def parse_answer(self, answer: Any) -> int | None:
        if isinstance(answer, bool):
            return None
        if isinstance(answer, int):
            value = answer
        elif isinstance(answer, str) and answer.strip().isdigit():
            value = int(answer.strip())
        else:
            return None
        return value if 0 <= value < 10**self.sum_width else None

    def verify(self, completion: str, answer: Any) -> bool:
        got, want = self.extract_answer(completion), self.parse_answer(answer)
        return got is not None and want is not None and int(got) == want

    # ---- generator --------------------------------------------------------------------------
    def solve(self, problem: str) -> int:
        return sum(self.operands(problem))

    def sample_problems(self, n: int, rng: random.Random, exclude: set[str]) -> Iterator[str]:
        chunk = 10**self.digits
        space = chunk**self.n_operands
        if n + len(exclude) > space:
            raise ValueError(f"cannot draw {n} distinct {self.n_operands}x{self.digits}-digit problems")
        made = 0
        while made < n:
            k = rng.randrange(space)  # the operands are its base-10**digits digits, first operand highest
            p = self.problem(*((k // chunk ** (self.n_operands - 1 - i)) % chunk for i in range(self.n_operands)))
            if p not in exclude:
                exclude.add(p)
                made += 1
                yield p

    def generate_splits(self, seed: int, n_labels: int, n_prompts: int, n_eval: int) -> dict:
        rng = random.Random("-".join(map(str, (self.name, *self._settings, seed))))
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


class ArithmeticTask(LsbFirstAddition):
    name = "arithmetic"
    symbols = VOCAB
    n_operands = 2

    def __init__(self, digits: int = 3):
        self.digits = digits
        self.sum_width = self.answer_len = digits + 1
        self._settings = (digits,)

    def encode_answer(self, value: int) -> str:
        """Completion text for an integer answer: zero-padded, least-significant digit first."""
        return lsb_first(value, self.answer_len)

    def extract_answer(self, completion: str) -> str | None:
        head = completion.strip()[: self.answer_len]
        if len(head) < self.answer_len or not head.isdigit():
            return None
        return str(int(head[::-1]))

    def carry_free_answer(self, problem: str) -> int:
        """The systematic wrong answer used as pretraining noise: every carry dropped."""
        a, b = self.operands(problem)
        return carry_free_add(a, b, self.digits)

    def pretraining_corpus(self, vocab: dict[str, int], exclude_prompts: set[str], role: str) -> NoisyAdditionCorpus:
        return NoisyAdditionCorpus(self, vocab, exclude_prompts)  # one format for both roles


class NoisyAdditionCorpus:
    """Pretraining batches for the tiny base models: a problem of `LsbFirstAddition` and its running
    sums (with two operands: the sum alone), each `sum_width` digits least-significant first and
    followed by `separator` when one is given. A share of the examples (`noise_rate`) drop every
    carry in every addition (`carry_free_add`, vectorised) - a systematic, plausible error that RL
    with verified labels can fix; with several operands a dropped carry propagates to the final
    answer. Problems in `exclude_prompts` (the eval set) never appear. Token ids come as one array
    per batch (numpy: 1,500 steps of 256 examples are built in well under a second)."""

    def __init__(
        self, task: LsbFirstAddition, vocab: dict[str, int], exclude_prompts: set[str], separator: str | None = None
    ):
        import numpy as np

        self.n_operands, self.digits, self.width = task.n_operands, task.digits, task.sum_width
        # `a+b+...=`: the loss skips these (uniform random) tokens
        self.prompt_len = task.n_operands * (task.digits + 1)
        self.answer_len = (task.n_operands - 1) * (task.sum_width + (separator is not None))
        self.space = 10 ** (task.n_operands * task.digits)
        self.excluded = self._rows(np.array([task.operands(q) for q in exclude_prompts], dtype=np.int64))
        self.digit_ids = np.array([vocab[str(d)] for d in range(10)])
        self.plus_id, self.eq_id = vocab["+"], vocab["="]
        self.separator_id = None if separator is None else vocab[separator]

    def _rows(self, operands):
        """One comparable value per problem (a row of operands viewed as bytes)."""
        import numpy as np

        operands = np.ascontiguousarray(operands.reshape(-1, self.n_operands), dtype=np.int64)
        return operands.view(np.dtype((np.void, 8 * self.n_operands))).ravel()

    def _draw(self, rng, size: int):
        import numpy as np

        n, chunk = self.n_operands, 10**self.digits
        if self.space < 2**63:  # one index per problem, as `sample_problems` draws them
            k = rng.integers(0, self.space, size=size)
            return (k[:, None] // chunk ** np.arange(n - 1, -1, -1, dtype=np.int64)) % chunk
        return rng.integers(0, chunk, size=(size, n))

    def batch(self, rng, size: int, noise_rate: float):
        """Token ids of up to `size` examples (excluded problems drawn are dropped), shape (n, length)."""
        import numpy as np

        ops = self._draw(rng, size)
        ops = ops[~np.isin(self._rows(ops), self.excluded)]
        m, place = len(ops), 10 ** np.arange(self.digits)
        ops_d = (ops[:, :, None] // place) % 10  # (m, operands, digits), least significant first
        true_sums = np.cumsum(ops, axis=1)[:, 1:]
        free_d, free = ops_d[:, 0], []
        for j in range(1, self.n_operands):
            free_d = (free_d + ops_d[:, j]) % 10
            free.append(free_d @ place)
        noisy = rng.random(m) < noise_rate
        sums = np.where(noisy[:, None], np.stack(free, axis=1), true_sums)
        sums_d = (sums[:, :, None] // 10 ** np.arange(self.width)) % 10  # least significant first
        parts = []
        for j in range(self.n_operands):
            after = self.plus_id if j < self.n_operands - 1 else self.eq_id
            parts += [self.digit_ids[ops_d[:, j]], np.full((m, 1), after)]
        for j in range(self.n_operands - 1):
            parts.append(self.digit_ids[sums_d[:, j]])
            if self.separator_id is not None:
                parts.append(np.full((m, 1), self.separator_id))
        return np.concatenate(parts, axis=1)
