"""A tiny but real world model (ONNX encoder + rollout) and its manifest, for runtime tests.

The graphs are built with onnx.helper (no torch, so tests stay fast). The dynamics are
analytic where tests need to know the answer, and random-weight layers sit beside them so
the graphs have real matrix products for ONNX Runtime and the FLOP counter:

- the encoder reads the ee position out of the (normalised) proprio vector into z[0:3], puts
  the tiny world's fixed marker and block into z[3:6] and z[6:9], and fills z[9:] with a
  Conv + Gemm + Tanh embedding of image, audio, tactile and proprio;
- the rollout integrates the actions, ee_position_m[h] = ee + sum of steps up to h; the pad
  touches the table (z = 0) below 5 mm, where contact_force_n = commanded normal force; the
  block moves with the pad's step while the pad is within 4 cm of it.

The int8 files are the fp32 graphs through onnxruntime's dynamic quantization (weights of
the MatMul/Gemm layers to int8), so they load and run like a real quantized model.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
LATENT_DIM = 16
JOINTS = [f"panda_joint{i}" for i in range(1, 8)]
PROPRIO_SIZE = len(JOINTS) + 3 + 6
EE_SLICE = slice(len(JOINTS), len(JOINTS) + 3)
IMAGE_HW = (16, 16)
TACTILE = (4, 4, 3)
AUDIO = {"rate_hz": 16000, "window_samples": 1024, "n_fft": 256, "hop": 256, "n_mels": 8}
AUDIO_FRAMES = 1 + (AUDIO["window_samples"] - AUDIO["n_fft"]) // AUDIO["hop"]
MARKER_M = np.array([0.55, 0.10, 0.0])
BLOCK_M = np.array([0.50, -0.10, 0.025])
TABLE_Z_M = 0.0
CONTACT_BELOW_M = 0.005
BLOCK_REACH_M = 0.04
ACTION_LOW = [-0.02, -0.02, -0.02, 0.0]
ACTION_HIGH = [0.02, 0.02, 0.02, 10.0]
HEADS = {
    "ee_position_m": (3, "m"),
    "contact_force_n": (1, "N"),
    "contact_prob": (1, "1"),
    "marker_rel_m": (3, "m"),
    "block_position_m": (3, "m"),
}
# Normalisation of the proprio vector: the encoder undoes it for the ee position.
PROPRIO_MEAN = np.concatenate([np.zeros(7), [0.5, 0.0, 0.2], np.zeros(6)])
PROPRIO_STD = np.concatenate([np.ones(7), [0.1, 0.1, 0.1], np.full(6, 5.0)])


def _const(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def _ints(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.int64), name)


def _value(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def encoder_graph(rng: np.random.Generator) -> onnx.ModelProto:
    """image, audio, tactile, proprio (normalised, batch N) -> z (N, LATENT_DIM)."""
    n_feat = LATENT_DIM - 9
    conv_out = 4 * (IMAGE_HW[0] // 2) * (IMAGE_HW[1] // 2)
    n_in = conv_out + AUDIO["n_mels"] * AUDIO_FRAMES + int(np.prod(TACTILE)) + PROPRIO_SIZE
    inits = [
        _const("conv_w", rng.normal(0, 0.3, (4, 3, 3, 3))),
        _const("conv_b", np.zeros(4)),
        _const("fc_w", rng.normal(0, 1 / np.sqrt(n_in), (n_in, n_feat))),
        _const("fc_b", np.zeros(n_feat)),
        _const("ee_std", PROPRIO_STD[EE_SLICE]),
        _const("ee_mean", PROPRIO_MEAN[EE_SLICE]),
        _const("world", np.concatenate([MARKER_M, BLOCK_M])[None]),
        _const("zero", 0.0),
        _ints("ee_start", [EE_SLICE.start]),
        _ints("ee_end", [EE_SLICE.stop]),
        _ints("axis1", [1]),
    ]
    nodes = [
        helper.make_node(
            "Conv",
            ["image", "conv_w", "conv_b"],
            ["conv"],
            strides=[2, 2],
            pads=[1, 1, 1, 1],
            kernel_shape=[3, 3],
        ),
        helper.make_node("Relu", ["conv"], ["conv_relu"]),
        helper.make_node("Flatten", ["conv_relu"], ["f_image"], axis=1),
        helper.make_node("Flatten", ["audio"], ["f_audio"], axis=1),
        helper.make_node("Flatten", ["tactile"], ["f_tactile"], axis=1),
        helper.make_node(
            "Concat", ["f_image", "f_audio", "f_tactile", "proprio"], ["feat"], axis=1
        ),
        helper.make_node("Gemm", ["feat", "fc_w", "fc_b"], ["fc"]),
        helper.make_node("Tanh", ["fc"], ["embed"]),
        # ee position in metres, un-normalised: (N, 3)
        helper.make_node("Slice", ["proprio", "ee_start", "ee_end", "axis1"], ["ee_norm"]),
        helper.make_node("Mul", ["ee_norm", "ee_std"], ["ee_scaled"]),
        helper.make_node("Add", ["ee_scaled", "ee_mean"], ["ee"]),
        # The fixed marker and block, given the batch dimension by adding them to 0 * ee.
        helper.make_node("Mul", ["ee", "zero"], ["ee_zero"]),
        helper.make_node("Concat", ["ee_zero", "ee_zero"], ["zeros6"], axis=1),
        helper.make_node("Add", ["zeros6", "world"], ["world_n"]),
        helper.make_node("Concat", ["ee", "world_n", "embed"], ["z"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_encoder",
        [
            _value("image", ["N", 3, *IMAGE_HW]),
            _value("audio", ["N", AUDIO["n_mels"], AUDIO_FRAMES]),
            _value("tactile", ["N", *TACTILE]),
            _value("proprio", ["N", PROPRIO_SIZE]),
        ],
        [_value("z", ["N", LATENT_DIM])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def rollout_graph(rng: np.random.Generator) -> onnx.ModelProto:
    """z (K, LATENT_DIM), actions (K, H, 4) -> every head over the horizon (K, H, ...)."""
    hidden = 32
    inits = [
        _const("wa", rng.normal(0, 0.5, (4, hidden))),
        _const("wz", rng.normal(0, 0.5, (LATENT_DIM, hidden))),
        _const("wr", rng.normal(0, 0.1, (hidden, 1))),
        _const("table_z", TABLE_Z_M + CONTACT_BELOW_M),
        _const("inv_soft", 1.0 / 0.001),
        _const("block_reach", BLOCK_REACH_M),
        _const("inv_block_soft", 1.0 / 0.005),
        _const("xy_mask", [1.0, 1.0, 0.0]),
        _ints("i0", [0]),
        _ints("i2", [2]),
        _ints("i3", [3]),
        _ints("i4", [4]),
        _ints("i6", [6]),
        _ints("i9", [9]),
        _ints("axis_last", [-1]),
        _ints("axis1", [1]),
        _ints("axis_h", [1]),
    ]
    sl = helper.make_node
    nodes = [
        sl("Slice", ["actions", "i0", "i3", "axis_last"], ["step"]),  # (K, H, 3)
        sl("Slice", ["actions", "i3", "i4", "axis_last"], ["normal_n"]),  # (K, H, 1)
        sl("Slice", ["z", "i0", "i3", "axis1"], ["ee0"]),  # (K, 3)
        sl("Slice", ["z", "i3", "i6", "axis1"], ["marker0"]),
        sl("Slice", ["z", "i6", "i9", "axis1"], ["block0"]),
        sl("Unsqueeze", ["ee0", "axis_h"], ["ee0_h"]),  # (K, 1, 3)
        sl("Unsqueeze", ["marker0", "axis_h"], ["marker_h"]),
        sl("Unsqueeze", ["block0", "axis_h"], ["block0_h"]),
        sl("CumSum", ["step", "axis_h"], ["travel"]),
        sl("Add", ["ee0_h", "travel"], ["ee_position_m"]),  # (K, H, 3)
        sl("Sub", ["marker_h", "ee_position_m"], ["marker_rel_m"]),
        # contact: sigmoid of depth below the contact height, nudged by a small MLP
        sl("Slice", ["ee_position_m", "i2", "i3", "axis_last"], ["ee_z"]),  # (K, H, 1)
        sl("Sub", ["table_z", "ee_z"], ["depth"]),
        sl("Mul", ["depth", "inv_soft"], ["logit0"]),
        sl("MatMul", ["actions", "wa"], ["ha"]),  # (K, H, hidden)
        sl("MatMul", ["z", "wz"], ["hz"]),  # (K, hidden)
        sl("Unsqueeze", ["hz", "axis_h"], ["hz_h"]),
        sl("Add", ["ha", "hz_h"], ["h_pre"]),
        sl("Tanh", ["h_pre"], ["h"]),
        sl("MatMul", ["h", "wr"], ["residual"]),  # (K, H, 1)
        sl("Add", ["logit0", "residual"], ["logit"]),
        sl("Sigmoid", ["logit"], ["contact_prob"]),
        sl("Mul", ["normal_n", "contact_prob"], ["contact_force_n"]),
        # block: follows the pad's horizontal steps while the pad is near it
        sl("Sub", ["ee_position_m", "block0_h"], ["to_block"]),
        sl("Mul", ["to_block", "xy_mask"], ["to_block_xy"]),
        sl("ReduceL2", ["to_block_xy"], ["block_dist"], axes=[-1], keepdims=1),
        sl("Sub", ["block_reach", "block_dist"], ["reach_left"]),
        sl("Mul", ["reach_left", "inv_block_soft"], ["gate_logit"]),
        sl("Sigmoid", ["gate_logit"], ["gate"]),
        sl("Mul", ["step", "xy_mask"], ["step_xy"]),
        sl("Mul", ["step_xy", "gate"], ["block_step"]),
        sl("CumSum", ["block_step", "axis_h"], ["block_travel"]),
        sl("Add", ["block0_h", "block_travel"], ["block_position_m"]),
    ]
    outputs = [_value(name, ["K", "H", size]) for name, (size, _) in HEADS.items()]
    graph = helper.make_graph(
        nodes,
        "tiny_rollout",
        [_value("z", ["K", LATENT_DIM]), _value("actions", ["K", "H", 4])],
        outputs,
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def scan_rollout_graph(rng: np.random.Generator, hidden: int = 8) -> onnx.ModelProto:
    """A rollout written as a Scan over the horizon, as wmpc's export runs its step.

    z (K, L), actions (K, H, 4) -> ee (K, H, 3); each step: z = tanh([z, a] @ W), ee = z @ V.
    """
    step = helper.make_graph(
        [
            helper.make_node("Concat", ["z_in", "a_in"], ["za"], axis=1),
            helper.make_node("MatMul", ["za", "w"], ["pre"]),
            helper.make_node("Tanh", ["pre"], ["z_out"]),
            helper.make_node("MatMul", ["z_out", "v"], ["ee_out"]),
        ],
        "step",
        [_value("z_in", ["K", hidden]), _value("a_in", ["K", 4])],
        [_value("z_out", ["K", hidden]), _value("ee_out", ["K", 3])],
        [_const("w", rng.normal(0, 0.3, (hidden + 4, hidden)))],
    )
    scan = helper.make_node(
        "Scan",
        ["z", "actions"],
        ["z_final", "ee_position_m"],
        body=step,
        num_scan_inputs=1,
        scan_input_axes=[1],
        scan_output_axes=[1],
    )
    graph = helper.make_graph(
        [scan],
        "scan_rollout",
        [_value("z", ["K", hidden]), _value("actions", ["K", "H", 4])],
        [_value("ee_position_m", ["K", "H", 3])],
        # read by the body from the enclosing graph, as exported subgraphs may do
        [_const("v", rng.normal(0, 0.3, (hidden, 3)))],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def sha256(path: Path) -> str:
    """Hex sha256 of a file."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def manifest_dict(files: dict[str, dict[str, str]]) -> dict:
    """The manifest of the tiny model; `files` maps part -> precision -> file name."""
    return {
        "format": "wmpc-world-model/1",
        "name": "tiny",
        "precision": "int8",
        "control_period_s": 0.05,
        "latent_dim": LATENT_DIM,
        "modalities": {
            "image": {
                "topic": "/camera/image_raw",
                "height": IMAGE_HW[0],
                "width": IMAGE_HW[1],
                "encoding": "rgb8",
            },
            "audio": {"topic": "/microphone/audio", **AUDIO},
            "tactile": {
                "topic": "/tactile/image",
                "rows": TACTILE[0],
                "cols": TACTILE[1],
                "channels": TACTILE[2],
            },
            "proprio": {
                "joint_names": JOINTS,
                "fields": ["joint_position_rad", "ee_position_m", "wrench_wrist"],
                "size": PROPRIO_SIZE,
            },
        },
        "normalisation": {
            "image": {"mean": [0.5] * 3, "std": [0.25] * 3, "shape": [3, 1, 1]},
            "audio": {
                "mean": [-5.0] * AUDIO["n_mels"],
                "std": [2.0] * AUDIO["n_mels"],
                "shape": [AUDIO["n_mels"], 1],
            },
            "tactile": {
                "mean": [0.0] * int(np.prod(TACTILE)),
                "std": [1.0] * int(np.prod(TACTILE)),
                "shape": list(TACTILE),
            },
            "proprio": {
                "mean": PROPRIO_MEAN.tolist(),
                "std": PROPRIO_STD.tolist(),
                "shape": [PROPRIO_SIZE],
            },
        },
        "action_space": {
            "names": ["dx_m", "dy_m", "dz_m", "normal_force_n"],
            "low": ACTION_LOW,
            "high": ACTION_HIGH,
            "units": ["m", "m", "m", "N"],
        },
        "files": {
            part: {prec: {"path": name, "sha256": ""} for prec, name in by_prec.items()}
            for part, by_prec in files.items()
        },
        "inputs": {
            "encoder": [
                {"name": "image", "shape": [None, 3, *IMAGE_HW], "dtype": "float32"},
                {
                    "name": "audio",
                    "shape": [None, AUDIO["n_mels"], AUDIO_FRAMES],
                    "dtype": "float32",
                },
                {"name": "tactile", "shape": [None, *TACTILE], "dtype": "float32"},
                {"name": "proprio", "shape": [None, PROPRIO_SIZE], "dtype": "float32"},
            ],
            "rollout": [
                {"name": "z", "shape": [None, LATENT_DIM], "dtype": "float32"},
                {"name": "actions", "shape": [None, None, 4], "dtype": "float32"},
            ],
        },
        "outputs": {
            "encoder": [{"name": "z", "shape": [None, LATENT_DIM], "dtype": "float32"}],
            "rollout": [
                {"name": name, "shape": [None, None, size], "dtype": "float32", "unit": unit}
                for name, (size, unit) in HEADS.items()
            ],
        },
        "training": {"note": "analytic test model with random embedding weights", "seed": 0},
        "accuracy": {},
    }


