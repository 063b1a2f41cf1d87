"""Scoring, stopping and the warmup's tokens at real-model scale, on tiny models.

- Per-token scoring (`generation.score_completion_ids`) is chunked over positions: it equals the
  full-logits form, and at a 152k vocabulary its peak memory stays far below what the full logits
  would need (measured in a child process by ru_maxrss).
- The forward-KL warmup's chunked loss equals GKD's full-logits loss, gradients included.
- Generation stops on every end id of the model's generation_config and the tokenizer.
- Sampled tokens are drawn by the inverse CDF (`generation.inverse_cdf_sampling`; torch's CPU multinomial
  draws a variate per vocabulary entry): from the model's own distribution, never a zero-weight token.
- The warmup trains on the token ids the teacher sampled, not a re-encoding of their text; rollout
  files without ids are refused.
- A teacher/student pair with different end ids or chat templates is refused before training.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tests.helpers import REPO, sharp_tiny_model


def _tiny_pair(vocab: int = 97):
    """A student and a teacher of different widths sharing a vocabulary, weights drawn large enough
    that their distributions differ clearly."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    def build(hidden, layers, seed):
        torch.manual_seed(seed)
        config = Qwen2Config(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=64,
            tie_word_embeddings=True,
        )
        model = Qwen2ForCausalLM(config)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
        return model.eval()

    return build(16, 1, 1), build(32, 2, 2)


def _full_logits_stats(student, teacher, prompt_ids, completion_ids, pad):
    """The reference: one full-vocabulary log_softmax per whole sequence, unpadded, in float64."""
    import torch

    logprobs, kl, n = [], 0.0, 0
    with torch.no_grad():
        for p, c in zip(prompt_ids, completion_ids, strict=True):
            ids = torch.tensor([p + c])
            t = torch.log_softmax(teacher(input_ids=ids).logits[0].double(), -1)
            s = torch.log_softmax(student(input_ids=ids).logits[0].double(), -1)
            positions = range(len(p) - 1, len(p) + len(c) - 1)
            logprobs.append(float(sum(t[i, (p + c)[i + 1]] for i in positions)))
            kl += float(sum((s[i].exp() * (s[i] - t[i])).sum() for i in positions))
            n += len(c)
    return logprobs, kl / n, n


@pytest.mark.parametrize("chunk_bytes", [3 * 4 * 97, 10**9])  # 3 positions a chunk; one chunk for all
def test_chunked_scoring_equals_the_full_logits_form(chunk_bytes):
    from s2d_pipeline.generation import score_completion_ids

    student, teacher = _tiny_pair()
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13, 14]]
    completions = [[20, 21, 22, 23], [30], [40, 41]]
    ref_logprobs, ref_kl, ref_n = _full_logits_stats(student, teacher, prompts, completions, pad=0)
    for batch_size in (256, 2):
        got = score_completion_ids(
            student, teacher, prompts, completions, pad_token_id=0, batch_size=batch_size, chunk_bytes=chunk_bytes
        )
        assert got["teacher_logprob"] == pytest.approx(ref_logprobs, abs=1e-4)
        assert got["kl"] == pytest.approx(ref_kl, abs=1e-5) and got["tokens"] == ref_n
        alone = score_completion_ids(None, teacher, prompts, completions, pad_token_id=0, chunk_bytes=chunk_bytes)
        assert alone["teacher_logprob"] == pytest.approx(ref_logprobs, abs=1e-4) and alone["tokens"] == 0


