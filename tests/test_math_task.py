"""The math task adapter: answer extraction, math-verify grading and GSM8K/MATH conversion.

The GSM8K tests run on the real train split (read in place from the shared folder beside the
repository) because its answers were written by people nobody on the project coordinated with:
thousands separators and all.
"""

from __future__ import annotations

import json
import random
import re
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import pytest

from s2d_pipeline.errors import DataError
from s2d_pipeline.io import read_jsonl
from s2d_pipeline.tasks.math import MathTask
from tests.helpers import SHARED_GSM8K


@pytest.fixture(scope="module")
def task() -> MathTask:
    return MathTask(prompt_template="Solve and put the answer in \\boxed{{}}.\n{problem}\n")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ---- prompt ---------------------------------------------------------------------------------
def test_format_prompt(task: MathTask) -> None:
    assert task.format_prompt("1+1?") == "Solve and put the answer in \\boxed{}.\n1+1?\n"


def test_template_without_problem_is_rejected() -> None:
    with pytest.raises(ValueError, match="problem"):
        MathTask(prompt_template="no placeholder")


# ---- extract_answer -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("first \\boxed{1}, then \\boxed{2}", "2"),  # the last box is the committed answer
        ("so \\boxed{\\frac{3}{4}}.", "\\frac{3}{4}"),
        ("$\\boxed{\\sqrt{\\frac{1}{2}}}$", "\\sqrt{\\frac{1}{2}}"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces do not close the box
        ("\\boxed { 7 }", "7"),
        ("$\\boxed 5$.", "5"),
        ("\\fbox{-4}", "-4"),
        ("\\boxed{3} and then a truncated \\boxed{", "3"),
        ("work...\n#### 1,000", "1,000"),
        ("#### 1\nmore\n#### 2\n", "2"),
        ("\\boxed{9}\n#### 8", "9"),  # a box beats the GSM8K marker
        ("The answer is 42.", None),
        ("\\boxed{}", None),
        ("", None),
    ],
)
def test_extract_answer(task: MathTask, completion: str, expected: str | None) -> None:
    assert task.extract_answer(completion) == expected


# ---- parse_answer ---------------------------------------------------------------------------
@pytest.mark.parametrize("answer", ["", None, "   ", float("nan"), "\\boxed{", "???", True, [], {"a": 1}])
def test_parse_answer_none(task: MathTask, answer: object) -> None:
    assert task.parse_answer(answer) is None


@pytest.mark.parametrize(
    ("answer", "value"),
    [
        ("72", 72),
        (72, 72),
        (72.0, 72),
        ("1,000", 1000),
        ("12,345.50", Decimal("12345.5")),
        ("1,000,000", 1_000_000),
        ("-1,250", -1250),
        ("\\$18.90", Decimal("18.9")),
        ("$\\frac{1}{2}$", Decimal("0.5")),
    ],
)
def test_parse_answer_numbers(task: MathTask, answer: object, value: object) -> None:
    parsed = task.parse_answer(answer)
    assert parsed is not None
    assert Decimal(str(float(parsed[0]))) == Decimal(str(value))


def test_member_commas_are_not_thousands(task: MathTask) -> None:
    # `(1,2)` is a pair and `1, 2` a list; neither may collapse into the number 12.
    for answer in ["(1,2)", "1, 2", "(100,200)"]:
        parsed = task.parse_answer(answer)
        assert parsed is not None and not parsed[0].is_number, answer
    assert task.verify("\\boxed{(1, 2)}", "(1,2)")
    assert not task.verify("\\boxed{12}", "(1,2)")
    assert not task.verify("\\boxed{100200}", "(100,200)")
    # with `, ` between members, a space-less `,ddd` is a thousands separator again
    assert task.verify("\\boxed{(1000, 2)}", "(1,000, 2)")