def write_manifest(model_dir: Path, manifest: dict) -> Path:
    """Fill in each file's sha256 and write manifest.json; returns its path."""
    manifest = copy.deepcopy(manifest)
    for by_prec in manifest["files"].values():
        for entry in by_prec.values():
            entry["sha256"] = sha256(model_dir / entry["path"])
    path = model_dir / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2))
    return path


def build_tiny_model(
    model_dir: Path, seed: int = 0, int8: bool = True, heads: tuple[str, ...] = tuple(HEADS)
) -> Path:
    """Write the tiny model's ONNX files and manifest.json into `model_dir`; returns it.

    `heads` keeps only those rollout outputs (for models that lack a head).
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    graphs = {"encoder": encoder_graph(rng), "rollout": rollout_graph(rng)}
    kept = [o for o in graphs["rollout"].graph.output if o.name in heads]
    del graphs["rollout"].graph.output[:]
    graphs["rollout"].graph.output.extend(kept)
    files: dict[str, dict[str, str]] = {}
    for part, model in graphs.items():
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, model_dir / f"{part}.onnx")
        files[part] = {"fp32": f"{part}.onnx"}
        if int8:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(
                model_dir / f"{part}.onnx",
                model_dir / f"{part}.int8.onnx",
                op_types_to_quantize=["MatMul", "Gemm"],
                weight_type=QuantType.QInt8,
            )
            files[part]["int8"] = f"{part}.int8.onnx"
    manifest = manifest_dict(files)
    manifest["outputs"]["rollout"] = [
        o for o in manifest["outputs"]["rollout"] if o["name"] in heads
    ]
    if not int8:
        manifest["precision"] = "fp32"
    write_manifest(model_dir, manifest)
    return model_dir


def tiny_inputs(ee_position_m, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """Normalised encoder inputs (batch 1) whose proprio holds `ee_position_m`."""
    rng = rng or np.random.default_rng(0)
    proprio = rng.normal(0, 1, PROPRIO_SIZE)
    proprio[EE_SLICE] = (np.asarray(ee_position_m) - PROPRIO_MEAN[EE_SLICE]) / PROPRIO_STD[
        EE_SLICE
    ]
    return {
        "image": rng.normal(0, 1, (1, 3, *IMAGE_HW)).astype(np.float32),
        "audio": rng.normal(0, 1, (1, AUDIO["n_mels"], AUDIO_FRAMES)).astype(np.float32),
        "tactile": rng.normal(0, 1, (1, *TACTILE)).astype(np.float32),
        "proprio": proprio[None].astype(np.float32),
    }
