"""The TRL trainers behind every training stage, configured once.

- GRPO (`trl.GRPOTrainer`): teacher RL (Stage 1), student RL (Stage 3) and the direct-GRPO baseline;
  the reward is the task verifier (sparse, 0/1 per completion).
- Forward KL on teacher rollouts (`trl.experimental.gkd.GKDTrainer`, `lmbda=0, beta=0`, its loss
  computed in chunks: `chunked_forward_kl_trainer`): Stage 2a, token-level KL to the teacher's full
  next-token distribution on the token ids the teacher sampled; `warmup.loss: sft` swaps in
  `trl.SFTTrainer` (cross-entropy on the sampled tokens only).
- On-policy distillation (`trl.DistillationTrainer`, `beta=1`): Stage 2b, the student samples and
  the loss is per-token reverse KL to the teacher.

Trainer defaults that are slow or wrong at tiny scale on a CPU (bf16, gradient checkpointing) come
from `runtime` params, so real profiles get the GPU settings. torch, transformers and TRL are
imported inside the functions that use them: they cost seconds.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from s2d_pipeline.config import Config, Section
from s2d_pipeline.console import TrainerProgress
from s2d_pipeline.errors import ConfigError
from s2d_pipeline.evaluation import student_teacher_kl
from s2d_pipeline.generation import encode_prompt, inverse_cdf_sampling, logit_transform
from s2d_pipeline.io import atomic_dir
from s2d_pipeline.layout import checkpoint_dir
from s2d_pipeline.models import load_model, load_tokenizer, training_bf16
from s2d_pipeline.prompts import completion_text, require_chat_template, trainer_prompt
from s2d_pipeline.runtime import device
from s2d_pipeline.tracking import arm_run


class BatchSplit(NamedTuple):
    """One optimizer step's sequences as the trainers take them: `per_device` sequences in each
    forward/backward pass of each process, `accumulation` passes per step (gradient accumulation)."""

    per_device: int
    accumulation: int


def step_batch(cfg: Config, settings) -> BatchSplit:
    """The split of a training stage's optimizer step (`settings`: its params section) over the
    processes this run actually has (`accelerate launch` starts them; 1 otherwise)."""
    from accelerate import PartialState

    processes = PartialState(cpu=device(cfg) == "cpu").num_processes
    return batch_split(settings, processes, section_key(cfg, settings))


def batch_split(settings, processes: int, key: str) -> BatchSplit:
    """`prompts_per_step` (GRPO: times `num_generations` completions) or `batch_size` sequences per
    optimizer step, all processes together, in micro-batches of `micro_batch_size` per process (null:
    one per process): gradient_accumulation_steps = sequences / (micro-batch x processes). A step that
    does not split evenly is a ConfigError naming the keys, the process count and the nearest values
    that do."""
    grpo = hasattr(settings, "num_generations")
    size_key, size = ("prompts_per_step", settings.prompts_per_step) if grpo else ("batch_size", settings.batch_size)
    per_item = settings.num_generations if grpo else 1
    micro = settings.micro_batch_size
    per_process, rest = divmod(size * per_item, processes)
    if not rest and per_process % (micro or per_process) == 0:
        return BatchSplit(micro or per_process, per_process // (micro or per_process))

    # `size` is valid when size x per_item is a multiple of micro x processes.
    unit = (micro or 1) * processes
    step = unit // math.gcd(unit, per_item)
    sizes = [v for v in ((size // step) * step, -(-size // step) * step) if v >= 1]
    what = f"{size} x num_generations {per_item} = {size * per_item} completions" if grpo else f"{size} sequences"
    if micro:
        split = f"in micro-batches of '{key}.micro_batch_size' {micro} on {processes} process(es)"
        arithmetic = f"gradient_accumulation_steps = {size * per_item} / ({micro} x {processes})"
    else:
        split = f"over {processes} process(es) ('{key}.micro_batch_size' null: one micro-batch per process)"
        arithmetic = f"{size * per_item} / {processes} sequences per process"
    nearest = f"'{key}.{size_key}' {' or '.join(map(str, sizes))}"
    if micro and not rest:
        divisors = [d for d in range(1, per_process + 1) if per_process % d == 0]
        micros = [
            max((d for d in divisors if d < micro), default=None),
            min((d for d in divisors if d > micro), default=None),
        ]
        nearest += f", or '{key}.micro_batch_size' {' or '.join(str(m) for m in micros if m)}"
    raise ConfigError(
        f"key '{key}.{size_key}': {what} per optimizer step do not split evenly {split} "
        f"({arithmetic} is not a whole number). Nearest valid values for {processes} process(es): {nearest}"
    )


def section_key(cfg: Config, settings) -> str:
    """The params key of a stage's settings section (`teacher_rl`, `prepare.heal`), for messages."""
    for name, value in cfg:
        if value is settings:
            return name
        if isinstance(value, Section):
            for sub, inner in value:
                if inner is settings:
                    return f"{name}.{sub}"
    return type(settings).__name__


