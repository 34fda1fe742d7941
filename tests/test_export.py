"""ONNX export: graphs check, dynamic K and H, ONNX Runtime matches torch; `wmpc train` writes
a manifest whose hashes, inputs and outputs agree with the files."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from wmpc.cli import main
from wmpc.model import read_manifest
from wmpc.preprocess import INPUT_NAMES, Preprocessor
from wmpc.training import export, manifest
from wmpc.training.model import HEADS
from wmpc.training.quantize import session


@pytest.fixture(scope="module")
def exported(tiny_model):
    """(train result, model dir, a held-out episode) of conftest's tiny model."""
    result, out, held, _ = tiny_model
    return result, out, held[0]


def test_graphs_pass_the_checker_with_dynamic_batch_and_horizon(exported):
    _, out, _ = exported
    encoder = onnx.load(out / export.ENCODER_FILE)
    rollout = onnx.load(out / export.ROLLOUT_FILE)
    for model in (encoder, rollout):
        onnx.checker.check_model(model, full_check=True)
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [v.name for v in encoder.graph.input] == list(INPUT_NAMES)
    assert [v.name for v in rollout.graph.output] == list(HEADS)
    assert [n.op_type for n in rollout.graph.node].count("Scan") == 1
    inputs, outputs = manifest.graph_io(out / export.ROLLOUT_FILE)
    assert inputs == [
        {"name": "z", "shape": [None, 16], "dtype": "float32"},
        {"name": "actions", "shape": [None, None, 4], "dtype": "float32"},
    ]
    assert all(o["shape"][:2] == [None, None] for o in outputs)


@pytest.mark.parametrize(("k", "h"), [(1, 1), (5, 12), (64, 3)])
def test_onnx_runtime_matches_torch(exported, k, h):
    result, out, episode = exported
    pre_rows = np.arange(k) % episode.ticks
    pre = Preprocessor(result.modalities, result.normalisation)
    inputs = pre.normalise({name: episode.arrays[name][pre_rows] for name in INPUT_NAMES})
    rng = np.random.default_rng(k * 100 + h)
    actions = rng.uniform([-0.02] * 3 + [0], [0.02] * 3 + [10], (k, h, 4)).astype(np.float32)
    diffs = export.compare_with_torch(
        result.net, out / export.ENCODER_FILE, out / export.ROLLOUT_FILE, inputs, actions
    )
    assert set(diffs) == {"z", *HEADS}
    assert max(diffs.values()) < 1e-4, diffs


def test_step_graph_round_trips_through_the_scan(exported, tmp_path):
    result, out, _ = exported
    rollout = onnx.load(out / export.ROLLOUT_FILE)
    step = export.step_from_rollout(rollout)
    assert [v.name for v in step.graph.input] == ["z", "action_unit"]
    rebuilt = export.with_step(rollout, step)
    onnx.save(rebuilt, tmp_path / "rebuilt.onnx")
    z = np.random.default_rng(0).normal(size=(3, 16)).astype(np.float32)
    actions = np.full((3, 6, 4), 0.01, np.float32)
    first = session(out / export.ROLLOUT_FILE).run(None, {"z": z, "actions": actions})
    second = session(tmp_path / "rebuilt.onnx").run(None, {"z": z, "actions": actions})
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    # The step alone, fed the action scaled to [-1, 1], advances z as the torch network does
    # and carries the ee the rollout's first column reports.
    net = result.net
    unit = (torch.from_numpy(actions[:, 0]) - net.action_centre) / net.action_half_range
    z_next, ee, _ = session(step.SerializeToString()).run(
        None, {"z": z, "action_unit": unit.numpy()}
    )
    with torch.no_grad():
        expected = net.next(torch.from_numpy(z), torch.from_numpy(actions[:, 0]))
    np.testing.assert_allclose(z_next, expected.numpy(), atol=1e-5)
    np.testing.assert_array_equal(ee, z_next[:, -3:])
    ee_m = ee * net.ee_input_std.numpy() + net.ee_input_mean.numpy()
    np.testing.assert_allclose(ee_m, first[0][:, 0], atol=1e-6)


