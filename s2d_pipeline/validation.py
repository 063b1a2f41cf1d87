"""Data validation of the three splits as a Great Expectations (GX Core) suite, one per split.

Why GX: every rule is a declared Expectation whose result (with the failing rows) is recorded in
the report, so a bad data file stops the pipeline *before* any label budget or GPU time is spent,
with a message naming the file, line, id and rule. Rules that need Python (the task's answer
parser, prompt normalisation, the eval-leak lookup) are computed in pandas as helper columns and
then checked with GX built-in expectations, so the suite stays plain GX.

GX and pandas take seconds to import: both are imported only inside the function that runs the
suite, never at module top, so the CLI stays fast for the other stages.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s2d_pipeline.config import Config
from s2d_pipeline.data import load_split
from s2d_pipeline.errors import DataError
from s2d_pipeline.generation import encode_prompt
from s2d_pipeline.io import is_missing, sha256_file
from s2d_pipeline.layout import SPLITS, base_model_dir, data_file
from s2d_pipeline.models import load_tokenizer
from s2d_pipeline.prompts import render
from s2d_pipeline.tasks import Task

# Human rule names: the report, the error message and the tests all use these strings.
RULE_READABLE = "readable JSONL file"
RULE_REQUIRED = "required columns present"
RULE_EXTRA = "no unexpected columns"
RULE_ID_NOT_NULL = "id is not null"
RULE_ID_UNIQUE = "id is unique"
RULE_ID_STRIPPED = "id has no leading or trailing whitespace"
RULE_PROMPT_NOT_NULL = "prompt is not null"
RULE_PROMPT_TEXT = "prompt is non-empty text"
RULE_ANSWER_NOT_NULL = "answer is not null"
RULE_ANSWER_NOT_EMPTY = "answer is not empty"
RULE_ANSWER_PARSEABLE = "answer parseable by the task verifier"
RULE_ROW_COUNT = "row count within bounds"
RULE_DUP_PROMPT = "no duplicate prompts (ignoring case and whitespace)"
RULE_EVAL_LEAK = "no eval prompt in this split"
RULE_PROMPT_FITS = "prompt fits the model context"

REQUIRED_COLUMNS = {
    "labels": ("id", "prompt", "answer"),
    "prompts": ("id", "prompt"),
    "eval": ("id", "prompt", "answer"),
}
OPTIONAL_COLUMNS = ("source",)
INTERNAL_COLUMNS = ("_line",)  # added by read_jsonl, not part of the user's file

MAX_FAILURES_PER_RULE = 20  # kept in the report; the count of all failures is kept too
MAX_MESSAGE_LINES = 50

# Helper columns are prefixed so they can never collide with a user's column.
_H_MISSING = "__missing_columns"
_H_EXTRA = "__unexpected_columns"
_H_ID_KEY = "__id_key"
_H_ID_STRIPPED = "__id_stripped"
_H_PROMPT_TEXT = "__prompt_has_text"
_H_PROMPT_NORM = "__prompt_norm"
_H_ANSWER_NOT_EMPTY = "__answer_not_empty"
_H_ANSWER_PARSEABLE = "__answer_parseable"
_H_LEAK = "__leaked_from_eval"
_H_PROMPT_TOKENS = "__prompt_tokens"


@dataclass(frozen=True)
class _Rule:
    """One Expectation of a split's suite and how its failures are shown."""

    name: str
    expectation: str  # GX expectation class name
    column: str | None  # the column GX checks (None: table-level)
    needs: str | None  # raw column the rule is about; skipped when the file has no such column
    shows: str | None  # raw column (or helper) whose value a failure shows
    kwargs: tuple = ()


def rule_names(split: str) -> list[str]:
    """Every rule name checked on `split` (in report order)."""
    return [r.name for r in _rules(split, (0, 1), 1)]


