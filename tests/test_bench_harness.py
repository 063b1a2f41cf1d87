"""The benchmarks' harness: a recorded cell is skipped (a stopped benchmark resumes), a failed one is
recorded with its error and measured again next run, and readers take the newest record of each cell."""

from __future__ import annotations

import json

import pytest

from bench import harness


def measured(calls: list[dict], fail: set[int] = frozenset()):
    def measure(cell: dict) -> dict:
        calls.append(cell)
        if cell["seed"] in fail:
            raise RuntimeError(f"seed {cell['seed']} broke")
        return {"score": cell["seed"] / 10}

    return measure


def test_a_rerun_measures_only_the_cells_not_yet_recorded(tmp_path):
    results, calls = tmp_path / "r.jsonl", []
    harness.run_cells(results, [{"seed": 0}, {"seed": 1}], measured(calls))
    harness.run_cells(results, [{"seed": s} for s in (0, 1, 2)], measured(calls))
    assert calls == [{"seed": 0}, {"seed": 1}, {"seed": 2}]
    records = harness.read(results)
    assert [(r["seed"], r["score"]) for r in records] == [(0, 0.0), (1, 0.1), (2, 0.2)]
    assert all(set(r["machine"]) >= {"cpu", "torch", "transformers", "commit"} for r in records)
    assert all(json.loads(line) for line in results.read_text().splitlines())  # one JSON record a line


def test_a_failed_cell_is_recorded_raised_and_measured_again(tmp_path):
    results, calls = tmp_path / "r.jsonl", []
    with pytest.raises(RuntimeError, match="seed 1 broke"):
        harness.run_cells(results, [{"seed": s} for s in (0, 1, 2)], measured(calls, fail={1}))
    failed = harness.read(results)[-1]
    assert (
        failed["seed"] == 1 and failed["error"] == "RuntimeError: seed 1 broke" and "Traceback" in failed["traceback"]
    )
    assert [r["seed"] for r in harness.read(results, "seed")] == [0]  # a report reads measurements only
    harness.run_cells(results, [{"seed": s} for s in (0, 1, 2)], measured(calls))
    assert calls == [{"seed": 0}, {"seed": 1}, {"seed": 1}, {"seed": 2}]
    assert [r.get("score") for r in harness.read(results, "seed")] == [0.0, 0.1, 0.2]  # newest of each cell


def test_again_measures_recorded_cells_and_readers_take_the_newest(tmp_path):
    results, calls = tmp_path / "r.jsonl", []
    harness.run_cells(results, [{"seed": 0, "budget": 64}], measured(calls))
    harness.run_cells(results, [{"seed": 0, "budget": 64}], lambda cell: {"score": 0.5}, again=True)
    assert len(harness.read(results)) == 2
    assert [r["score"] for r in harness.read(results, "seed", "budget")] == [0.5]


def test_the_report_reads_every_results_file_and_every_section_has_records(tmp_path, monkeypatch):
    from bench import label_efficiency, report

    read, real_read = [], harness.read
    monkeypatch.setattr(harness, "read", lambda path, *cell: read.append(path.name) or real_read(path, *cell))
    monkeypatch.setattr(label_efficiency, "PLOT", tmp_path / "plot.png")
    monkeypatch.setattr(label_efficiency, "CURVE_CSV", tmp_path / "curve.csv")
    sections = {heading: section() for heading, section in report.SECTIONS}
    assert {p.name for p in harness.RESULTS.glob("*.jsonl")} <= set(read)
    assert not [heading for heading, text in sections.items() if "Not run yet" in text or "No GPU run" in text]
    assert (tmp_path / "curve.csv").read_text() == (harness.RESULTS / "label_efficiency_curve.csv").read_text()


def test_an_interrupted_cell_resumes_at_its_first_unfinished_stage(tmp_path, monkeypatch):
    """A stage that returned is not run again (whatever files it writes, per unit or not), one that broke
    is, and each stage's time is kept from the attempt that ran it."""
    from bench import label_efficiency
    from s2d_pipeline import cli

    ran, broken = [], {"validate"}

    def run_stage(name, cfg):
        ran.append(name)
        if name in broken:
            broken.discard(name)
            raise RuntimeError(f"{name} interrupted")

    monkeypatch.setattr(cli, "run_stage", run_stage)
    times = tmp_path / "times.json"
    with pytest.raises(RuntimeError, match="validate interrupted"):
        label_efficiency._run_stages(None, ["prepare", "validate", "allocate"], times)
    assert set(json.loads(times.read_text())) == {"prepare"}
    label_efficiency._run_stages(None, ["prepare", "validate", "allocate"], times)
    assert ran == ["prepare", "validate", "validate", "allocate"]
    assert set(json.loads(times.read_text())) == {"prepare", "validate", "allocate"}


def test_a_cell_measured_under_other_settings_is_not_read_as_a_current_one(tmp_path, monkeypatch):
    """A record carries its settings' hash (the profile's values under CELL_SETTINGS): a comment, or a value
    CELL_SETTINGS replaces, leaves the cell current; a value the cells run changes it, and then the report
    reads none of the old cells as current, says so, and `run` measures the cell again."""
    import json

    from bench import label_efficiency as le

    params = tmp_path / "smollm2-arith.yaml"
    params.write_text((harness.REPO / "profiles" / "smollm2-arith.yaml").read_text())
    measured = harness.read(le.results_file(params), "seed", "budget")[0]  # the recorded first cell
    monkeypatch.setattr(le, "RESULTS", tmp_path / "label_efficiency.jsonl")
    assert le.results_file(params).parent == tmp_path
    record = {**measured, "settings": le.settings_id(params)}
    le.results_file(params).write_text(json.dumps(record) + "\n")
    assert "| s2d |" in le.section(params)
    demo_only = params.read_text().replace("n_eval: 20", "n_eval: 10").replace("arms: [", "arms: [no_opd, ")
    assert "n_eval: 10" in demo_only and "arms: [no_opd, " in demo_only
    params.write_text(demo_only + "# a comment\n")
    assert le.settings_id(params) == record["settings"]

    params.write_text(params.read_text() + "\nwarmup: {steps: 40}\n")  # the profile changed
    assert le.settings_id(params) != record["settings"]
    assert le.section(params).startswith("No cell under the current settings yet; 1 under earlier settings")
    # The cells `run` asks for under the new settings are measured again, though seed 0, N = 16 is recorded.
    measured_again = []
    harness.run_cells(
        le.results_file(params), le.cells_of(params, [0], [16]), lambda c: measured_again.append(c) or {}
    )
    assert measured_again == [{"seed": 0, "budget": 16, "settings": le.settings_id(params)}]


def test_collecting_a_directory_without_a_finished_run_names_what_is_missing(tmp_path):
    """`bench.real_weights run --collect DIR` reads a finished `s2d --params P run` under DIR through P: a
    directory holding none is refused, naming the file it looked for, and nothing is recorded."""
    from bench import real_weights

    results, profile = tmp_path / "real_weights.jsonl", harness.REPO / "profiles" / "smollm2-arith.yaml"
    cell = {"params": "profiles/smollm2-arith.yaml", "overrides": [], "collected": str(tmp_path)}
    with pytest.raises(SystemExit, match=r"no finished run of smollm2-arith\.yaml .*metrics/smollm2/evaluate\.json"):
        harness.record(results, cell, lambda: real_weights.collect(tmp_path, profile, [], 845.0))
    assert not results.exists()
