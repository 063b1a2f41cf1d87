"""Task adapters. `get_task(cfg)` is the only way stages obtain one."""

from __future__ import annotations

from typing import TYPE_CHECKING

from s2d_pipeline.tasks.base import Task

if TYPE_CHECKING:
    from s2d_pipeline.config import TaskConfig


def get_task(task_cfg: TaskConfig) -> Task:
    if task_cfg.name == "arithmetic":
        from s2d_pipeline.tasks.arithmetic import ArithmeticTask

        return ArithmeticTask(digits=task_cfg.digits)
    if task_cfg.name == "math":
        from s2d_pipeline.tasks.math import MathTask

        return MathTask(prompt_template=task_cfg.prompt_template)
    raise ValueError(f"unknown task {task_cfg.name!r}")


__all__ = ["Task", "get_task"]
