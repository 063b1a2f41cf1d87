"""Batched sampling and scoring shared by prepare's gate, rollouts and evaluate.

Plain `model.generate` with left padding: on tiny CPU models it is fast enough, and real-model
profiles can switch generation-heavy stages to vLLM through TRL's options. Every generation path
stops on the same ids (`stop_token_ids`), and per-token scoring never holds a whole batch's
full-vocabulary distributions (`score_completion_ids`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from s2d_pipeline.console import progress
from s2d_pipeline.errors import ConfigError
from s2d_pipeline.prompts import render

# One float32 full-vocabulary tensor of a scoring chunk stays under this (at 152k tokens: 220 positions);
# scoring holds at most three at once.
SCORING_CHUNK_BYTES = 128 * 2**20


@dataclass(frozen=True)
class Completion:
    """One sampled completion: `token_ids` are the ids the model sampled, its end token included when
    `finished` (it stopped on one of `stop_token_ids`; otherwise it ran to `max_new_tokens`); `text`
    is their decoding for people and verifiers (special tokens and the end token left out)."""

    text: str
    token_ids: list[int]
    finished: bool


def draw_one_per_row(probs, block: int = 256):
    """One index per row of `probs` (non-negative weights, rows of any sum), drawn with probability
    proportional to its weight by the inverse CDF: one uniform per row, then the block of `block` entries
    and the entry within it whose cumulative weight (in float64) first exceeds it, so never an entry of
    weight zero. Two levels, because a cumulative sum over a whole 49k-150k vocabulary row costs more than
    the rest of the draw. Shaped like `torch.multinomial(probs, 1)`."""
    import torch

    rows, width = probs.shape
    padded = torch.nn.functional.pad(probs, (0, -width % block)) if width % block else probs
    blocks = padded.reshape(rows, -1, block)
    mass = blocks.sum(-1, dtype=torch.float64)
    cdf = mass.cumsum(-1)
    total = cdf[:, -1:]
    u = torch.rand((rows, 1), dtype=torch.float64, device=probs.device) * total
    u = torch.minimum(u, total * (1 - 2**-52))  # a product that rounds up to the total would pick past the end
    k = torch.searchsorted(cdf, u, right=True)
    inner = blocks[torch.arange(rows, device=probs.device), k[:, 0]].to(torch.float64).cumsum(-1)
    # The draw's place inside block k, on the block's own cumulative sums (summed in another order),
    # kept inside [0, the block's total) where rounding would step over either end.
    v = (u - (cdf - mass).gather(1, k)).clamp(min=0) / mass.gather(1, k) * inner[:, -1:]
    v = torch.minimum(v, inner[:, -1:] * (1 - 2**-52))
    return k * block + torch.searchsorted(inner, v, right=True)


_sampler_lock = threading.Lock()
_sampler_users = 0
_torch_multinomial = None


@contextlib.contextmanager
def inverse_cdf_sampling():
    """Inside, HF `generate` draws each sampled token on a CPU by `draw_one_per_row`: the same
    distribution as `torch.multinomial`, which on a CPU draws one exponential variate per vocabulary entry
    per row (at SmolLM2's 49k vocabulary, a third of a sampled decoding step at batch 64: bench/findings.md).
    `generate` calls `torch.multinomial` directly, so the function is swapped while any caller is inside;
    other calls (several draws, a generator or `out`, other devices, invalid weights: its error) still
    go to torch's."""
    import torch

    global _sampler_users, _torch_multinomial
    with _sampler_lock:
        if _sampler_users == 0:
            _torch_multinomial = original = torch.multinomial

            def multinomial(input, num_samples, replacement=False, *, generator=None, out=None):
                fast = (
                    num_samples == 1
                    and generator is None
                    and out is None
                    and input.dim() == 2
                    and input.device.type == "cpu"
                    and input.is_floating_point()
                )
                if fast and bool((input.min() >= 0) & ((totals := input.sum(-1)) > 0).all() & totals.isfinite().all()):
                    return draw_one_per_row(input)
                kwargs = {"generator": generator} | ({"out": out} if out is not None else {})
                return original(input, num_samples, replacement, **kwargs)

            torch.multinomial = multinomial
        _sampler_users += 1
    try:
        yield
    finally:
        with _sampler_lock:
            _sampler_users -= 1
            if _sampler_users == 0:
                torch.multinomial = _torch_multinomial


def device_of(model):
    """The device a model's inputs go to: where its input embeddings run. Not its first parameter's:
    a model spread over devices (`device_map`) need not register its embeddings first, and a block
    offloaded to CPU or disk holds its weights on the meta device while accelerate's hook runs it on
    another (`head_device_of`: where its logits come out)."""
    return _execution_device(model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else model)


def head_device_of(model):
    """The device a model's logits come out on: where its LM head runs (the last GPU of a spread model)."""
    return _execution_device(model.get_output_embeddings())


def _execution_device(module):
    import torch

    hook = getattr(module, "_hf_hook", None)
    for h in [hook, *getattr(hook, "hooks", [])]:  # one accelerate hook, or a SequentialHook of several
        if getattr(h, "execution_device", None) is not None:
            return torch.device(h.execution_device)
    return next(module.parameters()).device


def encode_prompt(tokenizer, prompt: str, *, chat: bool) -> list[int]:
    """A rendered prompt's ids, exactly as every stage and TRL's trainers feed them to a model (the rule
    in `s2d_pipeline.prompts`). `chat`: the text is a chat-template rendering (`models.chat_template`),
    which already holds its template's special tokens, so nothing is added. A plain-text prompt gets
    the BOS the tokenizer's default encoding starts with (as the model was pretrained: Llama, Mistral
    and Gemma add one, Qwen and SmolLM2 none), never a second one, and nothing the defaults append."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if chat or bos is None or ids[:1] == [bos]:
        return ids
    return [bos, *ids] if tokenizer(prompt)["input_ids"][:1] == [bos] else ids


def vllm_prompts(tokenizer, prompts: Sequence[str], *, chat: bool) -> list[dict]:
    """vLLM's inputs for rendered prompts: token ids by `encode_prompt` (vLLM's TokensPrompt), since
    vLLM tokenizes a text prompt with the tokenizer's defaults, a second BOS after a chat template's."""
    return [{"prompt_token_ids": encode_prompt(tokenizer, p, chat=chat)} for p in prompts]


def stop_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends a completion, as TRL's trainers and vLLM stop: the model's
    `generation_config.eos_token_id` (an int or a list: Qwen's `<|im_end|>` and `<|endoftext|>`,
    Llama 3.1's 128001/128008/128009) and the tokenizer's eos. `model` is a loaded model or the
    directory it is saved in."""
    if isinstance(model, (str, Path)):
        generation_config = saved_generation_config(Path(model))
    else:
        generation_config = getattr(model, "generation_config", None)
    listed = getattr(generation_config, "eos_token_id", None)
    ids = [] if listed is None else [listed] if isinstance(listed, int) else list(listed)
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return list(dict.fromkeys(int(i) for i in ids))


