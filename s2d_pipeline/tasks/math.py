"""The real-data task: competition / grade-school math (MATH, GSM8K) graded by math-verify.

Why math-verify: answers are free-form LaTeX (`\\frac{1}{2}`, `0.5`, `\\dfrac12`, `(1, 2]`) and exact
string match would reward formatting instead of mathematics. Why our own answer extraction: the
reward must depend only on the answer the completion *commits to* (its last `\\boxed{}`, else a
GSM8K `#### ` line), never on a number math-verify happens to find elsewhere in the reasoning.

math-verify guards parsing and comparison with `signal.alarm`, which only works in the main thread.
We keep those timeouts in the main thread and disable them in worker threads (as TRL does), so the
verifier can run inside a thread pool or a trainer's reward worker.
"""

from __future__ import annotations

import decimal
import functools
import re
import threading
from pathlib import Path
from typing import Any

from s2d_pipeline.errors import DataError
from s2d_pipeline.io import is_missing
from s2d_pipeline.tasks.base import Task

# Seconds per parse / comparison when signals are usable; a pathological expression (huge powers,
# nested radicals) must cost a zero reward, not a hung stage.
PARSE_TIMEOUT_S = 5
VERIFY_TIMEOUT_S = 5

# `\boxed{...}`, `\boxed {...}`, `\fbox{...}` and the brace-less `\boxed 5`. The lookahead keeps
# `\boxedfoo` (some other macro) out.
_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?=[\s{])")
# GSM8K's convention: the final answer follows `#### ` (rest of that line).
_HASH_RE = re.compile(r"####[ \t]*([^\n]*)")
# A number written with thousands separators: 1,000 / 12,345.50 / 1,000,000. The guards keep a
# digit or `,<digit>` from continuing the number, so `1,2` and `1,2345` do not match.
_THOUSANDS_RE = re.compile(r"(?<![\d.,])\d{1,3}(?:,\d{3})+(?!\d|,\d)")
_UNESCAPED_DOLLAR_RE = re.compile(r"(?<!\\)\$")
# A number in prose (the `last_number` fallback): 12, -3, 4.5, 1,000.
_NUMBER_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?")

GSM8K_RULE = "GSM8K answer must end with '#### <final answer>'"
MATH_RULE = "MATH answer must be given in 'answer' or as \\boxed{...} in 'solution'"


@functools.cache
def _mv() -> Any:
    # math-verify pulls in sympy (~0.5 s); import it only when something is actually graded, so
    # commands that merely construct the task (validation, --help) stay fast.
    import math_verify

    return math_verify


def _timeouts() -> tuple[int | None, int | None]:
    if threading.current_thread() is threading.main_thread():
        return PARSE_TIMEOUT_S, VERIFY_TIMEOUT_S
    return None, None


def _boxed_contents(text: str) -> list[str]:
    """Contents of every complete `\\boxed`/`\\fbox` in order; unclosed ones (truncated output) are skipped."""
    found: list[str] = []
    for m in _BOX_RE.finditer(text):
        i = m.end()
        while i < len(text) and text[i].isspace():
            i += 1
        if i < len(text) and text[i] == "{":
            depth, j, start = 0, i, i + 1
            while j < len(text):
                ch = text[j]
                if ch == "\\":
                    j += 2  # `\{`, `\}` and `\\` are escaped characters, not grouping braces
                    continue
                if ch == "{":
                    depth += 1
                elif ch == "}":
                    depth -= 1
                    if depth == 0:
                        found.append(text[start:j])
                        break
                j += 1
        else:
            # `\boxed 5`: TeX boxes a single token, so the answer ends at whitespace or `$`.
            found.append(re.split(r"[\s$]", text[i:], maxsplit=1)[0])
    return found


def last_boxed(text: str) -> str | None:
    """The stripped content of the last complete, non-empty `\\boxed{}` in `text`, or None."""
    for content in reversed(_boxed_contents(text)):
        if content.strip():
            return content.strip()
    return None


