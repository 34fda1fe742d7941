"""INT8 quantization: deterministic calibration, QDQ structure, accuracy, `wmpc quantize`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from wmpc.cli import main
from wmpc.model import read_manifest
from wmpc.preprocess import INPUT_NAMES
from wmpc.training import export, manifest, quantize
from wmpc.training.model import HEADS


@pytest.fixture(scope="module")
def fp32_model(tiny_model):
    """(model dir with fp32 files, held-out episodes, preprocessor) of conftest's tiny model."""
    _, out, held, pre = tiny_model
    return out, held, pre


@pytest.fixture(scope="module")
def cli_model(synthetic_bags, tmp_path_factory):
    """A model from `wmpc train`, one short epoch (the full-size model, 64 x 64 images)."""
    out = tmp_path_factory.mktemp("cli") / "model"
    argv = ["train", str(synthetic_bags), "--out", str(out), "--epochs", "1", "--horizon", "2"]
    assert main([*argv, "--batch-size", "64"]) == 0
    return out


def copy_fp32(source, target):
    target.mkdir()
    for name in (export.ENCODER_FILE, export.ROLLOUT_FILE):
        shutil.copy(source / name, target / name)
    return target


def test_a_rollout_from_an_older_export_is_refused_with_the_command_that_fixes_it(
    fp32_model, tmp_path
):
    source, held, pre = fp32_model
    out = copy_fp32(source, tmp_path / "model")
    # An older export's step took the physical action as "action" (no prelude).
    rollout = onnx.load(out / export.ROLLOUT_FILE)
    body = export.scan_node(rollout).attribute[0].g
    old, new = export.STEP_PREFIX + "action_unit", export.STEP_PREFIX + "action"
    body.input[1].name = new
    for node in body.node:
        node.input[:] = [new if name == old else name for name in node.input]
    onnx.save(rollout, out / export.ROLLOUT_FILE)
    with pytest.raises(quantize.QuantizeError, match=r"older export.*--reexport"):
        quantize.quantize_model(out, held, pre)


def test_calibration_is_deterministic(fp32_model, tmp_path):
    source, held, pre = fp32_model
    digests = []
    for run in ("a", "b"):
        paths = quantize.quantize_model(copy_fp32(source, tmp_path / run), held, pre, seed=0)
        digests.append({k: manifest.sha256_file(p) for k, p in paths.items()})
    assert digests[0] == digests[1]
    # The sampled calibration actions come from the seed: another seed, another rollout file.
    other = quantize.quantize_model(copy_fp32(source, tmp_path / "c"), held, pre, seed=1)
    assert manifest.sha256_file(other["rollout"]) != digests[0]["rollout"]
    assert manifest.sha256_file(other["encoder"]) == digests[0]["encoder"]