def training_args(
    cfg: Config,
    settings,
    *,
    steps: int,
    batch: BatchSplit,
    run_name: str,
    seed_offset: int = 0,
) -> dict:
    """TrainingArguments shared by every trainer (TRL configs extend TrainingArguments); `settings` is
    the stage's params section (its learning_rate and warmup_steps), `batch` its step's split
    (`step_batch`). Checkpoints (model, optimizer, scheduler and RNG states) go to
    `checkpoint_dir(cfg, run_name)`."""
    on_cpu = device(cfg) == "cpu"
    every = cfg.runtime.checkpoint_steps
    return dict(
        output_dir=str(checkpoint_dir(cfg, run_name)),
        run_name=run_name,
        max_steps=steps,
        learning_rate=settings.learning_rate,
        warmup_steps=settings.warmup_steps,
        lr_scheduler_type="cosine",
        per_device_train_batch_size=batch.per_device,
        gradient_accumulation_steps=batch.accumulation,
        seed=cfg.seed + seed_offset,
        data_seed=cfg.seed + seed_offset,
        bf16=training_bf16(cfg),  # on a CPU, autocast (use_cpu=True lets transformers accept it)
        use_cpu=on_cpu,
        # `activation_checkpointing` (transformers 5): the old name warns on every trainer
        activation_checkpointing=cfg.runtime.gradient_checkpointing,
        logging_steps=max(1, steps // 20),
        save_strategy="steps" if every else "no",
        save_steps=every or 500,
        save_total_limit=2,  # the latest may be cut short by a kill; keep the one before it
        report_to=["mlflow"] if cfg.tracking.enabled else "none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def vllm_args(cfg: Config) -> dict:
    """TRL's vLLM options (GRPO and distillation configs share the names)."""
    r = cfg.runtime
    if not r.use_vllm:
        return {"use_vllm": False}
    args = {
        "use_vllm": True,
        "vllm_mode": r.vllm_mode,
        "vllm_gpu_memory_utilization": r.vllm_gpu_memory_utilization,
        "vllm_tensor_parallel_size": r.vllm_tensor_parallel_size,
    }
    if r.vllm_mode == "server" and r.vllm_server_url:
        args["vllm_server_base_url"] = r.vllm_server_url
    return args


def run_fingerprint(cfg: Config, run_name: str, rows_hash: str, inputs: list[Path]) -> str:
    """What makes two training runs the same run: params (tracking aside), the run, its training
    rows and its input model files. A checkpoint is only resumed by a run with the same fingerprint."""
    import hashlib
    import json

    payload = {
        "params": cfg.model_dump(mode="json", exclude={"tracking", "root"}),
        "run": run_name,
        "rows": rows_hash,
        "inputs": [_weights_stamp(p) for p in inputs],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def fit(trainer, cfg: Config, inputs: list[Path], rows: list[dict]) -> None:
    """`trainer.train()` on `rows`, resumed from the run's latest complete checkpoint when one exists
    and was written by the same run (`run_fingerprint`); anything else discards it and starts over."""
    import json
    import logging
    import shutil

    out = Path(trainer.args.output_dir)
    fingerprint = run_fingerprint(cfg, trainer.args.run_name, content_hash(rows), inputs)
    marker = out / "s2d_run.json"
    same_run = marker.exists() and json.loads(marker.read_text()).get("fingerprint") == fingerprint
    resume = latest_complete_checkpoint(out) if same_run else None
    # Every rank decides from the same files before rank 0 changes them (no-ops in one process).
    trainer.accelerator.wait_for_everyone()
    if trainer.accelerator.is_main_process:
        if not same_run and out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"fingerprint": fingerprint, "run": trainer.args.run_name}))
    trainer.accelerator.wait_for_everyone()
    if resume:
        logging.getLogger(__name__).warning("%s: resuming from %s", trainer.args.run_name, resume)

    trainer.add_callback(_NoFinalCheckpoint())
    trainer.add_callback(TrainerProgress(trainer.args.run_name))
    quiet(trainer).train(resume_from_checkpoint=resume)