def saved_generation_config(model_dir: Path, trust_remote_code: bool = False):
    """The generation config `from_pretrained` would give the model in `model_dir`: its
    generation_config.json, else the one derived from its config.json."""
    from transformers import AutoConfig, GenerationConfig

    if (model_dir / "generation_config.json").is_file():
        return GenerationConfig.from_pretrained(str(model_dir), local_files_only=True)
    config = AutoConfig.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code, local_files_only=True)
    return GenerationConfig.from_model_config(config)


def _completion(tokenizer, sampled: list[int], stops: set[int]) -> Completion:
    """Cut a row of `generate`'s output at its first stop id (what follows is padding)."""
    end = next((i for i, t in enumerate(sampled) if t in stops), None)
    ids = sampled if end is None else sampled[: end + 1]
    content = ids if end is None else ids[:-1]
    return Completion(tokenizer.decode(content, skip_special_tokens=True), ids, end is not None)


def generate_completions(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    greedy: bool = True,
    temperature: float = 1.0,
    num_return_sequences: int = 1,
    batch_size: int = 256,
    seed: int | None = None,
    desc: str | None = None,
    chat: bool = False,
) -> list[list[Completion]]:
    """`num_return_sequences` completions per prompt, stopped on any of the model's stop ids
    (`stop_token_ids`). `desc` shows a progress bar over the prompts. `chat`: the prompts are chat
    renderings (`models.chat_template`); they are encoded by `encode_prompt`."""
    import torch

    if seed is not None:
        torch.manual_seed(seed)
    stops = stop_token_ids(model, tokenizer)
    stop_set = set(stops)
    was_training = model.training
    model.eval()
    out: list[list[Completion]] = []
    bar = None
    if desc:
        bar = progress(total=len(prompts), desc=desc, unit="prompt")
    try:
        with torch.no_grad(), inverse_cdf_sampling():
            for start in range(0, len(prompts), batch_size):
                chunk = list(prompts[start : start + batch_size])
                ids = [encode_prompt(tokenizer, p, chat=chat) for p in chunk]
                enc = tokenizer.pad({"input_ids": ids}, return_tensors="pt")
                enc = {k: v.to(device_of(model)) for k, v in enc.items()}
                gen = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=not greedy,
                    temperature=None if greedy else temperature,
                    top_p=None if greedy else 1.0,
                    top_k=None if greedy else 0,
                    num_return_sequences=num_return_sequences,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=stops or None,
                )
                new = gen[:, enc["input_ids"].shape[1] :].tolist()
                rows = [_completion(tokenizer, r, stop_set) for r in new]
                for i in range(len(chunk)):
                    out.append(rows[i * num_return_sequences : (i + 1) * num_return_sequences])
                if bar is not None:
                    bar.update(len(chunk))
    finally:
        model.train(was_training)
        if bar is not None:
            bar.close()
    return out


