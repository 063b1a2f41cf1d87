"""`generation.completion_token_stats` against a by-hand computation: mean per-token
KL(student || teacher) over completion tokens only, and the teacher's summed log-probability of
each completion. Prompts and completions differ in length, so the batched, left-padded version
must line up with one unpadded forward pass per sequence."""

from __future__ import annotations

import pytest

from s2d_pipeline.tasks.arithmetic import VOCAB

TOL = 1e-5
PROMPTS = ["3+4=", "12+9=", "999+10="]
COMPLETIONS = ["70", "1201", "9"]


@pytest.fixture(scope="module")
def models():
    """Two different tiny Qwen2 models sharing one character tokenizer. Weights are redrawn at a
    larger scale than the default init so the two next-token distributions differ clearly."""
    import torch

    from s2d_pipeline.config import ModelSpec
    from s2d_pipeline.models import build_char_tokenizer, build_tiny_model

    tok = build_char_tokenizer(VOCAB)

    def build(spec, seed):
        model = build_tiny_model(spec, tok, max_seq_len=32, seed=seed)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
        return model.eval()

    student = build(ModelSpec(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32), seed=1)
    teacher = build(ModelSpec(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64), seed=2)
    return student, teacher, tok


def _by_hand(student, teacher, tok, *, shift: int = 0, reverse: bool = False) -> tuple[float, list[float]]:
    """(mean KL, teacher log-probs) from one unpadded pass per sequence. The logits at position t
    predict token t + 1, so completion tokens p..p+c-1 are predicted at positions p-1..p+c-2.
    `shift` moves that window (a wrong mask); `reverse` computes KL(teacher || student)."""
    import torch

    kl_total, n_tokens, logprobs = 0.0, 0, []
    with torch.no_grad():
        for prompt, completion in zip(PROMPTS, COMPLETIONS, strict=True):
            p = tok(prompt, add_special_tokens=False)["input_ids"]
            c = tok(completion, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([p + c])
            s = torch.log_softmax(student(input_ids=ids).logits[0].double(), -1)
            t = torch.log_softmax(teacher(input_ids=ids).logits[0].double(), -1)
            positions = [len(p) - 1 + j + shift for j in range(len(c))]
            targets = [(p + c)[pos + 1] if pos + 1 < len(p + c) else 0 for pos in positions]
            logprobs.append(float(sum(t[pos, tgt] for pos, tgt in zip(positions, targets, strict=True))))
            a, b = (t, s) if reverse else (s, t)
            for pos in positions:
                kl_total += float((a[pos].exp() * (a[pos] - b[pos])).sum())
                n_tokens += 1
    return kl_total / n_tokens, logprobs


def test_inputs_differ_in_length():
    assert len({len(p) for p in PROMPTS}) == len(PROMPTS)
    assert len({len(c) for c in COMPLETIONS}) == len(COMPLETIONS)


@pytest.mark.parametrize("batch_size", [256, 2, 1])
def test_matches_by_hand(models, batch_size):
    from s2d_pipeline.generation import completion_token_stats

    student, teacher, tok = models
    kl, logprobs = _by_hand(student, teacher, tok)
    got = completion_token_stats(student, teacher, tok, PROMPTS, COMPLETIONS, batch_size=batch_size)
    assert got["kl"] == pytest.approx(kl, abs=TOL)
    assert got["teacher_logprob"] == pytest.approx(logprobs, abs=TOL)
    assert got["tokens"] == sum(len(c) for c in COMPLETIONS)  # completion tokens only, no prompt or pad


def test_wrong_direction_or_shifted_mask_would_be_caught(models):
    """The by-hand reference is discriminating: the plausible bugs move the numbers well past TOL."""
    student, teacher, tok = models
    kl, logprobs = _by_hand(student, teacher, tok)
    assert kl > 10 * TOL
    reverse_kl, _ = _by_hand(student, teacher, tok, reverse=True)
    assert abs(reverse_kl - kl) > 100 * TOL
    for shift in (-1, 1):
        shifted_kl, shifted_logprobs = _by_hand(student, teacher, tok, shift=shift)
        assert abs(shifted_kl - kl) > 100 * TOL
        assert all(abs(a - b) > 100 * TOL for a, b in zip(shifted_logprobs, logprobs, strict=True))


def test_teacher_only_scoring(models):
    from s2d_pipeline.generation import completion_token_stats

    student, teacher, tok = models
    _, logprobs = _by_hand(student, teacher, tok)
    got = completion_token_stats(None, teacher, tok, PROMPTS, COMPLETIONS)
    assert got["teacher_logprob"] == pytest.approx(logprobs, abs=TOL)
    assert got["kl"] == 0.0 and got["tokens"] == 0
