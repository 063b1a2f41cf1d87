"""One typed settings object that mirrors `params.yaml`.

The defaults live here, once; `params.yaml` spells every one of them out (DVC tracks its keys, and
a test checks that the two agree key by key). Profiles under `profiles/` hold only what differs
from the defaults (`s2d --params profiles/qwen3-math.yaml ...`): every params file is merged over
the defaults before it is validated. Unknown keys
and wrong types are rejected with the dotted key named. Whether the models and data a profile points
at are on disk is not a setting's own property: `s2d_pipeline.inputs` checks that at start.

Only pydantic and PyYAML are imported, so the CLI starts fast.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from s2d_pipeline.arms import SPECS
from s2d_pipeline.errors import ConfigError

DEFAULT_PARAMS = "params.yaml"


# The training stages' batch settings are global: the same optimizer step whatever the number of
# processes; the trainers derive gradient accumulation from the processes a run actually has.
SEQUENCES_PER_STEP = "sequences per optimizer step, all processes together"
MICRO_BATCH = (
    "sequences one process holds in a forward/backward pass (GRPO: completions); gradient accumulation "
    "makes up the rest of the step. null: the whole step in one pass, split over the processes"
)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class TrackingConfig(Section):
    # Relative sqlite paths resolve against the project root, so DVC stages, Prefect workers and
    # TRL callbacks all write to one store (MLflow's own default is the *current* directory).
    uri: str = "sqlite:///mlflow.db"
    experiment: str = "s2d"
    registered_model: str = "s2d-student"
    # Parent/child runs per pipeline/stage; TRL trainers log loss, reward and KL curves into them.
    enabled: bool = True


class ArithmeticTaskConfig(Section):
    """The embedded synthetic task: addition written least-significant digit first (generates its data)."""

    name: Literal["arithmetic"] = "arithmetic"
    digits: int = Field(3, ge=1, le=9, description="operand digits; the answer has digits + 1")


class SumsConfig(Section):
    """`What is a + b?` questions in GSM8K format that the math task writes itself."""

    operands: int = Field(2, ge=2, le=4)
    max_operand: int = Field(9, ge=1)


class MathTaskConfig(Section):
    """MATH / GSM8K-style problems from the user's files, graded by math-verify."""

    name: Literal["math"] = "math"
    prompt_template: str = Field(
        "Solve the problem. Put the final answer in \\boxed{{}}.\n\nProblem: {problem}\n\nSolution:",
        description="the text the model sees; {problem} is replaced by the question",
    )
    sums: SumsConfig | None = None  # set: prepare generates the data (data.generate: true)
    # A completion with neither a \\boxed{} answer nor a `#### ` line commits to nothing ("none"), or to
    # its last number ("last_number", for small instruct models that answer in prose).
    fallback: Literal["none", "last_number"] = "none"


# The task's own settings, chosen by `task.name`: one class per task (the adapters in tasks/ go by the same names).
TaskConfig = Annotated[ArithmeticTaskConfig | MathTaskConfig, Field(discriminator="name")]
TASK_NAMES = tuple(t.model_fields["name"].default for t in (ArithmeticTaskConfig, MathTaskConfig))