def _NoFinalCheckpoint():  # noqa: N802 - a class built on demand (transformers is imported lazily)
    """Transformers also checkpoints the last step; the stage saves the model right after and deletes
    the checkpoints, so that write (optimizer state included: ~100 GB for an 8B model) is skipped."""
    from transformers import TrainerCallback

    class NoFinalCheckpoint(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= state.max_steps:
                control.should_save = False
            return control

    return NoFinalCheckpoint()


def latest_complete_checkpoint(out: Path) -> str | None:
    """The newest `checkpoint-N` that was fully written: Transformers writes `trainer_state.json` last,
    so a kill mid-save leaves it missing or unparseable (then the previous checkpoint is used)."""
    import json

    def complete(c: Path) -> bool:
        try:
            json.loads((c / "trainer_state.json").read_text())
        except (OSError, ValueError):
            return False
        return (c / "optimizer.pt").exists()

    done = [c for c in out.glob("checkpoint-*") if c.name.split("-")[-1].isdigit() and complete(c)]
    return str(max(done, key=lambda c: int(c.name.split("-")[-1]))) if done else None


def _weights_stamp(model_dir: Path) -> list:
    return sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in Path(model_dir).glob("*.safetensors"))


def quiet(trainer):
    """Drop the stdout printer that `disable_tqdm` installs (one dict per logging step): metrics go to
    MLflow and the metrics files, progress to `console.TrainerProgress`."""
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer


def verifier_reward(task) -> Callable:
    """The sparse verifiable reward as a TRL reward function. TRL passes every dataset column:
    `answer` is graded; `label_id` names the ledger label each completion was rewarded against."""

    def verifier(prompts, completions, answer, **_):
        return task.rewards([completion_text(c) for c in completions], answer)

    return verifier


