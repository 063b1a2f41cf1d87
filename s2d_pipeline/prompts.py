"""What a model is conditioned on for a problem, rendered and tokenized one way for every stage.

With `models.chat_template: true` (instruct models) a problem becomes a conversation - an optional
`models.system_prompt` and the task's formatted problem as the user turn - rendered by the
tokenizer's chat template with a generation prompt and `models.chat_template_kwargs` (e.g. Qwen3's
`enable_thinking`). TRL's GRPO and distillation trainers get the conversation and render it with the
same template and arguments (`trainer_prompt`); sampling, scoring, warmup and evaluation get the
rendered text (`render`), so every stage conditions on the same tokens. Without a chat template
(base models, the embedded tiny models) the prompt is the task's formatted text as it is.

The tokens, one rule (`generation.encode_prompt`), for every stage, for TRL's trainers (their text
prompts: `training.with_prompt_rule`) and for vLLM (token ids, not text: `generation.vllm_prompts`):
- a chat-rendered prompt is its rendering's ids with nothing added: it already carries its template's
  special tokens (exactly one BOS where the template writes one), as TRL's chat path tokenizes it;
- a plain-text prompt starts with BOS exactly when the tokenizer's default encoding adds one (the
  model was pretrained so: Llama, Mistral, Gemma), never twice, and gets nothing appended (no EOS).
The BOS is added as an id, not as text: a SentencePiece tokenizer encodes text after a literal
"<s>" without the word-start marker it gives the start of a text.
"""

from __future__ import annotations

from typing import Any

from s2d_pipeline.errors import ConfigError


def messages(cfg, task, problem: str) -> list[dict]:
    system = [{"role": "system", "content": cfg.models.system_prompt}] if cfg.models.system_prompt else []
    return [*system, {"role": "user", "content": task.format_prompt(problem)}]


def trainer_prompt(cfg, task, problem: str) -> Any:
    """The `prompt` column of a TRL dataset: a conversation for chat models, else plain text."""
    return messages(cfg, task, problem) if cfg.models.chat_template else task.format_prompt(problem)


def require_chat_template(cfg, tokenizer) -> None:
    """Refuse `models.chat_template: true` for a tokenizer that has none, before a stage renders or
    trains on anything (TRL's trainers would fail later with their own traceback)."""
    if cfg.models.chat_template and not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            "key 'models.chat_template' is true but the tokenizer has no chat template "
            f"({getattr(tokenizer, 'name_or_path', 'tokenizer')}); set it to false for a base model"
        )


def render(cfg, task, tokenizer, problem: str) -> str:
    """The text a model is conditioned on, tokenized by `generation.encode_prompt` (the rule above)."""
    if not cfg.models.chat_template:
        return task.format_prompt(problem)
    require_chat_template(cfg, tokenizer)
    return tokenizer.apply_chat_template(
        messages(cfg, task, problem), tokenize=False, add_generation_prompt=True, **cfg.models.chat_template_kwargs
    )


def completion_text(completion: Any) -> str:
    """A completion as text: TRL passes conversational completions as [{"role": "assistant", ...}]."""
    if isinstance(completion, list):
        return "".join(str(m.get("content", "")) for m in completion)
    return completion
