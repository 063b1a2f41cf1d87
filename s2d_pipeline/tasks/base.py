"""The task adapter interface: prompt format, answer extraction and verifier in one place.

Every stage that needs to know what a correct answer is asks the task; nothing else parses answers.
Canonical rows are dicts with `id`, `prompt` (the problem as given), `answer` (labels/eval only)
and optionally `source`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class Task(ABC):
    name: str
    # True when the task writes its own labels/prompts/eval (`generate_splits`); otherwise the user
    # points data.labels/prompts/eval at files.
    can_generate: bool = False
    # The alphabet of a character-level tokenizer for tiny from-scratch models, or None (tasks
    # without a pretraining corpus bring pretrained models and their tokenizers).
    symbols: list[str] | None = None

    @classmethod
    def from_config(cls, task_cfg) -> Task:
        """The adapter for a task's settings (its `TaskConfig` member, less the `name` tag)."""
        return cls(**task_cfg.model_dump(exclude={"name"}))

    def generate_splits(self, seed: int, n_labels: int, n_prompts: int, n_eval: int) -> dict[str, list[dict]]:
        """Disjoint `labels`, `prompts` (no answers) and `eval` rows, deterministic in `seed`."""
        raise NotImplementedError(f"task '{self.name}' does not generate data")

    def reserved_problems(self, seed: int) -> list[dict] | None:
        """Problems that no generated split of any seed holds, shuffled by `seed`, as canonical rows with
        answers (what a model shared by every run seed is prepared on), or None when the task keeps none."""
        return None

    def pretraining_corpus(self, vocab: dict[str, int], exclude_prompts: set[str]):
        """Batches for pretraining tiny base models from scratch (`models.source: build`), or None
        when the task has none (real tasks bring pretrained models)."""
        return None

    @abstractmethod
    def format_prompt(self, problem: str) -> str:
        """The text the model is conditioned on for a problem."""

    @abstractmethod
    def extract_answer(self, completion: str) -> str | None:
        """The final answer a completion commits to, or None when it commits to none."""

    @abstractmethod
    def parse_answer(self, answer: Any) -> Any | None:
        """A reference answer in the form the verifier compares, or None if it cannot be parsed."""

    @abstractmethod
    def verify(self, completion: str, answer: Any) -> bool:
        """True when the completion's final answer equals the reference answer."""

    def rewards(self, completions: Sequence[str], answers: Sequence[Any]) -> list[float]:
        """The sparse verifiable reward: 1.0 for a verified completion, else 0.0."""
        return [1.0 if self.verify(c, a) else 0.0 for c, a in zip(completions, answers, strict=True)]

    def to_canonical(self, rows: list[dict], path: Path) -> list[dict]:
        """Map rows of a supported source format to canonical rows (default: already canonical)."""
        return rows
