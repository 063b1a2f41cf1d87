"""One tokenization rule for prompts (`prompts` docstring, `generation.encode_prompt`): the ids every
stage, TRL's trainers and vLLM feed a model. Expected ids are computed here from the tokenizer itself
(its default encoding, its chat template as TRL's chat path tokenizes it), not through the rule."""

from __future__ import annotations

import sys
import types

import pytest

from s2d_pipeline.models import build_char_tokenizer
from s2d_pipeline.tasks.arithmetic import VOCAB
from tests.helpers import MICRO

BOS = "<s>"
TURNS = ["<|user|>", "<|assistant|>", "<|end|>"]
BODY = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)
TEMPLATE_WITH_BOS = "{{ bos_token }}" + BODY  # as Llama's, Mistral's and Gemma's templates write it
TEMPLATE_WITHOUT_BOS = BODY  # ChatML-like, on a tokenizer that adds BOS by default


def char_tokenizer(*, bos: bool = False, eos_too: bool = False, template: str | None = None):
    """The embedded char tokenizer (`bos=False`: adds nothing, as the default task's), or one whose
    default encoding adds BOS (`eos_too`: and appends its EOS, as Llama with add_eos_token)."""
    from tokenizers import processors

    tok = build_char_tokenizer(VOCAB)
    tok.add_tokens(TURNS, special_tokens=True)
    if bos:
        tok.add_special_tokens({"bos_token": BOS})
        single = f"{BOS} $A" + (f" {tok.eos_token}" if eos_too else "")
        tok._tokenizer.post_processor = processors.TemplateProcessing(
            single=single,
            special_tokens=[(BOS, tok.bos_token_id), (tok.eos_token, tok.eos_token_id)],
        )
    if template:
        tok.chat_template = template
    return tok


def sentencepiece_tokenizer():
    """A SentencePiece-style tokenizer (Metaspace, word-start marker on the first word only, BOS added
    by default), as Llama 2 and Mistral tokenizers are converted."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, BOS: 1, "</s>": 2, "<unk>": 3, "▁What": 4, "What": 5, "▁is": 6, "▁2": 7, "2": 8}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    core.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=BOS, eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def chat_ids(tok, text: str) -> list[int]:
    """What TRL's chat path feeds for a one-turn conversation (apply_chat_template, tokenized)."""
    conversation = [{"role": "user", "content": text}]
    return tok.apply_chat_template([conversation], tokenize=True, add_generation_prompt=True, return_dict=True)[
        "input_ids"
    ][0]


def rendered(tok, text: str) -> str:
    return tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)


# ---- the rule, on tokenizers of every kind ------------------------------------------------------------


def test_plain_prompts_get_the_bos_the_tokenizer_adds_by_default_and_nothing_else():
    from s2d_pipeline.generation import encode_prompt

    text = "1+2="
    plain = char_tokenizer()(text, add_special_tokens=False)["input_ids"]
    bos_tok = char_tokenizer(bos=True, eos_too=True)
    assert bos_tok(text)["input_ids"] == [bos_tok.bos_token_id, *plain, bos_tok.eos_token_id]
    assert encode_prompt(bos_tok, text, chat=False) == [bos_tok.bos_token_id, *plain]  # no EOS after a prompt
    assert encode_prompt(bos_tok, BOS + text, chat=False) == [bos_tok.bos_token_id, *plain]  # never twice
    assert encode_prompt(char_tokenizer(), text, chat=False) == plain  # no BOS where the tokenizer adds none


def test_plain_prompts_keep_the_pretraining_split_of_a_sentencepiece_tokenizer():
    """BOS as an id: the text after a literal "<s>" would lose its word-start marker."""
    from s2d_pipeline.generation import encode_prompt

    tok = sentencepiece_tokenizer()
    assert encode_prompt(tok, "What is 2", chat=False) == tok("What is 2")["input_ids"] == [1, 4, 6, 7]
    assert tok(BOS + "What is 2", add_special_tokens=False)["input_ids"] == [1, 5, 6, 7]


@pytest.mark.parametrize("template, bos_count", [(TEMPLATE_WITH_BOS, 1), (TEMPLATE_WITHOUT_BOS, 0)])
def test_chat_renderings_get_their_templates_special_tokens_only(template, bos_count):
    from s2d_pipeline.generation import encode_prompt

    tok = char_tokenizer(bos=True, eos_too=True, template=template)
    ids = encode_prompt(tok, rendered(tok, "1+2="), chat=True)
    assert ids == chat_ids(tok, "1+2=")
    assert ids.count(tok.bos_token_id) == bos_count and ids[-1] != tok.eos_token_id


# ---- TRL's trainers and vLLM --------------------------------------------------------------------------


