"""Pure helpers of s2d_pipeline/training.py: the one ordered pass a resumable run reads, and
the choice of checkpoint to resume from. No training runs here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from s2d_pipeline.training import epoch_rows, latest_complete_checkpoint

ROWS = [{"id": f"r{i}"} for i in range(5)]


def _epochs(out: list[dict], n: int) -> list[list[dict]]:
    return [out[i : i + n] for i in range(0, len(out), n)]


# ---- epoch_rows -------------------------------------------------------------------------------


@pytest.mark.parametrize(("draws", "epochs"), [(0, 1), (1, 2), (4, 2), (5, 2), (6, 3), (10, 3), (12, 4)])
def test_epoch_rows_has_enough_whole_epochs_plus_one_spare(draws, epochs):
    out = epoch_rows(ROWS, draws, seed="teacher_rl/s2d")
    assert len(out) == epochs * len(ROWS)  # ceil(draws / n) epochs for the draws, plus one spare
    assert len(out) >= draws + len(ROWS)


def test_each_epoch_is_a_permutation_of_the_rows():
    out = epoch_rows(ROWS, 23, seed="x")
    epochs = _epochs(out, len(ROWS))
    assert len(epochs) == 6
    for epoch in epochs:
        assert sorted(r["id"] for r in epoch) == [r["id"] for r in ROWS]


def test_epochs_are_reshuffled_not_repeated():
    epochs = _epochs(epoch_rows(ROWS, 45, seed="x"), len(ROWS))
    orders = [tuple(r["id"] for r in e) for e in epochs]
    assert len(set(orders)) > 1  # a fresh permutation per epoch, not one order repeated


def test_epoch_rows_is_deterministic_in_seed_and_leaves_input_alone():
    rows = [dict(r) for r in ROWS]
    before = [dict(r) for r in rows]
    a = epoch_rows(rows, 17, seed="student_rl/s2d_stage3")
    b = epoch_rows(rows, 17, seed="student_rl/s2d_stage3")
    assert a == b
    assert rows == before  # the caller's list is not shuffled in place


def test_different_seeds_give_different_orders():
    rows = [{"id": i} for i in range(20)]
    assert epoch_rows(rows, 40, seed="a") != epoch_rows(rows, 40, seed="b")


@pytest.mark.parametrize("draws", [0, 1, 7])
def test_epoch_rows_of_no_rows_is_empty(draws):
    assert epoch_rows([], draws, seed="x") == []


# ---- latest_complete_checkpoint -----------------------------------------------------------------


def _checkpoint(out: Path, name: str, *, state: str | None = "ok", optimizer: bool = True) -> Path:
    """A checkpoint dir as Transformers writes it; `state` "missing" or "truncated" mimics a kill
    mid-save (trainer_state.json is written last)."""
    c = out / name
    c.mkdir(parents=True)
    (c / "model.safetensors").write_bytes(b"w")
    if optimizer:
        (c / "optimizer.pt").write_bytes(b"o")
    if state == "ok":
        (c / "trainer_state.json").write_text(json.dumps({"global_step": 1}))
    elif state == "truncated":
        (c / "trainer_state.json").write_text('{"global_step": 1, "log_hist')
    return c


def test_highest_step_wins_numerically(tmp_path):
    for step in (2, 9, 10):
        _checkpoint(tmp_path, f"checkpoint-{step}")
    assert latest_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")  # not "checkpoint-9"


@pytest.mark.parametrize(
    "broken",
    [{"state": None}, {"state": "truncated"}, {"optimizer": False}],
    ids=["no-trainer-state", "unparseable-trainer-state", "no-optimizer"],
)
def test_incomplete_latest_falls_back_to_previous(tmp_path, broken):
    _checkpoint(tmp_path, "checkpoint-5")
    _checkpoint(tmp_path, "checkpoint-10")
    _checkpoint(tmp_path, "checkpoint-15", **broken)
    assert latest_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")


def test_non_numeric_checkpoint_names_are_ignored(tmp_path):
    _checkpoint(tmp_path, "checkpoint-foo")
    _checkpoint(tmp_path, "checkpoint-3")
    _checkpoint(tmp_path, "checkpoint-99x")
    assert latest_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-3")


def test_none_when_no_complete_checkpoint(tmp_path):
    assert latest_complete_checkpoint(tmp_path) is None
    assert latest_complete_checkpoint(tmp_path / "never-created") is None
    _checkpoint(tmp_path, "checkpoint-foo")
    _checkpoint(tmp_path, "checkpoint-4", state=None)
    _checkpoint(tmp_path, "checkpoint-8", optimizer=False)
    assert latest_complete_checkpoint(tmp_path) is None