def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    greedy: bool = True,
    temperature: float = 1.0,
    num_return_sequences: int = 1,
    batch_size: int = 256,
    seed: int | None = None,
    with_finished: bool = False,
    desc: str | None = None,
    chat: bool = False,
):
    """The texts of `generate_completions` per prompt; with `with_finished`, also whether each one
    ended on a stop id (an instruct model's end of turn) rather than at `max_new_tokens`:
    (completions, finished), shaped alike."""
    groups = generate_completions(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        greedy=greedy,
        temperature=temperature,
        num_return_sequences=num_return_sequences,
        batch_size=batch_size,
        seed=seed,
        desc=desc,
        chat=chat,
    )
    texts = [[c.text for c in g] for g in groups]
    return (texts, [[c.finished for c in g] for g in groups]) if with_finished else texts


def sample_completions(
    model,
    tokenizer,
    prompts: Sequence[str],
    settings,
    *,
    n: int,
    seed: int,
    desc: str | None = None,
    chat: bool = False,
) -> list[list[Completion]]:
    """`n` sampled completions per prompt with a stage's settings (its max_completion_length,
    temperature and batch_size); `desc` shows a progress bar."""
    return generate_completions(
        model,
        tokenizer,
        prompts,
        max_new_tokens=settings.max_completion_length,
        greedy=False,
        temperature=settings.temperature,
        num_return_sequences=n,
        batch_size=settings.batch_size,
        seed=seed,
        desc=desc,
        chat=chat,
    )


def sample(
    model,
    tokenizer,
    prompts: Sequence[str],
    settings,
    *,
    n: int,
    seed: int,
    desc: str | None = None,
    chat: bool = False,
):
    """The texts of `sample_completions`, per prompt."""
    groups = sample_completions(model, tokenizer, prompts, settings, n=n, seed=seed, desc=desc, chat=chat)
    return [[c.text for c in g] for g in groups]


