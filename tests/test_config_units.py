"""`-S key=value` overrides (`config.parse_overrides`), rejection of non-finite floats, and where
the MLflow store resolves (`runtime.tracking_uri`)."""

from __future__ import annotations

import math

import pytest

from s2d_pipeline.config import config_from_dict, parse_overrides
from s2d_pipeline.errors import ConfigError
from s2d_pipeline.runtime import tracking_uri

# ---- parse_overrides ----------------------------------------------------------------------------


def _leaf(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree[part]
    return tree


@pytest.mark.parametrize(
    ("pair", "expected"),
    [
        ("task.name=math", {"task": {"name": "math"}}),
        ("tracking.uri=sqlite:///x.db", {"tracking": {"uri": "sqlite:///x.db"}}),
        ("tracking.uri=http://host:5000/?a=b", {"tracking": {"uri": "http://host:5000/?a=b"}}),  # split on first =
        ("tracking.experiment=s2d-dev", {"tracking": {"experiment": "s2d-dev"}}),
    ],
)
def test_strings_stay_strings(pair, expected):
    got = parse_overrides([pair])
    assert got == expected
    assert type(_leaf(got, pair.split("=", 1)[0])) is str


@pytest.mark.parametrize(
    ("pair", "value", "kind"),
    [
        ("teacher_rl.learning_rate=1e-3", 1e-3, float),  # YAML 1.1 reads "1e-3" as a string
        ("teacher_rl.learning_rate=3.0e-4", 3e-4, float),
        ("prepare.teacher.noise_rate=0.5", 0.5, float),
        ("budget=32", 32, int),  # integers stay integers
        ("runtime.use_vllm=true", True, bool),
        ("evaluate.max_problems=null", None, type(None)),
    ],
)
def test_scalars_are_typed(pair, value, kind):
    leaf = _leaf(parse_overrides([pair]), pair.split("=", 1)[0])
    assert type(leaf) is kind and leaf == value


def test_nested_keys_merge_into_one_section():
    assert parse_overrides(["teacher_rl.steps=3", "teacher_rl.learning_rate=1e-3", "budget=8"]) == {
        "teacher_rl": {"steps": 3, "learning_rate": 1e-3},
        "budget": 8,
    }


def test_finite_overrides_build_a_config(tmp_path):
    cfg = config_from_dict(
        parse_overrides(["teacher_rl.learning_rate=1e-3", "prepare.teacher.noise_rate=0.25", "budget=8"]),
        root=tmp_path,
    )
    assert cfg.teacher_rl.learning_rate == 1e-3 and cfg.prepare.teacher.noise_rate == 0.25 and cfg.budget == 8


@pytest.mark.parametrize("value", ["nan", ".nan", "NaN", "inf", ".inf", "-.inf", "Infinity"])
@pytest.mark.parametrize(
    "key", ["teacher_rl.learning_rate", "prepare.teacher.noise_rate", "teacher_rl.beta", "opd.temperature"]
)
def test_non_finite_floats_are_rejected_naming_the_key(tmp_path, key, value):
    overrides = parse_overrides([f"{key}={value}"])
    with pytest.raises(ConfigError) as info:
        config_from_dict(overrides, root=tmp_path)
    assert f"'{key}'" in str(info.value)


def test_non_finite_float_from_a_params_dict_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"'teacher_rl\.beta'"):
        config_from_dict({"teacher_rl": {"beta": math.inf}}, root=tmp_path)


@pytest.mark.parametrize("pairs", [["budget=1", "budget.x=2"], ["budget.x=2", "budget=1"]])
def test_conflicting_keys_raise_config_error_naming_the_key(pairs):
    with pytest.raises(ConfigError, match=r"'budget"):
        parse_overrides(pairs)


@pytest.mark.parametrize(
    "pairs",
    [["teacher_rl.steps=3", "teacher_rl.steps.x=1"], ["teacher_rl.steps.x=1", "teacher_rl.steps=3"]],
)
def test_conflicting_nested_keys_raise_config_error(pairs):
    with pytest.raises(ConfigError, match=r"teacher_rl\.steps"):
        parse_overrides(pairs)


def test_repeated_key_last_wins():
    assert parse_overrides(["budget=1", "budget=2"]) == {"budget": 2}


def test_pair_without_equals_is_rejected():
    with pytest.raises(ConfigError, match="budget"):
        parse_overrides(["budget"])


# ---- tracking_uri -------------------------------------------------------------------------------


@pytest.fixture
def no_env_uri(monkeypatch):
    monkeypatch.delenv("S2D_TRACKING_URI", raising=False)


def _cfg(root, uri):
    return config_from_dict({"tracking": {"uri": uri}}, root=root)


def test_relative_sqlite_resolves_against_root_not_cwd(tmp_path, monkeypatch, no_env_uri):
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # a DVC stage or worker running in another directory
    uri = tracking_uri(_cfg(project, "sqlite:///mlflow.db"))
    assert uri == f"sqlite:///{project.resolve() / 'mlflow.db'}"
    assert uri.startswith("sqlite:////")  # an absolute path after the scheme's three slashes


def test_relative_sqlite_in_subdirectory(tmp_path, no_env_uri):
    assert tracking_uri(_cfg(tmp_path, "sqlite:///runs/m.db")) == f"sqlite:///{tmp_path.resolve() / 'runs' / 'm.db'}"


@pytest.mark.parametrize("uri", ["sqlite:////abs/x.db", "http://mlflow.internal:5000", "file:///tmp/mlruns"])
def test_absolute_and_remote_uris_are_kept(tmp_path, no_env_uri, uri):
    assert tracking_uri(_cfg(tmp_path, uri)) == uri


def test_env_uri_wins_over_params(tmp_path, monkeypatch):
    monkeypatch.setenv("S2D_TRACKING_URI", "http://shared:5000")
    assert tracking_uri(_cfg(tmp_path, "sqlite:///mlflow.db")) == "http://shared:5000"


def test_empty_env_uri_falls_back_to_params(tmp_path, monkeypatch):
    monkeypatch.setenv("S2D_TRACKING_URI", "")
    assert tracking_uri(_cfg(tmp_path, "sqlite:////abs/x.db")) == "sqlite:////abs/x.db"