@pytest.mark.parametrize("trainer", ["GRPOTrainer", "DistillationTrainer"])
def test_trl_trainers_tokenize_prompts_by_the_rule(trainer):
    """The s2d trainer classes' `_tokenize_prompts`: text by the rule, conversations by TRL's own chat
    path (the rule for them). The trainer object holds only what `_tokenize_prompts` reads."""
    import trl

    from s2d_pipeline.generation import encode_prompt
    from s2d_pipeline.training import with_prompt_rule

    tok = char_tokenizer(bos=True, eos_too=True, template=TEMPLATE_WITH_BOS)
    cls = with_prompt_rule(getattr(trl, trainer))
    obj = cls.__new__(cls)
    obj.__dict__.update(
        processing_class=tok,
        _is_vlm=False,
        tools=None,
        chat_template=None,
        chat_template_kwargs={},
        environment_factories=None,
    )
    texts = ["1+2=", "3+4="]
    ids, images, fields = obj._tokenize_prompts(texts)
    assert (
        ids
        == [encode_prompt(tok, t, chat=False) for t in texts]
        == [[tok.bos_token_id, *tok(t, add_special_tokens=False)["input_ids"]] for t in texts]
    )
    assert images is None and fields == {}
    ids, _, _ = obj._tokenize_prompts([[{"role": "user", "content": t}] for t in texts])
    assert ids == [encode_prompt(tok, rendered(tok, t), chat=True) for t in texts]
    assert all(row.count(tok.bos_token_id) == 1 for row in ids)


def test_vllm_gets_token_ids_by_the_rule(monkeypatch, micro_cfg, tmp_path):
    """`generate_vllm` hands vLLM TokensPrompts (no text it would tokenize with a second BOS); a
    stand-in `vllm` module records what the engine was given."""
    from transformers import GenerationConfig

    from s2d_pipeline.generation import encode_prompt, generate_vllm

    given = []

    class LLM:
        def __init__(self, **kwargs):
            pass

        def generate(self, prompts, params):
            given.extend(prompts)
            out = types.SimpleNamespace(token_ids=[5, 1], text="")
            return [types.SimpleNamespace(outputs=[out]) for _ in prompts]

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, SamplingParams=lambda **kw: kw))
    tok = char_tokenizer(bos=True, template=TEMPLATE_WITH_BOS)
    GenerationConfig(eos_token_id=tok.eos_token_id).save_pretrained(tmp_path)  # the engine's stop ids
    for chat in (True, False):
        cfg = micro_cfg.model_copy(update={"models": micro_cfg.models.model_copy(update={"chat_template": chat})})
        prompts = [rendered(tok, "1+2=") if chat else "1+2="]
        given.clear()
        generate_vllm(tmp_path, tok, prompts, cfg, max_new_tokens=2, temperature=1.0, num_return_sequences=1, seed=0)
        assert given == [{"prompt_token_ids": encode_prompt(tok, prompts[0], chat=chat)}]
        assert given[0]["prompt_token_ids"].count(tok.bos_token_id) == 1


# ---- every stage, on real tiny models -------------------------------------------------------------------

CASES = {
    # a Llama-like base tokenizer (BOS, and an EOS TRL's default tokenization would append): plain prompts
    "bos-plain": dict(tokenizer=dict(bos=True, eos_too=True), chat=False, bos_count=1),
    # the same with a chat template that writes the BOS itself
    "bos-chat": dict(tokenizer=dict(bos=True, eos_too=True, template=TEMPLATE_WITH_BOS), chat=True, bos_count=1),
    # a chat template without BOS on that tokenizer: the template's tokens only, as TRL's chat path
    "bos-chat-template-without-bos": dict(
        tokenizer=dict(bos=True, eos_too=True, template=TEMPLATE_WITHOUT_BOS), chat=True, bos_count=0
    ),
    # the embedded default's char tokenizer: no BOS anywhere
    "no-bos-plain": dict(tokenizer=dict(), chat=False, bos_count=0),
}

# Every place a stage conditions a model on a prompt, by the function the stage calls there.
FEEDERS = ("C1 gate", "GRPO trainer", "rollouts", "warmup", "distillation trainer", "evaluate", "C2")

