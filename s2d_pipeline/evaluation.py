"""How a model is measured, wherever it is measured: accuracy on labeled problems by the task
verifier (`score`: greedy, avg_at_k, pass_at_k), and C2, the student's per-token KL to a teacher on
the student's own samples (`student_teacher_kl`). `s2d evaluate` reports both for every model; the
C1 gate in `teacher_rl` and warmup's C2 stopping rule measure with the same functions.
"""

from __future__ import annotations

from s2d_pipeline.config import Config
from s2d_pipeline.generation import completion_token_stats, generate, sample
from s2d_pipeline.prompts import render

ACCURACY = ("greedy", "avg_at_k", "pass_at_k")


def score(task, model, tokenizer, rows: list[dict], cfg: Config, settings=None) -> dict:
    """Greedy accuracy, avg_at_k and pass_at_k of one model on labeled rows, sampled with `settings`
    (k, temperature, max_completion_length, batch_size; default: the evaluate section)."""
    return accuracy_metrics_of(score_by_problem(task, model, tokenizer, rows, cfg, settings))


def score_by_problem(task, model, tokenizer, rows: list[dict], cfg: Config, settings=None) -> dict:
    """`verdicts` of one model's greedy completion and k samples per row (what `score` summarises; two
    models scored on the same rows are compared problem by problem)."""
    e = settings or cfg.evaluate
    prompts = [render(cfg, task, tokenizer, r["prompt"]) for r in rows]
    chat = cfg.models.chat_template
    greedy = generate(
        model, tokenizer, prompts, max_new_tokens=e.max_completion_length, batch_size=e.batch_size, chat=chat
    )
    sampled = sample(model, tokenizer, prompts, e, n=e.k, seed=cfg.seed, chat=chat)
    return verdicts(task, [c[0] for c in greedy], sampled, rows)


def verdicts(task, greedy: list[str], sampled: list[list[str]], rows: list[dict]) -> dict:
    """Per row, in order: whether the greedy completion is right (0/1) and how many of its samples are."""
    return {
        "greedy": [int(task.verify(c, r["answer"])) for c, r in zip(greedy, rows, strict=True)],
        "hits": [sum(task.verify(c, r["answer"]) for c in cs) for cs, r in zip(sampled, rows, strict=True)],
        "samples": [len(cs) for cs in sampled],
    }


def per_problem(v: dict, metric: str) -> list[float]:
    """One model's score on each row by `metric` (one of ACCURACY), from its `verdicts`."""
    if metric == "greedy":
        return [float(g) for g in v["greedy"]]
    if metric == "pass_at_k":
        return [float(h > 0) for h in v["hits"]]
    return [h / k if k else 0.0 for h, k in zip(v["hits"], v["samples"], strict=True)]


def accuracy_metrics_of(v: dict) -> dict:
    """Greedy accuracy, avg_at_k and pass_at_k from per-row `verdicts`."""
    n = max(len(v["greedy"]), 1)
    return {metric: round(sum(per_problem(v, metric)) / n, 4) for metric in ACCURACY}


def paired_difference(left: dict, right: dict, metric: str) -> dict:
    """`left` minus `right`, two models' `verdicts` on the same rows, problem by problem: the mean, its 95 %
    bootstrap interval resampling the problems (the noise of the eval sample; a seed's other sources of
    spread, base models and training, are not in it) and the problems each side scored higher on."""
    import numpy as np

    d = np.subtract(per_problem(left, metric), per_problem(right, metric))
    lo, hi = bootstrap_ci(d.tolist())
    return {
        "metric": metric,
        "problems": len(d),
        "mean": round(float(d.mean()), 4),
        "ci95": [round(lo, 4), round(hi, 4)],
        "left_higher": int((d > 0).sum()),
        "right_higher": int((d < 0).sum()),
    }


def bootstrap_ci(diffs: list[float], n_boot: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean of paired differences."""
    import numpy as np

    d = np.asarray(diffs, dtype=float)
    means = d[np.random.default_rng(seed).integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def accuracy_metrics(task, greedy: list[str], sampled: list[list[str]], rows: list[dict]) -> dict:
    """Greedy accuracy, avg_at_k and pass_at_k from completions, scored by the task verifier."""
    return accuracy_metrics_of(verdicts(task, greedy, sampled, rows))


def own_samples(cfg: Config, model, tokenizer, prompts: list[str]) -> list[str]:
    """One sample per prompt at temperature 1, as C2 draws them (seeded)."""
    e = cfg.evaluate
    samples = generate(
        model,
        tokenizer,
        prompts,
        max_new_tokens=e.max_completion_length,
        greedy=False,
        temperature=1.0,
        batch_size=e.batch_size,
        seed=cfg.seed,
        chat=cfg.models.chat_template,
    )
    return [s[0] for s in samples]


def student_teacher_kl(cfg: Config, task, student, teacher, tokenizer, prompts: list[str]) -> float:
    """C2: mean per-token KL(student || teacher) on the student's own samples."""
    samples = own_samples(cfg, student, tokenizer, prompts)
    stats = completion_token_stats(
        student,
        teacher,
        tokenizer,
        prompts,
        samples,
        batch_size=cfg.evaluate.batch_size,
        chat=cfg.models.chat_template,
    )
    return round(stats["kl"], 5)
