"""`data.split_from`: one labelled file (GSM8K's real train split, read in place) split by `prepare`
into eval, labels and prompts, read back through the math adapter and validated."""

from __future__ import annotations

import json

import pytest

from s2d_pipeline.config import load_config
from s2d_pipeline.errors import ConfigError, DataError
from s2d_pipeline.inputs import load_checked_config
from tests.helpers import SHARED_GSM8K, SMOLLM2_PROFILE


@pytest.fixture
def gsm8k_cfg(tmp_path):
    if not SHARED_GSM8K.exists():
        pytest.skip(f"GSM8K train split not found at {SHARED_GSM8K} (shared data folder absent)")
    (tmp_path / "params.yaml").write_text(SMOLLM2_PROFILE.read_text())
    overrides = {
        "data": {"generate": False, "split_from": str(SHARED_GSM8K), "n_eval": 30, "n_labels": 50, "n_prompts": 40}
    }
    return load_config(tmp_path / "params.yaml", overrides, root=tmp_path)


def test_gsm8k_splits_disjoint_and_validates_through_the_math_adapter(gsm8k_cfg):
    from s2d_pipeline.data import load_split
    from s2d_pipeline.io import write_jsonl
    from s2d_pipeline.layout import data_file
    from s2d_pipeline.stages import validate
    from s2d_pipeline.stages.prepare import split_file
    from s2d_pipeline.tasks import get_task

    cfg = gsm8k_cfg
    splits = split_file(cfg)
    assert {k: len(v) for k, v in splits.items()} == {"eval": 30, "labels": 50, "prompts": 40}
    for split, rows in splits.items():
        write_jsonl(data_file(cfg, split), rows)
    assert all("answer" not in r for r in splits["prompts"])
    task = get_task(cfg.task)
    canon = {split: load_split(cfg, task, split) for split in splits}
    ids = [r["id"] for rows in canon.values() for r in rows]
    assert len(set(ids)) == len(ids) and all(i.startswith("train-") for i in ids)  # named by source line
    source = SHARED_GSM8K.read_text().splitlines()
    for row in canon["labels"][:10]:  # each id points at its line, and the answer is that line's `#### `
        line = json.loads(source[int(row["id"].split("-")[1]) - 1])
        assert line["question"] == row["prompt"] and line["answer"].endswith(f"#### {row['answer']}")
    assert task.verify("so the total is \\boxed{" + canon["eval"][0]["answer"] + "}", canon["eval"][0]["answer"])
    metrics = validate.run(cfg)  # no tokenizer yet: the prompt-length rule is skipped, the rest checked
    assert metrics["passed"] and metrics["rows"] == {"labels": 50, "prompts": 40, "eval": 30}
    assert split_file(cfg) == splits  # seeded


def test_split_refuses_too_few_rows_and_a_missing_file(gsm8k_cfg, tmp_path):
    from s2d_pipeline.stages.prepare import split_file

    small = tmp_path / "small.jsonl"
    small.write_text("\n".join(SHARED_GSM8K.read_text().splitlines()[:20]) + "\n")
    cfg = gsm8k_cfg.model_copy(update={"data": gsm8k_cfg.data.model_copy(update={"split_from": str(small)})})
    with pytest.raises(DataError, match=r"small.jsonl: rule 'enough rows to split' failed: 20 rows"):
        split_file(cfg)
    with pytest.raises(ConfigError, match=r"data.split_from': file 'nope.jsonl' does not exist"):
        load_checked_config(
            tmp_path / "params.yaml", {"data": {"generate": False, "split_from": "nope.jsonl"}}, root=tmp_path
        )