def _rules(split: str, bounds: tuple[int, int], prompt_token_limit: int) -> list[_Rule]:
    rules = [
        _Rule(RULE_REQUIRED, "ExpectColumnValuesToBeNull", _H_MISSING, None, _H_MISSING),
        _Rule(RULE_EXTRA, "ExpectColumnValuesToBeNull", _H_EXTRA, None, _H_EXTRA),
        _Rule(
            RULE_ROW_COUNT,
            "ExpectTableRowCountToBeBetween",
            None,
            None,
            None,
            (("min_value", bounds[0]), ("max_value", bounds[1])),
        ),
        _Rule(RULE_ID_NOT_NULL, "ExpectColumnValuesToNotBeNull", "id", "id", "id"),
        _Rule(RULE_ID_UNIQUE, "ExpectColumnValuesToBeUnique", _H_ID_KEY, "id", "id"),
        # " lab-1" and "lab-1" would otherwise be two different labels to the ledger.
        _Rule(
            RULE_ID_STRIPPED,
            "ExpectColumnValuesToBeInSet",
            _H_ID_STRIPPED,
            "id",
            "id",
            (("value_set", [True]),),
        ),
        _Rule(RULE_PROMPT_NOT_NULL, "ExpectColumnValuesToNotBeNull", "prompt", "prompt", "prompt"),
        _Rule(
            RULE_PROMPT_TEXT,
            "ExpectColumnValuesToBeInSet",
            _H_PROMPT_TEXT,
            "prompt",
            "prompt",
            (("value_set", [True]),),
        ),
        _Rule(RULE_DUP_PROMPT, "ExpectColumnValuesToBeUnique", _H_PROMPT_NORM, "prompt", "prompt"),
        _Rule(
            RULE_PROMPT_FITS,
            "ExpectColumnValuesToBeBetween",
            _H_PROMPT_TOKENS,
            "prompt",
            _H_PROMPT_TOKENS,
            (("max_value", prompt_token_limit),),
        ),
    ]
    if "answer" in REQUIRED_COLUMNS[split]:
        rules += [
            _Rule(RULE_ANSWER_NOT_NULL, "ExpectColumnValuesToNotBeNull", "answer", "answer", "answer"),
            _Rule(
                RULE_ANSWER_NOT_EMPTY,
                "ExpectColumnValuesToBeInSet",
                _H_ANSWER_NOT_EMPTY,
                "answer",
                "answer",
                (("value_set", [True]),),
            ),
            _Rule(
                RULE_ANSWER_PARSEABLE,
                "ExpectColumnValuesToBeInSet",
                _H_ANSWER_PARSEABLE,
                "answer",
                "answer",
                (("value_set", [True]),),
            ),
        ]
    if split != "eval":
        rules.append(_Rule(RULE_EVAL_LEAK, "ExpectColumnValuesToBeNull", _H_LEAK, "prompt", "prompt"))
    return rules


# ---- public API ---------------------------------------------------------------------------------


def validate_splits(cfg: Config, task: Task) -> dict:
    """Validate `labels`, `prompts` and `eval`; return a JSON-able report (never raises DataError).

    {"passed": bool, "splits": {split: {"file", "rows", "sha256", "rules": [{"rule", "passed",
    "failures": [{"line", "id", "value", ...}]}]}}}. A split that cannot be read fails with the
    reader's message; the other splits are still checked (the leak rule needs a readable eval).
    """
    loaded: dict[str, list[dict] | DataError] = {}
    for split in SPLITS:
        try:
            loaded[split] = _with_lines(load_split(cfg, task, split))
        except DataError as exc:
            loaded[split] = exc

    eval_rows = loaded["eval"]
    eval_index = _eval_prompt_index(eval_rows) if isinstance(eval_rows, list) else None

    report: dict = {"passed": True, "splits": {}}
    readable: dict[str, list[dict]] = {}  # split -> rows, for the GX pass
    for split in SPLITS:
        path = data_file(cfg, split)
        entry: dict = {
            "file": _display_path(cfg, path),
            "rows": 0,
            "sha256": sha256_file(path) if path.is_file() else None,
            "rules": [],
        }
        report["splits"][split] = entry
        rows = loaded[split]
        if isinstance(rows, DataError):
            # Same relative file name as the other messages (the reader names the full path).
            message = str(rows)
            if message.startswith(str(path)):
                message = entry["file"] + message[len(str(path)) :]
            entry["error"] = message
            entry["rules"].append(
                {
                    "rule": RULE_READABLE,
                    "passed": False,
                    "unexpected_count": 1,
                    "failures": [{"line": _line_from_message(str(rows), path), "id": None, "value": message}],
                }
            )
            continue
        entry["rows"] = len(rows)
        entry["rules"].append({"rule": RULE_READABLE, "passed": True, "unexpected_count": 0, "failures": []})
        readable[split] = rows

    if readable:
        results = _run_gx(cfg, task, readable, eval_index)
        for split, rule_entries in results.items():
            report["splits"][split]["rules"].extend(rule_entries)

    report["passed"] = all(
        rule["passed"] is not False for entry in report["splits"].values() for rule in entry["rules"]
    )
    return report


