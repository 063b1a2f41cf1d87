"""Inference of a model too big for one GPU: the placement decision (one device, or spread over the
GPUs), where a placed model's inputs go, and the C1 gate's scoring done once under several processes.
No GPU here: the decision is a pure function of the GPUs' free memory, and a hand-made device map
with blocks offloaded to disk puts a model's weights where its first parameter does not say."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from s2d_pipeline.errors import ConfigError
from tests.helpers import MICRO, REPO

GIB = 2**30


def test_placement_spreads_only_what_one_gpu_cannot_hold():
    from s2d_pipeline.models import WEIGHTS_SHARE_OF_FREE_MEMORY, choose_placement

    # No GPU (runtime.device cpu, or none visible): the whole model on the CPU.
    assert choose_placement("auto", 140 * GIB, []) is None
    with pytest.raises(ConfigError, match="'spread' places a model across GPUs, and this run has none"):
        choose_placement("spread", 1, [])
    # An 8B teacher in bf16 (16 GiB) fits one H100: whole on GPU 0.
    assert choose_placement("auto", 16 * GIB, [80 * GIB] * 4) is None
    # A 70B teacher in bf16 (140 GiB) on 4 x 80 GiB: spread, each GPU capped below its free memory.
    share = int(80 * GIB * WEIGHTS_SHARE_OF_FREE_MEMORY)
    assert choose_placement("auto", 140 * GIB, [80 * GIB] * 4) == {0: share, 1: share, 2: share, 3: share}
    # GPU 0 already busy: what is free on each GPU is what counts.
    assert choose_placement("auto", 16 * GIB, [10 * GIB, 80 * GIB]) == {
        0: int(10 * GIB * WEIGHTS_SHARE_OF_FREE_MEMORY),
        1: share,
    }
    # Asked for: spread even when one GPU would do; single even when it would not (the user's call).
    assert choose_placement("spread", 16 * GIB, [80 * GIB] * 2) == {0: share, 1: share}
    assert choose_placement("single", 140 * GIB, [80 * GIB]) is None
    # Too big for one GPU with no second one, or for all of them: refused, sizes and ways out named.
    with pytest.raises(ConfigError, match=r"teacher: its weights take 140\.0 GiB.*GPU 0: 80\.0 GiB free.*bfloat16"):
        choose_placement("auto", 140 * GIB, [80 * GIB], "teacher")
    with pytest.raises(ConfigError, match=r"2 visible GPU\(s\).*vllm_tensor_parallel_size"):
        choose_placement("auto", 140 * GIB, [80 * GIB] * 2)


def test_weights_bytes_reads_the_sizes_from_the_safetensors_headers(tmp_path, micro_cfg):
    from s2d_pipeline.config import config_from_dict, deep_merge
    from s2d_pipeline.models import count_parameters, weights_bytes
    from tests.helpers import sharp_tiny_model

    model, tokenizer = sharp_tiny_model()
    model.save_pretrained(str(tmp_path))
    assert micro_cfg.models.dtype == "float32"
    assert weights_bytes(tmp_path, micro_cfg) == 4 * count_parameters(model)
    as_bf16 = config_from_dict(
        deep_merge(micro_cfg.model_dump(mode="json", exclude={"root"}), {"models": {"dtype": "bfloat16"}}),
        root=micro_cfg.root,
    )
    assert weights_bytes(tmp_path, as_bf16) == 2 * count_parameters(model)


def _untied_tiny_model(tmp_path):
    """A tiny Qwen2 with its own LM head (as large teachers have), saved to `tmp_path`."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from s2d_pipeline.models import build_char_tokenizer
    from s2d_pipeline.tasks.arithmetic import VOCAB

    tokenizer = build_char_tokenizer(list(VOCAB))
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 1)  # outputs that depend on the prompt, so a mix-up shows
    model.save_pretrained(str(tmp_path))
    return model, tokenizer