# ---- verify: MATH-style problems ------------------------------------------------------------
MATH_ROWS = [
    # (problem, solution, answer) written for these tests; answer "" means take it from the box
    ("Compute $\\frac{2}{4}$.", "It is $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
    ("Simplify $\\sqrt{8}/2$.", "$\\sqrt{8}/2 = \\boxed{\\sqrt{2}}$", "\\sqrt{2}"),
    ("Solve $x + 5 = 2$.", "$x = \\boxed{-3}$", "-3"),
    ("Solve $x^2 < 1$.", "The interval is $\\boxed{(-1, 1)}$.", "(-1,1)"),
    ("Where do $y=x$ and $y=2-x$ meet?", "At $\\boxed{(1, 1)}$.", "(1,1)"),
    ("What is $3 \\div 4$?", "$\\boxed{\\dfrac{3}{4}}$", "\\dfrac{3}{4}"),
    ("What is $6/8$ in lowest terms?", "Divide by 2: $\\boxed{\\frac{3}{4}}$.", ""),
    ("Solve $x \\ge 2$ or $x < -1$.", "$\\boxed{(-\\infty,-1) \\cup [2,\\infty)}$", ""),
    ("Evaluate $\\sqrt{2}\\cdot\\sqrt{8}$.", "It equals $\\boxed{4}$.", "4"),
]

# (completion, answer, expected): equal values in other notations, and known-wrong answers
MATH_VERDICTS = [
    ("\\boxed{0.5}", "\\frac{1}{2}", True),
    ("\\boxed{\\frac12}", "\\frac{1}{2}", True),
    ("\\boxed{\\frac{1}{3}}", "\\frac{1}{2}", False),
    ("\\boxed{72.0}", "72", True),
    ("\\boxed{1000}", "1,000", True),
    ("\\boxed{1,000}", "1000", True),
    ("\\boxed{1001}", "1,000", False),
    ("\\boxed{\\frac{\\sqrt{8}}{2}}", "\\sqrt{2}", True),
    ("\\boxed{1.4142}", "\\sqrt{2}", False),
    ("\\boxed{\\sqrt{3}}", "\\sqrt{2}", False),
    ("\\boxed{-3}", "-3", True),
    ("\\boxed{3}", "-3", False),
    ("\\boxed{0.75}", "\\dfrac{3}{4}", True),
    ("\\boxed{\\frac{4}{3}}", "\\dfrac{3}{4}", False),
    ("\\boxed{(-1, 1)}", "(-1,1)", True),
    ("\\boxed{[-1, 1]}", "(-1,1)", False),
    ("\\boxed{(1,1)}", "(1, 1)", True),
    ("\\boxed{(1, 2)}", "(1, 1)", False),
    ("\\boxed{\\{2, 1\\}}", "\\{1, 2\\}", True),
    ("#### 4", "4", True),
    ("the answer is 4", "4", False),  # no committed answer, even though 4 appears
]


@pytest.mark.parametrize(("completion", "answer", "expected"), MATH_VERDICTS)
def test_verify_math_verdicts(task: MathTask, completion: str, answer: str, expected: bool) -> None:
    assert task.verify(f"Some reasoning. {completion}", answer) is expected


def test_math_rows_convert_and_verify(task: MathTask, tmp_path: Path) -> None:
    rows = [{"problem": p, "solution": s, **({"answer": a} if a else {}), "level": "Level 1"} for p, s, a in MATH_ROWS]
    path = write_jsonl(tmp_path / "math_mini.jsonl", rows)
    canon = task.to_canonical(read_jsonl(path), path)
    assert [r["id"] for r in canon] == [f"math_mini-{i}" for i in range(1, len(rows) + 1)]
    assert all(set(r) == {"id", "prompt", "answer", "source", "_line"} for r in canon)
    assert all(r["source"] == "math" for r in canon)
    assert canon[6]["answer"] == "\\frac{3}{4}"  # taken from the solution's box, nested braces intact
    assert canon[7]["answer"] == "(-\\infty,-1) \\cup [2,\\infty)"
    for row, (_, solution, _) in zip(canon, MATH_ROWS, strict=True):
        assert task.parse_answer(row["answer"]) is not None, row
        # the reference solution itself is a correct completion
        assert task.verify(solution, row["answer"]), row
    wrong = [
        "\\boxed{2}",
        "\\boxed{2}",
        "\\boxed{3}",
        "\\boxed{[-1,1]}",
        "\\boxed{(1,2)}",
        "\\boxed{\\frac{4}{3}}",
        "\\boxed{0.7}",
        "\\boxed{(-\\infty,-1] \\cup [2,\\infty)}",
        "\\boxed{16}",
    ]
    for row, completion in zip(canon, wrong, strict=True):
        assert not task.verify(completion, row["answer"]), (completion, row["answer"])


def test_math_ids_and_unlabeled_pool(task: MathTask, tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "m.jsonl",
        [
            {"problem": "p1", "answer": "1", "unique_id": "test/algebra/1.json"},
            {"problem": "p2", "answer": "2", "id": "x"},
        ],
    )
    assert [r["id"] for r in task.to_canonical(read_jsonl(path), path)] == ["test/algebra/1.json", "x"]
    pool = write_jsonl(tmp_path / "pool.jsonl", [{"problem": "p1"}, {"problem": "p2"}])
    assert task.to_canonical(read_jsonl(pool), pool) == [
        {"id": "pool-1", "prompt": "p1", "source": "math", "_line": 1},
        {"id": "pool-2", "prompt": "p2", "source": "math", "_line": 2},
    ]
    questions = write_jsonl(tmp_path / "q.jsonl", [{"question": "q1"}])
    assert task.to_canonical(read_jsonl(questions), questions) == [
        {"id": "q-1", "prompt": "q1", "source": "gsm8k", "_line": 1}
    ]


def test_canonical_rows_pass_through(task: MathTask, tmp_path: Path) -> None:
    rows = [{"id": "a", "prompt": "1+1?", "answer": "2", "source": "mine"}, {"id": "b", "prompt": "2+2?"}]
    path = write_jsonl(tmp_path / "canon.jsonl", rows)
    read = read_jsonl(path)
    assert task.to_canonical(read, path) == [{**r, "_line": i} for i, r in enumerate(rows, start=1)]


def test_verify_never_raises(task: MathTask) -> None:
    for completion, answer in [
        (None, "1"),
        (123, "1"),
        ("\\boxed{1}", object()),
        ("\\boxed{\\frac{", "1"),
        ("\\boxed{}}}{{", "???"),
        ("\\boxed{" + "(" * 200 + "}", "1"),
    ]:
        assert task.verify(completion, answer) is False  # type: ignore[arg-type]
    assert task.rewards(["\\boxed{2}", "\\boxed{3}"], ["2", "2"]) == [1.0, 0.0]


def test_verify_in_worker_threads(task: MathTask) -> None:
    # math-verify's signal-based timeouts raise outside the main thread; the task must not.
    cases = [("\\boxed{0.5}", "\\frac{1}{2}", True), ("\\boxed{1,000}", "1000", True), ("\\boxed{7}", "8", False)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        got = list(pool.map(lambda c: task.verify(c[0], c[1]), cases))
    assert got == [c[2] for c in cases]


# ---- to_canonical errors --------------------------------------------------------------------
def test_gsm8k_row_without_marker_is_rejected(task: MathTask, tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "gsm_bad.jsonl",
        [{"question": "q1", "answer": "1+1=2\n#### 2"}, {"question": "q2", "answer": "the answer is 3"}],
    )
    with pytest.raises(DataError) as err:
        task.to_canonical(read_jsonl(path), path)
    assert "gsm_bad.jsonl:2" in str(err.value)
    assert "#### <final answer>" in str(err.value)


def test_math_row_without_answer_or_box_is_rejected(task: MathTask, tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "math_bad.jsonl",
        [
            {"problem": "p1", "solution": "$\\boxed{1}$"},
            {"problem": "p2", "solution": "two", "answer": ""},
            {"problem": "p3", "solution": "$\\boxed{3}$"},
        ],
    )
    with pytest.raises(DataError) as err:
        task.to_canonical(read_jsonl(path), path)
    assert "math_bad.jsonl:2" in str(err.value)
    assert "boxed" in str(err.value)


@pytest.mark.parametrize(
    ("rows", "line", "key"),
    [
        ([{"question": "q", "answer": "#### 1"}, {"problem": "p", "answer": "2"}], 2, "question"),
        ([{"question": "q", "answer": "#### 1"}, {"question": "q2"}], 2, "answer"),
        ([{"problem": "p", "answer": "1"}, {"problem": "p", "answer": "1"}, {"question": "q"}], 3, "problem"),
        ([{"id": "a", "prompt": "p"}, {"id": "b", "question": "q"}], 2, "prompt"),
        ([{"text": "hello"}], 1, "prompt"),
    ],
)
def test_mixed_formats_are_rejected(task: MathTask, tmp_path: Path, rows: list[dict], line: int, key: str) -> None:
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    with pytest.raises(DataError) as err:
        task.to_canonical(read_jsonl(path), path)
    assert f"mixed.jsonl:{line}" in str(err.value) and f"'{key}'" in str(err.value)


# ---- real data: GSM8K train -----------------------------------------------------------------
@pytest.fixture(scope="module")
def gsm8k(task: MathTask) -> tuple[list[dict], list[dict]]:
    if not SHARED_GSM8K.exists():
        pytest.skip(f"GSM8K train split not found at {SHARED_GSM8K} (shared data folder absent)")
    raw = read_jsonl(SHARED_GSM8K)
    return raw, task.to_canonical(raw, SHARED_GSM8K)


def test_gsm8k_converts(gsm8k: tuple[list[dict], list[dict]]) -> None:
    raw, canon = gsm8k
    assert len(canon) == len(raw) == 7473
    assert len({r["id"] for r in canon}) == len(canon)
    assert all(r["source"] == "gsm8k" and r["answer"] and r["prompt"] for r in canon)
    assert [r["_line"] for r in canon] == [r["_line"] for r in raw]
    first = canon[0]
    assert first["id"] == "train-1" and first["answer"] == "72" and first["prompt"].startswith("Natalia")


def test_gsm8k_every_answer_parses(task: MathTask, gsm8k: tuple[list[dict], list[dict]]) -> None:
    unparsed = [r["id"] for r in gsm8k[1] if task.parse_answer(r["answer"]) is None]
    assert unparsed == []


def test_gsm8k_sample_verifies(task: MathTask, gsm8k: tuple[list[dict], list[dict]]) -> None:
    canon = gsm8k[1]
    with_commas = [r for r in canon if "," in r["answer"]]
    assert with_commas, "expected GSM8K answers with thousands separators"
    assert all(re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", r["answer"]) for r in with_commas)
    sample = random.Random(0).sample(canon, 300) + with_commas
    for row in sample:
        final = Decimal(row["answer"].replace(",", ""))
        right = f"Let me think step by step... so the answer is \\boxed{{{final}}}"
        wrong = f"Let me think step by step... so the answer is \\boxed{{{final + 1}}}"
        assert task.verify(right, row["answer"]), row
        assert not task.verify(wrong, row["answer"]), row
    # a completion that keeps the separators verifies too
    assert task.verify(f"\\boxed{{{with_commas[0]['answer']}}}", with_commas[0]["answer"])