class RowBounds(Section):
    min: int = Field(1, ge=0)
    max: int = Field(1_000_000, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> RowBounds:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is larger than max ({self.max})")
        return self


class DataConfig(Section):
    # With generate=true (embedded default) `prepare` writes the three files from the task's
    # seeded generator; with generate=false they are the user's files and must exist.
    generate: bool = True
    # One labelled file (e.g. GSM8K's train.jsonl) that `prepare` splits, seeded and disjoint, into
    # eval (n_eval rows), labels (n_labels) and prompts (n_prompts, answers dropped).
    split_from: str | None = None
    labels: str = "data/labels.jsonl"
    prompts: str = "data/prompts.jsonl"
    eval: str = "data/eval.jsonl"
    n_labels: int = Field(1024, ge=1)
    n_prompts: int = Field(4096, ge=1)
    n_eval: int = Field(512, ge=1)
    labels_rows: RowBounds = RowBounds(min=16, max=100_000)
    prompts_rows: RowBounds = RowBounds(min=16, max=10_000_000)
    eval_rows: RowBounds = RowBounds(min=16, max=100_000)


class ModelSpec(Section):
    # models.source "path": a local directory or an id already in the local Hugging Face cache (never
    # downloaded).
    path: str | None = None
    # models.source "gguf", teacher: a GGUF file (path) or `package:file` shipped in an installed
    # package, imported once by `prepare` and saved as safetensors.
    gguf: str | None = None
    # models.source "gguf", student: the teacher's decoder layers the student keeps (then healed by
    # forward-KL distillation from the teacher, `prepare.heal`).
    keep_layers: list[int] | None = None
    # Used when models.source == "build" (tiny from-scratch Qwen2-style models).
    hidden_size: int = Field(64, ge=8)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(2, ge=1)
    intermediate_size: int = Field(256, ge=8)

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelSpec:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
        return self


class ModelsConfig(Section):
    # build: tiny models pretrained from scratch on the task's corpus (embedded default); path: the
    # user's checkpoints; gguf: a GGUF teacher imported once, the student cut from it and healed.
    source: Literal["build", "path", "gguf"] = "build"
    teacher: ModelSpec = ModelSpec(hidden_size=96, num_layers=3, num_heads=4, intermediate_size=256)
    student: ModelSpec = ModelSpec(hidden_size=48, num_layers=2, num_heads=2, intermediate_size=128)
    max_seq_len: int = Field(32, ge=8)
    trust_remote_code: bool = False
    dtype: Literal["float32", "bfloat16", "auto"] = "float32"
    # Instruct models: every stage renders prompts as a conversation through the tokenizer's chat
    # template (s2d_pipeline/prompts.py); false keeps plain text (base models, the tiny models).
    chat_template: bool = False
    system_prompt: str | None = None  # the conversation's system turn (None: the template's default)
    chat_template_kwargs: dict[str, Any] = Field(default_factory=dict)  # e.g. {enable_thinking: false}


class PretrainRole(Section):
    steps: int = Field(1500, ge=1)
    # Share of pretraining examples whose answer drops every carry: a systematic, plausible
    # error that verified-label RL can fix.
    noise_rate: float = Field(0.55, ge=0.0, le=1.0)


class HealConfig(Section):
    """Forward-KL distillation of a student cut from the teacher (models.source gguf), on the
    teacher's samples of the prompt pool, before anything else trains it."""

    steps: int = Field(0, ge=0)  # 0: no healing
    # The healing's own seed (its teacher samples, data order and initialisation), not the run's: every
    # run seed and budget then shares one healed student, prepared once and cached (runtime.cache_dir).
    seed: int = 0
    learning_rate: float = Field(1e-4, gt=0)
    warmup_steps: int = Field(5, ge=0)
    batch_size: int = Field(8, ge=1, description=SEQUENCES_PER_STEP)
    micro_batch_size: int | None = Field(None, ge=1, description=MICRO_BATCH)
    prompts: int = Field(64, ge=1)  # pool prompts the teacher samples (one completion each)


class PrepareConfig(Section):
    """Brief noisy pretraining of the tiny base models (embedded default only)."""

    # The teacher sees a slightly cleaner corpus (a stronger base model, as an 8B is to a 1.7B).
    teacher: PretrainRole = PretrainRole(steps=1000, noise_rate=0.5)
    student: PretrainRole = PretrainRole(steps=1500, noise_rate=0.55)
    batch_size: int = Field(256, ge=1)
    learning_rate: float = Field(2e-3, gt=0)
    warmup_steps: int = Field(50, ge=0)
    # Gate on greedy accuracy of the base models; re-initialise (new seed) up to max_retries.
    gate_min_accuracy: float = Field(0.2, ge=0.0, le=1.0)
    gate_max_accuracy: float = Field(0.7, ge=0.0, le=1.0)
    gate_eval_size: int = Field(512, ge=16)
    max_retries: int = Field(2, ge=0)
    heal: HealConfig = HealConfig()


class AllocationConfig(Section):
    # Share of the budget held out for Stage 3 (student GRPO) in the s2d_stage3 arm.
    stage3_fraction: float = Field(0.25, ge=0.0, lt=1.0)


class GRPOStageConfig(Section):
    steps: int = Field(150, ge=1)
    learning_rate: float = Field(2e-4, gt=0)
    warmup_steps: int = Field(20, ge=0)
    num_generations: int = Field(8, ge=2)
    prompts_per_step: int = Field(
        16,
        ge=1,
        description="prompts per optimizer step, all processes together (each sampled num_generations times)",
    )
    micro_batch_size: int | None = Field(None, ge=1, description=MICRO_BATCH)
    beta: float = Field(0.0, ge=0.0)
    epsilon: float = Field(0.2, gt=0.0)
    epsilon_high: float = Field(0.28, gt=0.0)
    temperature: float = Field(1.0, gt=0.0)
    max_completion_length: int = Field(4, ge=1)
    loss_type: Literal["dapo", "grpo", "dr_grpo", "bnpo"] = "dapo"


class RolloutsConfig(Section):
    samples_per_prompt: int = Field(1, ge=1)
    temperature: float = Field(1.0, gt=0.0)
    max_completion_length: int = Field(4, ge=1)
    max_prompts: int | None = Field(None, ge=1)
    batch_size: int = Field(256, ge=1)


class WarmupConfig(Section):
    loss: Literal["forward_kl", "sft"] = "forward_kl"
    steps: int = Field(100, ge=1)  # the step count, or the cap when kl_target is set
    learning_rate: float = Field(3e-4, gt=0)
    warmup_steps: int = Field(20, ge=0)
    batch_size: int = Field(128, ge=1, description=SEQUENCES_PER_STEP)
    micro_batch_size: int | None = Field(None, ge=1, description=MICRO_BATCH)
    # C2 as a stopping rule: with a target, warmup stops once KL(student || teacher) on the student's
    # own samples of `kl_prompts` unlabeled prompts (evaluate's C2 measure) falls below it, checked
    # every `kl_check_every` steps. null: a fixed step count, which keeps the arms compute-matched.
    kl_target: float | None = Field(None, gt=0)
    kl_check_every: int = Field(10, ge=1)
    kl_prompts: int = Field(64, ge=1)


class OPDConfig(Section):
    steps: int = Field(150, ge=1)
    learning_rate: float = Field(3e-4, gt=0)
    warmup_steps: int = Field(20, ge=0)
    batch_size: int = Field(128, ge=1, description=SEQUENCES_PER_STEP)
    micro_batch_size: int | None = Field(None, ge=1, description=MICRO_BATCH)
    temperature: float = Field(1.0, gt=0.0)
    # 1.0 = reverse KL(student || teacher), 0.0 = forward KL, 0.5 = JSD.
    beta: float = Field(1.0, ge=0.0, le=1.0)
    max_completion_length: int = Field(4, ge=1)
    # A teacher served by `trl vllm-serve --model <teacher>` (its own GPUs) instead of one loaded next
    # to the student: TRL's experimental ServerDistillationTrainer, which scores with the teacher's
    # top-k log-probabilities only (a sparse approximation of the full-vocabulary KL).
    teacher_server_url: str | None = None


class StudentRLConfig(GRPOStageConfig):
    """Stage 3; it runs for the `s2d_stage3` / `s2d_stage3_replay` arms when they are in `arms`."""

    learning_rate: float = Field(1e-4, gt=0)
    steps: int = Field(50, ge=1)


class EvaluateConfig(Section):
    k: int = Field(8, ge=1)
    temperature: float = Field(1.0, gt=0.0)
    max_completion_length: int = Field(4, ge=1)
    max_problems: int | None = Field(None, ge=1)
    # Prompts (from the unlabeled pool) on which C2's teacher-student KL is measured.
    kl_prompts: int = Field(256, ge=1)
    batch_size: int = Field(256, ge=1)


class C1GateConfig(Section):
    """Stage 1 must improve the teacher before distillation spends compute on it: on the first
    `problems` eval problems, the RL teacher's avg_at_k (k samples at teacher_rl's temperature and
    completion length) must beat the raw teacher's by more than `min_gain`, or the stages that distil
    from it stop with a report."""

    min_gain: float = Field(0.02, ge=-1.0, le=1.0)
    problems: int = Field(128, ge=1)
    k: int = Field(8, ge=1)
    override: bool = False  # true: distil anyway (the stage metrics still record the failed gate)


class PromoteGateConfig(Section):
    """`s2d promote` moves `champion` to the challenger only when its avg_at_k beats the baseline arm's (same
    budget) and the champion's by more than `min_gain`: a gap inside the eval's noise is not an improvement."""

    min_gain: float = Field(0.01, ge=0.0, le=1.0)


class GatesConfig(Section):
    c1: C1GateConfig = C1GateConfig()
    promote: PromoteGateConfig = PromoteGateConfig()


class RuntimeConfig(Section):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Mixed-precision (bf16 autocast) training, weights kept at models.dtype; on a CPU too. auto: on where
    # inference_dtype's auto picks bfloat16. Off by default: on a 2-core AMX CPU it trained SmolLM2 1.2-1.3x
    # faster but moved the distillation losses 5-10 % (bench/RESULTS.md, section 3b).
    bf16: bool | Literal["auto"] = False
    gradient_checkpointing: bool = False
    use_vllm: bool = False
    torch_threads: int | None = Field(None, ge=1)
    # The dtype the sampling and scoring stages (C1 gate, rollouts, evaluate) load a model in; training keeps
    # models.dtype. auto: bfloat16 for a model s2d did not build, on hardware that multiplies in bf16 natively
    # (models.inference_dtype has the rule), else models.dtype.
    inference_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    # Where prepared inputs are cached across runs (a derived student once healed), like downloaded models:
    # null is $S2D_CACHE, else ~/.cache/s2d; a relative path is under the project root.
    cache_dir: str | None = None
    checkpoint_steps: int | None = Field(25, ge=1)  # save a resumable checkpoint every N steps
    # Multi-GPU: training stages relaunch themselves under `accelerate launch --config_file <this>`
    # (infra/accelerate/*.yaml: DeepSpeed ZeRO-3 or FSDP); null = one process.
    accelerate_config: str | None = None
    num_processes: int | None = Field(None, ge=1)  # overrides the accelerate config's count
    # vLLM generation (GRPO, OPD through TRL; rollouts directly): "colocate" shares the training GPUs,
    # "server" talks to `trl vllm-serve` at vllm_server_url.
    vllm_mode: Literal["colocate", "server"] = "colocate"
    vllm_server_url: str | None = None
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0.0, le=1.0)
    vllm_tensor_parallel_size: int = Field(1, ge=1)
    # Where the sampling and scoring stages (C1 gate, rollouts, evaluate) put a model. "single": all of it
    # on `device`. "spread": across every visible GPU (transformers device_map "auto", each GPU's share
    # capped by its free memory). "auto": single when the weights fit one GPU's free memory, spread
    # otherwise: a model that fits runs fastest whole on one GPU (a spread model runs its layers one
    # GPU after another), and one that does not fit can only run spread.
    inference_placement: Literal["auto", "single", "spread"] = "auto"