def generate_vllm(
    model_dir,
    tokenizer,
    prompts: Sequence[str],
    cfg,
    *,
    max_new_tokens: int,
    temperature: float,
    num_return_sequences: int,
    seed: int,
) -> list[list[Completion]]:
    """Sampled completions from vLLM (`runtime.use_vllm`), stopped on the same ids as `generate`:
    the rollouts stage's fast path on GPUs. The engine is torn down afterwards so the HF model that
    scores the samples gets the memory back."""
    import gc

    try:
        from vllm import LLM, SamplingParams
    except ImportError as exc:
        raise ConfigError(
            "key 'runtime.use_vllm' is true but vllm is not installed (pip install -e '.[gpu]' on a GPU machine)"
        ) from exc
    r = cfg.runtime
    stops = stop_token_ids(model_dir, tokenizer)
    llm = LLM(
        model=str(model_dir),
        dtype=cfg.models.dtype,
        tensor_parallel_size=r.vllm_tensor_parallel_size,
        gpu_memory_utilization=r.vllm_gpu_memory_utilization,
        trust_remote_code=cfg.models.trust_remote_code,
        seed=seed,
        max_model_len=cfg.models.max_seq_len,
    )
    params = SamplingParams(
        n=num_return_sequences,
        temperature=temperature,
        top_p=1.0,
        top_k=-1,
        max_tokens=max_new_tokens,
        seed=seed,
        stop_token_ids=stops,
    )
    outputs = llm.generate(vllm_prompts(tokenizer, prompts, chat=cfg.models.chat_template), params)
    # vLLM's token_ids end with the stop token it stopped on; cut as `generate`'s rows are cut.
    samples = [[_completion(tokenizer, list(c.token_ids), set(stops)) for c in out.outputs] for out in outputs]
    del llm
    gc.collect()
    try:
        import torch

        torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - best effort
        pass
    return samples


def accuracy(
    cfg, task, model, tokenizer, rows: Sequence[dict], *, max_new_tokens: int, batch_size: int = 256
) -> float:
    """Greedy accuracy of `model` on canonical rows with answers, scored by the task verifier."""
    prompts = [render(cfg, task, tokenizer, r["prompt"]) for r in rows]
    completions = generate(
        model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, chat=cfg.models.chat_template
    )
    hits = [task.verify(c[0], r["answer"]) for c, r in zip(completions, rows, strict=True)]
    return sum(hits) / max(len(hits), 1)


def completion_token_stats(
    student,
    teacher,
    tokenizer,
    prompts: Sequence[str],
    completions: Sequence[str],
    batch_size: int = 256,
    *,
    chat: bool = False,
) -> dict:
    """`score_completion_ids` of completion texts, encoded as every stage encodes them (evaluate's C2
    and the C2 stopping rule score the student's decoded samples this way); `chat` as in `encode_prompt`."""
    return score_completion_ids(
        student,
        teacher,
        [encode_prompt(tokenizer, p, chat=chat) for p in prompts],
        [tokenizer(c, add_special_tokens=False)["input_ids"] for c in completions],
        pad_token_id=tokenizer.pad_token_id,
        batch_size=batch_size,
    )


