"""`s2d allocate`: spend the label budget N and write the ledger.

Reads only the label *ids* (answers are not needed to allocate) and writes
`artifacts/allocate/ledger.json`: for each arm, the label ids each of its stages may use. Later
stages read labels through the ledger only.

    s2d allocate            # or: dvc repro allocate
    s2d allocate -S budget=32
"""

from __future__ import annotations

from s2d_pipeline.config import Config
from s2d_pipeline.errors import BudgetError
from s2d_pipeline.io import sha256_file, write_json
from s2d_pipeline.layout import data_file, ledger_file, metrics_file
from s2d_pipeline.ledger import build_ledger, label_rows


def run(cfg: Config) -> dict:
    labels_path = data_file(cfg, "labels")
    rows = label_rows(cfg)
    ids = [str(r["id"]) for r in rows]
    if len(set(ids)) != len(ids):
        raise BudgetError(f"{labels_path}: duplicate label ids; run `s2d validate` for the rows")
    ledger = build_ledger(ids, list(cfg.arms), cfg.budget, cfg.allocation.stage3_fraction, cfg.seed)
    ledger["labels_file"] = str(cfg.data.labels)
    ledger["labels_sha256"] = sha256_file(labels_path)
    write_json(ledger_file(cfg), ledger)
    metrics = {
        "budget": cfg.budget,
        "stage3_holdout": ledger["stage3_holdout"],
        "spent": {arm: plan["spent"] for arm, plan in ledger["arms"].items()},
    }
    write_json(metrics_file(cfg, "allocate"), metrics)
    return metrics
