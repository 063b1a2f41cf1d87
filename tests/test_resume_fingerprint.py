"""A checkpoint is resumed only by the same run: `run_fingerprint` changes with the params, the
training rows and the input model files, and not with tracking settings."""

from __future__ import annotations

import os

from s2d_pipeline.config import config_from_dict
from s2d_pipeline.training import content_hash, epoch_rows, run_fingerprint

ROWS = [{"prompt": f"{i}+1=", "answer": str(i + 1)} for i in range(10)]


def _weights(directory, payload: bytes):
    directory.mkdir(exist_ok=True)
    (directory / "model.safetensors").write_bytes(payload)
    return directory


def test_fingerprint_changes_with_params_rows_and_input_weights(tmp_path):
    cfg = config_from_dict({}, root=tmp_path)
    model = _weights(tmp_path / "model", b"weights-1")
    rows = content_hash(epoch_rows(ROWS, 30, "teacher_rl/s2d-0"))
    base = run_fingerprint(cfg, "teacher_rl/s2d", rows, [model])
    assert base == run_fingerprint(cfg, "teacher_rl/s2d", rows, [model])  # same run: resumable

    other_lr = config_from_dict({"teacher_rl": {"learning_rate": 1e-3}}, root=tmp_path)
    assert run_fingerprint(other_lr, "teacher_rl/s2d", rows, [model]) != base
    other_rows = content_hash(epoch_rows(ROWS[:-1], 30, "teacher_rl/s2d-0"))
    assert run_fingerprint(cfg, "teacher_rl/s2d", other_rows, [model]) != base
    reordered = content_hash(epoch_rows(ROWS, 30, "teacher_rl/s2d-1"))  # another seed's data order
    assert run_fingerprint(cfg, "teacher_rl/s2d", reordered, [model]) != base
    assert run_fingerprint(cfg, "teacher_rl/s2d_stage3", rows, [model]) != base

    _weights(model, b"weights-2")  # the input model was rebuilt (new size)
    assert run_fingerprint(cfg, "teacher_rl/s2d", rows, [model]) != base
    stat = (model / "model.safetensors").stat()
    rebuilt_same_size = run_fingerprint(cfg, "teacher_rl/s2d", rows, [model])
    os.utime(model / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # rewritten
    assert run_fingerprint(cfg, "teacher_rl/s2d", rows, [model]) != rebuilt_same_size


def test_fingerprint_ignores_tracking(tmp_path):
    model = _weights(tmp_path / "model", b"weights")
    rows = content_hash(ROWS)
    a = run_fingerprint(config_from_dict({}, root=tmp_path), "opd/s2d", rows, [model])
    b = run_fingerprint(
        config_from_dict({"tracking": {"uri": "http://127.0.0.1:5000"}}, root=tmp_path), "opd/s2d", rows, [model]
    )
    assert a == b
