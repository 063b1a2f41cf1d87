"""`s2d validate`: check the three data splits before anything spends labels or compute.

Runs the GX suite of `s2d_pipeline.validation` on `labels`, `prompts` and `eval`. On success the
report goes to `artifacts/validate/report.json` and the metrics to `metrics/validate.json`. On
failure the report is written next to it as `report.failed.json` - never over the last good
`report.json`, and no other output is touched, so a bad data edit cannot invalidate downstream
artifacts - and a DataError names file, line, id and rule (the CLI exits non-zero).

    s2d validate            # or: dvc repro validate
"""

from __future__ import annotations

import json
import time

from s2d_pipeline.config import Config
from s2d_pipeline.errors import DataError
from s2d_pipeline.io import write_json
from s2d_pipeline.layout import metrics_file, validation_report
from s2d_pipeline.tasks import get_task
from s2d_pipeline.validation import format_failures, validate_splits

FAILED_REPORT_NAME = "report.failed.json"


def failed_report_path(cfg: Config):
    return validation_report(cfg).with_name(FAILED_REPORT_NAME)


def skipped_rules(cfg: Config) -> dict[str, str]:
    """Rules the last good validation report skipped, and why (once per rule, not per split)."""
    try:
        report = json.loads(validation_report(cfg).read_text())
    except (OSError, ValueError):
        return {}
    out: dict[str, str] = {}
    for split in report.get("splits", {}).values():
        for rule in split.get("rules", []):
            if rule.get("passed") is None and rule.get("skipped"):
                out.setdefault(rule["rule"], rule["skipped"])
    return out


def run(cfg: Config) -> dict:
    started = time.perf_counter()
    task = get_task(cfg.task)
    report = validate_splits(cfg, task)
    if not report["passed"]:
        failed = failed_report_path(cfg)
        write_json(failed, report)
        raise DataError(format_failures(report, full_report=failed))

    write_json(validation_report(cfg), report)
    # A stale failure report from an earlier run would contradict the good one now written.
    failed_report_path(cfg).unlink(missing_ok=True)
    rules = [r for s in report["splits"].values() for r in s["rules"]]
    metrics = {
        "passed": True,
        "rows": {split: s["rows"] for split, s in report["splits"].items()},
        "rules_checked": sum(r["passed"] is not None for r in rules),
        "rules_passed": sum(r["passed"] is True for r in rules),
        "rules_skipped": sum(r["passed"] is None for r in rules),
        "wall_s": round(time.perf_counter() - started, 2),
    }
    write_json(metrics_file(cfg, "validate"), metrics)
    return metrics
