"""Task adapters. `get_task(cfg.task)` is the only way stages obtain one.

Each task's settings are a class of the `TaskConfig` union in `s2d_pipeline.config`, picked by
`task.name`; `TASKS` maps the same name to the adapter class (a test checks that they agree).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from s2d_pipeline.tasks.arithmetic import ArithmeticTask
from s2d_pipeline.tasks.base import Task
from s2d_pipeline.tasks.math import MathTask

if TYPE_CHECKING:
    from s2d_pipeline.config import TaskConfig

TASKS: dict[str, type[Task]] = {"arithmetic": ArithmeticTask, "math": MathTask}


def task_class(task_cfg: TaskConfig) -> type[Task]:
    """The adapter class of a task's settings."""
    return TASKS[task_cfg.name]


def get_task(task_cfg: TaskConfig) -> Task:
    return task_class(task_cfg).from_config(task_cfg)


__all__ = ["TASKS", "Task", "get_task", "task_class"]