def test_inputs_go_where_the_embeddings_run_and_scores_where_the_head_runs(tmp_path):
    """Embeddings and LM head offloaded (weights on the meta device, run on the CPU by accelerate's
    hooks), as blocks of a model too big for its GPUs are: sampling and scoring give what the
    unplaced model gives."""
    from transformers import AutoModelForCausalLM

    from s2d_pipeline.generation import device_of, generate_completions, head_device_of, score_completion_ids

    model, tokenizer = _untied_tiny_model(tmp_path / "model")
    placed = AutoModelForCausalLM.from_pretrained(
        str(tmp_path / "model"),
        device_map={"model.embed_tokens": "disk", "model.layers": "cpu", "model.norm": "cpu", "lm_head": "disk"},
        offload_folder=str(tmp_path / "offload"),
    )
    assert next(placed.parameters()).device.type == "meta"  # what the first parameter would have said
    assert device_of(placed).type == "cpu" and head_device_of(placed).type == "cpu"

    prompts = ["1+2=", "7+5=", "3+3="]
    expected = generate_completions(model, tokenizer, prompts, max_new_tokens=3, seed=0)
    assert generate_completions(placed, tokenizer, prompts, max_new_tokens=3, seed=0) == expected
    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    completion_ids = [c[0].token_ids for c in expected]
    pad = tokenizer.pad_token_id
    want = score_completion_ids(model, model, prompt_ids, completion_ids, pad_token_id=pad)
    got = score_completion_ids(placed, placed, prompt_ids, completion_ids, pad_token_id=pad)
    assert got["teacher_logprob"] == pytest.approx(want["teacher_logprob"], abs=1e-4)
    assert got["kl"] == pytest.approx(0.0, abs=1e-5) and got["tokens"] == want["tokens"]


def test_load_model_places_whole_on_the_device_without_gpus(tmp_path, micro_cfg):
    """A CPU run loads a model as before (no device map), whatever the model's size."""
    from s2d_pipeline.models import load_model

    _untied_tiny_model(tmp_path / "model")
    model = load_model(tmp_path / "model", micro_cfg, for_inference=True)
    assert getattr(model, "hf_device_map", None) is None and next(model.parameters()).device.type == "cpu"


# Runs `teacher_rl` in each of the processes torchrun starts (what `accelerate launch` does on GPUs;
# on CPUs it starts one). Stage 1's training is not under test: train_arm and the ledger are stubbed,
# so the stage goes straight to its C1 scoring, which writes one line per model scored, by rank.
TEACHER_RL_IN_EACH_PROCESS = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path

    from s2d_pipeline.config import load_config
    from s2d_pipeline.stages import teacher_rl

    root, overrides, marker = Path(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
    cfg = load_config(root / "params.yaml", overrides, root=root)
    real_score = teacher_rl.score

    def score_spy(*args, **kwargs):
        with open(marker, "a") as f:
            f.write(os.environ["RANK"] + "\\n")
        return real_score(*args, **kwargs)

    teacher_rl.score = score_spy
    teacher_rl.train_arm = lambda cfg, stage, key, out, train, summarise, **fields: dict(fields)
    teacher_rl.labeled_rows = lambda *args: []
    metrics = teacher_rl.run(cfg, arm="s2d")
    print(json.dumps({"rank": os.environ["RANK"], "gate": "c1_gate" in metrics["s2d"]}), flush=True)
    """
)


def test_c1_gate_scores_once_under_two_processes(project):
    from s2d_pipeline.config import deep_merge, load_config
    from s2d_pipeline.io import read_json, write_jsonl
    from s2d_pipeline.layout import base_model_dir, data_file, rl_teacher_dir, unit_metrics_dir
    from s2d_pipeline.models import save_model
    from s2d_pipeline.tasks import get_task
    from tests.helpers import sharp_tiny_model

    overrides = deep_merge(MICRO, {"gates": {"c1": {"problems": 4, "k": 2}}})
    cfg = load_config(project / "params.yaml", overrides, root=project)
    task = get_task(cfg.task)
    write_jsonl(data_file(cfg, "eval"), task.generate_splits(cfg.seed, 4, 4, 4)["eval"])
    model, tokenizer = sharp_tiny_model()
    for directory in (base_model_dir(cfg, "teacher"), rl_teacher_dir(cfg, "s2d")):
        save_model(model, tokenizer, directory)
    script, marker = project / "teacher_rl_in_each_process.py", project / "scored_by_rank.txt"
    script.write_text(TEACHER_RL_IN_EACH_PROCESS)

    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        + [str(script), str(project), json.dumps(overrides), str(marker)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    said = sorted(json.loads(line)["rank"] for line in done.stdout.splitlines() if line.startswith("{"))
    assert said == ["0", "1"]  # both processes ran the stage
    assert marker.read_text().split() == ["0", "0"]  # the raw and the RL teacher, each scored once, by rank 0
    assert "c1_gate" in read_json(unit_metrics_dir(cfg, "teacher_rl") / "s2d.json")
