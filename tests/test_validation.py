"""The `validate` stage: one failing fixture per rule, and a bad file never clobbers good outputs.

Each failing case starts from valid generated data, breaks exactly one rule, and checks that the
stage raises a DataError naming the file, line, id and rule, writes `report.failed.json`, and
leaves the previous good `report.json`, the metrics and a downstream artifact byte-identical.
GX is imported once (module fixture); each validation of these small frames takes well under 1 s.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from s2d_pipeline import validation
from s2d_pipeline.config import Config, config_from_dict, deep_merge
from s2d_pipeline.errors import DataError
from s2d_pipeline.io import write_jsonl
from s2d_pipeline.layout import SPLITS, data_file, ledger_file, metrics_file, validation_report
from s2d_pipeline.stages import validate
from s2d_pipeline.tasks.arithmetic import ArithmeticTask

BOUNDS = {
    "data": {
        "labels_rows": {"min": 4, "max": 1000},
        "prompts_rows": {"min": 4, "max": 1000},
        "eval_rows": {"min": 4, "max": 1000},
    }
}


def make_cfg(root: Path, overrides: dict | None = None) -> Config:
    return config_from_dict(deep_merge(BOUNDS, overrides or {}), root=root)


def write_splits(cfg: Config, splits: dict[str, list[dict]]) -> None:
    for split, rows in splits.items():
        write_jsonl(data_file(cfg, split), rows)


@pytest.fixture(scope="module")
def valid_splits() -> dict[str, list[dict]]:
    return ArithmeticTask(3).generate_splits(seed=0, n_labels=40, n_prompts=60, n_eval=30)


@pytest.fixture(scope="module")
def good_run(tmp_path_factory, valid_splits) -> tuple[Path, dict]:
    """One real passing run (also pays the GX import once); its outputs seed the failing cases."""
    root = tmp_path_factory.mktemp("good")
    cfg = make_cfg(root)
    write_splits(cfg, valid_splits)
    metrics = validate.run(cfg)
    return root, metrics


@pytest.fixture
def splits(valid_splits) -> dict[str, list[dict]]:
    return copy.deepcopy(valid_splits)


# ---- the passing path ---------------------------------------------------------------------------


def test_valid_data_passes_and_writes_report_and_metrics(good_run):
    root, metrics = good_run
    cfg = make_cfg(root)
    assert metrics["passed"] is True
    assert metrics["rows"] == {"labels": 40, "prompts": 60, "eval": 30}
    assert metrics["rules_checked"] == metrics["rules_passed"] > 0
    assert metrics["wall_s"] >= 0
    assert json.loads(metrics_file(cfg, "validate").read_text()) == metrics
    report = json.loads(validation_report(cfg).read_text())
    assert report["passed"] is True
    for split in SPLITS:
        entry = report["splits"][split]
        assert entry["file"] == f"data/{split}.jsonl"
        assert len(entry["sha256"]) == 64
        # Every rule passed; the prompt-length rule needs a tokenizer, which this data-only project lacks.
        assert all(
            rule["passed"] is True or (rule["rule"] == validation.RULE_PROMPT_FITS and rule["passed"] is None)
            for rule in entry["rules"]
        )
    assert not validation_report(cfg).with_name("report.failed.json").exists()


def test_report_is_a_real_gx_suite_with_every_rule(tmp_path, splits):
    cfg = make_cfg(tmp_path)
    splits["labels"][2]["answer"] = "12a"  # line 3
    splits["labels"][7]["answer"] = "x"  # line 8
    write_splits(cfg, splits)
    report = validation.validate_splits(cfg, ArithmeticTask(3))
    assert report["passed"] is False
    for split in SPLITS:
        rules = {r["rule"]: r for r in report["splits"][split]["rules"]}
        assert set(validation.rule_names(split)) | {validation.RULE_READABLE} == set(rules)
        # Every rule except the reader's is a GX expectation result.
        assert all(
            r["expectation"].startswith("expect_")
            for n, r in rules.items()
            if n != validation.RULE_READABLE and r["passed"] is not None
        )
        assert "no tokenizer" in rules[validation.RULE_PROMPT_FITS]["skipped"]
    assert validation.RULE_EVAL_LEAK in validation.rule_names("labels")
    assert validation.RULE_EVAL_LEAK not in validation.rule_names("eval")
    assert validation.RULE_ANSWER_PARSEABLE not in validation.rule_names("prompts")
    parse = {r["rule"]: r for r in report["splits"]["labels"]["rules"]}[validation.RULE_ANSWER_PARSEABLE]
    assert parse["passed"] is False
    assert parse["expectation"] == "expect_column_values_to_be_in_set"
    assert [(f["line"], f["id"], f["value"]) for f in parse["failures"]] == [
        (3, "lab-00002", "12a"),
        (8, "lab-00007", "x"),
    ]
    others = [
        r
        for s in report["splits"].values()
        for r in s["rules"]
        if r["rule"] != validation.RULE_ANSWER_PARSEABLE or s is not report["splits"]["labels"]
    ]
    assert all(r["passed"] is True or r["rule"] == validation.RULE_PROMPT_FITS for r in others)
    json.dumps(report)  # JSON-able


# ---- one failing fixture per rule ---------------------------------------------------------------

Mutation = Callable[[Config, dict], None]


def rows(fn: Callable[[dict], None]) -> Mutation:
    """A mutation of the row dicts, written as JSONL afterwards."""

    def apply(cfg: Config, splits: dict) -> None:
        fn(splits)
        write_splits(cfg, splits)

    return apply


def raw(split: str, line: int, text: bytes) -> Mutation:
    """Write valid files, then replace one line of `split` with raw bytes."""

    def apply(cfg: Config, splits: dict) -> None:
        write_splits(cfg, splits)
        path = data_file(cfg, split)
        lines = path.read_bytes().split(b"\n")
        lines[line - 1] = text
        path.write_bytes(b"\n".join(lines))

    return apply


def _set(split: str, index: int, key: str, value) -> Callable[[dict], None]:
    return lambda s: s[split][index].__setitem__(key, value)


def _drop_column(split: str, key: str) -> Callable[[dict], None]:
    return lambda s: [row.pop(key) for row in s[split]]


def _leak(split: str, index: int, eval_index: int, fmt: str) -> Callable[[dict], None]:
    def apply(s: dict) -> None:
        s[split][index]["prompt"] = fmt.format(s["eval"][eval_index]["prompt"])

    return apply


def _dup_prompt(s: dict) -> None:
    s["labels"][10]["prompt"] = "What is 12+34?"
    s["labels"][11]["prompt"] = "  what IS\t 12+34? "


def _remove_file(cfg: Config, splits: dict) -> None:
    write_splits(cfg, splits)
    data_file(cfg, "eval").unlink()


# (case, mutation, file name, line (None: file-level), id (None: none to name), rule text, params)
CASES = [
    (
        "duplicate id",
        rows(_set("labels", 3, "id", "lab-00002")),
        "labels.jsonl",
        4,
        "lab-00002",
        validation.RULE_ID_UNIQUE,
        None,
    ),
    ("null id", rows(_set("labels", 4, "id", None)), "labels.jsonl", 5, None, validation.RULE_ID_NOT_NULL, None),
    (
        "null prompt",
        rows(_set("prompts", 3, "prompt", None)),
        "prompts.jsonl",
        4,
        "pro-00003",
        validation.RULE_PROMPT_NOT_NULL,
        None,
    ),
    (
        "empty prompt",
        rows(_set("labels", 5, "prompt", "")),
        "labels.jsonl",
        6,
        "lab-00005",
        validation.RULE_PROMPT_TEXT,
        None,
    ),
    (
        "whitespace prompt",
        rows(_set("prompts", 7, "prompt", " \t ")),
        "prompts.jsonl",
        8,
        "pro-00007",
        validation.RULE_PROMPT_TEXT,
        None,
    ),
    (
        "missing column",
        rows(_drop_column("eval", "answer")),
        "eval.jsonl",
        1,
        "eval-00000",
        validation.RULE_REQUIRED,
        None,
    ),
    (
        "unexpected column",
        rows(_set("labels", 2, "difficulty", "hard")),
        "labels.jsonl",
        3,
        "lab-00002",
        validation.RULE_EXTRA,
        None,
    ),
    (
        "empty answer",
        rows(_set("labels", 6, "answer", "  ")),
        "labels.jsonl",
        7,
        "lab-00006",
        validation.RULE_ANSWER_NOT_EMPTY,
        None,
    ),
    (
        "null answer",
        rows(_set("eval", 2, "answer", None)),
        "eval.jsonl",
        3,
        "eval-00002",
        validation.RULE_ANSWER_NOT_NULL,
        None,
    ),
    # `NaN` is not JSON: the reader rejects the line before any rule sees it.
    (
        "NaN answer",
        raw("labels", 4, b'{"id": "lab-00003", "prompt": "1+1=", "answer": NaN}'),
        "labels.jsonl",
        4,
        None,
        "valid JSONL",
        None,
    ),
    (
        "unparseable answer",
        rows(_set("labels", 8, "answer", "12a")),
        "labels.jsonl",
        9,
        "lab-00008",
        validation.RULE_ANSWER_PARSEABLE,
        None,
    ),
    (
        "too few rows",
        rows(lambda s: s.__setitem__("labels", s["labels"][:3])),
        "labels.jsonl",
        None,
        None,
        validation.RULE_ROW_COUNT,
        None,
    ),
    (
        "too many rows",
        rows(lambda s: None),
        "labels.jsonl",
        None,
        None,
        validation.RULE_ROW_COUNT,
        {"data": {"labels_rows": {"max": 39}}},
    ),
    (
        "duplicate prompt (case/whitespace)",
        rows(_dup_prompt),
        "labels.jsonl",
        12,
        "lab-00011",
        validation.RULE_DUP_PROMPT,
        None,
    ),
    (
        "eval prompt leaked into labels",
        rows(_leak("labels", 12, 4, "{} ")),
        "labels.jsonl",
        13,
        "lab-00012",
        validation.RULE_EVAL_LEAK,
        None,
    ),
    (
        "eval prompt leaked into prompts",
        rows(_leak("prompts", 20, 5, "\t{}")),
        "prompts.jsonl",
        21,
        "pro-00020",
        validation.RULE_EVAL_LEAK,
        None,
    ),
    (
        "not valid JSONL",
        raw("labels", 3, b'{"id": "lab-00002", "prompt": '),
        "labels.jsonl",
        3,
        None,
        "valid JSONL",
        None,
    ),
    (
        "invalid UTF-8",
        raw("prompts", 2, b'{"id": "pro-00001", "prompt": "1\xff\xfe+2="}'),
        "prompts.jsonl",
        2,
        None,
        "utf-8 encoding",
        None,
    ),
    ("missing file", _remove_file, "eval.jsonl", None, None, "file not found", None),
]


def _seed_previous_outputs(cfg: Config, good_root: Path) -> dict[Path, bytes]:
    """Copy a previous passing run's outputs in, plus a downstream artifact; return their bytes."""
    for rel in ("artifacts/validate/report.json", "metrics/validate.json"):
        (cfg.root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(good_root / rel, cfg.root / rel)
    ledger = ledger_file(cfg)
    ledger.parent.mkdir(parents=True, exist_ok=True)
    ledger.write_text(json.dumps({"spent": 12, "budget": 64}))
    paths = [validation_report(cfg), metrics_file(cfg, "validate"), ledger]
    return {p: p.read_bytes() for p in paths}


@pytest.mark.parametrize(
    "mutate, fname, line, row_id, rule, overrides",
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_failing_rule_stops_with_file_line_id_rule_and_keeps_outputs(
    tmp_path, good_run, splits, mutate, fname, line, row_id, rule, overrides
):
    cfg = make_cfg(tmp_path, overrides)
    before = _seed_previous_outputs(cfg, good_run[0])
    mutate(cfg, splits)

    with pytest.raises(DataError) as info:
        validate.run(cfg)
    message = str(info.value)

    assert fname in message
    assert rule in message
    if line is not None:
        assert f"{fname}:{line}" in message
    if row_id is not None:
        assert f"{fname}:{line} (id={row_id})" in message
    for path, content in before.items():
        assert path.read_bytes() == content, f"{path} was modified by a failing run"
    failed = json.loads(validation_report(cfg).with_name("report.failed.json").read_text())
    assert failed["passed"] is False


def test_unreadable_split_does_not_hide_other_splits(tmp_path, splits):
    cfg = make_cfg(tmp_path)
    splits["prompts"][4]["id"] = None
    write_splits(cfg, splits)
    data_file(cfg, "labels").write_bytes(b'{"id": 1}\n[1, 2]\n')
    report = validation.validate_splits(cfg, ArithmeticTask(3))
    labels = report["splits"]["labels"]
    assert labels["rules"][0]["rule"] == validation.RULE_READABLE
    assert labels["rules"][0]["failures"][0]["line"] == 2
    prompts = {r["rule"]: r for r in report["splits"]["prompts"]["rules"]}
    assert [f["line"] for f in prompts[validation.RULE_ID_NOT_NULL]["failures"]] == [5]
    message = validation.format_failures(report)
    assert "data/labels.jsonl:2: rule 'valid JSONL'" in message
    assert "data/prompts.jsonl:5: rule 'id is not null'" in message


def test_leak_names_the_matching_eval_id(tmp_path, splits):
    cfg = make_cfg(tmp_path)
    splits["prompts"][9]["prompt"] = "  " + splits["eval"][17]["prompt"]
    write_splits(cfg, splits)
    report = validation.validate_splits(cfg, ArithmeticTask(3))
    leak = {r["rule"]: r for r in report["splits"]["prompts"]["rules"]}[validation.RULE_EVAL_LEAK]
    assert [(f["line"], f["id"], f["eval_id"]) for f in leak["failures"]] == [(10, "pro-00009", "eval-00017")]
    assert "eval id=eval-00017" in validation.format_failures(report)


def test_missing_id_column_reports_by_line(tmp_path, splits):
    cfg = make_cfg(tmp_path)
    for row in splits["prompts"]:
        row.pop("id")
    splits["prompts"][3]["prompt"] = ""
    write_splits(cfg, splits)
    report = validation.validate_splits(cfg, ArithmeticTask(3))
    rules = {r["rule"]: r for r in report["splits"]["prompts"]["rules"]}
    assert rules[validation.RULE_REQUIRED]["unexpected_count"] == 60
    assert rules[validation.RULE_ID_UNIQUE]["passed"] is None  # skipped: no id column to check
    assert [(f["line"], f["id"]) for f in rules[validation.RULE_PROMPT_TEXT]["failures"]] == [(4, None)]
    assert "data/prompts.jsonl:4: rule 'prompt is non-empty text'" in validation.format_failures(report)


def test_format_failures_caps_the_message():
    failures = [{"line": i, "id": f"x{i}", "value": "12a"} for i in range(1, 21)]
    rule = {
        "rule": validation.RULE_ANSWER_PARSEABLE,
        "passed": False,
        "unexpected_count": 80,
        "field": "answer",
        "failures": failures,
    }
    report = {"passed": False, "splits": {s: {"file": f"data/{s}.jsonl", "rules": [rule]} for s in SPLITS}}
    lines = validation.format_failures(report).splitlines()
    assert lines[0] == "data validation failed (240 problem(s)):"
    assert lines[1] == (
        "  data/labels.jsonl:1 (id=x1): rule 'answer parseable by the task verifier' failed: answer='12a'"
    )
    assert len(lines) == 1 + 50 + 1
    assert "190 more" in lines[-1]


def test_success_removes_a_stale_failure_report(tmp_path, splits):
    cfg = make_cfg(tmp_path)
    write_splits(cfg, splits)
    stale = validation_report(cfg).with_name("report.failed.json")
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")
    validate.run(cfg)
    assert validation_report(cfg).exists() and not stale.exists()