def test_int8_graphs_are_symmetric_per_channel_qdq_and_close_to_fp32(fp32_model, tmp_path):
    source, held, pre = fp32_model
    out = copy_fp32(source, tmp_path / "model")
    paths = quantize.quantize_model(out, held, pre)
    encoder = onnx.load(paths["encoder"])
    ops = [n.op_type for n in encoder.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    initialisers = {i.name: numpy_helper.to_array(i) for i in encoder.graph.initializer}
    convolutions = 0
    for node in encoder.graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        scale, zero = initialisers.get(node.input[1]), initialisers.get(node.input[2])
        assert zero is None or not zero.any()  # symmetric: every zero point is 0
        data = initialisers.get(node.input[0])
        if data is not None and data.ndim >= 2:  # weights are int8 (biases int32)
            assert data.dtype == np.int8
        if data is not None and data.ndim == 4:  # a convolution's weights: one scale each
            assert scale.shape == (data.shape[0],)
            convolutions += 1
    assert convolutions == 4
    rollout = onnx.load(paths["rollout"])
    # The latent state and the ee position stay float: rounding them to 8 bits every step
    # would cost millimetres per step.
    body = export.scan_node(rollout).attribute[0].g
    producers = {out: n.op_type for n in body.node for out in n.output}
    assert producers[body.output[0].name] != "DequantizeLinear"
    encoder_producers = {out: n.op_type for n in encoder.graph.node for out in n.output}
    for node in encoder.graph.node:
        if node.op_type == "Slice":
            assert encoder_producers.get(node.input[0]) != "DequantizeLinear"
    # By default every input's first layer is INT8 too.
    assert first_layers_rounded(encoder) == {"tactile": [True, True], "audio": [True, True]}

    fp32, _ = quantize.measure_accuracy(
        out / export.ENCODER_FILE, out / export.ROLLOUT_FILE, held, pre
    )
    int8, windows = quantize.measure_accuracy(paths["encoder"], paths["rollout"], held, pre)
    assert windows == sum(e.window_starts(10).size for e in held) > 0
    for head in HEADS:
        for h in ("h1", "h5", "h10"):
            assert int8[head][h] == pytest.approx(fp32[head][h], rel=0.25, abs=0.02), (head, h)
    # Outputs of the two precisions on the same inputs stay close.
    episode = held[0]
    inputs = pre.normalise({name: episode.arrays[name][:8] for name in INPUT_NAMES})
    actions = episode.arrays["action"][np.arange(8)[:, None] + np.arange(5)].astype(np.float32)
    results = []
    for enc, roll in (
        (out / export.ENCODER_FILE, out / export.ROLLOUT_FILE),
        (paths["encoder"], paths["rollout"]),
    ):
        (z,) = quantize.session(enc).run(["z"], inputs)
        results.append(quantize.session(roll).run(["ee_position_m"], {"z": z, "actions": actions}))
    assert np.abs(results[0][0] - results[1][0]).max() < 0.02  # metres


def first_layers_rounded(encoder: onnx.ModelProto) -> dict[str, list[bool]]:
    """For the skin's and the audio's first Gemm: are its input and weight INT8-rounded?"""
    producers = {out: n.op_type for n in encoder.graph.node for out in n.output}
    first = {n.name.split("/")[1]: n for n in encoder.graph.node if n.name.endswith(".0/Gemm")}
    return {
        branch: [producers.get(name) == "DequantizeLinear" for name in first[branch].input[:2]]
        for branch in ("tactile", "audio")
    }


def test_float_inputs_keep_that_inputs_first_layer_fp32_only(fp32_model, tmp_path):
    source, held, pre = fp32_model
    out = copy_fp32(source, tmp_path / "model")
    paths = quantize.quantize_model(out, held, pre, float_inputs=("tactile",))
    encoder = onnx.load(paths["encoder"])
    assert first_layers_rounded(encoder) == {"tactile": [False, False], "audio": [True, True]}
    with pytest.raises(quantize.QuantizeError, match=r"\['nose'\] are not model inputs"):
        quantize.quantize_model(out, held, pre, float_inputs=("tactile", "nose"))


def test_wmpc_quantize_updates_the_manifest(synthetic_bags, cli_model, capsys):
    out = cli_model
    capsys.readouterr()
    assert main(["quantize", str(out), "--calib", str(synthetic_bags), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    document = read_manifest(out).raw  # the runtime's reader: checks every sha256
    assert document["precision"] == "int8"
    assert document["files"]["encoder"]["int8"]["path"] == "encoder.int8.onnx"
    assert (out / "encoder.onnx").is_file() and (out / "rollout.int8.onnx").is_file()
    assert set(document["accuracy"]) == {"fp32", "int8"}
    assert summary["accuracy"] == document["accuracy"]
    for precision in ("fp32", "int8"):
        assert set(document["accuracy"][precision]) == set(HEADS)
        assert all(
            v is not None for v in document["accuracy"][precision]["ee_position_m"].values()
        )
    info = document["accuracy_info"]
    assert info["episodes"] == document["training"]["held_out_episodes"]
    assert info["calibration"]["format"] == "QDQ"
    assert info["calibration"]["float_inputs"] == []
    assert document["inputs"]["encoder"][0]["shape"] == [None, 3, 64, 64]
    # A misspelt input is refused with the names to choose from, the model left as it was.
    argv = ["quantize", str(out), "--calib", str(synthetic_bags), "--float-inputs", "touch"]
    assert main(argv) == 2
    assert "['touch'] are not model inputs" in capsys.readouterr().err
    assert read_manifest(out).raw == document


def test_calibrating_on_training_episodes_only_is_refused(
    synthetic_bags, cli_model, tmp_path, capsys
):
    out = cli_model
    document = json.loads((out / "manifest.json").read_text())
    only_train = tmp_path / "train_bags"
    only_train.mkdir()
    for name in document["training"]["train_episodes"]:
        shutil.copytree(synthetic_bags / name, only_train / name)
    capsys.readouterr()
    assert main(["quantize", str(out), "--calib", str(only_train)]) == 2
    assert "was used for training" in capsys.readouterr().err


def test_the_runtime_runs_int8_files_on_the_cpu_kernels_unless_told_not_to(
    synthetic_bags, cli_model, tmp_path
):
    from wmpc.model import WorldModel

    model_dir = Path(shutil.copytree(cli_model, tmp_path / "model"))
    assert main(["quantize", str(model_dir), "--calib", str(synthetic_bags)]) == 0
    cpu = ["CPUExecutionProvider"]
    fast = WorldModel.load(model_dir, "int8", providers=cpu)
    plain = WorldModel.load(model_dir, "int8", providers=cpu, cpu_int8_kernels=False)
    fp32 = WorldModel.load(model_dir, "fp32", providers=cpu)
    assert fast.int8_rewrites["rollout"]["qgemm"] >= 3 and fast.int8_rewrites["encoder"]
    assert plain.int8_rewrites == {} and fp32.int8_rewrites == {}
    assert fast.int8_cpu_kernels and not plain.int8_cpu_kernels and not fp32.int8_cpu_kernels
    rng = np.random.default_rng(0)
    z = rng.standard_normal((8, fast.latent_dim)).astype(np.float32)
    low, high = fast.action_space.low, fast.action_space.high
    actions = rng.uniform(low, high, size=(8, 3, low.size))
    ee = {m: m.rollout(z, actions)["ee_position_m"] for m in (fast, plain, fp32)}
    # Both int8 ways stay near fp32: the ee is carried in float through the rollout.
    assert np.abs(ee[fast] - ee[fp32]).max() < 0.01 and np.abs(ee[plain] - ee[fp32]).max() < 0.01
    # The lowered int8 graph unrolled for the planner's horizon computes the same numbers.
    before = fast.rollout(z, actions)
    assert fast.prepare_horizon(3)
    after = fast.rollout(z, actions)
    for name, value in before.items():
        np.testing.assert_array_equal(after[name], value)


def test_reexport_writes_the_fp32_files_from_the_checkpoint(
    synthetic_bags, cli_model, tmp_path, capsys
):
    model = Path(shutil.copytree(cli_model, tmp_path / "model"))
    document = json.loads((model / "manifest.json").read_text())
    document["training"]["onnx_vs_torch_max_abs_diff"] = {"z": 99.0}  # a stale record
    (model / "manifest.json").write_text(json.dumps(document))
    assert main(["quantize", str(model), "--calib", str(synthetic_bags), "--reexport"]) == 0
    assert "exported encoder.onnx and rollout.onnx again" in capsys.readouterr().out
    written = read_manifest(model).raw  # every sha256 checked, the new fp32 files' included
    diffs = written["training"]["onnx_vs_torch_max_abs_diff"]
    assert set(diffs) == {"z", *HEADS} and max(diffs.values()) < 1e-3
    assert set(written["accuracy"]) == {"fp32", "int8"}
    # Not this model's checkpoint: refused, nothing exported.
    (model / "checkpoint.pt").write_bytes(b"other weights")
    assert main(["quantize", str(model), "--calib", str(synthetic_bags), "--reexport"]) == 2
    assert "not the checkpoint these ONNX files were exported from" in capsys.readouterr().err


def test_a_re_recorded_training_episode_is_not_calibration_data(
    synthetic_bags, cli_model, tmp_path
):
    """In the training folder, a training bag whose bytes changed is still a training bag."""
    bags = Path(shutil.copytree(synthetic_bags, tmp_path / "bags"))
    model = Path(shutil.copytree(cli_model, tmp_path / "model"))
    document = json.loads((model / "manifest.json").read_text())
    document["training"]["data_dir"] = str(bags)
    (model / "manifest.json").write_text(json.dumps(document))
    re_recorded = document["training"]["train_episodes"][0]
    (bags / re_recorded / "notes.txt").write_text("recorded again\n")  # a new fingerprint
    assert main(["quantize", str(model), "--calib", str(bags)]) == 0
    calibrated_on = read_manifest(model).raw["accuracy_info"]["episodes"]
    assert re_recorded not in calibrated_on
    assert calibrated_on == document["training"]["held_out_episodes"]


def test_cpu_int8_kernels_compute_the_qdq_graph_as_written(fp32_model, tmp_path):
    """wmpc.int8_cpu: unsigned activations and QGemm, and not one output value changed.

    The reference is ONNX Runtime running the Q/DQ graph as written (no Q/DQ cleanup, no
    rewrite), which is what TensorRT executes; ONNX Runtime's own fusion leaves the hidden
    layers of the dynamics in float, so it is not that reference.
    """
    import onnxruntime as ort

    from wmpc.int8_cpu import lower_for_cpu
    from wmpc.model import session_options

    source, held, pre = fp32_model
    paths = quantize.quantize_model(copy_fp32(source, tmp_path / "model"), held, pre)
    CPU = ["CPUExecutionProvider"]
    episode = held[0]
    inputs = pre.normalise({name: episode.arrays[name][:16] for name in INPUT_NAMES})
    rng = np.random.default_rng(3)
    low, high = np.array(quantize.ACTION_LOW), np.array(quantize.ACTION_HIGH)
    actions = rng.uniform(low, high, size=(16, 4, low.size)).astype(np.float32)

    def both_ways(part: str, feed: dict) -> list[np.ndarray]:
        """Run `part` as written and lowered; assert the same outputs; return them."""
        written = onnx.load(paths[part])
        lowered, rewrites = lower_for_cpu(written)
        onnx.checker.check_model(lowered)
        assert rewrites.get("unsigned_QuantizeLinear", 0) > 0
        if part == "rollout":
            body = export.scan_node(lowered).attribute[0].g
            # the dynamics' three layers, the head trunk and the heads read quantized inputs:
            # all integer now. The one float product left adds z and the commanded ee step.
            assert rewrites["qgemm"] == 5
            assert sum(n.op_type == "QGemm" for n in body.node) == rewrites["qgemm"]
            gemms = [n for n in body.node if n.op_type == "Gemm"]
            assert len(gemms) == 1 and gemms[0].input[2] == body.input[0].name
        as_written = ort.InferenceSession(
            str(paths[part]), session_options(1, qdq_cleanup=False), providers=CPU
        )
        fast = ort.InferenceSession(
            lowered.SerializeToString(), session_options(1, qdq_cleanup=False), providers=CPU
        )
        expected, got = as_written.run(None, feed), fast.run(None, feed)
        for a, b in zip(expected, got, strict=True):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
        return expected

    (z,) = both_ways("encoder", inputs)
    both_ways("rollout", {"z": z, "actions": actions})
    # A float graph has nothing to rewrite.
    fp32 = onnx.load(source / export.ROLLOUT_FILE)
    lowered, rewrites = lower_for_cpu(fp32)
    assert rewrites == {} and lowered.SerializeToString() == fp32.SerializeToString()
