"""Task adapters. `get_task(cfg.task)` is the only way stages obtain one.

The task registry is the `TaskConfig` union in `s2d_pipeline.config`: each task's settings class
names its adapter (`implementation`), and `task.name` picks the class.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from s2d_pipeline.tasks.base import Task

if TYPE_CHECKING:
    from s2d_pipeline.config import TaskConfig


def task_class(task_cfg: TaskConfig) -> type[Task]:
    """The adapter class of a task's settings (imported only now)."""
    module, name = task_cfg.implementation.split(":")
    return getattr(importlib.import_module(module), name)


def get_task(task_cfg: TaskConfig) -> Task:
    return task_class(task_cfg).from_config(task_cfg)


__all__ = ["Task", "get_task", "task_class"]
