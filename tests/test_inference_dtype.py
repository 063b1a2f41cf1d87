"""The dtype the sampling and scoring stages load models in (`runtime.inference_dtype`): bfloat16 by
default for real weights on hardware that multiplies in it natively, float32 for the embedded default
(whose recorded results bf16 would move), and training always at `models.dtype`."""

from __future__ import annotations

import pytest

from s2d_pipeline.config import Config, config_from_dict
from s2d_pipeline.models import choose_inference_dtype


@pytest.mark.parametrize(
    ("setting", "models_dtype", "source", "native", "expected"),
    [
        ("auto", "float32", "gguf", True, "bfloat16"),  # real weights, AMX / AVX512-BF16 / bf16 GPU
        ("auto", "float32", "path", True, "bfloat16"),
        ("auto", "float32", "build", True, "float32"),  # the embedded default keeps its numbers
        ("auto", "float32", "gguf", False, "float32"),  # emulated bf16 is slower than float32
        ("auto", "bfloat16", "build", False, "bfloat16"),  # models already in bf16 stay so
        ("auto", "auto", "path", False, "auto"),  # the checkpoint's own dtype
        ("float32", "bfloat16", "gguf", True, "float32"),  # an explicit setting wins
        ("bfloat16", "float32", "build", False, "bfloat16"),
    ],
)
def test_the_rule(setting, models_dtype, source, native, expected):
    assert choose_inference_dtype(setting, models_dtype, source, native) == expected


def test_auto_on_bf16_hardware_is_bfloat16_for_real_weights_and_float32_for_the_embedded_default(monkeypatch):
    import torch

    from s2d_pipeline import models

    monkeypatch.setattr(models, "native_bf16", lambda device_kind: True)
    default = Config()
    assert default.runtime.inference_dtype == "auto" and models.inference_dtype(default) == torch.float32
    gguf = default.model_copy(update={"models": default.models.model_copy(update={"source": "gguf"})})
    assert models.inference_dtype(gguf) == torch.bfloat16


def test_inference_loads_at_the_inference_dtype_and_training_at_models_dtype(tmp_path):
    """What the C1 gate, rollouts and evaluate load (for_inference) follows the setting and generates;
    what the trainers load stays at models.dtype."""
    import torch

    from s2d_pipeline.generation import generate_completions
    from s2d_pipeline.models import load_model, save_model
    from tests.helpers import sharp_tiny_model

    model, tok = sharp_tiny_model()
    save_model(model, tok, tmp_path / "m")
    cfg = config_from_dict({"runtime": {"inference_dtype": "bfloat16", "device": "cpu"}}, root=tmp_path)
    served = load_model(tmp_path / "m", cfg, for_inference=True)
    trained = load_model(tmp_path / "m", cfg)
    assert {p.dtype for p in served.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in trained.parameters()} == {torch.float32}
    [[completion]] = generate_completions(served, tok, ["12+7="], max_new_tokens=4)
    assert 1 <= len(completion.token_ids) <= 4
