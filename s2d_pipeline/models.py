"""Tiny models and tokenizer for the embedded default, and loading of any model by path.

The embedded default builds a Qwen2-architecture teacher and student from configs (teacher clearly
larger) sharing one character-level tokenizer; both are saved as safetensors + tokenizer so every
later stage loads them with `AutoModelForCausalLM.from_pretrained(path)`, exactly as it would a real
checkpoint. torch/transformers are imported inside functions to keep the CLI fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from s2d_pipeline.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

    from s2d_pipeline.config import Config, ModelSpec

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"


def build_char_tokenizer(symbols: list[str]) -> PreTrainedTokenizerFast:
    """A character-level tokenizer over `symbols` (one token per character), built offline."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([PAD, EOS, UNK, *symbols])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD, eos_token=EOS, unk_token=UNK, padding_side="left"
    )
    return tok


def build_tiny_model(spec: ModelSpec, tokenizer, max_seq_len: int, seed: int) -> PreTrainedModel:
    """A randomly initialised Qwen2-style causal LM of the given size."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        intermediate_size=spec.intermediate_size,
        max_position_embeddings=max_seq_len,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        use_cache=True,
    )
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def torch_dtype(cfg: Config):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "auto": "auto"}[cfg.models.dtype]


def load_model(path: str | Path, cfg: Config, *, for_inference: bool = False):
    """Load a causal LM from a local directory (safetensors only, no remote code unless enabled).

    Trainers place (or shard) the models they are given, so training callers get the model on the
    CPU; `for_inference` moves it to the run's device for the sampling and scoring stages.
    """
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(path),
        dtype=torch_dtype(cfg),
        trust_remote_code=cfg.models.trust_remote_code,
        use_safetensors=True,
        local_files_only=True,
    )
    if for_inference:
        from s2d_pipeline.runtime import device

        model.to(device(cfg))
    return model


def load_tokenizer(path: str | Path, cfg: Config):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(
        str(path), trust_remote_code=cfg.models.trust_remote_code, local_files_only=True
    )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def save_model(model, tokenizer, directory: Path) -> None:
    model.save_pretrained(str(directory), safe_serialization=True)
    tokenizer.save_pretrained(str(directory))


def check_vocab_compatible(teacher_dir: Path, student_dir: Path, cfg: Config) -> None:
    """Distillation compares full next-token distributions: teacher and student must share a
    vocabulary. Checked from the tokenizers and configs alone, before any training starts."""
    t_tok, s_tok = load_tokenizer(teacher_dir, cfg), load_tokenizer(student_dir, cfg)
    if t_tok.get_vocab() != s_tok.get_vocab():
        t, s = t_tok.get_vocab(), s_tok.get_vocab()
        only_t = sorted(set(t) - set(s))[:5]
        only_s = sorted(set(s) - set(t))[:5]
        differ = sorted(k for k in set(t) & set(s) if t[k] != s[k])[:5]
        raise ConfigError(
            f"teacher ({teacher_dir}) and student ({student_dir}) tokenizers differ "
            f"({len(t)} vs {len(s)} tokens; only in teacher: {only_t}; only in student: {only_s}; "
            f"different ids: {differ}). Distillation needs one shared vocabulary: pick a teacher "
            "and student from the same model family."
        )
    from transformers import AutoConfig

    t_cfg = AutoConfig.from_pretrained(str(teacher_dir), trust_remote_code=cfg.models.trust_remote_code)
    s_cfg = AutoConfig.from_pretrained(str(student_dir), trust_remote_code=cfg.models.trust_remote_code)
    if t_cfg.vocab_size != s_cfg.vocab_size:
        raise ConfigError(
            f"teacher vocab_size {t_cfg.vocab_size} != student vocab_size {s_cfg.vocab_size} "
            f"({teacher_dir} vs {student_dir}); TRL's distillation trainers require equal sizes"
        )