def train_grpo(cfg: Config, task, model_dir: Path, rows: list[dict], stage, run_name: str, seed_offset: int = 0):
    """GRPO on `rows` (canonical labeled rows) from the model in `model_dir`; returns the trainer."""
    from trl import GRPOConfig, GRPOTrainer

    batch = step_batch(cfg, stage)
    tokenizer = load_tokenizer(model_dir, cfg)
    require_chat_template(cfg, tokenizer)
    model = load_model(model_dir, cfg)
    train_rows = epoch_rows(
        [
            {"prompt": trainer_prompt(cfg, task, r["prompt"]), "answer": str(r["answer"]), "label_id": str(r["id"])}
            for r in rows
        ],
        stage.steps * stage.prompts_per_step,
        f"{run_name}-{cfg.seed + seed_offset}",
    )
    dataset = rows_dataset(train_rows)
    args = GRPOConfig(
        **training_args(
            cfg,
            stage,
            steps=stage.steps,
            batch=batch,
            run_name=run_name,
            seed_offset=seed_offset,
        ),
        # One generation per optimizer step: generation_batch_size = per_device x processes x this
        # = prompts_per_step x num_generations completions, sampled across all processes together.
        steps_per_generation=batch.accumulation,
        num_generations=stage.num_generations,
        beta=stage.beta,
        epsilon=stage.epsilon,
        epsilon_high=stage.epsilon_high,
        temperature=stage.temperature,
        max_completion_length=stage.max_completion_length,
        loss_type=stage.loss_type,
        chat_template_kwargs=cfg.models.chat_template_kwargs,
        shuffle_dataset=False,  # epoch_rows already shuffled, resumably
        **vllm_args(cfg),
    )
    trainer = with_prompt_rule(GRPOTrainer)(
        model=model,
        reward_funcs=[verifier_reward(task)],
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    fit(trainer, cfg, [model_dir], train_rows)
    return trainer


class PromptRule:
    """TRL's GRPO and distillation trainers tokenize a plain-text prompt with the tokenizer's defaults
    (an EOS where a tokenizer appends one, a BOS before text that already starts with one); here it gets
    the ids every other stage feeds (`generation.encode_prompt`, the rule in `prompts`), also on TRL's
    vLLM paths, which take these ids. Conversations and multimodal prompts keep TRL's chat-template path:
    it adds nothing to the template's tokens, which is the rule for them."""

    def _tokenize_prompts(self, prompts: list):
        if self._is_vlm or not isinstance(prompts[0], str):
            return super()._tokenize_prompts(prompts)
        return [encode_prompt(self.processing_class, p, chat=False) for p in prompts], None, {}


class AutocastLoss:
    """The loss under the accelerator's autocast (bf16 where `runtime.bf16` turns it on, else a no-op).
    accelerate autocasts only the prepared model's `forward`; s2d's chunked forward-KL loss and TRL's
    chunked log-probabilities call the backbone directly, which would otherwise run in float32 (the
    warmup's loss came out identical to the fourth decimal with and without bf16)."""

    def autocast_smart_context_manager(self, cache_enabled: bool | None = True):
        return self.accelerator.autocast()


class AutocastGeneration(AutocastLoss):
    """Sampling (GRPO's, OPD's) inside one autocast region: autocast keeps its bf16 copy of each weight
    until the outermost region exits, so the weights are cast once per call, not at every new token as
    the per-forward region that accelerate wraps would do (OPD ran at 0.85x float32's speed so). Tokens
    are drawn as `generate_completions` draws them (`inverse_cdf_sampling`)."""

    def _generate(self, prompts: list):
        with self.accelerator.autocast(), inverse_cdf_sampling():
            return super()._generate(prompts)


def with_autocast_loss(trainer_class: type) -> type:
    return type(trainer_class.__name__, (AutocastLoss, trainer_class), {})


def with_prompt_rule(trainer_class: type) -> type:
    """`trainer_class` (a TRL trainer that samples: `_tokenize_prompts`, `_generate`) tokenizing text prompts
    by `PromptRule`, sampling and its loss under `AutocastGeneration`."""
    return type(trainer_class.__name__, (PromptRule, AutocastGeneration, trainer_class), {})


def epoch_rows(rows: list[dict], draws: int, seed: str) -> list[dict]:
    """`rows` in seeded per-epoch permutations, enough epochs for `draws` rows (plus one spare): the
    whole run is one pass that trainers read in order (their own shuffling is off). TRL's samplers
    reshuffle every pass from a generator a resumed run cannot replay, so a run killed in its third
    epoch would resume on another order; one ordered pass resumes exactly (`skip_first_batches`)."""
    import random

    rng = random.Random(seed)
    out: list[dict] = []
    for _ in range(-(-draws // max(len(rows), 1)) + 1):
        epoch = list(rows)
        rng.shuffle(epoch)
        out += epoch
    return out


def content_hash(rows: list[dict]) -> str:
    """A deterministic hash of JSON-serialisable rows (dataset fingerprint and run fingerprint)."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]


def rows_dataset(rows: list[dict]):
    """A `datasets.Dataset` of `rows`, fingerprinted by content. `Dataset.from_list` pickles the Arrow
    table to fingerprint it, which fails with dill on Python 3.12 + pyarrow 25 ("Can't pickle
    <class 'MonthDayNano'>"); hashing the rows is cheaper and deterministic."""
    import pyarrow as pa
    from datasets import Dataset

    return Dataset(pa.Table.from_pylist(rows), fingerprint=content_hash(rows))


class PromptCompletionCollator:
    """Training sequences from (prompt text, sampled completion ids) rows: the prompt encoded as every
    stage encodes a rendered prompt (`generation.encode_prompt`; `chat`: the prompts are chat renderings),
    then `completion_ids` exactly as the teacher sampled them, its end token included when it stopped on
    one (so the student learns to stop there). Re-encoding the decoded text would give a BPE tokenizer's
    canonical split, not the teacher's tokens. Labels cover completion tokens only.

    Used by the forward-KL warmup (GKD with lmbda=0 never generates, so it only needs
    `input_ids`, `attention_mask` and `labels`) and by its SFT variant.
    """

    def __init__(self, tokenizer, max_length: int, *, chat: bool = False):
        self.tokenizer, self.max_length, self.chat = tokenizer, max_length, chat

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        tok = self.tokenizer
        seqs, labels = [], []
        for ex in examples:
            p = encode_prompt(tok, ex["prompt"], chat=self.chat)
            c = [int(i) for i in ex["completion_ids"]]
            ids = (p + c)[: self.max_length]
            seqs.append(ids)
            labels.append(([-100] * len(p) + c)[: self.max_length])
        width = max(len(s) for s in seqs)
        pad = tok.pad_token_id
        # Right padding for teacher-forced training; the model sees real positions from 0.
        input_ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
        attention = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
        label_t = torch.tensor([lab + [-100] * (width - len(lab)) for lab in labels])
        return {"input_ids": input_ids, "attention_mask": attention, "labels": label_t}


def chunked_forward_kl_trainer(**kwargs):
    """TRL's `GKDTrainer` (give it `lmbda=0, beta=0`: forward KL(teacher || student) on the dataset's
    sequences) with the loss computed without either model's full logits. GKD's own loss holds both
    models' float logits for the whole batch (32 sequences x 4k tokens x 152k vocabulary is ~80 GB per
    tensor); here only the completion positions' hidden states are kept, and TRL's
    `ChunkedDivergenceFunction` (the kernel behind `DistillationTrainer`'s chunked loss) projects them
    to the vocabulary tile by tile, forward and backward. Same loss and reduction as GKD's."""
    import torch
    from trl.experimental.gkd import GKDTrainer
    from trl.kernels.chunked_divergence import ChunkedDivergenceFunction
    from trl.models.utils import _ForwardRedirection

    class ChunkedForwardKLTrainer(AutocastLoss, GKDTrainer):
        def __init__(self, **kw):
            super().__init__(**kw)
            if self.lmbda != 0.0 or self.seq_kd:
                raise ValueError("the chunked forward-KL loss trains on the dataset's sequences: lmbda=0, no seq_kd")
            # The backbones are called directly (the loss reads the LM heads' weights): route the calls
            # through the wrappers' forward so DDP/FSDP/DeepSpeed still see a forward.
            self._redirect = _ForwardRedirection()

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            student = self.accelerator.unwrap_model(model)
            loss = self._redirect(model, student, self._forward_kl, student, inputs, num_items_in_batch)
            return (loss, None) if return_outputs else loss

        def _forward_kl(self, student, inputs, num_items_in_batch):
            # Causal shift: the hidden state at t predicts token t + 1; only completion targets count.
            rows, cols = (inputs["labels"][:, 1:] != -100).nonzero(as_tuple=True)
            h_s = _completion_hidden(student, inputs, rows, cols)
            self.teacher_model.eval()
            teacher = self.accelerator.unwrap_model(self.teacher_model)
            with torch.no_grad():
                h_t = self._redirect(self.teacher_model, teacher, _completion_hidden, teacher, inputs, rows, cols)
            s_head, t_head = student.get_output_embeddings(), teacher.get_output_embeddings()
            s_scale, s_cap = logit_transform(student.config)
            t_scale, t_cap = logit_transform(teacher.config)
            per_token, _ = ChunkedDivergenceFunction.apply(
                h_s,
                s_head.weight,
                s_head.bias,
                h_t.to(h_s.device),
                t_head.weight,
                t_head.bias,
                self.beta,
                self.temperature,
                s_scale,
                s_cap,
                t_scale,
                t_cap,
            )
            total = per_token.sum()
            if num_items_in_batch is not None:
                return total / torch.as_tensor(num_items_in_batch, device=total.device)
            return total / max(len(rows), 1)

    def _completion_hidden(model, inputs, rows, cols):
        out = model.base_model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
        return out.last_hidden_state[:, :-1][rows, cols]

    return ChunkedForwardKLTrainer(**kwargs)


def kl_stop_callback(cfg: Config, teacher, tokenizer, prompts: list[str], target: float, every: int):
    """C2 as a stopping rule: every `every` steps (and at the last), the mean per-token
    KL(student || teacher) on the student's own samples of `prompts` (evaluate's C2 measure) is logged
    as `c2_kl`; training stops once it is below `target`."""
    from transformers import TrainerCallback

    class KLStop(TrainerCallback):
        trainer = None  # set after the trainer is built: the callback logs through it

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % every and state.global_step < state.max_steps:
                return
            was_training = model.training
            kl = student_teacher_kl(cfg, None, model, teacher, tokenizer, prompts)
            model.train(was_training)
            self.trainer.log({"c2_kl": kl})
            if kl < target:
                control.should_training_stop = True

    return KLStop()


def train_forward_kl(
    cfg: Config,
    settings,
    student_dir: Path,
    teacher_dir: Path,
    rollouts: list[dict],
    steps: int,
    run_name: str,
    kl_prompts: list[str] | None = None,
):
    """Forward KL on teacher samples: full-distribution forward KL (GKD, lmbda=0, beta=0), or SFT with
    `loss: sft`. Stage 2a (`settings` = cfg.warmup) and the healing of a derived student (cfg.prepare.heal).
    `rollouts` rows hold the rendered `prompt` and the sampled `completion_ids` (`PromptCompletionCollator`).
    With `settings.kl_target` set, `steps` is a cap and training stops once C2 on `kl_prompts` is below
    the target (`kl_stop_callback`)."""
    w = settings
    batch = step_batch(cfg, w)
    student, tokenizer = load_model(student_dir, cfg), load_tokenizer(student_dir, cfg)
    forward_kl = getattr(w, "loss", "forward_kl") == "forward_kl"
    kl_target = getattr(w, "kl_target", None)
    teacher = load_model(teacher_dir, cfg) if forward_kl or kl_target is not None else None
    train_rows = epoch_rows(
        [{"prompt": r["prompt"], "completion_ids": [int(i) for i in r["completion_ids"]]} for r in rollouts],
        steps * w.batch_size,
        f"{run_name}-{cfg.seed}",
    )
    dataset = rows_dataset(train_rows)
    collator = PromptCompletionCollator(tokenizer, cfg.models.max_seq_len, chat=cfg.models.chat_template)
    common = training_args(cfg, w, steps=steps, batch=batch, run_name=run_name)
    common["remove_unused_columns"] = False
    common["include_num_input_tokens_seen"] = "non_padding"  # GRPO and OPD count their own tokens
    common["train_sampling_strategy"] = "sequential"  # epoch_rows already shuffled, resumably
    if forward_kl:
        from trl.experimental.gkd import GKDConfig

        args = GKDConfig(
            **common, lmbda=0.0, beta=0.0, seq_kd=False, temperature=1.0, max_length=cfg.models.max_seq_len
        )
        trainer = chunked_forward_kl_trainer(
            model=student,
            teacher_model=teacher,
            args=args,
            data_collator=collator,
            train_dataset=dataset,
            processing_class=tokenizer,
        )
    else:
        from trl import SFTConfig, SFTTrainer

        args = SFTConfig(**common, dataset_kwargs={"skip_prepare_dataset": True}, max_length=cfg.models.max_seq_len)
        trainer = with_autocast_loss(SFTTrainer)(
            model=student, args=args, data_collator=collator, train_dataset=dataset, processing_class=tokenizer
        )
    if kl_target is not None:
        stop = kl_stop_callback(cfg, teacher, tokenizer, kl_prompts or [], kl_target, w.kl_check_every)
        stop.trainer = trainer
        trainer.add_callback(stop)
    fit(trainer, cfg, [student_dir, teacher_dir], train_rows)
    return trainer


def train_opd(cfg: Config, student_dir: Path, teacher_dir: Path, prompts: list, steps: int, run_name: str):
    """Stage 2b: the student samples on unlabeled prompts (`prompts.trainer_prompt`: text, or a
    conversation TRL renders with the chat template); per-token reverse KL to the teacher."""
    from trl import DistillationConfig, DistillationTrainer

    o = cfg.opd
    batch = step_batch(cfg, o)
    tokenizer = load_tokenizer(student_dir, cfg)
    require_chat_template(cfg, tokenizer)
    student = load_model(student_dir, cfg)
    common = dict(
        **training_args(cfg, o, steps=steps, batch=batch, run_name=run_name),
        beta=o.beta,
        temperature=o.temperature,
        max_completion_length=o.max_completion_length,
        chat_template_kwargs=cfg.models.chat_template_kwargs,
        shuffle_dataset=False,  # epoch_rows already shuffled, resumably
        **vllm_args(cfg),
    )
    train_rows = epoch_rows([{"prompt": p} for p in prompts], steps * o.batch_size, f"{run_name}-{cfg.seed}")
    dataset = rows_dataset(train_rows)
    if o.teacher_server_url:  # the teacher lives on its own GPUs behind `trl vllm-serve`
        from trl.experimental.server_distillation import ServerDistillationConfig, ServerDistillationTrainer

        trainer = with_prompt_rule(ServerDistillationTrainer)(
            model=student,
            args=ServerDistillationConfig(**common, teacher_model_server_url=o.teacher_server_url),
            train_dataset=dataset,
            processing_class=tokenizer,
        )
    else:
        trainer = with_prompt_rule(DistillationTrainer)(
            model=student,
            teacher_model=load_model(teacher_dir, cfg),
            args=DistillationConfig(**common),
            train_dataset=dataset,
            processing_class=tokenizer,
        )
    fit(trainer, cfg, [student_dir, teacher_dir], train_rows)
    return trainer


def train_arm(cfg: Config, stage: str, arm: str, out: Path, train: Callable, summarise: Callable, **fields) -> dict:
    """One arm of a training stage: inside the arm's MLflow run, `train()` (which returns a fitted
    trainer) and save its model atomically to `out`; returns the arm's metrics: `fields`, the
    summarised trainer log, the wall time and which process trained it."""
    import time

    started = time.perf_counter()
    with arm_run(cfg, stage, arm, params={f"s2d.{k}": v for k, v in fields.items()}), atomic_dir(out) as tmp:
        history = save_trained(train(), tmp)
    return {
        **fields,
        **summarise(history),
        "wall_s": round(time.perf_counter() - started, 2),
        # Text, not a number, so trackers do not chart it: which process trained (accelerate relaunches).
        "trained_by": f"pid {os.getpid()}, world size {os.environ.get('WORLD_SIZE', '1')}",
    }


def save_trained(trainer, directory: Path) -> list[dict]:
    """Save the trained model + tokenizer as safetensors into `directory`, drop the run's checkpoints
    (the run is finished; a crash before the caller's atomic rename only costs a rerun) and return
    the log history."""
    import shutil

    # Trainer.save_model gathers sharded weights (ZeRO-3, FSDP) on every rank and writes safetensors
    # and the tokenizer on the main process only; its pickled training_args.bin is not kept.
    trainer.save_model(str(directory))
    (Path(directory) / "training_args.bin").unlink(missing_ok=True)
    if trainer.accelerator.is_main_process:
        shutil.rmtree(trainer.args.output_dir, ignore_errors=True)
    return trainer.state.log_history


def summarise_rl_history(history: list[dict]) -> dict:
    """Mean GRPO reward over the first and last fifth of logged steps, the mean in-group spread over
    the steps that logged one (None when none did), and training throughput."""
    rewards = [h["reward"] for h in history if "reward" in h]
    if not rewards:
        return summarise_throughput(history)
    k = max(1, len(rewards) // 5)
    # Only logged steps carry `reward_std`; the trainer's final summary entry does not.
    spreads = [h["reward_std"] for h in history if "reward_std" in h]
    return {
        "reward_first": round(sum(rewards[:k]) / k, 4),
        "reward_last": round(sum(rewards[-k:]) / k, 4),
        "reward_std_mean": round(sum(spreads) / len(spreads), 4) if spreads else None,
        **summarise_throughput(history),
    }


def summarise_loss_history(history: list[dict]) -> dict:
    """First and last logged training loss (distillation stages), and training throughput."""
    losses = [h["loss"] for h in history if "loss" in h]
    checks = [[h["step"], h["c2_kl"]] for h in history if "c2_kl" in h]
    return {
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        # The C2 stopping rule's checks (step, KL) and the steps it took (warmup.kl_target set).
        **({"c2_checks": checks, "steps_taken": history[-1]["step"]} if checks else {}),
        **summarise_throughput(history),
    }


def summarise_throughput(history: list[dict]) -> dict:
    """Tokens the trainer processed (prompt + completion; TRL's `num_tokens` or the Trainer's
    non-padding count) per second of `train()`, generation included."""
    tokens = max((h.get("num_tokens", h.get("num_input_tokens_seen", 0)) for h in history), default=0)
    runtime = next((h["train_runtime"] for h in reversed(history) if "train_runtime" in h), None)
    if not tokens or not runtime:
        return {}
    return {
        "train_tokens": int(tokens),
        "train_runtime_s": round(runtime, 2),
        "train_tokens_per_s": round(tokens / runtime, 1),
    }
