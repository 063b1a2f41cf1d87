import shutil
from pathlib import Path

import pytest
import yaml

from s2d_pipeline.config import Config, config_from_dict, load_config, parse_overrides
from s2d_pipeline.errors import ConfigError, S2DError
from s2d_pipeline.inputs import check_inputs_exist, load_checked_config

REPO = Path(__file__).resolve().parents[1]


def _flat(node, prefix=""):
    if isinstance(node, dict):
        return {k: v for key, sub in node.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): node}


def test_params_yaml_spells_out_every_default_key_by_key():
    """One source of defaults: config.py. params.yaml holds every key (DVC tracks them) at exactly
    the default value, so a default changed in one place and not the other fails here."""
    import yaml

    from s2d_pipeline.config import default_params

    written = _flat(yaml.safe_load((REPO / "params.yaml").read_text()))
    defaults = _flat(default_params())
    assert sorted(written) == sorted(defaults)
    assert {k: v for k, v in written.items() if defaults[k] != v} == {}
    cfg = load_config(REPO / "params.yaml", root=REPO)
    assert cfg.profile == "tiny" and cfg.models.source == "build"
    assert cfg.model_dump(exclude={"root"}) == Config().model_dump(exclude={"root"})


def test_profiles_hold_only_what_differs_and_partial_sections_keep_their_defaults(tmp_path):
    import yaml

    from s2d_pipeline.config import default_params

    defaults = _flat(default_params())
    for profile in sorted((REPO / "profiles").glob("*.yaml")):
        for key, value in _flat(yaml.safe_load(profile.read_text())).items():
            if key != "task.name":  # the tag that picks the task's settings
                assert defaults.get(key, object()) != value, f"{profile.name}: {key} repeats the default"
    # A section given in part keeps the section's defaults for the rest (not the field type's).
    cfg = config_from_dict({"models": {"teacher": {"num_layers": 4}}}, root=tmp_path)
    assert (cfg.models.teacher.num_layers, cfg.models.teacher.hidden_size) == (4, Config().models.teacher.hidden_size)
    # Another task replaces the default task's settings instead of merging with them.
    math = config_from_dict({"task": {"name": "math"}, "data": {"generate": False}}, root=tmp_path)
    assert math.task.name == "math" and not hasattr(math.task, "digits")
    with pytest.raises(ConfigError, match=r"unknown key 'task.digits'"):
        config_from_dict({"task": {"name": "math", "digits": 2}}, root=tmp_path)
    with pytest.raises(ConfigError, match=r"key 'task.digits'"):
        config_from_dict({"task": {"digits": 0}}, root=tmp_path)


def test_dvc_yaml_runs_the_package_stage_list_in_order():
    import yaml

    from s2d_pipeline.arms import PER_ARM_STAGES
    from s2d_pipeline.stages import STAGES

    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert tuple(dvc["stages"]) == STAGES
    for name, stage in dvc["stages"].items():
        if name in PER_ARM_STAGES:  # expanded over dvc_units.yaml: the whole stage, or one stage per unit
            assert stage["foreach"] == f"${{dvc_units.{name}}}"
            stage = stage["do"]
            assert stage["cmd"] == f"s2d {name} ${{item.args}}"
            assert stage["outs"] == ["${item.out}", "${item.metrics}"]
        else:
            assert stage["cmd"] == f"s2d {name}"
        assert f"s2d_pipeline/stages/{name}.py" in stage["deps"]


def test_dvc_units_run_whole_stages_or_one_per_unit_and_a_stale_file_is_refused(tmp_path, monkeypatch):
    """dvc_units.yaml is written from the params (`s2d dvc-units`); a stale one is refused with what
    to run, which is what a stage under `dvc repro` sees."""
    from s2d_pipeline import dvc_units
    from s2d_pipeline.cli import main

    default = load_config(REPO / "params.yaml", root=REPO)
    dvc_units.check(default)  # the committed file is current
    whole = yaml.safe_load((REPO / "dvc_units.yaml").read_text())["dvc_units"]
    assert {stage: list(items) for stage, items in whole.items()} == {s: ["all"] for s in whole}
    assert whole["student_rl"]["all"] == {
        "args": "",
        "out": "artifacts/student_rl",
        "metrics": "metrics/student_rl",
        "arms": "arms",  # which units a whole stage runs depends on the arms
        "student": "artifacts/opd",
        "params": "grpo_direct",
        "params_also": "student_rl",
    }
    assert dvc_units.address(default, "warmup", "no_opd") == "warmup@all"

    monkeypatch.chdir(tmp_path)  # the CLI's project root
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"dvc": {"per_arm_stages": True}}))
    shutil.copy(REPO / "dvc_units.yaml", tmp_path / "dvc_units.yaml")
    per_unit = load_config(params, root=tmp_path)
    with pytest.raises(S2DError, match=r"does not match params.yaml's `arms` \(s2d, .*`dvc.per_arm_stages` \(true\)"):
        dvc_units.check(per_unit)
    assert main(["--params", str(params), "dvc-units", "--check"]) == 2
    assert main(["--params", str(params), "dvc-units"]) == 0
    dvc_units.check(per_unit)
    units = yaml.safe_load((tmp_path / "dvc_units.yaml").read_text())["dvc_units"]
    assert units["student_rl"]["grpo_direct"] == {
        "args": "--arm grpo_direct",
        "out": "artifacts/student_rl/grpo_direct",
        "metrics": "metrics/student_rl/grpo_direct.json",
        "arms": "seed",  # one unit's work does not depend on the other arms
        "student": "artifacts/prepare/student",
        "params": "grpo_direct",
        "params_also": "grpo_direct",
    }
    assert units["student_rl"]["s2d_stage3_replay"]["student"] == "artifacts/opd/s2d_stage3"  # the shared bridge
    assert set(units["warmup"]) == {"s2d", "s2d_stage3", "raw_bridge", "no_opd"}
    assert units["rollouts"]["raw"]["out"] == "artifacts/rollouts/raw.jsonl"
    assert dvc_units.address(per_unit, "warmup", "no_opd") == "warmup@no_opd"


