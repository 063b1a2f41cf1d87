"""The embedded reasoning variant (`task.name: arithmetic_trace`): multi-operand addition whose
completion is a written trace of running sums, so that an early error compounds.

Problem: `operands` numbers of `digits` digits, each least-significant digit first (as in
`arithmetic`), joined by `+`, ending in `=`. `12+34+56+78=` means 21 + 43 + 65 + 87.
Completion: the running sums s1 = a1 + a2, s2 = s1 + a3, ..., the last being the answer, each
zero-padded to the width w of the largest possible sum (operands * (10**digits - 1)), least-
significant digit first, and followed by a separator. For 4 operands of 2 digits w = 3 and the
completion has 3 * (3 + 1) = 12 tokens: the example above gives 64, 129, 216 -> `460;921;612;`.
The length is fixed, so no end token is needed.

The two base models learn different trace formats, so that the raw student's samples lie outside
the raw teacher's support (what the warmup stage is for): the teacher's corpus follows each sum
with `;` (`460;921;612;`), the student's with `,` (`460,921,612,`). Otherwise the corpora are the
same: the same problems and, in a share `noise_rate` of examples, every carry dropped in every
running addition (a systematic error; a carry dropped early propagates to the final answer).

Verifier: an exact checker of the final answer only. The completion is split on every non-digit
character; the last non-empty group of digits must have exactly w digits, and read least-
significant digit first it must equal the true sum. Intermediate sums are not checked, and either
separator (or any other) is accepted. `labels`/`eval` store the answer as an ordinary integer
string ("216").
"""

from __future__ import annotations

import re
from itertools import accumulate

from s2d_pipeline.tasks.arithmetic import LsbFirstAddition, NoisyAdditionCorpus, carry_free_add, lsb_first

VOCAB = list("0123456789+=;,")
SEPARATORS = {"teacher": ";", "student": ","}
_DIGIT_GROUPS = re.compile(r"[0-9]+")


class ArithmeticTraceTask(LsbFirstAddition):
    name = "arithmetic_trace"
    symbols = VOCAB

    def __init__(self, operands: int = 4, digits: int = 2):
        self.n_operands, self.digits = operands, digits
        self.sum_width = len(str(operands * (10**digits - 1)))
        self.completion_len = (operands - 1) * (self.sum_width + 1)
        self._settings = (operands, digits)

    # ---- format -----------------------------------------------------------------------------
    def running_sums(self, problem: str) -> list[int]:
        return list(accumulate(self.operands(problem)))[1:]

    def carry_free_running_sums(self, problem: str) -> list[int]:
        """The pretraining noise: the running sums with every carry of every addition dropped."""
        return list(accumulate(self.operands(problem), lambda s, a: carry_free_add(s, a, self.digits)))[1:]

    def encode_trace(self, sums: list[int], role: str = "teacher") -> str:
        """A completion in `role`'s format: each sum w digits, least significant first, then its separator."""
        return "".join(lsb_first(s, self.sum_width) + SEPARATORS[role] for s in sums)

    def trace(self, problem: str, role: str = "teacher") -> str:
        """The correct completion of `problem` in `role`'s format."""
        return self.encode_trace(self.running_sums(problem), role)

    # ---- verifier ---------------------------------------------------------------------------
    def extract_answer(self, completion: str) -> str | None:
        groups = _DIGIT_GROUPS.findall(completion)
        if not groups or len(groups[-1]) != self.sum_width:
            return None
        return str(int(groups[-1][::-1]))

    # ---- pretraining --------------------------------------------------------------------------
    def pretraining_corpus(self, vocab: dict[str, int], exclude_prompts: set[str], role: str) -> NoisyAdditionCorpus:
        if role not in SEPARATORS:
            raise ValueError(f"unknown role {role!r}: expected one of {sorted(SEPARATORS)}")
        return NoisyAdditionCorpus(self, vocab, exclude_prompts, separator=SEPARATORS[role])
