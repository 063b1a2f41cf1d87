"""Batch settings are global: `prompts_per_step` (GRPO) and `batch_size` (forward-KL warmup, OPD) are
what one optimizer step takes, all processes together; `micro_batch_size` is what one process holds
in a forward/backward pass, and gradient accumulation is derived from the processes a run has.

The two-process test launches this module under `accelerate launch` (gloo on CPU): `probe` runs a
tiny GRPO and a tiny warmup run and records, per process, which prompts each step took."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from s2d_pipeline.config import GRPOStageConfig, HealConfig, OPDConfig, WarmupConfig, deep_merge, load_config
from s2d_pipeline.errors import ConfigError
from s2d_pipeline.training import BatchSplit, batch_split, section_key
from tests.helpers import REPO, STAGE_MICRO, write_one_cpu_accelerate

# ---- the derivation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "processes", "split"),
    [
        # The default (no micro-batch) on one process: the whole step in one pass, as before.
        (GRPOStageConfig(prompts_per_step=16, num_generations=8), 1, BatchSplit(128, 1)),
        (GRPOStageConfig(prompts_per_step=16, num_generations=8), 8, BatchSplit(16, 1)),
        (GRPOStageConfig(prompts_per_step=16, num_generations=8, micro_batch_size=8), 8, BatchSplit(8, 2)),
        (GRPOStageConfig(prompts_per_step=16, num_generations=8, micro_batch_size=4), 1, BatchSplit(4, 32)),
        # A micro-batch need not hold whole groups: TRL gathers the rewards across processes.
        (GRPOStageConfig(prompts_per_step=3, num_generations=4, micro_batch_size=3), 2, BatchSplit(3, 2)),
        (WarmupConfig(batch_size=128), 1, BatchSplit(128, 1)),
        (WarmupConfig(batch_size=128, micro_batch_size=8), 4, BatchSplit(8, 4)),
        (OPDConfig(batch_size=32, micro_batch_size=2), 2, BatchSplit(2, 8)),
        (HealConfig(batch_size=8), 2, BatchSplit(4, 1)),
    ],
)
def test_accumulation_makes_up_the_global_step(settings, processes, split):
    got = batch_split(settings, processes, "stage")
    assert got == split
    sequences = (
        settings.prompts_per_step * settings.num_generations
        if isinstance(settings, GRPOStageConfig)
        else settings.batch_size
    )
    assert got.per_device * processes * got.accumulation == sequences


@pytest.mark.parametrize(
    ("settings", "processes", "key", "says"),
    [
        # 96 completions over 8 processes x 16: no whole accumulation count.
        (
            GRPOStageConfig(prompts_per_step=12, num_generations=8, micro_batch_size=16),
            8,
            "teacher_rl",
            [
                "'teacher_rl.prompts_per_step'",
                "'teacher_rl.micro_batch_size' 16 on 8 process(es)",
                "prompts_per_step' 16",  # 16 x 8 = 128 = 16 x 8 x 1
                "micro_batch_size' 12",  # 96 / 8 = 12 per process
            ],
        ),
        # 30 sequences do not split over 4 processes at all: only other batch sizes help.
        (WarmupConfig(batch_size=30), 4, "warmup", ["'warmup.batch_size'", "4 process(es)", "28 or 32"]),
        (
            OPDConfig(batch_size=32, micro_batch_size=3),
            2,
            "opd",
            ["'opd.batch_size'", "'opd.micro_batch_size' 3 on 2 process(es)", "30 or 36", "micro_batch_size' 2 or 4"],
        ),
    ],
)
def test_a_step_that_does_not_split_is_a_config_error_naming_keys_processes_and_nearest_values(
    settings, processes, key, says
):
    with pytest.raises(ConfigError) as err:
        batch_split(settings, processes, key)
    assert err.value.exit_code == 2
    for text in says:
        assert text in str(err.value)


@pytest.mark.parametrize(
    ("settings", "processes"),
    [
        (GRPOStageConfig(prompts_per_step=12, num_generations=6, micro_batch_size=8), 4),
        (GRPOStageConfig(prompts_per_step=12, num_generations=8, micro_batch_size=16), 8),
        (GRPOStageConfig(prompts_per_step=5, num_generations=8), 16),
        (OPDConfig(batch_size=50, micro_batch_size=4), 3),
    ],
)
def test_nearest_values_offered_are_valid(settings, processes):
    """Every value the message proposes does split, with the other key as it was."""
    import re

    with pytest.raises(ConfigError) as err:
        batch_split(settings, processes, "stage")
    nearest = str(err.value).split("Nearest valid values")[1]
    offers = re.findall(r"'stage\.(\w+)' (\d+(?: or \d+)*)", nearest)
    assert offers
    for key, values in offers:
        for value in map(int, values.split(" or ")):
            batch_split(settings.model_copy(update={key: value}), processes, "stage")


def test_section_key_names_nested_sections(micro_cfg):
    assert section_key(micro_cfg, micro_cfg.grpo_direct) == "grpo_direct"
    assert section_key(micro_cfg, micro_cfg.prepare.heal) == "prepare.heal"


@pytest.mark.parametrize("stage", ["grpo", "forward_kl", "opd"])
def test_trainers_refuse_a_step_that_does_not_split_before_loading_anything(project, stage):
    """A micro-batch that does not divide the step fails before any model is read (the model
    directories here do not exist: reading them would be another error)."""
    from s2d_pipeline import training
    from s2d_pipeline.tasks import get_task

    section = {"grpo": "teacher_rl", "forward_kl": "warmup", "opd": "opd"}[stage]
    cfg = load_config(
        project / "params.yaml", deep_merge(STAGE_MICRO, {section: {"micro_batch_size": 3}}), root=project
    )
    missing = project / "no-model"
    with pytest.raises(ConfigError, match=rf"'{section}\.micro_batch_size' 3 on 1 process"):
        if stage == "grpo":
            training.train_grpo(cfg, get_task(cfg.task), missing, [], cfg.teacher_rl, "teacher_rl/x")
        elif stage == "forward_kl":
            training.train_forward_kl(cfg, cfg.warmup, missing, missing, [], 1, "warmup/x")
        else:
            training.train_opd(cfg, missing, missing, [], 1, "opd/x")
    assert not (project / cfg.checkpoints_dir).exists()


def test_profiles_real_scale_steps_split_on_one_and_eight_processes():
    """The real-model profiles hold a GPU to micro-batches, and their steps split on 1 and 8 GPUs."""
    for name in ("qwen3-math", "llama-math"):
        cfg = load_config(REPO / "profiles" / f"{name}.yaml", root=REPO)
        for section in ("teacher_rl", "grpo_direct", "student_rl", "warmup", "opd"):
            settings = getattr(cfg, section)
            assert settings.micro_batch_size is not None and settings.micro_batch_size <= 16, (name, section)
            for processes in (1, 8):
                batch_split(settings, processes, section)


# ---- two processes take the step one process takes -----------------------------------------------

PROBE = {
    "teacher_rl": {"steps": 2, "prompts_per_step": 4, "num_generations": 4},
    "warmup": {"steps": 2, "batch_size": 8},
    "opd": {"steps": 2, "batch_size": 8},
    "runtime": {"torch_threads": 1, "checkpoint_steps": None},
}


def probe(out: Path, root: Path, micro: int | None) -> None:
    """Train 2 GRPO, 2 warmup and 2 OPD steps on a tiny model, recording what each process took: the
    label ids the reward function graded per generation, the prompts each warmup micro-batch held and
    the prompts each OPD generation sampled (GRPO and OPD generate once per optimizer step). Writes
    `out/rank<N>.json`."""
    from trl import DistillationTrainer

    from s2d_pipeline import training
    from s2d_pipeline.models import build_char_tokenizer, build_tiny_model, save_model
    from s2d_pipeline.runtime import setup
    from s2d_pipeline.tasks import get_task

    overrides = deep_merge(STAGE_MICRO, PROBE)
    overrides = deep_merge(overrides, {s: {"micro_batch_size": micro} for s in ("teacher_rl", "warmup", "opd")})
    cfg = load_config(REPO / "params.yaml", overrides, root=root)
    setup(cfg)
    rank = int(os.environ.get("RANK", "0"))
    task = get_task(cfg.task)
    model_dir = root / "model"
    if rank == 0 and not model_dir.exists():
        tok = build_char_tokenizer(task.symbols)
        save_model(build_tiny_model(cfg.models.student, tok, cfg.models.max_seq_len, seed=0), tok, model_dir)
    graded: list[list[str]] = []
    collated: list[list[str]] = []
    sampled: list[list[str]] = []

    def spy_reward(task):
        def reward(prompts, completions, answer, label_id, **_):
            graded.append(list(label_id))
            return [0.0] * len(completions)

        return reward

    class SpyCollator(training.PromptCompletionCollator):
        def __call__(self, examples):
            collated.append([ex["prompt"] for ex in examples])
            return super().__call__(examples)

    generate_and_score = DistillationTrainer._generate_and_score_completions

    def spy_generate(self, inputs):
        sampled.append([row["prompt"] for row in inputs])
        return generate_and_score(self, inputs)

    training.verifier_reward, training.PromptCompletionCollator = spy_reward, SpyCollator
    DistillationTrainer._generate_and_score_completions = spy_generate
    from accelerate import PartialState

    PartialState(cpu=True).wait_for_everyone()  # rank 0 wrote the model
    rows = task.generate_splits(0, 24, 0, 0)["labels"]
    grpo = training.train_grpo(cfg, task, model_dir, rows, cfg.teacher_rl, "teacher_rl/probe")
    rollouts = [{"prompt": r["prompt"], "completion_ids": [3, 4, 1]} for r in rows]
    warm = training.train_forward_kl(cfg, cfg.warmup, model_dir, model_dir, rollouts, 2, "warmup/probe")
    opd = training.train_opd(cfg, model_dir, model_dir, [r["prompt"] for r in rows], 2, "opd/probe")
    record = {
        "grpo": {"graded": graded, "accumulation": grpo.args.gradient_accumulation_steps},
        "warmup": {"collated": collated, "accumulation": warm.args.gradient_accumulation_steps},
        "opd": {"sampled": sampled, "accumulation": opd.args.gradient_accumulation_steps},
    }
    (out / f"rank{rank}.json").write_text(json.dumps(record))


def _steps(records: list[dict], run: str, key: str, steps: int) -> list[list[str]]:
    """What each optimizer step took, all processes together: step k is each process's calls
    k*calls_per_step .. (k+1)*calls_per_step - 1 (a data loader may collate one batch ahead)."""
    per_step = 1 if run in ("grpo", "opd") else records[0][run]["accumulation"]
    return [
        sorted(x for r in records for call in r[run][key][k * per_step : (k + 1) * per_step] for x in call)
        for k in range(steps)
    ]


def _run_probe(tmp_path: Path, processes: int, micro: int | None) -> list[dict]:
    out, root = tmp_path / f"out-{processes}", tmp_path / f"root-{processes}"
    out.mkdir()
    root.mkdir()
    args = ["-m", "tests.test_batch_semantics", str(out), str(root), str(micro)]
    if processes == 1:
        cmd = [sys.executable, *args]
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        # accelerate starts several processes on one machine through torchrun only for MULTI_GPU
        # without use_cpu (MULTI_CPU goes through mpirun, not installed); with no GPU the processes
        # join a gloo group on the CPU (PartialState: MULTI_CPU), as the trainers' use_cpu asks.
        write_one_cpu_accelerate(
            tmp_path / "two-cpu.yaml",
            distributed_type="MULTI_GPU",
            use_cpu=False,
            num_processes=processes,
            main_process_ip="127.0.0.1",
            main_process_port=port,
        )
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(tmp_path / "two-cpu.yaml")]
        cmd += args
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "S2D_PROGRESS": "0"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(processes)]


def test_two_processes_take_the_same_prompts_per_step_as_one(tmp_path):
    """GRPO: each optimizer step grades prompts_per_step prompts x num_generations completions, the
    same prompts on two processes (micro-batches of 2 completions, 4 accumulation steps) as on one
    (the whole step at once). Warmup and OPD: each step trains on the same batch_size sequences
    (micro-batches of 2, 2 accumulation steps, on two processes)."""
    one = _run_probe(tmp_path, 1, None)
    two = _run_probe(tmp_path, 2, 2)
    grpo_one, grpo_two = _steps(one, "grpo", "graded", 2), _steps(two, "grpo", "graded", 2)
    for step in grpo_one:
        assert len(step) == 4 * 4 and len(set(step)) == 4  # 4 prompts, 4 completions each
    assert grpo_two == grpo_one

    warm_one, warm_two = _steps(one, "warmup", "collated", 2), _steps(two, "warmup", "collated", 2)
    assert [len(s) for s in warm_one] == [8, 8]
    assert warm_two == warm_one

    opd_one, opd_two = _steps(one, "opd", "sampled", 2), _steps(two, "opd", "sampled", 2)
    assert [len(s) for s in opd_one] == [8, 8]
    assert opd_two == opd_one
    # ... through micro-batches and accumulation on two processes, the whole step at once on one.
    assert one[0]["grpo"]["accumulation"] == 1 and one[0]["warmup"]["accumulation"] == 1
    assert {r["grpo"]["accumulation"] for r in two} == {4} and {r["warmup"]["accumulation"] for r in two} == {2}
    assert one[0]["opd"]["accumulation"] == 1 and {r["opd"]["accumulation"] for r in two} == {2}


if __name__ == "__main__":
    probe(Path(sys.argv[1]), Path(sys.argv[2]), None if sys.argv[3] == "None" else int(sys.argv[3]))