class FlowConfig(Section):
    # The Prefect flow runs each per-arm stage as one task per arm. How many of one stage's arms train
    # at once: 1 keeps a 2-core machine at one training at a time. Not a stage setting, though on CPU
    # the results change with the thread count each training gets (unless runtime.torch_threads fixes it).
    parallel_arms: int = Field(1, ge=1)
    # Where those units run. None: on the worker that runs the flow run, each in its own process with
    # its share of the cores (and GPUs). A deployment ("s2d-unit/unit", prefect.yaml): each unit is a
    # run of it, which any worker polling its queue picks up; the workers bring their own cores or
    # GPUs and must see the same project directory (infra/README "Arms in parallel").
    unit_deployment: str | None = Field(None, pattern=r"^[^/]+/[^/]+$")
    # A unit run that no worker takes within this many seconds fails the pipeline, naming the queue
    # and the command that starts a worker for it (a busy pool needs more).
    unit_pickup_timeout_s: float = Field(600.0, gt=0)
    # A running unit whose flow run has sent no heartbeat for this long is taken as lost with its
    # worker: it is marked Crashed and retried (resuming from its last checkpoint). Keep it above twice
    # the units' PREFECT_FLOWS_HEARTBEAT_FREQUENCY (prefect.yaml sets 30 s; Prefect's minimum is 30).
    unit_lost_after_s: float = Field(120.0, ge=60)