def _strip_thousands(s: str) -> str:
    """`1,000` -> `1000`, leaving member-separating commas alone.

    A bracketed answer whose commas carry no space, like `(100,200)`, is a pair, not 100200; only
    when its members are separated by `, ` can a space-less `,ddd` be a thousands separator.
    """
    bracketed = s.startswith(("(", "[", "\\{", "\\left", "\\langle"))
    if bracketed and ", " not in s:
        return s
    return _THOUSANDS_RE.sub(lambda m: m.group().replace(",", ""), s)


def _as_latex(answer: str) -> str:
    """One answer as a `$...$` math string that math-verify's LaTeX extractor will pick up.

    Bare LaTeX is not reliably found (`\\sqrt{2}`, `\\dfrac{3}{4}` and `[1,3)` parse to nothing
    without delimiters), so we strip whatever delimiters the answer has and add our own.
    """
    s = answer.strip()
    boxed = last_boxed(s)
    if boxed is not None:
        s = boxed
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        inner = s[len(left) : -len(right)] if len(s) >= len(left) + len(right) else ""
        if s.startswith(left) and s.endswith(right) and not _UNESCAPED_DOLLAR_RE.search(inner):
            s = inner.strip()
            break
    # Any `$` left is a currency sign (`$18.90`), which would otherwise open a math span.
    s = _UNESCAPED_DOLLAR_RE.sub(r"\\$", s)
    s = _strip_thousands(s)
    return f"${s}$" if s else ""


def _number_text(x: int | float) -> str | None:
    if isinstance(x, float):
        if x != x or x in (float("inf"), float("-inf")):
            return None
        # repr(1e20) is '1e+20', which parses as 1*E*20; write floats out positionally.
        return format(decimal.Decimal(repr(x)), "f")
    return str(x)


# One generated sum in this many, chosen by a hash of its operands (so the same for every seed), is kept
# out of labels, prompts and eval (`MathTask.reserved_problems`). Half: a small space of sums (400 with
# operands up to 19) must still hold a healing pool and a sizing split of 100 besides the run's splits.
RESERVED_ONE_IN = 2


def _reserved(operands: tuple[int, ...]) -> bool:
    import zlib

    return zlib.crc32(" + ".join(map(str, operands)).encode()) % RESERVED_ONE_IN == 0


