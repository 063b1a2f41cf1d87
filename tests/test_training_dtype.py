"""Training under bf16 autocast (`runtime.bf16`, off by default; auto: where inference_dtype's auto picks
bfloat16): every trainer's loss and sampling run under it, on a CPU too, the weights cast once per
sampling call rather than at every new token. The trainers that sample draw their tokens by the inverse CDF
(`generation.inverse_cdf_sampling`), as s2d's own generation does."""

from __future__ import annotations

import pytest

from s2d_pipeline.config import Config, config_from_dict, deep_merge, load_config
from tests.helpers import REPO, STAGE_MICRO


@pytest.mark.parametrize(
    ("setting", "source", "native", "expected"),
    [
        ("auto", "gguf", True, True),  # real weights on AMX / AVX512-BF16 / a bf16 GPU
        ("auto", "gguf", False, False),  # emulated bf16 is slower than float32
        ("auto", "build", True, False),  # the embedded default keeps its recorded numbers
        (True, "build", False, True),  # an explicit setting wins
        (False, "gguf", True, False),
    ],
)
def test_the_rule(monkeypatch, setting, source, native, expected):
    from s2d_pipeline import models

    monkeypatch.setattr(models, "native_bf16", lambda device_kind: native)
    cfg = config_from_dict({"runtime": {"bf16": setting, "device": "cpu"}, "models": {"source": source}})
    assert models.training_bf16(cfg) is expected
    assert Config().runtime.bf16 is False


@pytest.mark.parametrize("bf16", [True, False])
def test_every_trainer_computes_its_loss_and_samples_under_the_setting(tmp_path, monkeypatch, bf16):
    """A forward hook on the first decoder layer records whether autocast was on, for forwards with
    gradients (the loss) and without (sampling, the frozen teacher); torch.clear_autocast_cache, called
    when the outermost autocast region exits, counts the regions."""
    import torch

    from s2d_pipeline import generation, training
    from s2d_pipeline.models import build_char_tokenizer, build_tiny_model, save_model
    from s2d_pipeline.runtime import setup
    from s2d_pipeline.tasks import get_task

    probe = {
        "teacher_rl": {"steps": 1, "prompts_per_step": 2, "num_generations": 2, "max_completion_length": 6},
        "warmup": {"steps": 1, "batch_size": 2},
        "opd": {"steps": 1, "batch_size": 2, "max_completion_length": 6},
        "runtime": {"torch_threads": 1, "checkpoint_steps": None, "bf16": bf16, "device": "cpu"},
        "tracking": {"enabled": False},
    }
    cfg = load_config(REPO / "params.yaml", deep_merge(STAGE_MICRO, probe), root=tmp_path)
    setup(cfg)
    task = get_task(cfg.task)
    tok = build_char_tokenizer(task.symbols)
    save_model(build_tiny_model(cfg.models.student, tok, cfg.models.max_seq_len, seed=0), tok, tmp_path / "m")
    seen: list[tuple[bool, bool]] = []  # (gradients on, autocast on) per hooked forward
    regions = []
    real_load, real_clear = training.load_model, torch.clear_autocast_cache

    def hooked_load(path, cfg, **kwargs):
        model = real_load(path, cfg, **kwargs)
        hook = lambda *_: seen.append((torch.is_grad_enabled(), torch.is_autocast_enabled("cpu")))  # noqa: E731
        model.model.layers[0].register_forward_hook(hook)
        return model

    monkeypatch.setattr(training, "load_model", hooked_load)
    real_draw, draws = generation.draw_one_per_row, []
    monkeypatch.setattr(generation, "draw_one_per_row", lambda probs: (draws.append(1), real_draw(probs))[1])
    monkeypatch.setattr(torch, "clear_autocast_cache", lambda: (regions.append(1), real_clear()))
    rows = task.generate_splits(0, 8, 0, 0)["labels"]
    runs = {
        "grpo": lambda: training.train_grpo(cfg, task, tmp_path / "m", rows, cfg.teacher_rl, "teacher_rl/probe"),
        "warmup": lambda: training.train_forward_kl(
            cfg,
            cfg.warmup,
            tmp_path / "m",
            tmp_path / "m",
            [{"prompt": r["prompt"], "completion_ids": [3, 4, 1]} for r in rows],
            1,
            "warmup/probe",
        ),
        "opd": lambda: training.train_opd(
            cfg, tmp_path / "m", tmp_path / "m", [r["prompt"] for r in rows], 1, "opd/probe"
        ),
    }
    for name, run in runs.items():
        seen.clear(), regions.clear(), draws.clear()
        run()
        assert bool(draws) is (name != "warmup"), name  # GRPO and OPD sample; the warmup reads rollouts
        with_grad = [autocast for grad, autocast in seen if grad]
        without = [autocast for grad, autocast in seen if not grad]
        assert set(with_grad) == {bf16}, name
        assert set(without) == {bf16}, name  # sampling (GRPO, OPD) and the teacher's scoring (warmup, OPD)
        if name != "warmup" and bf16:
            # Up to 6 new tokens a completion: one region per sampling call, not one per token.
            assert len(regions) < len(without), (name, len(regions), len(without))