class DvcConfig(Section):
    # How dvc.yaml runs the per-arm stages (`s2d dvc-units` writes dvc_units.yaml from this): one DVC
    # stage each (false: 10 stages, the least overhead), or one per unit (true: a change to one arm's
    # settings reruns only that arm, and units can run on different nodes; each unit pays a process
    # start, torch import, MLflow run and DVC bookkeeping: 19.5 % overhead against 9.8 % on the default).
    per_arm_stages: bool = False


class Config(Section):
    profile: str = "tiny"
    # A run whose settings differ from the project's params.yaml is an experiment, kept under
    # experiments/<name>/ (s2d_pipeline/experiments.py names it); set a name to choose it.
    experiment: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    seed: int = 0
    budget: int = 64
    artifacts_dir: str = "artifacts"
    metrics_dir: str = "metrics"
    checkpoints_dir: str = "checkpoints"  # trainer checkpoints of unfinished runs (not a DVC output)
    # Which arms of the comparison to run (s2d_pipeline/arms.py defines them).
    arms: list[str] = Field(default_factory=lambda: list(SPECS))
    tracking: TrackingConfig = TrackingConfig()
    task: TaskConfig = ArithmeticTaskConfig()
    data: DataConfig = DataConfig()
    models: ModelsConfig = ModelsConfig()
    prepare: PrepareConfig = PrepareConfig()
    allocation: AllocationConfig = AllocationConfig()
    teacher_rl: GRPOStageConfig = GRPOStageConfig()
    rollouts: RolloutsConfig = RolloutsConfig()
    warmup: WarmupConfig = WarmupConfig()
    opd: OPDConfig = OPDConfig()
    student_rl: StudentRLConfig = StudentRLConfig()
    grpo_direct: GRPOStageConfig = GRPOStageConfig(learning_rate=1e-4)
    evaluate: EvaluateConfig = EvaluateConfig()
    gates: GatesConfig = GatesConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    flow: FlowConfig = FlowConfig()
    dvc: DvcConfig = DvcConfig()

    @field_validator("arms")
    @classmethod
    def _known_arms(cls, arms: list[str]) -> list[str]:
        if not arms:
            raise ValueError(f"no arm to run: list at least one of {list(SPECS)}")
        unknown = [a for a in arms if a not in SPECS]
        if unknown:
            raise ValueError(f"unknown arm(s) {unknown}; known arms: {list(SPECS)}")
        if len(set(arms)) != len(arms):
            raise ValueError(f"an arm is listed twice: {arms}")
        return arms

    # Not a params key: where relative paths resolve (the directory s2d runs in).
    root: Path = Field(default_factory=Path.cwd, exclude=True)

    def path(self, rel: str | Path) -> Path:
        p = Path(rel)
        return p if p.is_absolute() else self.root / p

    @property
    def artifacts(self) -> Path:
        return self.path(self.artifacts_dir)

    @property
    def metrics(self) -> Path:
        return self.path(self.metrics_dir)

    def params_hash(self) -> str:
        payload = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _format_errors(source: str, exc: ValidationError) -> str:
    lines = [f"{source}: invalid params ({exc.error_count()} problem(s)):"]
    for err in exc.errors():
        loc = list(err["loc"])
        if loc[:1] == ["task"] and len(loc) > 1 and loc[1] in TASK_NAMES:
            del loc[1]  # the union's tag: `task.digits`, not `task.arithmetic.digits`
        key = ".".join(str(p) for p in loc) or "<top level>"
        if err["type"] == "extra_forbidden":
            lines.append(f"  - unknown key '{key}' (check its spelling and section)")
        else:
            got = err.get("input")
            got_s = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"  - key '{key}': {err['msg']}{got_s}")
    return "\n".join(lines)