PIPELINE_SETTINGS = {
    "arms": ["s2d"],
    "teacher_rl": {"steps": 1, "prompts_per_step": 2, "num_generations": 2, "warmup_steps": 0},
    "rollouts": {"samples_per_prompt": 1, "max_prompts": 8, "batch_size": 8},
    "warmup": {"steps": 1, "batch_size": 4, "warmup_steps": 0},
    "opd": {"steps": 1, "batch_size": 2, "warmup_steps": 0},
    "evaluate": {"k": 1, "kl_prompts": 4, "batch_size": 8, "max_problems": 4},
    "gates": {"c1": {"override": True, "problems": 2, "k": 1}},
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_stage_and_trainer_feeds_the_same_prompt_ids(case, project, monkeypatch):
    """Runs prepare → evaluate on local tiny models with the case's tokenizer and records, at the
    backbone's forward, every sequence each stage conditions on (a generation's prompt, or a
    prompt + completion scored or trained on). A generation's prompt equals the problem's expected
    ids; every other sequence starts with them: one BOS (or none) in every stage and trainer."""
    import importlib

    import torch
    from transformers.models.qwen2 import modeling_qwen2

    from s2d_pipeline.config import deep_merge, load_config
    from s2d_pipeline.data import load_split
    from s2d_pipeline.models import build_tiny_model, load_tokenizer, save_model
    from s2d_pipeline.prompts import messages
    from s2d_pipeline.stages import evaluate, teacher_rl
    from s2d_pipeline.tasks import get_task

    spec = CASES[case]
    tok = char_tokenizer(**spec["tokenizer"])
    models = {"source": "path", "chat_template": spec["chat"]}
    for role in ("teacher", "student"):
        models[role] = {"path": str(project / "base" / role)}
    overrides = deep_merge(deep_merge(MICRO, PIPELINE_SETTINGS), {"models": models})
    cfg = load_config(project / "params.yaml", overrides, root=project)
    for role in ("teacher", "student"):
        model = build_tiny_model(getattr(cfg.models, role), tok, cfg.models.max_seq_len, 0)
        save_model(model, tok, project / "base" / role)

    # Where each sequence came from: the innermost feeder running when the backbone saw it.
    feeder: list[str] = []
    fed: dict[str, list[tuple[bool, list[int]]]] = {}

    def tagged(name, fn):
        def run(*args, **kwargs):
            feeder.append(name)
            try:
                return fn(*args, **kwargs)
            finally:
                feeder.pop()

        return run

    real_forward = modeling_qwen2.Qwen2Model.forward

    def forward(self, *args, **kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        cache = kwargs.get("past_key_values")
        if feeder and ids is not None and (cache is None or cache.get_seq_length() == 0):
            mask = kwargs.get("attention_mask")
            mask = torch.ones_like(ids) if mask is None else mask
            for row, keep in zip(ids.tolist(), mask.tolist(), strict=True):
                fed.setdefault(feeder[-1], []).append(
                    (cache is not None, [t for t, k in zip(row, keep, strict=True) if k])
                )
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(modeling_qwen2.Qwen2Model, "forward", forward)
    monkeypatch.setattr(teacher_rl, "score", tagged("C1 gate", teacher_rl.score))
    monkeypatch.setattr(teacher_rl, "train_grpo", tagged("GRPO trainer", teacher_rl.train_grpo))
    monkeypatch.setattr(evaluate, "score_by_problem", tagged("evaluate", evaluate.score_by_problem))
    monkeypatch.setattr(evaluate, "student_teacher_kl", tagged("C2", evaluate.student_teacher_kl))
    stage_feeders = {"rollouts": "rollouts", "warmup": "warmup", "opd": "distillation trainer"}
    for name in ("prepare", "validate", "allocate", "teacher_rl", "rollouts", "warmup", "opd", "evaluate"):
        stage = importlib.import_module(f"s2d_pipeline.stages.{name}")
        run = tagged(stage_feeders[name], stage.run) if name in stage_feeders else stage.run
        run(cfg)

    task = get_task(cfg.task)
    tok = load_tokenizer(project / "base" / "student", cfg)  # as the stages load it
    texts = {task.format_prompt(r["prompt"]) for s in ("labels", "prompts", "eval") for r in load_split(cfg, task, s)}
    if spec["chat"]:
        assert messages(cfg, task, "1+2=") == [{"role": "user", "content": "1+2="}]  # what chat_ids renders
        expected = {tuple(chat_ids(tok, t)) for t in texts}
    else:
        bos = [tok.bos_token_id] if spec["tokenizer"].get("bos") else []
        expected = {tuple(bos + tok(t, add_special_tokens=False)["input_ids"]) for t in texts}
    assert {e.count(tok.bos_token_id) if tok.bos_token_id is not None else 0 for e in expected} == {spec["bos_count"]}
    lengths = sorted({len(e) for e in expected})

    assert set(FEEDERS) <= set(fed), f"no sequence recorded for {set(FEEDERS) - set(fed)}"
    for name, rows in fed.items():
        for prefill, row in rows:
            if prefill:  # a generation's prompt, as the model got it
                assert tuple(row) in expected, f"{name} generated from {row}"
            else:
                assert any(tuple(row[:n]) in expected for n in lengths), f"{name} fed {row}"