def test_wmpc_train_writes_a_manifest_that_matches_its_files(synthetic_bags, tmp_path, capsys):
    out = tmp_path / "models" / "tiny"
    argv = [
        "train",
        str(synthetic_bags),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--horizon",
        "2",
        "--batch-size",
        "64",
        "--json",
    ]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["model_dir"] == str(out)
    document = json.loads((out / "manifest.json").read_text())
    assert document["format"] == "wmpc-world-model/1"
    assert document["name"] == "tiny" and document["precision"] == "fp32"
    assert document["latent_dim"] == 64 and document["control_period_s"] == 0.05
    for graph in ("encoder", "rollout"):
        entry = document["files"][graph]["fp32"]
        assert entry["sha256"] == manifest.sha256_file(out / entry["path"])
        inputs, outputs = manifest.graph_io(out / entry["path"])
        assert document["inputs"][graph] == inputs
        assert [
            {k: v for k, v in o.items() if k != "unit"} for o in document["outputs"][graph]
        ] == (outputs)
    units = {o["name"]: o["unit"] for o in document["outputs"]["rollout"]}
    assert units == {name: unit for name, (_, unit) in HEADS.items()}
    assert document["inputs"]["encoder"][0] == {
        "name": "image",
        "shape": [None, 3, 64, 64],
        "dtype": "float32",
    }
    assert document["modalities"]["tactile"] == {
        "topic": "/tactile/image",
        "rows": 4,
        "cols": 4,
        "channels": 3,
    }
    assert set(document["normalisation"]) == set(INPUT_NAMES)
    assert document["action_space"]["high"] == [0.02, 0.02, 0.02, 10.0]
    training = document["training"]
    assert training["episodes"] == 4 and len(training["held_out_episodes"]) == 1
    assert training["tasks"] == {"press": 4}
    assert max(training["onnx_vs_torch_max_abs_diff"].values()) < 1e-4
    for relative, digest in training["artifacts"].items():
        assert manifest.sha256_file(out / relative) == digest
    assert (out / "training" / "loss.png").is_file()
    assert set(document["accuracy"]["fp32"]) == set(HEADS)
    assert set(document["accuracy"]["fp32"]["ee_position_m"]) == {"h1", "h5", "h10"}
    assert read_manifest(out).raw["files"] == document["files"]  # the runtime's reader

    # A changed file no longer matches its hash; an existing model needs --force.
    with open(out / "rollout.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(manifest.ManifestError, match="the manifest expects"):
        read_manifest(out)
    assert main(argv) == 2
    assert "already holds a model" in capsys.readouterr().err


def test_wmpc_train_with_an_image_crop_writes_it_into_the_manifest(synthetic_bags, tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text(
        "wmpc_train:\n  ros__parameters:\n    image_crop: [0.25, 0.8, 0.2375, 0.7625]\n"
    )
    out = tmp_path / "cropped"
    argv = ["train", str(synthetic_bags), "--out", str(out), "--epochs", "1", "--horizon", "2"]
    assert main([*argv, "--config", str(config)]) == 0
    document = read_manifest(out).raw
    crop = {"top": 0.25, "bottom": 0.8, "left": 0.2375, "right": 0.7625}
    assert document["modalities"]["image"]["crop"] == crop
    stored = document["training"]["dataset_settings"]["preprocess"]["image_crop"]
    assert stored == [0.25, 0.8, 0.2375, 0.7625]  # what the arrays were built with
    assert Preprocessor.from_manifest(document).crop_box == tuple(crop.values())
    bad = tmp_path / "bad.yaml"
    bad.write_text("wmpc_train:\n  ros__parameters:\n    image_crop: [0.8, 0.25, 0, 1]\n")
    assert main([*argv, "--force", "--config", str(bad)]) == 2
