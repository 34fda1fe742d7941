"""WorldModel: manifest checks, ONNX Runtime sessions, providers, encode/rollout, FLOPs.

The model is tests/tiny_model.py's: real ONNX files run by the real onnxruntime. Only the
CPU provider exists on this machine; TensorRT/CUDA are requested to exercise the fallback,
and their provider options are checked as data (no GPU here to run them).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

import tiny_model
from wmpc.config import ModelConfig, build_config
from wmpc.model import (
    ManifestError,
    ModelInputError,
    ModelLoadError,
    WorldModel,
    onnx_flops,
    provider_options,
    read_manifest,
    trt_profile_shapes,
)

CPU = ["CPUExecutionProvider"]
GPU_FIRST = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """One tiny model for the module; tests that damage it work on a copy."""
    return tiny_model.build_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def model_dir(built, tmp_path) -> Path:
    """A private copy of the tiny model that a test may edit."""
    return Path(shutil.copytree(built, tmp_path / "model"))


def edit_manifest(model_dir: Path, change) -> None:
    """Apply `change(manifest_dict)` to manifest.json in place."""
    path = model_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def rehash(model_dir: Path) -> None:
    """Make every sha256 in the manifest match the files again."""
    edit_manifest(
        model_dir,
        lambda m: [
            entry.update(sha256=tiny_model.sha256(model_dir / entry["path"]))
            for by_precision in m["files"].values()
            for entry in by_precision.values()
        ],
    )


# ---- loading and running -----------------------------------------------------------------


@pytest.mark.parametrize("precision", ["int8", "fp32"])
def test_loads_checks_and_runs_both_precisions(built, precision):
    model = WorldModel.load(built, precision, providers=CPU)
    assert model.precision == precision and model.provider == "CPUExecutionProvider"
    assert model.degraded == ""
    assert model.latent_dim == tiny_model.LATENT_DIM
    assert model.control_period_s == 0.05
    np.testing.assert_array_equal(model.action_space.low, tiny_model.ACTION_LOW)
    np.testing.assert_array_equal(model.action_space.high, tiny_model.ACTION_HIGH)
    assert model.action_space.units == ("m", "m", "m", "N")
    assert {name: spec.unit for name, spec in model.heads.items()} == {
        name: unit for name, (_, unit) in tiny_model.HEADS.items()
    }
    assert model.modalities["tactile"]["rows"] == tiny_model.TACTILE[0]

    ee = np.array([0.45, 0.05, 0.12])
    z = model.encode(tiny_model.tiny_inputs(ee))
    assert z.shape == (1, tiny_model.LATENT_DIM) and z.dtype == np.float32
    np.testing.assert_allclose(z[0, :3], ee, atol=1e-6)

    actions = np.zeros((5, 4, 4))
    actions[:, :, 0] = np.linspace(-0.02, 0.02, 5)[:, None]  # K different x steps
    heads = model.rollout(z, actions)
    assert set(heads) == set(tiny_model.HEADS)
    for name, (size, _) in tiny_model.HEADS.items():
        assert heads[name].shape == (5, 4, size)
    expected_ee = ee + np.cumsum(actions[..., :3], axis=1)  # the tiny model integrates steps
    np.testing.assert_allclose(heads["ee_position_m"], expected_ee, atol=1e-6)
    # z given once or per sample gives the same rollout
    again = model.rollout(np.repeat(z, 5, axis=0), actions)
    np.testing.assert_array_equal(again["ee_position_m"], heads["ee_position_m"])


def test_default_precision_is_the_manifests(built):
    assert WorldModel.load(built, providers=CPU).precision == "int8"


def test_from_config_uses_the_parameters(built):
    config = build_config(
        ModelConfig, {"model_dir": str(built), "precision": "fp32", "providers": CPU}
    )
    model = WorldModel.from_config(config)
    assert model.precision == "fp32" and model.provider == "CPUExecutionProvider"


QDQ_CLEANUP = "session.enable_quant_qdq_cleanup"


def _cleanup_entry(session) -> str | None:
    try:
        return session.get_session_options().get_session_config_entry(QDQ_CLEANUP)
    except RuntimeError:  # onnxruntime's answer for a key that was never set
        return None


@pytest.mark.parametrize("cleanup", [True, False])
def test_cpu_sessions_get_one_thread_and_the_qdq_cleanup_by_default(built, cleanup):
    values = {"model_dir": str(built), "providers": GPU_FIRST, "qdq_cleanup": cleanup}
    model = WorldModel.from_config(build_config(ModelConfig, values))
    for session in (model.encoder_session, model.rollout_session):
        assert session.get_session_options().intra_op_num_threads == 1
        assert _cleanup_entry(session) == ("1" if cleanup else None)
    two = WorldModel.from_config(build_config(ModelConfig, {**values, "intra_op_threads": 2}))
    assert two.rollout_session.get_session_options().intra_op_num_threads == 2


def test_unavailable_providers_are_skipped_with_one_warning_each_and_degraded_once(built, caplog):
    caplog.set_level(logging.WARNING, logger="wmpc.model")
    model = WorldModel.load(built, "int8", providers=GPU_FIRST)
    assert model.provider == "CPUExecutionProvider"
    assert "TensorrtExecutionProvider" in model.degraded
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("TensorrtExecutionProvider is not available" in m for m in messages) == 1
    assert sum("CUDAExecutionProvider is not available" in m for m in messages) == 1
    assert sum("degraded" in m for m in messages) == 1


def test_no_available_provider_is_an_error_naming_what_exists(built):
    with pytest.raises(ModelLoadError, match="CPUExecutionProvider"):
        WorldModel.load(built, providers=["CUDAExecutionProvider"])


def test_tensorrt_gets_int8_options_and_a_shape_profile():
    profile = {
        "z": ((1, 16), (512, 16), (512, 16)),
        "actions": ((1, 1, 4), (512, 3, 4), (512, 3, 4)),
    }
    options = provider_options("TensorrtExecutionProvider", "int8", 0, "/tmp/trt", profile)
    assert options["trt_int8_enable"] == "True"
    assert options["trt_engine_cache_enable"] == "True"
    assert options["trt_profile_min_shapes"] == "z:1x16,actions:1x1x4"
    assert options["trt_profile_max_shapes"] == "z:512x16,actions:512x3x4"
    fp32 = provider_options("TensorrtExecutionProvider", "fp32", 0, "/tmp/trt")
    assert fp32["trt_int8_enable"] == "False" and fp32["trt_fp16_enable"] == "False"
    assert "trt_profile_min_shapes" not in fp32
    assert provider_options("CPUExecutionProvider", "int8") == {}


def test_tensorrt_profile_covers_the_planner_budget(built):
    manifest = read_manifest(built)
    latent = tiny_model.LATENT_DIM
    assert trt_profile_shapes(manifest, "rollout", 512, 3) == {
        "z": ((1, latent), (512, latent), (512, latent)),
        "actions": ((1, 1, 4), (512, 3, 4), (512, 3, 4)),
    }
    one_image = (1, 3, *tiny_model.IMAGE_HW)
    assert trt_profile_shapes(manifest, "encoder", 512, 3)["image"] == (one_image,) * 3


def test_encode_and_rollout_refuse_inputs_that_do_not_fit(built):
    model = WorldModel.load(built, "fp32", providers=CPU)
    inputs = tiny_model.tiny_inputs([0.5, 0.0, 0.2])
    with pytest.raises(ModelInputError, match="missing \\['audio'\\]"):
        model.encode({k: v for k, v in inputs.items() if k != "audio"})
    with pytest.raises(ModelInputError, match="'image' has shape"):
        model.encode({**inputs, "image": inputs["image"][:, :, :8]})
    z = model.encode(inputs)
    with pytest.raises(ModelInputError, match=r"\(K, H, 4\)"):
        model.rollout(z, np.zeros((8, 3, 3)))
    with pytest.raises(ModelInputError, match="rollout z"):
        model.rollout(np.zeros((2, tiny_model.LATENT_DIM)), np.zeros((8, 3, 4)))


# ---- the manifest contract ---------------------------------------------------------------


def _set(path: str, value):
    """A manifest change that sets the item at a dotted path ('a.b.0.c')."""

    def change(m):
        keys = path.split(".")
        node = m
        for key in keys[:-1]:
            node = node[int(key)] if key.isdigit() else node[key]
        last = keys[-1]
        node[int(last) if last.isdigit() else last] = value

    return change


def _drop(key: str):
    return lambda m: m.pop(key)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_drop("action_space"), r"missing required key\(s\) \['action_space'\]"),
        (_set("format", "other/2"), "'format'"),
        (
            _set("latent_dim", 32),
            r"outputs.encoder.z.shape' = \[null, 16\], expected \[null, 32\]",
        ),
        (_set("action_space.low.0", 0.05), "'action_space.low'.*must be below high"),
        (_set("action_space.units.3", "m"), "unit 'm' does not match the name 'normal_force_n'"),
        (_set("action_space.names.3", "force_n"), "'action_space.names'"),
        (_set("action_space.high", [0.02, 0.02, 0.02]), "'action_space.high'.*need 4"),
        (_set("control_period_s", 0), "'control_period_s'"),
        (
            _set("outputs.rollout.1.unit", "m"),
            "unit 'm' does not match the name 'contact_force_n'",
        ),
        (
            _set("outputs.rollout.0.shape", [None, 3]),
            r"ee_position_m.shape' = \[null, 3\] must be",
        ),
        (_set("inputs.encoder.3.shape", [None, 17]), "inputs.encoder.proprio.shape"),
        (
            _set("modalities.tactile.rows", 5),
            r"normalisation.tactile.shape \[4, 4, 3\] does not broadcast against the input "
            r"shape \[5, 4, 3\]",
        ),
        (_set("normalisation.proprio.std.0", 0.0), r"normalisation.proprio.*std > 0"),
        (_set("normalisation.gripper", {"mean": [0], "std": [1]}), "names no encoder input"),
        (_set("files.rollout.int8.sha256", "0" * 64), "files.rollout.int8: sha256 of"),
        (_set("files.encoder.fp32.path", "missing.onnx"), "files.encoder.fp32: file not found"),
        (_drop("files"), r"missing required key\(s\) \['files'\]"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_manifest_mismatches_are_refused_naming_the_key(model_dir, change, message):
    edit_manifest(model_dir, change)
    with pytest.raises(ManifestError, match=message):
        WorldModel.load(model_dir, providers=CPU)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        # consistent with itself, but not with the ONNX graphs
        (
            lambda m: m["outputs"]["rollout"][4].update(name="block_m"),
            r"'outputs.rollout' names .*block_m.*, but rollout.int8.onnx has",
        ),
        (
            _set("inputs.encoder.0.dtype", "float16"),
            r"'inputs.encoder.image': encoder.int8.onnx has dtype tensor\(float\)",
        ),
        (
            lambda m: (
                _set("modalities.image.height", 8)(m),
                _set("inputs.encoder.0.shape", [None, 3, 8, 16])(m),
                _set("normalisation.image.shape", [3, 1, 1])(m),
            ),
            "'inputs.encoder.image': encoder.int8.onnx has dim 2 = 16, manifest says 8",
        ),
    ],
)
def test_manifest_that_disagrees_with_the_onnx_files_is_refused(model_dir, change, message):
    edit_manifest(model_dir, change)
    with pytest.raises(ManifestError, match=message):
        WorldModel.load(model_dir, providers=CPU)


def test_a_missing_precision_is_named(model_dir):
    edit_manifest(model_dir, lambda m: [m["files"][p].pop("fp32") for p in ("encoder", "rollout")])
    assert WorldModel.load(model_dir, providers=CPU).precision == "int8"
    with pytest.raises(ManifestError, match=r"'files.encoder.fp32' is missing"):
        WorldModel.load(model_dir, "fp32", providers=CPU)


def test_truncated_onnx_is_caught_by_its_hash(model_dir):
    path = model_dir / "rollout.int8.onnx"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ManifestError, match=r"files.rollout.int8: sha256 of .*rollout.int8.onnx"):
        WorldModel.load(model_dir, providers=CPU)


@pytest.mark.parametrize("precision", ["int8", "fp32"])
@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_onnx_with_a_matching_hash_is_a_clear_load_error(model_dir, damage, precision):
    # int8 files are parsed first for the CPU kernel rewrite (wmpc.int8_cpu); fp32 go
    # straight to ONNX Runtime. Either way the error names the file and the likely cause.
    name = "encoder.int8.onnx" if precision == "int8" else "encoder.onnx"
    path = model_dir / name
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3] if damage == "truncate" else b"\x08\x07junk" * 50)
    rehash(model_dir)
    with pytest.raises(ModelLoadError, match=rf"{name}: .*is it truncated or corrupt\?"):
        WorldModel.load(model_dir, precision, providers=CPU)


def test_read_manifest_reports_bad_json(model_dir):
    (model_dir / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        read_manifest(model_dir)
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(model_dir / "nowhere")


# ---- FLOPs -------------------------------------------------------------------------------


def test_flops_count_the_matrix_products_of_the_graph(built):
    model = WorldModel.load(built, "fp32", providers=CPU)
    k, h, hidden, latent = 512, 3, 32, tiny_model.LATENT_DIM
    # actions @ wa, z @ wz, tanh(h) @ wr: the tiny rollout's three MatMuls
    expected = 2 * (k * h * 4 * hidden + k * latent * hidden + k * h * hidden * 1)
    assert model.rollout_flops(k, h) == expected
    assert model.rollout_flops(2 * k, h) == 2 * expected
    conv = 4 * 8 * 8 * (3 * 3 * 3)  # output elements x (Cin x kernel)
    n_feat = 4 * 8 * 8 + 8 * 4 + 4 * 4 * 3 + tiny_model.PROPRIO_SIZE
    assert model.encoder_flops() == 2 * (conv + n_feat * (latent - 9))
    # The int8 graph does the same products as integer MatMuls.
    int8 = WorldModel.load(built, "int8", providers=CPU)
    assert int8.rollout_flops(k, h) == expected


def test_flops_count_a_scan_body_once_per_step(tmp_path):
    import onnx
    import onnxruntime as ort

    path = tmp_path / "scan.onnx"
    onnx.save(tiny_model.scan_rollout_graph(np.random.default_rng(0), hidden=8), path)
    k, h = 64, 5
    z, actions = np.ones((k, 8), np.float32), np.ones((k, h, 4), np.float32)
    (ee,) = ort.InferenceSession(str(path)).run(["ee_position_m"], {"z": z, "actions": actions})
    assert ee.shape == (k, h, 3)  # a real, runnable Scan
    per_step = 2 * (k * (8 + 4) * 8 + k * 8 * 3)
    assert onnx_flops(path, {"z": (k, 8), "actions": (k, h, 4)}) == h * per_step


def test_flops_refuse_unknown_input_shapes(built):
    with pytest.raises(Exception, match="no shape given for input 'actions'"):
        onnx_flops(built / "rollout.onnx", {"z": (4, tiny_model.LATENT_DIM)})