# Runs in a child so that ru_maxrss (a high-water mark) measures this scoring alone. Batch 2 x
# (64 + 512) tokens at Qwen's 151,936 vocabulary: one float32 log_softmax of the whole batch is
# 700 MB, and the full-logits form holds several (3.1 GB at 256 and 11.9 GB at 1,024 completion
# tokens measured, bench/scoring_memory.py).
MEMORY_CHILD = textwrap.dedent(
    """
    import json, resource, sys
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from s2d_pipeline.generation import score_completion_ids

    torch.set_num_threads(2)
    def build(hidden, seed):
        torch.manual_seed(seed)
        return Qwen2ForCausalLM(Qwen2Config(
            vocab_size=151936, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
            num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048,
            tie_word_embeddings=True)).eval()
    student, teacher = build(16, 1), build(32, 2)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 151936, (64,), generator=g).tolist() for _ in range(2)]
    completions = [torch.randint(3, 151936, (512,), generator=g).tolist() for _ in range(2)]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    got = score_completion_ids(student, teacher, prompts, completions, pad_token_id=0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    # The reference, after the measurement: the full model forward (its own LM head), one sequence
    # and a block of 256 positions at a time (logits_to_keep).
    ref_logprobs, kl, n = [], 0.0, 0
    with torch.no_grad():
        for p, c in zip(prompts, completions):
            ids = torch.tensor([p + c])
            positions = list(range(len(p) - 1, len(p) + len(c) - 1))
            total = 0.0
            for a in range(0, len(positions), 256):
                keep = torch.tensor(positions[a:a + 256])
                t = torch.log_softmax(teacher(input_ids=ids, logits_to_keep=keep).logits[0], -1)
                s = torch.log_softmax(student(input_ids=ids, logits_to_keep=keep).logits[0], -1)
                targets = ids[0, keep + 1]
                total += float(t.gather(-1, targets[:, None]).sum())
                kl += float((s.exp() * (s - t)).sum())
                n += len(keep)
            ref_logprobs.append(total)
    print(json.dumps({"peak_kib": peak, "got": got, "ref_logprobs": ref_logprobs, "ref_kl": kl / n, "ref_n": n}))
    """
)


def test_scoring_at_a_152k_vocabulary_is_right_in_bounded_memory():
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_CHILD], cwd=REPO, capture_output=True, text=True, check=True, timeout=300
    ).stdout
    r = json.loads(out.strip().splitlines()[-1])
    assert r["got"]["tokens"] == r["ref_n"] == 1024
    assert r["got"]["teacher_logprob"] == pytest.approx(r["ref_logprobs"], rel=1e-5)
    assert r["got"]["kl"] == pytest.approx(r["ref_kl"], rel=1e-4)
    # One float32 log_softmax of the whole batch alone would be 700 MB (2 x 576 x 151,936 x 4 B).
    assert r["peak_kib"] / 1024 < 600, f"scoring raised peak RSS by {r['peak_kib'] / 1024:.0f} MiB"