def format_failures(report: dict, limit: int = MAX_MESSAGE_LINES, full_report: str | Path | None = None) -> str:
    """One line per failing (split, rule, row): `file:line (id=...): rule '...' failed: ...`."""
    lines: list[str] = []
    total = 0
    for entry in report["splits"].values():
        file = entry["file"]
        for rule in entry["rules"]:
            if rule["passed"] is not False:
                continue
            total += max(rule.get("unexpected_count", 0), len(rule["failures"]))
            for failure in rule["failures"]:
                if len(lines) < limit:
                    lines.append(_format_failure(file, rule, failure))
    head = f"data validation failed ({total} problem(s)):"
    more = total - len(lines)
    if more > 0:
        where = f" (see {full_report})" if full_report else ""
        lines.append(f"... and {more} more{where}")
    return "\n".join([head, *("  " + line for line in lines)])


# ---- helpers ------------------------------------------------------------------------------------


def _format_failure(file: str, rule: dict, failure: dict) -> str:
    name = rule["rule"]
    if name == RULE_READABLE:
        return str(failure["value"])  # the reader's message already names file:line and rule
    where = file if failure.get("line") is None else f"{file}:{failure['line']}"
    if failure.get("id") is not None:
        where += f" (id={failure['id']})"
    if name == RULE_ROW_COUNT:
        what = f"{failure['value']} rows, expected {failure['expected']}"
    else:
        what = f"{rule.get('field', 'value')}={failure['value']!r}"
    if failure.get("detail"):
        what += f" ({failure['detail']})"
    return f"{where}: rule '{name}' failed: {what}"


def _with_lines(rows: list[dict]) -> list[dict]:
    # Failures are keyed by line; a task adapter that drops `_line` falls back to row order.
    lines = [r.get("_line") for r in rows]
    if all(isinstance(x, int) for x in lines) and len(set(lines)) == len(rows):
        return rows
    return [{**r, "_line": i} for i, r in enumerate(rows, start=1)]


def _display_path(cfg: Config, path: Path) -> str:
    try:
        return str(path.resolve().relative_to(cfg.root))
    except ValueError:
        return str(path)


def _line_from_message(message: str, path: Path) -> int | None:
    # read_jsonl's messages start with "<path>:<line>: "; a missing file has no line.
    m = re.match(re.escape(str(path)) + r":(\d+):", message)
    return int(m.group(1)) if m else None


def normalise_prompt(prompt: Any) -> str | None:
    """Whitespace-collapsed, lower-cased prompt (None when it is not text or is blank)."""
    if not isinstance(prompt, str) or not prompt.strip():
        return None
    return " ".join(prompt.split()).lower()


def _eval_prompt_index(rows: list[dict]) -> dict[str, Any]:
    index: dict[str, Any] = {}
    for row in rows:
        norm = normalise_prompt(row.get("prompt"))
        if norm is not None:
            index.setdefault(norm, row.get("id"))  # first eval id wins for duplicated prompts
    return index


def _id_key(value: Any) -> str | None:
    # ids may be any JSON value; a JSON dump makes them hashable and keeps 1 and "1" distinct.
    if is_missing(value):
        return None
    return json.dumps(value, sort_keys=True, default=str)


