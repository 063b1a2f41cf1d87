"""How a failed child `s2d` process reaches the caller: a user error (bad input: fails the same way
every time) as an S2DError with the child's own message, which the flow does not retry; a crash (a
kill, out of memory, a failed launcher) as any other exception, which the flow retries. Real child
processes throughout: the crashes are real signals and a real `accelerate launch` failing."""

from __future__ import annotations

import signal
import textwrap

import pytest

from s2d_pipeline.errors import S2DError
from tests.helpers import MICRO, write_one_cpu_accelerate


def _retried(exc: BaseException) -> bool:
    """The flow's retry rule on the state Prefect's task engine builds from a task's exception
    (`Failed(data=exc, ...)`, prefect/task_engine.py `can_retry`)."""
    from prefect.states import Failed

    from flows.s2d import _not_a_user_error

    state = Failed(data=exc, message=f"Task run encountered unexpected exception: {exc!r}")
    assert state.result(raise_on_failure=False) is exc
    return _not_a_user_error(None, None, state)


def _child_startup(monkeypatch, tmp_path, code: str) -> None:
    """Run `code` at the start of every Python process this test starts (a sitecustomize module on
    their PYTHONPATH): the child dies or exits the way the test needs, for real."""
    hook = tmp_path / "child-startup"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(textwrap.dedent(code))
    monkeypatch.setenv("PYTHONPATH", str(hook))


@pytest.fixture
def two_arm_cfg(project):
    from s2d_pipeline.config import deep_merge, load_config

    return load_config(project / "params.yaml", deep_merge(MICRO, {"arms": ["s2d", "grpo_direct"]}), root=project)


def test_the_retry_rule_retries_crashes_and_not_user_errors():
    from s2d_pipeline.errors import DataError, GateError

    assert _retried(RuntimeError("`s2d warmup --arm s2d` was killed by SIGKILL"))
    assert _retried(MemoryError())
    assert not _retried(S2DError("bad input"))
    assert not _retried(DataError("data/labels.jsonl:3: rule 'valid JSONL' failed"))
    assert not _retried(GateError("C1"))


def test_arm_process_killed_by_a_signal_is_a_crash_and_retried(two_arm_cfg, tmp_path, monkeypatch):
    from flows.s2d import _run_arm_process

    _child_startup(monkeypatch, tmp_path, "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    with pytest.raises(Exception) as caught:
        _run_arm_process("warmup", "s2d", two_arm_cfg, 0)
    assert not isinstance(caught.value, S2DError), caught.value
    assert "`s2d warmup --arm s2d`" in str(caught.value) and signal.SIGKILL.name in str(caught.value)
    assert _retried(caught.value)


def test_arm_process_user_error_is_the_childs_error_not_its_last_log_line(two_arm_cfg, tmp_path, monkeypatch):
    """The child refuses an arm the params do not configure and, as libraries do at exit, logs one
    more line after its error: the error reaches the caller, whole and once, and is not retried."""
    from flows.s2d import _run_arm_process

    _child_startup(
        monkeypatch,
        tmp_path,
        """
        import atexit, sys
        atexit.register(lambda: print("2026-12-03 12:00:00,000 mlflow WARNING a log line at exit", file=sys.stderr))
        """,
    )
    with pytest.raises(S2DError) as caught:
        _run_arm_process("warmup", "no_opd", two_arm_cfg, 0)
    assert str(caught.value) == "--arm: 'no_opd' is not a configured arm (key 'arms': s2d, grpo_direct)"
    assert not _retried(caught.value)


def test_arm_process_exiting_2_without_a_word_names_its_status(two_arm_cfg, tmp_path, monkeypatch):
    from flows.s2d import _run_arm_process

    _child_startup(monkeypatch, tmp_path, "import os\nos._exit(2)\n")
    with pytest.raises(S2DError, match=r"`s2d warmup --arm s2d` exited with status 2.*left no error message"):
        _run_arm_process("warmup", "s2d", two_arm_cfg, 0)


def _one_cpu_accelerate(project, **config) -> str:
    write_one_cpu_accelerate(project / "accelerate.yaml", **config)
    return "accelerate.yaml"


def test_distributed_run_whose_launcher_fails_is_a_crash_and_retried(project):
    """`accelerate launch` itself fails (here on a config it cannot use): not the user's data, so
    the stage is retried, and the message says how the launch ended."""
    from s2d_pipeline.cli import run_distributed
    from s2d_pipeline.config import deep_merge, load_config

    config = _one_cpu_accelerate(project, distributed_type="NO_SUCH_BACKEND")
    cfg = load_config(
        project / "params.yaml", deep_merge(MICRO, {"runtime": {"accelerate_config": config}}), root=project
    )
    with pytest.raises(Exception) as caught:
        run_distributed("warmup", cfg, "s2d")
    assert not isinstance(caught.value, S2DError), caught.value
    assert "exited with status 1" in str(caught.value)
    assert _retried(caught.value)


def test_distributed_run_refusing_its_input_is_a_user_error_with_the_childs_message(project):
    """A launched process refuses its input (here: an arm the params do not configure) and exits 2,
    which `accelerate launch` reports as status 1 like any failure: the child's own message still
    reaches the caller as a user error, so the flow does not retry it."""
    from s2d_pipeline.cli import run_distributed
    from s2d_pipeline.config import deep_merge, load_config

    config = _one_cpu_accelerate(project)
    overrides = deep_merge(
        MICRO, {"runtime": {"accelerate_config": config, "num_processes": 1}, "arms": ["s2d", "grpo_direct"]}
    )
    cfg = load_config(project / "params.yaml", overrides, root=project)
    with pytest.raises(S2DError) as caught:
        run_distributed("warmup", cfg, "no_opd")
    assert str(caught.value) == "--arm: 'no_opd' is not a configured arm (key 'arms': s2d, grpo_direct)"
    assert not _retried(caught.value)
