"""Batched sampling and scoring shared by prepare's gate, rollouts and evaluate.

Plain `model.generate` with left padding: on tiny CPU models it is fast enough, and real-model
profiles can switch generation-heavy stages to vLLM through TRL's options.
"""

from __future__ import annotations

from collections.abc import Sequence


def device_of(model):
    return next(model.parameters()).device


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
):
    """Completions per prompt (`num_return_sequences` each), decoded without special tokens. With
    `with_finished`, also whether each one ended with the end token (an instruct model's end of
    turn) rather than at `max_new_tokens`: (completions, finished), shaped alike. `desc` shows a
    progress bar over the prompts."""
    import torch

    if seed is not None:
        torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    out: list[list[str]] = []
    ended: list[list[bool]] = []
    bar = None
    if desc:
        from s2d_pipeline.console import progress

        bar = progress(total=len(prompts), desc=desc, unit="prompt")
    try:
        with torch.no_grad():
            for start in range(0, len(prompts), batch_size):
                chunk = list(prompts[start : start + batch_size])
                enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
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
                    eos_token_id=tokenizer.eos_token_id,
                )
                new = gen[:, enc["input_ids"].shape[1] :]
                texts = tokenizer.batch_decode(new, skip_special_tokens=True)
                stops = (new == tokenizer.eos_token_id).any(-1).tolist()
                for i in range(len(chunk)):
                    out.append(texts[i * num_return_sequences : (i + 1) * num_return_sequences])
                    ended.append(stops[i * num_return_sequences : (i + 1) * num_return_sequences])
                if bar is not None:
                    bar.update(len(chunk))
    finally:
        model.train(was_training)
        if bar is not None:
            bar.close()
    return (out, ended) if with_finished else out


def sample(
    model,
    tokenizer,
    prompts: Sequence[str],
    settings,
    *,
    n: int,
    seed: int,
    with_finished: bool = False,
    desc: str | None = None,
):
    """`n` sampled completions per prompt with a stage's settings (its max_completion_length,
    temperature and batch_size); `desc` shows a progress bar."""
    return generate(
        model,
        tokenizer,
        prompts,
        max_new_tokens=settings.max_completion_length,
        greedy=False,
        temperature=settings.temperature,
        num_return_sequences=n,
        batch_size=settings.batch_size,
        seed=seed,
        with_finished=with_finished,
        desc=desc,
    )


def generate_vllm(
    model_dir,
    prompts: Sequence[str],
    cfg,
    *,
    max_new_tokens: int,
    temperature: float,
    num_return_sequences: int,
    seed: int,
) -> tuple[list[list[str]], list[list[bool]]]:
    """Sampled completions from vLLM (`runtime.use_vllm`), and whether each ended with the end token:
    the rollouts stage's fast path on GPUs.
    The engine is torn down afterwards so the HF model that scores the samples gets the memory back."""
    import gc

    try:
        from vllm import LLM, SamplingParams
    except ImportError as exc:
        from s2d_pipeline.errors import ConfigError

        raise ConfigError(
            "key 'runtime.use_vllm' is true but vllm is not installed (pip install -e '.[gpu]' on a GPU machine)"
        ) from exc
    r = cfg.runtime
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
        n=num_return_sequences, temperature=temperature, top_p=1.0, top_k=-1, max_tokens=max_new_tokens, seed=seed
    )
    outputs = llm.generate(list(prompts), params)
    samples = [[c.text for c in out.outputs] for out in outputs]
    finished = [[c.finish_reason == "stop" for c in out.outputs] for out in outputs]
    del llm
    gc.collect()
    try:
        import torch

        torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - best effort
        pass
    return samples, finished


def accuracy(
    cfg, task, model, tokenizer, rows: Sequence[dict], *, max_new_tokens: int, batch_size: int = 256
) -> float:
    """Greedy accuracy of `model` on canonical rows with answers, scored by the task verifier."""
    from s2d_pipeline.prompts import render

    prompts = [render(cfg, task, tokenizer, r["prompt"]) for r in rows]
    completions = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    hits = [task.verify(c[0], r["answer"]) for c, r in zip(completions, rows, strict=True)]
    return sum(hits) / max(len(hits), 1)


def completion_token_stats(
    student, teacher, tokenizer, prompts: Sequence[str], completions: Sequence[str], batch_size: int = 256
) -> dict:
    """Teacher log-probability of each completion, and mean per-token KL(student || teacher) over
    completion tokens (the C2 diagnostic). With `student=None` only the teacher is scored."""
    import torch

    logprobs: list[float] = []
    kl_sum, kl_tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            ps, cs = prompts[start : start + batch_size], completions[start : start + batch_size]
            p_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in ps]
            c_ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in cs]
            seqs = [a + b for a, b in zip(p_ids, c_ids, strict=True)]
            width = max(len(s) for s in seqs)
            pad = tokenizer.pad_token_id
            ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs])  # left pad
            attn = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
            mask = torch.zeros_like(ids, dtype=torch.bool)
            for i, c in enumerate(c_ids):
                if c:
                    mask[i, width - len(c) :] = True
            # logits at t predict token t+1; all math on the teacher's device (full-vocab tensors are big)
            dev = device_of(teacher)
            ids, attn, target_mask = ids.to(dev), attn.to(dev), mask[:, 1:].to(dev)
            t_logp = torch.log_softmax(_logits(teacher, ids, attn)[:, :-1].float(), -1)
            tok_logp = t_logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
            logprobs += (tok_logp * target_mask).sum(-1).tolist()
            if student is not None:
                s_logp = torch.log_softmax(_logits(student, ids, attn)[:, :-1].to(dev).float(), -1)
                kl = (s_logp.exp() * (s_logp - t_logp)).sum(-1)
                kl_sum += float((kl * target_mask).sum())
                kl_tokens += int(target_mask.sum())
    return {"teacher_logprob": logprobs, "kl": kl_sum / max(kl_tokens, 1), "tokens": kl_tokens}


def _logits(model, ids, attn):
    dev = device_of(model)
    position_ids = (attn.cumsum(-1) - 1).clamp(min=0)
    return model(input_ids=ids.to(dev), attention_mask=attn.to(dev), position_ids=position_ids.to(dev)).logits