def _parseable(task: Task, answer: Any) -> bool | None:
    if is_missing(answer) or (isinstance(answer, str) and not answer.strip()):
        return None  # null / empty answers are reported by their own rules, not twice
    try:
        return task.parse_answer(answer) is not None
    except Exception:  # noqa: BLE001 - a task parser choking on odd input means "not parseable", not a crash
        return False


def _helper_columns(
    split: str, rows: list[dict], task: Task, eval_index: dict[str, Any] | None, count_tokens
) -> dict[str, list]:
    required = REQUIRED_COLUMNS[split]
    allowed = set(required) | set(OPTIONAL_COLUMNS) | set(INTERNAL_COLUMNS)
    cols: dict[str, list] = {
        h: []
        for h in (
            _H_MISSING,
            _H_EXTRA,
            _H_ID_KEY,
            _H_ID_STRIPPED,
            _H_PROMPT_TEXT,
            _H_PROMPT_NORM,
            _H_ANSWER_NOT_EMPTY,
            _H_ANSWER_PARSEABLE,
            _H_LEAK,
            _H_PROMPT_TOKENS,
        )
    }
    # GX map expectations skip nulls, so each helper is None where another rule owns the problem.
    for row in rows:
        missing = [c for c in required if c not in row]
        extra = sorted(k for k in row if k not in allowed)
        prompt, answer = row.get("prompt"), row.get("answer")
        norm = normalise_prompt(prompt)
        cols[_H_MISSING].append(", ".join(missing) or None)
        cols[_H_EXTRA].append(", ".join(extra) or None)
        cols[_H_ID_KEY].append(_id_key(row.get("id")))
        row_id = row.get("id")
        cols[_H_ID_STRIPPED].append(row_id == row_id.strip() if isinstance(row_id, str) else None)
        cols[_H_PROMPT_TEXT].append(None if is_missing(prompt) else norm is not None)
        cols[_H_PROMPT_NORM].append(norm)
        cols[_H_ANSWER_NOT_EMPTY].append(
            None if is_missing(answer) else not (isinstance(answer, str) and not answer.strip())
        )
        cols[_H_ANSWER_PARSEABLE].append(_parseable(task, answer))
        leaked = eval_index.get(norm) if (eval_index is not None and norm is not None) else None
        cols[_H_LEAK].append(None if leaked is None else json.dumps(leaked, default=str))
    texts = [r["prompt"] if isinstance(r.get("prompt"), str) and count_tokens else None for r in rows]
    counts = count_tokens([t for t in texts if t is not None]) if count_tokens else []
    it = iter(counts)
    cols[_H_PROMPT_TOKENS] = [None if t is None else next(it) for t in texts]
    return cols


def _frame(split: str, rows: list[dict], task: Task, eval_index: dict[str, Any] | None, count_tokens):
    import pandas as pd

    data: dict[str, list] = {"_line": [r["_line"] for r in rows]}  # unique: see _with_lines
    present = {k for r in rows for k in r}
    for col in ("id", "prompt", "answer"):
        if col in present:
            data[col] = [r.get(col) for r in rows]
    data.update(_helper_columns(split, rows, task, eval_index, count_tokens))
    # object dtype: keep the user's values as they are (no str/float coercion by pandas).
    frame = pd.DataFrame({k: pd.Series(v, dtype=object) for k, v in data.items()})
    frame["_line"] = frame["_line"].astype("int64")
    return frame, present