def test_a_task_that_cannot_generate_data_is_refused_when_asked_to(tmp_path):
    with pytest.raises(ConfigError, match=r"data.generate' is true but task 'math' has no generator"):
        check_inputs_exist(config_from_dict({"task": {"name": "math"}}, root=tmp_path))


def test_every_task_setting_has_an_adapter():
    """config's task settings and the adapters in tasks/ go by the same names."""
    from s2d_pipeline.config import TASK_NAMES
    from s2d_pipeline.tasks import TASKS

    assert sorted(TASKS) == sorted(TASK_NAMES)


def test_gpu_smoke_profile_refuses_missing_models(tmp_path):
    cfg = load_config(REPO / "profiles" / "gpu-smoke.yaml", root=tmp_path)
    assert cfg.runtime.device == "cuda" and cfg.models.source == "path" and set(cfg.arms) == {"s2d", "grpo_direct"}
    with pytest.raises(ConfigError, match="models.teacher.path"):
        load_checked_config(REPO / "profiles" / "gpu-smoke.yaml", root=tmp_path)


@pytest.mark.parametrize(
    "profile",
    sorted(p for p in (REPO / "profiles").glob("*.yaml") if p.stem not in ("gpu-smoke", "smollm2-arith")),
    ids=lambda p: p.stem,
)
def test_real_profiles_validate_and_refuse_missing_models(profile, tmp_path):
    cfg = load_config(profile, root=tmp_path)
    assert cfg.models.source == "path" and not cfg.data.generate
    with pytest.raises(ConfigError) as err:
        load_checked_config(profile, root=tmp_path)
    msg = str(err.value)
    assert "models.teacher.path" in msg and "never downloads" in msg and "data.labels" in msg


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'teacher_rl.learnig_rate'"):
        config_from_dict({"teacher_rl": {"learnig_rate": 1e-3}}, root=tmp_path)


def test_wrong_type_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"key 'budget'.*integer.*'many'"):
        config_from_dict({"budget": "many"}, root=tmp_path)


def test_nested_wrong_type_and_range(tmp_path):
    with pytest.raises(ConfigError) as err:
        config_from_dict({"prepare": {"noise_rate": 1.5}, "models": {"student": {"num_heads": "two"}}}, root=tmp_path)
    assert "prepare.noise_rate" in str(err.value) and "models.student.num_heads" in str(err.value)


def test_heads_must_divide_width(tmp_path):
    with pytest.raises(ConfigError, match="divisible"):
        config_from_dict({"models": {"teacher": {"hidden_size": 30, "num_heads": 4}}}, root=tmp_path)


def test_overrides_parse_like_dvc_set():
    assert parse_overrides(["budget=32", "teacher_rl.learning_rate=1e-3", "arms=[s2d]"]) == {
        "budget": 32,
        "teacher_rl": {"learning_rate": 1e-3},
        "arms": ["s2d"],
    }
    with pytest.raises(ConfigError):
        parse_overrides(["budget"])


def test_invalid_yaml_is_reported_with_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("budget: [1, 2\n")
    with pytest.raises(ConfigError, match="params.yaml: not valid YAML"):
        load_config(bad, root=tmp_path)


def test_local_model_directory_satisfies_path_profile(tmp_path):
    for role in ("teacher", "student"):
        (tmp_path / role).mkdir()
        (tmp_path / role / "config.json").write_text("{}")
    for split in ("labels", "prompts", "eval"):
        (tmp_path / f"{split}.jsonl").write_text("")
    cfg = config_from_dict(
        {
            "task": {"name": "math"},
            "data": {"generate": False, "labels": "labels.jsonl", "prompts": "prompts.jsonl", "eval": "eval.jsonl"},
            "models": {"source": "path", "teacher": {"path": "teacher"}, "student": {"path": "student"}},
        },
        root=tmp_path,
    )
    check_inputs_exist(cfg)
    assert cfg.path(cfg.models.teacher.path) == tmp_path / "teacher"


def test_smollm2_profile_imports_a_gguf_teacher_and_cuts_the_student_from_it(tmp_path):
    cfg = load_checked_config(REPO / "profiles" / "smollm2-arith.yaml", root=tmp_path)  # the GGUF file is installed
    assert cfg.models.source == "gguf" and cfg.models.chat_template and cfg.data.generate
    assert cfg.task.name == "math" and cfg.task.sums is not None and cfg.prepare.heal.steps > 0
    assert cfg.artifacts_dir != Config().artifacts_dir  # beside the default run's outputs
    with pytest.raises(ConfigError, match=r"models.teacher.gguf.*no GGUF file at"):
        load_checked_config(
            REPO / "profiles" / "smollm2-arith.yaml", {"models": {"teacher": {"gguf": "nope.gguf"}}}, root=tmp_path
        )
    with pytest.raises(ConfigError, match=r"package 'not_a_package' is not installed"):
        load_checked_config(
            REPO / "profiles" / "smollm2-arith.yaml",
            {"models": {"teacher": {"gguf": "not_a_package:x.gguf"}}},
            root=tmp_path,
        )
