"""What `s2d` prints: one plan line per stage, a short summary instead of a JSON blob (`--json` keeps
the machine form), progress bars with an ETA on stderr, no deprecation warnings from the stages, and
`s2d report` with the comparison table and the promotion decision."""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import pytest
import yaml

from s2d_pipeline.config import deep_merge
from tests.helpers import MICRO, STAGE_MICRO


def test_each_stage_says_what_it_does_and_how_big(tmp_path):
    from s2d_pipeline.config import config_from_dict
    from s2d_pipeline.console import announce
    from s2d_pipeline.stages import STAGES

    cfg = config_from_dict({}, root=tmp_path)  # the embedded default
    lines = {name: announce(name, cfg) for name in STAGES}
    for name, line in lines.items():
        assert line.startswith(f"{name}: ") and "\n" not in line, line
    assert lines["prepare"] == (
        "prepare: generates 1024 labels, 4096 prompts and 512 eval problems; pretrains the tiny teacher "
        "(1000 steps) and student (1500 steps) from scratch"
    )
    assert lines["teacher_rl"] == (
        "teacher_rl: GRPO on the teacher, 2 RL teachers × 150 steps (s2d: 64 labels, s2d_stage3: 48 labels)"
    )
    assert lines["warmup"] == "warmup: forward KL (forward_kl) on teacher rollouts, " + (
        "s2d 100, s2d_stage3 100, raw_bridge 100, no_opd 250 steps"
    )
    assert lines["student_rl"] == (
        "student_rl: GRPO on the student, s2d_stage3 50 steps, s2d_stage3_replay 50 steps, grpo_direct 150 steps"
    )
    one = config_from_dict({"arms": ["s2d"], "teacher_rl": {"steps": 30}, "budget": 48}, root=tmp_path)
    assert announce("teacher_rl", one) == "teacher_rl: GRPO on the teacher, 1 RL teacher × 30 steps, 48 labels"
    assert (
        announce("opd", one)
        == "opd: on-policy distillation, per-token reverse KL to the teacher, 1 student × 150 steps"
    )