def score_completion_ids(
    student,
    teacher,
    prompt_ids: Sequence[list[int]],
    completion_ids: Sequence[list[int]],
    *,
    pad_token_id: int,
    batch_size: int = 256,
    chunk_bytes: int = SCORING_CHUNK_BYTES,
) -> dict:
    """Teacher log-probability of each completion (summed over its tokens), and mean per-token
    KL(student || teacher) over completion tokens (the C2 diagnostic). With `student=None` only the
    teacher is scored.

    Each model's hidden states are computed once per batch; only the positions that predict a
    completion token are projected to the vocabulary, a chunk of positions at a time, and each chunk
    leaves only its per-token scalars behind: memory follows `chunk_bytes`, not batch x length x
    vocabulary (a float32 152k-vocabulary distribution is 0.6 MB per token)."""
    import torch

    logprobs: list[float] = []
    kl_sum, kl_tokens = 0.0, 0
    dev = head_device_of(teacher)  # all vocabulary-wide math where the teacher's logits come out
    per_chunk = max(1, chunk_bytes // (4 * teacher.config.get_text_config().vocab_size))
    with torch.no_grad():
        for start in range(0, len(prompt_ids), batch_size):
            ps, cs = prompt_ids[start : start + batch_size], completion_ids[start : start + batch_size]
            seqs = [list(a) + list(b) for a, b in zip(ps, cs, strict=True)]
            width = max(len(s) for s in seqs)
            ids = torch.tensor([[pad_token_id] * (width - len(s)) + s for s in seqs])  # left pad
            attn = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
            # The hidden state at t predicts token t + 1: the last len(c) tokens are predicted from
            # positions width - 1 - len(c) .. width - 2.
            predicts = torch.zeros((len(seqs), width - 1), dtype=torch.bool)
            for i, c in enumerate(cs):
                if c:
                    predicts[i, max(0, width - 1 - len(c)) :] = True
            rows, cols = predicts.nonzero(as_tuple=True)
            targets = ids[:, 1:][rows, cols].to(dev)
            t_hidden = _hidden_states(teacher, ids, attn, rows, cols)
            s_hidden = _hidden_states(student, ids, attn, rows, cols) if student is not None else None
            seq_logp = torch.zeros(len(seqs), dtype=torch.float32, device=dev)
            rows = rows.to(dev)
            for a in range(0, len(targets), per_chunk):
                b = a + per_chunk
                t_logp = _log_probs(teacher, t_hidden[a:b])
                seq_logp.index_add_(0, rows[a:b], t_logp.gather(-1, targets[a:b, None]).squeeze(-1))
                if s_hidden is not None:
                    s_logp = _log_probs(student, s_hidden[a:b]).to(dev)
                    # sum_v p_s (log p_s - log p_t), in place: no further vocabulary-wide tensor
                    gap = t_logp.neg_().add_(s_logp)
                    kl_sum += float(torch.dot(s_logp.exp_().view(-1), gap.view(-1)))
                    del s_logp, gap
                del t_logp
            logprobs += seq_logp.tolist()
            if student is not None:
                kl_tokens += len(targets)
    return {"teacher_logprob": logprobs, "kl": kl_sum / max(kl_tokens, 1), "tokens": kl_tokens}


def _hidden_states(model, ids, attn, rows, cols):
    """The last hidden states (before the LM head) at the (row, position) pairs given, shaped
    (pairs, hidden). Left padding: positions count from each sequence's first token."""
    dev = device_of(model)
    position_ids = (attn.cumsum(-1) - 1).clamp(min=0)
    out = model.base_model(
        input_ids=ids.to(dev), attention_mask=attn.to(dev), position_ids=position_ids.to(dev), use_cache=False
    )
    hidden = out.last_hidden_state  # on the device of the last layer, which a spread model's first need not share
    return hidden[rows.to(hidden.device), cols.to(hidden.device)]


def _log_probs(model, hidden):
    """float32 log-probabilities over the vocabulary for `hidden` (positions x hidden size)."""
    import torch

    return torch.log_softmax(_project(model, hidden).float(), -1)


def _project(model, hidden):
    """The model's logits for `hidden`: its LM head, then what its forward does after the head."""
    import torch

    scale, softcap = logit_transform(model.config)
    logits = model.get_output_embeddings()(hidden)
    if scale != 1.0:
        logits = logits * scale
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


def logit_transform(config) -> tuple[float, float | None]:
    """(scale, softcap) a model applies to its LM head's output: Cohere multiplies by `logit_scale`,
    Granite divides by `logits_scaling`, Gemma soft-caps at `final_logit_softcapping`; Qwen and Llama
    do neither. Losses that project hidden states themselves must apply the same."""
    text = config.get_text_config()
    scale = getattr(text, "logit_scale", None) or 1.0
    if getattr(text, "logits_scaling", None):
        scale = scale / text.logits_scaling
    return float(scale), getattr(text, "final_logit_softcapping", None) or None