def test_chunked_forward_kl_equals_gkd_full_logits_loss_and_gradients(tmp_path):
    import torch
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    from s2d_pipeline.training import chunked_forward_kl_trainer, rows_dataset

    student, teacher = _tiny_pair()
    student.train()
    # Right-padded batch with masked prompt positions, as PromptCompletionCollator builds it.
    input_ids = torch.tensor([[5, 6, 7, 20, 21, 22], [8, 9, 30, 31, 0, 0]])
    attention = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    labels = torch.tensor([[-100, -100, -100, 20, 21, 22], [-100, -100, 30, 31, -100, -100]])
    batch = {"input_ids": input_ids, "attention_mask": attention, "labels": labels}

    args = GKDConfig(
        output_dir=str(tmp_path),
        lmbda=0.0,
        beta=0.0,
        seq_kd=False,
        temperature=1.0,
        use_cpu=True,
        bf16=False,
        activation_checkpointing=False,  # as s2d sets it (TRL's default, under its old name, warns)
        report_to="none",
        max_steps=1,
        per_device_train_batch_size=2,
    )
    trainer = chunked_forward_kl_trainer(
        model=student,
        teacher_model=teacher,
        args=args,
        data_collator=lambda rows: batch,
        train_dataset=rows_dataset([{"x": 0}, {"x": 1}]),
        processing_class=_bpe_tokenizer(),  # only its pad id is read
    )
    for num_items in (None, 7):
        student.zero_grad()
        loss = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=num_items)
        loss.backward()
        chunked_grads = [p.grad.clone() for p in student.parameters()]

        student.zero_grad()
        s_logits = student(input_ids=input_ids, attention_mask=attention).logits[:, :-1]
        with torch.no_grad():
            t_logits = teacher(input_ids=input_ids, attention_mask=attention).logits[:, :-1]
        ref = GKDTrainer.generalized_jsd_loss(
            s_logits, t_logits, labels[:, 1:], beta=0.0, num_items_in_batch=num_items
        )
        ref.backward()
        assert ref.item() > 1e-3  # the models differ: a loss of zero would prove nothing
        assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
        for got, want in zip(chunked_grads, (p.grad for p in student.parameters()), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


PROMPTS = ["3+4=", "12+9=", "999+10=", "5+5=", "0+0="]


def test_generation_stops_on_every_end_id_of_the_generation_config(tmp_path):
    from s2d_pipeline.generation import generate_completions, stop_token_ids
    from s2d_pipeline.models import save_model

    model, tok = sharp_tiny_model()
    model.generation_config.eos_token_id = tok.eos_token_id
    plain = generate_completions(model, tok, PROMPTS, max_new_tokens=6)
    # A second end id: a token some completion samples after its first position.
    second = next(c.token_ids[1] for [c] in plain if len(c.token_ids) > 2 and c.token_ids[1] != tok.eos_token_id)
    model.generation_config.eos_token_id = [tok.eos_token_id, second]
    assert stop_token_ids(model, tok) == [tok.eos_token_id, second]
    stopped = generate_completions(model, tok, PROMPTS, max_new_tokens=6)
    hit = 0
    for [before], [after] in zip(plain, stopped, strict=True):
        ends = [i for i, t in enumerate(before.token_ids) if t in (tok.eos_token_id, second)]
        if not ends:
            assert after == before
            continue
        hit += after.token_ids[-1] == second
        assert after.token_ids == before.token_ids[: ends[0] + 1] and after.finished
        assert after.text == tok.decode(after.token_ids[:-1], skip_special_tokens=True)
    assert hit >= 1
    # The list is read back from a saved model's generation_config.json as well.
    save_model(model, tok, tmp_path)
    assert stop_token_ids(tmp_path, tok) == [tok.eos_token_id, second]


def _bpe_tokenizer():
    """A BPE tokenizer where the ids [a, b] decode to "ab", which encodes to the merged id [ab]."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, "a": 3, "b": 4, "ab": 5, "=": 6, "c": 7}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[("a", "b")], unk_token="<unk>"))
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>", padding_side="left"
    )


def _save_tiny(tok, directory, seed):
    from s2d_pipeline.config import ModelSpec
    from s2d_pipeline.models import build_tiny_model, save_model

    spec = ModelSpec(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    save_model(build_tiny_model(spec, tok, max_seq_len=32, seed=seed), tok, directory)
    return directory


def test_warmup_trains_on_the_ids_the_teacher_sampled(micro_cfg, tmp_path, monkeypatch):
    from s2d_pipeline import training
    from s2d_pipeline.io import write_jsonl
    from s2d_pipeline.stages.warmup import read_rollouts

    tok = _bpe_tokenizer()
    sampled = [3, 4, 1]  # "a", "b", end: non-canonical, the text "ab" encodes as [5]
    assert tok.decode(sampled, skip_special_tokens=True) == "ab" and tok("ab")["input_ids"] == [5]
    path = tmp_path / "rollouts.jsonl"
    row = {"prompt_id": "p0", "prompt": "c=", "completion": "ab", "completion_ids": sampled, "finished": True}
    write_jsonl(path, [row])
    teacher, student = _save_tiny(tok, tmp_path / "teacher", 1), _save_tiny(tok, tmp_path / "student", 2)

    batches = []
    real_call = training.PromptCompletionCollator.__call__

    def spy(self, examples):
        out = real_call(self, examples)
        batches.append(out)
        return out

    monkeypatch.setattr(training.PromptCompletionCollator, "__call__", spy)
    warmup = micro_cfg.warmup.model_copy(update={"batch_size": 2, "warmup_steps": 0})
    training.train_forward_kl(micro_cfg, warmup, student, teacher, read_rollouts(path), 1, "test/warmup-ids")
    assert batches
    prompt = tok("c=", add_special_tokens=False)["input_ids"]
    for b in batches:
        for ids, labels in zip(b["input_ids"].tolist(), b["labels"].tolist(), strict=True):
            assert ids == prompt + sampled
            assert labels == [-100] * len(prompt) + sampled


def test_rollout_files_without_ids_are_refused(tmp_path):
    from s2d_pipeline.errors import DataError
    from s2d_pipeline.io import write_jsonl
    from s2d_pipeline.stages.warmup import read_rollouts

    path = tmp_path / "old.jsonl"
    good = {"prompt": "1+1=", "completion": "2", "completion_ids": [5, 1], "finished": True}
    write_jsonl(path, [good, {"prompt": "1+2=", "completion": "3", "finished": True}])
    with pytest.raises(DataError, match=r"old\.jsonl:2: rule 'completion_ids.*missing.*rerun `s2d rollouts`"):
        read_rollouts(path)
    write_jsonl(path, [{**good, "completion_ids": "5 1"}])
    with pytest.raises(DataError, match=r"old\.jsonl:1: .*str"):
        read_rollouts(path)


def test_a_pair_with_different_end_ids_or_chat_templates_is_refused(micro_cfg, tmp_path):
    from s2d_pipeline.config import ModelSpec
    from s2d_pipeline.errors import ConfigError
    from s2d_pipeline.models import build_char_tokenizer, build_tiny_model, check_vocab_compatible, save_model
    from s2d_pipeline.tasks.arithmetic import VOCAB

    tok = build_char_tokenizer(VOCAB)
    spec = ModelSpec(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)

    def save(name, end_ids, template=None):
        model = build_tiny_model(spec, tok, max_seq_len=32, seed=0)
        model.generation_config.eos_token_id = end_ids
        tok.chat_template = template
        save_model(model, tok, tmp_path / name)
        return tmp_path / name

    eos, other = tok.eos_token_id, tok.convert_tokens_to_ids("=")
    teacher = save("teacher", [eos, other], "{{ messages[0]['content'] }}<eos>")
    check_vocab_compatible(teacher, save("same", [other, eos], "{{ messages[0]['content'] }}<eos>"), micro_cfg)

    student = save("student", eos, "{{ messages[0]['content'] }}<eos>")
    with pytest.raises(ConfigError, match=r"teacher \(.*teacher\) and student \(.*student\) end a completion"):
        check_vocab_compatible(teacher, student, micro_cfg)

    chat_cfg = micro_cfg.model_copy(update={"models": micro_cfg.models.model_copy(update={"chat_template": True})})
    other_template = save("templated", [eos, other], "User: {{ messages[0]['content'] }}<eos>")
    check_vocab_compatible(teacher, other_template, micro_cfg)  # templates unused without chat_template
    with pytest.raises(ConfigError, match=r"teacher \(.*teacher\) and student \(.*templated\) chat templates differ"):
        check_vocab_compatible(teacher, other_template, chat_cfg)


def test_evaluate_renders_and_stops_each_teacher_with_its_own_tokenizer(pipeline, tmp_path, monkeypatch):
    """Which tokenizer every scored model was given: a teacher its own directory's (its template and end
    ids), a student the student's. Run on a copy of the micro pipeline's project."""
    import shutil

    from s2d_pipeline.layout import base_model_dir, rl_teacher_dir
    from s2d_pipeline.stages import evaluate

    cfg0, _, _ = pipeline
    shutil.copytree(cfg0.root, tmp_path / "copy")
    cfg = cfg0.model_copy(update={"root": tmp_path / "copy"})
    calls = []
    real_score = evaluate.score_by_problem

    def spy(task, model, tokenizer, rows, cfg, *args, **kwargs):
        calls.append((model.name_or_path, tokenizer.name_or_path))
        return real_score(task, model, tokenizer, rows, cfg, *args, **kwargs)

    monkeypatch.setattr(evaluate, "score_by_problem", spy)
    evaluate.run(cfg)
    teacher_dirs = {str(base_model_dir(cfg, "teacher"))} | {str(rl_teacher_dir(cfg, k)) for k in ("s2d", "s2d_stage3")}
    teachers = [(m, t) for m, t in calls if m in teacher_dirs]
    assert {m for m, _ in teachers} == teacher_dirs
    assert all(m == t for m, t in teachers)
    students = [t for m, t in calls if m not in teacher_dirs]
    assert students and set(students) == {str(base_model_dir(cfg, "student"))}


def test_one_draw_per_row_follows_the_weights_and_never_draws_a_zero():
    import torch

    from s2d_pipeline.generation import draw_one_per_row

    weights = torch.tensor([[0.1, 0.0, 0.6, 0.3, 0.0], [0.0, 0.0, 0.0, 0.0, 2.5], [3.0, 1.0, 0.0, 0.0, 0.0]])
    torch.manual_seed(0)
    draws = torch.cat([draw_one_per_row(weights) for _ in range(4000)], dim=1)
    assert draws.shape == (3, 4000) and draws.dtype == torch.long
    for row, w in zip(draws, weights, strict=True):
        freq = torch.bincount(row, minlength=5).double() / len(row)
        expected = w.double() / w.sum()
        assert (freq[expected == 0] == 0).all()
        assert (freq - expected).abs().max() < 0.03  # 4 standard errors at 4,000 draws


def test_generate_samples_by_inverse_cdf_from_the_models_own_distribution(monkeypatch):
    """The first sampled token of 20,000 completions against the model's softmax (a model whose next-token
    distribution is spread over the vocabulary); each draw went through `draw_one_per_row`."""
    import torch

    from s2d_pipeline import generation
    from s2d_pipeline.config import ModelSpec
    from s2d_pipeline.models import build_char_tokenizer, build_tiny_model
    from s2d_pipeline.tasks.arithmetic import VOCAB

    tok = build_char_tokenizer(VOCAB)
    model = build_tiny_model(
        ModelSpec(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32), tok, 32, seed=0
    )
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
        ids = torch.tensor([generation.encode_prompt(tok, "12+9=", chat=False)])
        expected = torch.softmax(model(input_ids=ids).logits[0, -1].double(), -1)
    assert expected.max() < 0.5 and (expected > 0.01).sum() >= 5  # spread: a shifted draw would show
    real_draw, calls, original = generation.draw_one_per_row, [], torch.multinomial
    monkeypatch.setattr(generation, "draw_one_per_row", lambda probs: (calls.append(1), real_draw(probs))[1])
    [group] = generation.generate_completions(
        model, tok, ["12+9="], max_new_tokens=1, greedy=False, num_return_sequences=20_000, seed=0
    )
    first = torch.tensor([c.token_ids[0] for c in group])
    freq = torch.bincount(first, minlength=len(expected)).double() / len(first)
    assert calls and torch.multinomial is original  # used inside, restored after
    assert 0.5 * (freq - expected).abs().sum() < 0.03  # total variation; ~0.01 expected at 20,000 draws


def test_outside_one_draw_per_row_torch_multinomial_decides_and_raises():
    import torch

    from s2d_pipeline.generation import inverse_cdf_sampling

    original = torch.multinomial
    with inverse_cdf_sampling():
        with inverse_cdf_sampling():
            assert torch.multinomial is not original
        assert torch.multinomial is not original  # the outer caller is still inside
        two = torch.multinomial(torch.tensor([[1.0, 1.0, 1.0]]), 2)  # two draws without replacement: torch's
        assert two.shape == (1, 2) and two[0, 0] != two[0, 1]
        with pytest.raises(RuntimeError, match="probability tensor"):
            torch.multinomial(torch.tensor([[0.5, -0.1, 0.6]]), 1)
        with pytest.raises(ValueError):
            with inverse_cdf_sampling():
                raise ValueError
        assert torch.multinomial is not original
    assert torch.multinomial is original