def params_file(params: str | Path | None = None) -> Path:
    """The params file: `params`, else `$S2D_PARAMS`, else ./params.yaml."""
    return Path(params or os.environ.get("S2D_PARAMS", DEFAULT_PARAMS))


def params_source(params: str | Path | None, overrides: dict | None) -> str:
    """What an error blames: the params file, or the overrides on top of it."""
    source = str(params_file(params))
    return f"overrides {json.dumps(overrides)} (on {source})" if overrides else source


def load_config(
    params: str | Path | None = None,
    overrides: dict | None = None,
    *,
    root: str | Path | None = None,
) -> Config:
    """Load and validate params (default: `$S2D_PARAMS` or ./params.yaml).

    `overrides` is a nested dict applied on top (used by tests and flow parameters). The models and
    data the params point at are not looked at here (`s2d_pipeline.inputs.load_checked_config`).
    """
    params = params_file(params)
    if not params.exists():
        raise ConfigError(f"{params}: params file not found (run s2d from the project directory)")
    try:
        raw = yaml.safe_load(params.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{params}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{params}: top level must be a mapping of keys, got {type(raw).__name__}")
    if not overrides:
        return config_from_dict(raw, source=str(params), root=root)
    try:
        return config_from_dict(deep_merge(raw, overrides), source=str(params), root=root)
    except ConfigError:
        config_from_dict(raw, source=str(params), root=root)  # the file's own error
    # The file alone is valid, so the overrides broke it: name them, not the file.
    return config_from_dict(deep_merge(raw, overrides), source=params_source(params, overrides), root=root)


def config_from_dict(raw: dict, *, source: str = "<params>", root: str | Path | None = None) -> Config:
    if "root" in raw:
        raise ConfigError(f"{source}: invalid params:\n  - unknown key 'root'")
    raw = merge_over_defaults(raw)
    try:
        cfg = Config.model_validate({**raw, "root": Path(root or Path.cwd()).resolve()})
    except ValidationError as exc:
        raise ConfigError(_format_errors(source, exc)) from None
    return cfg


def default_params() -> dict:
    """Every params key at its default (what `params.yaml` spells out; a test checks they agree)."""
    return Config().model_dump(mode="json", exclude={"root"})


def merge_over_defaults(raw: dict) -> dict:
    """`raw` on top of the defaults, so a profile holds only what differs and a partly given section
    keeps the defaults of the keys it omits. A `task` of another kind replaces the default task's
    settings instead of merging with them (they belong to another task)."""
    defaults = default_params()
    task = raw.get("task")
    if isinstance(task, dict) and task.get("name", defaults["task"]["name"]) != defaults["task"]["name"]:
        defaults.pop("task")
    return deep_merge(defaults, raw)


def deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_overrides(pairs: list[str]) -> dict:
    """`a.b=1` strings (CLI `-S`, like `dvc exp run -S`) to a nested dict; values parsed as YAML."""
    out: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override '{pair}' must look like key.subkey=value")
        key, value = pair.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for depth, part in enumerate(parts[:-1], start=1):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):  # `budget=1` then `budget.x=2`
                raise ConfigError(
                    f"override '{pair}' conflicts with '{'.'.join(parts[:depth])}' set to a value by another override"
                )
        parsed = _yaml_scalar(value)
        if isinstance(node.get(parts[-1]), dict) and not isinstance(parsed, dict):  # `budget.x=2` then `budget=1`
            raise ConfigError(f"override '{pair}' conflicts with other overrides that set keys under '{key.strip()}'")
        node[parts[-1]] = parsed
    return out


def _yaml_scalar(text: str):
    value = yaml.safe_load(text)
    if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string; a number was meant
        try:
            return float(value)
        except ValueError:
            return value
    return value
