"""Shared test constants and helpers (fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path

from s2d_pipeline.config import deep_merge

REPO = Path(__file__).resolve().parents[1]
SHARED_GSM8K = REPO.parent / "shared" / "data" / "gsm8k" / "train.jsonl"

# Micro settings: every stage runs for real, just tiny and short. One-digit addition (100 problems)
# is learnt by a 2-layer width-32 model in ~300 steps, so base models are imperfect but not random
# and GRPO sees rewards that vary within a group (a random model scores 0 everywhere: zero loss).
MICRO = {
    "task": {"digits": 1},
    "data": {
        "n_labels": 40,
        "n_prompts": 40,
        "n_eval": 16,
        "labels_rows": {"min": 8, "max": 1000},
        "prompts_rows": {"min": 8, "max": 1000},
        "eval_rows": {"min": 8, "max": 1000},
    },
    "budget": 16,
    "models": {
        "teacher": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64},
        "student": {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32},
    },
    "prepare": {
        "teacher": {"steps": 300, "noise_rate": 0.5},
        "student": {"steps": 300, "noise_rate": 0.5},
        "batch_size": 64,
        "learning_rate": 3e-3,
        "gate_min_accuracy": 0.0,
        "gate_max_accuracy": 1.0,
        "gate_eval_size": 16,
        "max_retries": 0,
    },
    "tracking": {"enabled": False},
    # A few micro teacher-RL steps need not improve the teacher; the C1 gate's own tests turn this off.
    "gates": {"c1": {"override": True, "problems": 8, "k": 2}},
}
for _stage in ("teacher_rl", "grpo_direct", "student_rl", "rollouts", "opd", "evaluate"):
    MICRO[_stage] = {"max_completion_length": 2}

STAGE_MICRO = deep_merge(
    MICRO,
    {
        "teacher_rl": {
            "steps": 3,
            "prompts_per_step": 4,
            "num_generations": 4,
            "warmup_steps": 0,
            "learning_rate": 1e-3,
        },
        "grpo_direct": {
            "steps": 3,
            "prompts_per_step": 4,
            "num_generations": 4,
            "warmup_steps": 0,
            "learning_rate": 1e-3,
        },
        "student_rl": {
            "steps": 2,
            "prompts_per_step": 2,
            "num_generations": 4,
            "warmup_steps": 0,
            "learning_rate": 1e-3,
        },
        "rollouts": {"samples_per_prompt": 2, "batch_size": 64},
        "warmup": {"steps": 4, "batch_size": 32, "warmup_steps": 0, "learning_rate": 3e-3},
        "opd": {"steps": 4, "batch_size": 32, "warmup_steps": 0, "learning_rate": 3e-3},
        "evaluate": {"k": 2, "kl_prompts": 32, "batch_size": 64},
    },
)


def write_dvc_units(root: Path) -> None:
    """A test project's dvc_units.yaml for its params.yaml (what `s2d dvc-units` writes)."""
    from s2d_pipeline import dvc_units
    from s2d_pipeline.config import load_config

    dvc_units.write(load_config(root / "params.yaml", root=root))


def params_equal(a, b) -> bool:
    """True when two models have bit-identical weights."""
    import torch

    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


# The real-weights profile cut down to run every stage and arm on 2 cores in a few minutes: one or
# two steps each, a handful of prompts, 8-token completions, one sample per gate and eval problem on
# two problems, a 4-layer student (still 49,152-token SmolLM2 vocabulary and chat template: what
# matters here is the real path, not the numbers). Each model load, generation and save is paid per
# arm and per evaluated model, so these sizes drive the test's time.
SMOLLM2_PROFILE = REPO / "profiles" / "smollm2-arith.yaml"
SMOLLM2_COMPLETION_TOKENS = 8  # every stage's max_completion_length (test_real_weights counts on it)
SMOLLM2_MICRO = {
    "budget": 8,
    "gates": {"c1": {"override": True, "problems": 2, "k": 1}},  # one teacher-RL step need not improve it
    "arms": [
        "s2d",
        "s2d_stage3",
        "s2d_stage3_replay",
        "grpo_direct",
        "opd_direct",
        "raw_bridge",
        "no_warmup",
        "no_opd",
    ],
    "tracking": {"enabled": False},
    "runtime": {"cache_dir": "cache"},  # under the run's root: each run heals its own student
    "data": {
        "n_labels": 12,
        "n_prompts": 4,
        "n_eval": 4,
        **{f"{s}_rows": {"min": 4} for s in ("labels", "prompts", "eval")},
    },
    "models": {"student": {"keep_layers": [0, 1, 2, 29]}, "max_seq_len": 96},
    "prepare": {"heal": {"steps": 1, "batch_size": 2, "prompts": 2, "warmup_steps": 0}},
    **{
        stage: {
            "steps": 1,
            "prompts_per_step": 2,
            "num_generations": 2,
            "warmup_steps": 0,
            "max_completion_length": SMOLLM2_COMPLETION_TOKENS,
        }
        for stage in ("teacher_rl", "grpo_direct", "student_rl")
    },
    "rollouts": {"max_completion_length": SMOLLM2_COMPLETION_TOKENS, "batch_size": 8},
    "warmup": {"steps": 1, "batch_size": 2, "warmup_steps": 0},
    "opd": {"steps": 1, "batch_size": 2, "warmup_steps": 0, "max_completion_length": SMOLLM2_COMPLETION_TOKENS},
    "evaluate": {
        "k": 1,
        "max_problems": 2,
        "max_completion_length": SMOLLM2_COMPLETION_TOKENS,
        "kl_prompts": 2,
        "batch_size": 8,
    },
}


def write_one_cpu_accelerate(path: Path, **config) -> None:
    """An accelerate config for one CPU process (what `runtime.accelerate_config` names in tests)."""
    import yaml

    base = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": "NO",
        "num_processes": 1,
        "use_cpu": True,
        "mixed_precision": "no",
        "num_machines": 1,
        "machine_rank": 0,
    }
    path.write_text(yaml.safe_dump({**base, **config}))


def sharp_tiny_model():
    """A tiny Qwen2 over the arithmetic characters whose outputs depend on the prompt (std-1 weights,
    not the near-uniform default init) and whose next-token distribution is nearly one-hot (final
    norm scaled up): sampling returns the greedy completion and any mix-up between prompts shows.
    Returns (model, tokenizer)."""
    import torch

    from s2d_pipeline.config import ModelSpec
    from s2d_pipeline.models import build_char_tokenizer, build_tiny_model
    from s2d_pipeline.tasks.arithmetic import VOCAB

    tok = build_char_tokenizer(VOCAB)
    spec = ModelSpec(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    model = build_tiny_model(spec, tok, max_seq_len=32, seed=0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
        model.model.norm.weight.mul_(1e4)
    return model, tok
