"""Config dataclasses: defaults, YAML ros__parameters, and errors that name the parameter."""

from dataclasses import FrozenInstanceError, dataclass

import pytest

from wmpc.config import (
    ConfigError,
    build_config,
    describe,
    each_one_of,
    existing_file,
    length,
    load_config,
    one_of,
    param,
    positive,
    read_parameter_file,
)


@dataclass(frozen=True)
class ExampleConfig:
    rate_hz: float = param(20.0, "control rate", positive)
    provider: str = param("cpu", "inference provider", one_of("cpu", "cuda"))
    providers: tuple = param(["cpu"], "provider order", each_one_of("cpu", "cuda", "trt"))
    box_min_m: tuple = param([0.1, -0.5, 0.0], "workspace corner", length(3))
    model_file: str = param("", "model file", existing_file)
    samples: int = param(64, "samples", positive)
    verbose: bool = param(False, "log more")


def test_defaults_are_frozen_and_lists_become_tuples():
    cfg = build_config(ExampleConfig, {})
    assert cfg.rate_hz == 20.0 and cfg.box_min_m == (0.1, -0.5, 0.0)
    with pytest.raises(FrozenInstanceError):
        cfg.rate_hz = 5.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "values, fragment",
    [
        ({"rate_hz": -1.0}, "'rate_hz'"),
        ({"rate_hz": float("nan")}, "'rate_hz'"),
        ({"provider": "tpu"}, "'provider'"),
        ({"providers": ["cpu", "npu"]}, "'providers'"),
        ({"providers": []}, "'providers'"),
        ({"box_min_m": [0.0, 1.0]}, "'box_min_m'"),
        ({"model_file": "/nonexistent/model.onnx"}, "'model_file'"),
        ({"samples": "many"}, "'samples'"),
        ({"verbose": 1}, "'verbose'"),
        ({"nonsense": 1}, "nonsense"),
    ],
)
def test_bad_values_name_the_parameter(values, fragment):
    with pytest.raises(ConfigError, match=fragment):
        build_config(ExampleConfig, values)


def test_int_is_accepted_for_float_and_coerced():
    cfg = build_config(ExampleConfig, {"rate_hz": 50, "box_min_m": [0, 0, 0]})
    assert isinstance(cfg.rate_hz, float) and cfg.box_min_m == (0.0, 0.0, 0.0)


def test_parameter_file_merges_wildcard_then_node(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(
        "/**:\n  ros__parameters:\n    rate_hz: 10.0\n    other_concern: 3\n"
        "my_node:\n  ros__parameters:\n    samples: 128\n"
    )
    assert read_parameter_file(path, "my_node") == {
        "rate_hz": 10.0,
        "other_concern": 3,
        "samples": 128,
    }
    cfg = load_config(ExampleConfig, path, "my_node", provider="cuda")
    assert (cfg.rate_hz, cfg.samples, cfg.provider) == (10.0, 128, "cuda")


def test_node_section_unknown_key_is_an_error(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("my_node:\n  ros__parameters:\n    sample: 128\n")
    with pytest.raises(ConfigError, match="sample"):
        load_config(ExampleConfig, path, "my_node")


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("my_node: [1, 2", "not valid YAML"),
        ("my_node:\n  params:\n    a: 1\n", "ros__parameters"),
        ("- a\n- b\n", "must map"),
    ],
)
def test_malformed_parameter_files(tmp_path, text, fragment):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=fragment):
        read_parameter_file(path, "my_node")


def test_missing_parameter_file():
    with pytest.raises(ConfigError, match="not found"):
        read_parameter_file("/nonexistent.yaml", "x")


def test_describe_lists_every_parameter():
    names = [name for name, _, _ in describe(ExampleConfig)]
    assert names == [
        "rate_hz",
        "provider",
        "providers",
        "box_min_m",
        "model_file",
        "samples",
        "verbose",
    ]