def _run_gx(
    cfg: Config, task: Task, readable: dict[str, list[dict]], eval_index: dict[str, Any] | None
) -> dict[str, list[dict]]:
    """Build and run one GX suite per readable split, all in one fresh ephemeral context."""
    # Offline machines: no telemetry attempts (must be set before GX is imported).
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import logging

    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    # That module sets its own logger to INFO ("Created temporary directory ... for ephemeral docs
    # site" on every run); its warnings and errors still show, and `s2d -v` keeps the INFO lines.
    if logging.getLogger().getEffectiveLevel() > logging.INFO:
        logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)

    # A fresh ephemeral context per validation: GX names must be unique within a context.
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    datasource = context.data_sources.add_pandas("s2d")

    count_tokens, no_tokenizer = _prompt_token_counter(cfg, task)
    out: dict[str, list[dict]] = {}
    for split, rows in readable.items():
        bounds = getattr(cfg.data, f"{split}_rows")
        frame, present = _frame(split, rows, task, eval_index, count_tokens)
        by_line = {r["_line"]: r for r in rows}
        rules = _rules(split, (bounds.min, bounds.max), prompt_token_limit(cfg))

        suite = gx.ExpectationSuite(name=f"s2d-{split}")
        active: list[_Rule] = []
        skipped: dict[str, str] = {}
        for rule in rules:
            if rule.needs is not None and rule.needs not in present:
                skipped[rule.name] = f"column '{rule.needs}' is missing"
                continue
            if rule.name == RULE_EVAL_LEAK and eval_index is None:
                skipped[rule.name] = "the eval split could not be read"
                continue
            if rule.name == RULE_PROMPT_FITS and count_tokens is None:
                skipped[rule.name] = no_tokenizer
                continue
            kwargs = dict(rule.kwargs)
            if rule.column is not None:
                kwargs["column"] = rule.column
            expectation = getattr(gx.expectations, rule.expectation)(**kwargs, meta={"rule": rule.name})
            suite.add_expectation(expectation)
            active.append(rule)
        suite = context.suites.add(suite)

        asset = datasource.add_dataframe_asset(split)
        batch_definition = asset.add_batch_definition_whole_dataframe(split)
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"s2d-{split}", data=batch_definition, suite=suite)
        )
        # Report failing rows by line and id; without an id column, by line only.
        index_cols = ["_line", "id"] if "id" in frame.columns else ["_line"]
        result = definition.run(
            batch_parameters={"dataframe": frame},
            result_format={"result_format": "COMPLETE", "unexpected_index_column_names": index_cols},
        )

        by_rule = {}
        for res in result.results:
            name = res.expectation_config.meta["rule"]
            info = res.exception_info or {}
            if info.get("raised_exception"):
                # A GX error is a bug in this module, not a data problem: fail loudly.
                raise RuntimeError(f"GX could not evaluate rule '{name}' on {split}: {info.get('exception_message')}")
            by_rule[name] = res

        entries: list[dict] = []
        for rule in rules:
            if rule.name in skipped:
                entries.append(
                    {
                        "rule": rule.name,
                        "passed": None,
                        "skipped": skipped[rule.name],
                        "unexpected_count": 0,
                        "failures": [],
                    }
                )
                continue
            res = by_rule[rule.name]
            entries.append(_rule_entry(rule, res, by_line, frame, bounds))
        out[split] = entries
    return out


def prompt_token_limit(cfg: Config) -> int:
    """Longest prompt (in tokens) that leaves room for the longest completion any stage samples."""
    longest = max(
        cfg.teacher_rl.max_completion_length,
        cfg.student_rl.max_completion_length,
        cfg.grpo_direct.max_completion_length,
        cfg.rollouts.max_completion_length,
        cfg.opd.max_completion_length,
        cfg.evaluate.max_completion_length,
    )
    return cfg.models.max_seq_len - longest


def _prompt_token_counter(cfg: Config, task: Task):
    """(count_tokens(problems) -> [int], None): the tokens of each problem as every stage renders it
    (`prompts.render`: the chat template for instruct models), with the student's tokenizer (teacher
    and student share a vocabulary); or (None, reason) when no tokenizer exists yet."""
    model_dir = base_model_dir(cfg, "student")
    if not (model_dir / "tokenizer_config.json").exists() and not (model_dir / "tokenizer.json").exists():
        how = (
            "models.student.path" if cfg.models.source == "path" else "run `s2d prepare` first to check prompt lengths"
        )
        return None, f"no tokenizer found at {model_dir} ({how})"

    tokenizer = load_tokenizer(model_dir, cfg)

    def count_tokens(problems: list[str]) -> list[int]:
        if not problems:
            return []
        chat = cfg.models.chat_template
        return [len(encode_prompt(tokenizer, render(cfg, task, tokenizer, p), chat=chat)) for p in problems]

    return count_tokens, None