class MathTask(Task):
    name = "math"

    def __init__(self, prompt_template: str, sums: dict | None = None, fallback: str = "none"):
        if "{problem}" not in prompt_template:
            raise ValueError("math prompt_template must contain '{problem}'")
        self.prompt_template = prompt_template
        # With `sums` set the task writes its own data: addition word-free questions in GSM8K format.
        self.sums = sums
        self.can_generate = sums is not None
        # Where a completion without a box or `#### ` line commits to an answer: nowhere ("none"), or
        # its last number ("last_number": small instruct models that answer in prose).
        self.fallback = fallback

    # ---- generator --------------------------------------------------------------------------
    def generate_splits(self, seed: int, n_labels: int, n_prompts: int, n_eval: int) -> dict:
        """Disjoint GSM8K-format splits of `What is a + b?` questions (operands 0..max_operand),
        read back through `to_canonical` like any GSM8K file; deterministic in `seed`."""
        import itertools
        import random

        if self.sums is None:
            return super().generate_splits(seed, n_labels, n_prompts, n_eval)
        top, k = self.sums["max_operand"], self.sums["operands"]
        problems = [p for p in itertools.product(range(top + 1), repeat=k) if not _reserved(p)]
        if n_labels + n_prompts + n_eval > len(problems):
            raise DataError(
                f"task.sums: {len(problems)} distinct problems with {k} operands up to {top} (one in "
                f"{RESERVED_ONE_IN} is reserved for preparing models), but data.n_labels + n_prompts + n_eval = "
                f"{n_labels + n_prompts + n_eval}; raise task.sums.max_operand or lower the counts"
            )
        random.Random(f"math-sums-{top}-{k}-{seed}").shuffle(problems)

        def row(prefix: str, i: int, operands: tuple[int, ...], labeled: bool) -> dict:
            expression = " + ".join(map(str, operands))
            out = {"id": f"{prefix}-{i:05d}", "question": f"What is {expression}?"}
            if labeled:
                out["answer"] = f"{expression} = {sum(operands)}\n#### {sum(operands)}"
            return out

        eval_p, rest = problems[:n_eval], problems[n_eval:]
        label_p, prompt_p = rest[:n_labels], rest[n_labels : n_labels + n_prompts]
        return {
            "labels": [row("lab", i, p, True) for i, p in enumerate(label_p)],
            "prompts": [row("pro", i, p, False) for i, p in enumerate(prompt_p)],
            "eval": [row("eval", i, p, True) for i, p in enumerate(eval_p)],
        }

    def reserved_problems(self, seed: int) -> list[dict] | None:
        """The sums no split ever holds (`_reserved`: the same ones for every seed), shuffled by `seed`, as
        canonical rows with answers: what a model prepared once for every run seed (a derived student's
        healing and sizing) is prepared on, so it has seen no seed's eval question."""
        import itertools
        import random

        if self.sums is None:
            return None
        top, k = self.sums["max_operand"], self.sums["operands"]
        problems = [p for p in itertools.product(range(top + 1), repeat=k) if _reserved(p)]
        random.Random(f"math-sums-reserved-{top}-{k}-{seed}").shuffle(problems)
        return [
            {"id": f"res-{i:05d}", "prompt": f"What is {' + '.join(map(str, p))}?", "answer": str(sum(p))}
            for i, p in enumerate(problems)
        ]

    # ---- format -----------------------------------------------------------------------------
    def format_prompt(self, problem: str) -> str:
        return self.prompt_template.format(problem=problem)

    # ---- verifier ---------------------------------------------------------------------------
    def extract_answer(self, completion: str) -> str | None:
        if not isinstance(completion, str):
            return None
        boxed = last_boxed(completion)
        if boxed is not None:
            return boxed
        for m in reversed(list(_HASH_RE.finditer(completion))):
            if m.group(1).strip():
                return m.group(1).strip()
        if self.fallback == "last_number":
            numbers = _NUMBER_RE.findall(completion)
            return numbers[-1] if numbers else None
        return None

    def _parse(self, text: str) -> list | None:
        latex = _as_latex(text)
        if not latex:
            return None
        parse_timeout, _ = _timeouts()
        try:
            parsed = _mv().parse(latex, parsing_timeout=parse_timeout)
        except Exception:  # noqa: BLE001 - junk must grade as unparsable, never crash a stage
            return None
        # On failure math-verify still returns the raw matched text as a string (`"???"` -> ['???']);
        # only a sympy result means the answer was understood.
        if not any(not isinstance(p, str) for p in parsed):
            return None
        return parsed

    def parse_answer(self, answer: Any) -> list | None:
        """math-verify's parse of a reference answer (a list, sympy first), or None."""
        if isinstance(answer, list):  # already parsed: lets callers parse a gold answer once
            return answer or None
        if is_missing(answer) or isinstance(answer, bool):
            return None
        if isinstance(answer, (int, float)):
            text = _number_text(answer)
            return self._parse(text) if text is not None else None
        if isinstance(answer, str) and answer.strip():
            return self._parse(answer)
        return None

    def verify(self, completion: str, answer: Any) -> bool:
        try:
            gold = self.parse_answer(answer)
            if gold is None:
                return False
            extracted = self.extract_answer(completion)
            pred = self._parse(extracted) if extracted is not None else None
            if pred is None:
                return False
            _, verify_timeout = _timeouts()
            return bool(_mv().verify(gold, pred, timeout_seconds=verify_timeout))
        except Exception:  # noqa: BLE001 - a reward must be 0/1, whatever math-verify raises on junk
            return False

    # ---- data formats -----------------------------------------------------------------------
    def to_canonical(self, rows: list[dict], path: Path) -> list[dict]:
        """Canonical rows from canonical, GSM8K (`question`/`answer`) or MATH (`problem`/`solution`) files.

        The format is decided once per file from the first row, so a file mixing formats is an error
        rather than silently half-converted.
        """
        if not rows:
            return []
        path = Path(path)
        first = rows[0]
        if "prompt" in first:
            fmt = "canonical"
        elif "question" in first:
            fmt = "gsm8k"
        elif "problem" in first:
            fmt = "math"
        else:
            line = first.get("_line", 1)
            raise DataError(
                f"{path}:{line}: rule 'math data format' failed: a row needs 'prompt' (canonical), "
                f"'question' (GSM8K) or 'problem' (MATH); got keys {sorted(k for k in first if k != '_line')}"
            )
        if fmt == "canonical":
            # Validation of canonical columns happens elsewhere; only the format key is ours.
            for i, row in enumerate(rows):
                self._require(row, "prompt", fmt, path, i)
            return rows
        labeled = "answer" in first or (fmt == "math" and "solution" in first)
        convert = self._from_gsm8k if fmt == "gsm8k" else self._from_math
        return [convert(row, path, i, labeled) for i, row in enumerate(rows)]

    @staticmethod
    def _require(row: dict, key: str, fmt: str, path: Path, index: int) -> None:
        if key not in row:
            line = row.get("_line", index + 1)
            raise DataError(
                f"{path}:{line}: rule '{fmt} format' failed: missing key '{key}' "
                f"(the file's format was detected from its first row)"
            )

    @staticmethod
    def _row_id(row: dict, path: Path, line: int, *keys: str) -> str:
        for key in keys:
            if not is_missing(row.get(key)) and str(row[key]).strip():
                return str(row[key])
        return f"{path.stem}-{line}"

    def _from_gsm8k(self, row: dict, path: Path, index: int, labeled: bool) -> dict:
        line = row.get("_line", index + 1)
        self._require(row, "question", "gsm8k", path, index)
        out = {"id": self._row_id(row, path, line, "id"), "prompt": row["question"]}
        if labeled:
            self._require(row, "answer", "gsm8k", path, index)
            solution = row["answer"]
            if not isinstance(solution, str) or "#### " not in solution:
                raise DataError(f"{path}:{line}: rule '{GSM8K_RULE}' failed: got {str(solution)[-60:]!r}")
            final = solution.rsplit("#### ", 1)[1].strip()
            if not final:
                raise DataError(f"{path}:{line}: rule '{GSM8K_RULE}' failed: nothing after '#### '")
            out["answer"] = final  # commas kept as written; parse_answer reads 1,000 as 1000
        out["source"] = "gsm8k"
        out["_line"] = line
        return out

    def _from_math(self, row: dict, path: Path, index: int, labeled: bool) -> dict:
        line = row.get("_line", index + 1)
        self._require(row, "problem", "math", path, index)
        out = {"id": self._row_id(row, path, line, "id", "unique_id"), "prompt": row["problem"]}
        if labeled:
            answer = row.get("answer")
            if is_missing(answer) or (isinstance(answer, str) and not answer.strip()):
                if "answer" not in row and "solution" not in row:
                    raise DataError(
                        f"{path}:{line}: rule 'math format' failed: missing key 'answer' or 'solution' "
                        f"(the file's format was detected from its first row)"
                    )
                solution = row.get("solution")
                answer = last_boxed(solution) if isinstance(solution, str) else None
                if answer is None:
                    raise DataError(
                        f"{path}:{line}: rule '{MATH_RULE}' failed: no 'answer' and no \\boxed{{}} in 'solution'"
                    )
            out["answer"] = answer.strip() if isinstance(answer, str) else answer
        out["source"] = "math"
        out["_line"] = line
        return out