@pytest.fixture
def data_project(tmp_path, monkeypatch) -> Path:
    """Micro params and generated data: enough for allocate (no model, no torch)."""
    from s2d_pipeline.config import load_config
    from s2d_pipeline.io import write_jsonl
    from s2d_pipeline.layout import data_file
    from s2d_pipeline.tasks import get_task
    from tests.helpers import REPO

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(deep_merge(raw, MICRO)))
    cfg = load_config(tmp_path / "params.yaml", root=tmp_path)
    d = cfg.data
    for split, rows in get_task(cfg.task).generate_splits(0, d.n_labels, d.n_prompts, d.n_eval).items():
        write_jsonl(data_file(cfg, split), rows)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_stage_prints_its_plan_and_a_summary_or_json(data_project, capsys):
    from s2d_pipeline.cli import main

    assert main(["allocate"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "allocate: spends the budget of 16 labels for 8 arms (the ledger)",
        "  s2d 16, s2d_stage3 16, s2d_stage3_replay 12, grpo_direct 16, opd_direct 0, raw_bridge 0, "
        "no_warmup 16, no_opd 16 labels spent; Stage 3 holds out 4",
    ]
    assert main(["--json", "allocate"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    record = json.loads(line)
    assert record["stage"] == "allocate" and record["budget"] == 16
    assert record == {"stage": "allocate", **json.loads((data_project / "metrics/allocate.json").read_text())}


def test_report_before_any_result_says_how_to_get_one(data_project, capsys):
    from s2d_pipeline.cli import main

    assert main(["report"]) == 2
    assert "no comparison yet; run the pipeline first" in capsys.readouterr().err


@pytest.fixture
def trained_project(pipeline, tmp_path, monkeypatch) -> Path:
    cfg, _, _ = pipeline
    root = tmp_path / "project"
    shutil.copytree(cfg.root, root, ignore=shutil.ignore_patterns("checkpoints"))
    raw = yaml.safe_load((root / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump(deep_merge(raw, STAGE_MICRO)))
    monkeypatch.chdir(root)
    return root


def test_training_stage_shows_progress_and_no_deprecation_warnings(trained_project, capsys, caplog):
    """teacher_rl through the CLI: its plan, a progress bar per RL teacher (steps, ETA) on stderr,
    a reward summary per teacher, and no FutureWarning/DeprecationWarning reaching the console
    (`quiet_libraries` may drop only the one third-party message it names)."""
    from s2d_pipeline.cli import main

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FutureWarning)
        warnings.simplefilter("always", DeprecationWarning)
        code = main(["teacher_rl"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    deprecations = [
        f"{w.category.__name__} at {w.filename}:{w.lineno}: {w.message}"
        for w in caught
        if issubclass(w.category, (FutureWarning, DeprecationWarning))
    ]
    assert not deprecations, "\n".join(deprecations)
    out = captured.out.splitlines()
    assert out[0] == "teacher_rl: GRPO on the teacher, 2 RL teachers × 3 steps (s2d: 16 labels, s2d_stage3: 12 labels)"
    assert re.fullmatch(r"  s2d: reward [\d.]+ → [\d.]+, 16 labels \(\d+ s\)", out[1]), out[1]
    c1 = r"    C1: avg_at_k [\d.]+ → [\d.]+ \([+-][\d.]+\) on 8 eval problems; the gate \(> \+0.02\) (passes|fails, overridden)"
    assert re.fullmatch(c1, out[2]), out[2]
    assert re.fullmatch(r"  s2d_stage3: reward [\d.]+ → [\d.]+, 12 labels \(\d+ s\)", out[3]), out[3]
    assert re.fullmatch(c1, out[4]), out[4]
    assert len(out) == 5, out
    # A failed C1 gate that the override lets through is warned about once per RL teacher, here.
    overridden = sum(line.endswith("fails, overridden") for line in out)
    assert sum("distilling anyway" in r.getMessage() for r in caplog.records) == overridden, caplog.text
    for run in ("teacher_rl/s2d", "teacher_rl/s2d_stage3"):
        assert f"{run}: 100%" in captured.err and "3/3" in captured.err, captured.err
    assert "Writing model shards" not in captured.err
    assert "{'loss'" not in captured.out + captured.err  # no per-step log dicts


def test_report_prints_the_table_and_the_promotion_decision(trained_project, capsys):
    from s2d_pipeline.cli import main

    assert main(["promote"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == "  not promoted: tracking.enabled is false: no model registry"
    assert main(["report"]) == 0
    out = capsys.readouterr().out
    table = (trained_project / "artifacts/evaluate/comparison.md").read_text()
    assert out.startswith(table.rstrip())
    assert "| s2d |" in out and "| grpo_direct |" in out
    assert out.rstrip().endswith("Promotion: not promoted: tracking.enabled is false: no model registry")


def test_evaluate_summary_names_the_gate_metric_and_both_arms(micro_cfg):
    from s2d_pipeline.console import summary
    from s2d_pipeline.gate import GATE_METRIC

    result = {
        "k": 4,
        "eval_problems": 10,
        "arms": {"s2d": {"avg_at_k": 0.75}, "grpo_direct": {"avg_at_k": 0.5}},
        "student_raw": {"avg_at_k": 0.25},
        "paired": {"left": "s2d", "right": "grpo_direct", "avg_at_k": {"mean": 0.25, "ci95": [-0.05, 0.55]}},
    }
    lines = summary("evaluate", result, micro_cfg, gate_metric=GATE_METRIC)
    assert lines[0] == "  avg_at_k (k = 4) on 10 eval problems: s2d 0.750, grpo_direct 0.500, raw student 0.250"
    assert lines[1] == "  s2d - grpo_direct, paired by problem: +0.250, 95 % interval [-0.050, +0.550]"