def _rule_entry(rule: _Rule, res: Any, by_line: dict[int, dict], frame: Any, bounds: Any) -> dict:
    result = res.result or {}
    entry: dict = {
        "rule": rule.name,
        "expectation": res.expectation_config.type,
        "passed": bool(res.success),
        "field": _field_label(rule),
    }
    if rule.column is None:  # table-level: the row count
        observed = result.get("observed_value")
        entry["observed"] = _jsonable(observed)
        entry["unexpected_count"] = 0 if res.success else 1
        entry["failures"] = (
            []
            if res.success
            else [
                {
                    "line": None,
                    "id": None,
                    "value": _jsonable(observed),
                    "expected": f"between {bounds.min} and {bounds.max}",
                }
            ]
        )
        return entry

    index_list = result.get("unexpected_index_list") or []
    entry["unexpected_count"] = int(result.get("unexpected_count") or len(index_list))
    lines = sorted(int(item["_line"]) for item in index_list)
    failures = []
    norm_lines = _norm_groups(frame) if rule.name == RULE_DUP_PROMPT else None
    for line in lines[:MAX_FAILURES_PER_RULE]:
        row = by_line[line]
        failure: dict = {"line": line, "id": _jsonable(row.get("id")), "value": _failure_value(rule, row, frame, line)}
        if rule.name == RULE_EVAL_LEAK:
            eval_id = json.loads(_helper_at(frame, _H_LEAK, line))
            failure["eval_id"] = eval_id
            failure["detail"] = f"same prompt as eval id={eval_id}"
        elif rule.name == RULE_ID_STRIPPED:
            stripped = str(row.get("id")).strip()
            twins = [
                x for x, r in by_line.items() if x != line and isinstance(r.get("id"), str) and r["id"] == stripped
            ]
            failure["detail"] = "ids are compared as written: remove the surrounding whitespace" + (
                f"; stripped, it equals the id on line {twins[0]}" if twins else ""
            )
        elif rule.name == RULE_PROMPT_FITS:
            failure["detail"] = (
                f"at most {dict(rule.kwargs)['max_value']}: models.max_seq_len minus the longest "
                "max_completion_length of any stage"
            )
        elif norm_lines is not None:
            others = [x for x in norm_lines[_helper_at(frame, _H_PROMPT_NORM, line)] if x != line]
            failure["detail"] = "same prompt as line(s) " + ", ".join(map(str, others))
        failures.append(failure)
    entry["failures"] = failures
    return entry


def _field_label(rule: _Rule) -> str:
    if rule.name == RULE_REQUIRED:
        return "missing columns"
    if rule.name == RULE_EXTRA:
        return "unexpected columns"
    if rule.name == RULE_PROMPT_FITS:
        return "prompt tokens"
    return rule.shows or "value"


def _helper_at(frame: Any, column: str, line: int) -> Any:
    return frame.loc[frame["_line"] == line, column].iloc[0]


def _failure_value(rule: _Rule, row: dict, frame: Any, line: int) -> Any:
    if rule.shows and rule.shows.startswith("__"):
        return _jsonable(_helper_at(frame, rule.shows, line))
    return _jsonable(row.get(rule.shows)) if rule.shows else None


def _norm_groups(frame: Any) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for line, norm in zip(frame["_line"], frame[_H_PROMPT_NORM], strict=True):
        if norm is not None:
            groups.setdefault(norm, []).append(int(line))
    return groups


def _jsonable(value: Any) -> Any:
    """Plain JSON values for the report (numpy scalars -> Python, NaN -> None)."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (ValueError, TypeError):
            pass
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


__all__ = ["validate_splits", "format_failures", "rule_names", "normalise_prompt"]
