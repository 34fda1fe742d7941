"""Static INT8 quantization (QDQ) of the exported model, and accuracy of each precision.

Both graphs are quantized with ONNX Runtime's `quantize_static`: QDQ format, signed 8-bit
symmetric activations and weights (what TensorRT takes), per-channel weights, min-max
calibration. Calibration data come from held-out episodes only:

- encoder: the normalised inputs of evenly spaced held-out ticks;
- rollout: the step network inside the Scan (quantizers do not descend into subgraphs) is
  quantized on its own, on (z, action) pairs met along rollouts from those ticks, once with the
  recorded actions and once with uniformly sampled actions (what a sampling planner feeds it),
  and then put back into a copy of the fp32 rollout in place of the fp32 step.

Convolutions and matrix products are quantized (weights and inputs); their outputs, layer
norms and element-wise ops stay float, and so do the few products that read a tensor which
also flows on into the latent unrounded (the rollout state z', the ee position sliced from the
proprio input): ONNX Runtime rounds a tensor once for all its readers, and an 8-bit state or
ee position costs millimetres every step. Everything is ordered and seeded, so the same
inputs give byte-identical INT8 files. The fp32 files stay beside the INT8 ones.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx

from wmpc.errors import WmpcError
from wmpc.preprocess import INPUT_NAMES, Preprocessor
from wmpc.training.dataset import ACTION_HIGH, ACTION_LOW, Episode
from wmpc.training.export import (
    ENCODER_FILE,
    ROLLOUT_FILE,
    STEP_INPUTS,
    STEP_OUTPUTS,
    step_from_rollout,
    with_step,
)
from wmpc.training.metrics import HORIZONS, PRIVILEGED_HEADS, window_errors
from wmpc.training.model import HEADS

log = logging.getLogger(__name__)

ENCODER_INT8_FILE = "encoder.int8.onnx"
ROLLOUT_INT8_FILE = "rollout.int8.onnx"
CALIBRATION_TICKS = 512
CALIBRATION_BATCH = 64
QUANTIZED_OPS = ("Conv", "Gemm", "MatMul")
# Operations that only reshape: a layer behind them still reads the model input itself.
RESHAPING_OPS = ("Flatten", "Reshape")


class QuantizeError(WmpcError, ValueError):
    """A model this version cannot quantize (e.g. a rollout graph of an older export)."""


def session(path: Path | str | bytes, threads: int = 2):
    """A CPU ONNX Runtime session that runs a graph as the runtime's CPU sessions do.

    The same session options (`wmpc.model.session_options`) and the same int8 kernel rewrite
    (`wmpc.int8_cpu`): both change the int8 outputs, and the accuracy written into the
    manifest must be that of the graph the runtime executes. Float graphs are unchanged by
    the rewrite.
    """
    import onnxruntime as ort

    from wmpc.int8_cpu import lower_for_cpu
    from wmpc.model import session_options

    options = session_options(threads, qdq_cleanup=True)
    model = onnx.load(str(path)) if isinstance(path, (Path, str)) else onnx.load_from_string(path)
    lowered, _ = lower_for_cpu(model)
    return ort.InferenceSession(
        lowered.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _calibration_rows(episodes: list[Episode], limit: int) -> list[tuple[int, np.ndarray]]:
    """(episode index, rows): evenly spaced ticks over all episodes, at most `limit` in all."""
    total = sum(e.ticks for e in episodes)
    if total == 0:
        raise ValueError("no ticks in the calibration episodes")
    stride = max(1, total // limit)
    picks, offset = [], 0
    for i, episode in enumerate(episodes):
        rows = np.arange((-offset) % stride, episode.ticks, stride)
        offset += episode.ticks
        if rows.size:
            picks.append((i, rows))
    return picks


class _Batches:
    """A CalibrationDataReader over a fixed list of input dicts."""

    def __init__(self, batches: list[dict[str, np.ndarray]]):
        from onnxruntime.quantization import CalibrationDataReader

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.position = 0

            def get_next(self) -> dict[str, np.ndarray] | None:
                if self.position >= len(batches):
                    return None
                self.position += 1
                return batches[self.position - 1]

            def rewind(self) -> None:
                self.position = 0

        self.reader = Reader()


def fp32_step(model_dir: Path, rollout: onnx.ModelProto) -> onnx.ModelProto:
    """The step inside `rollout` (model_dir's fp32 rollout.onnx); QuantizeError unless it is
    this version's."""
    path = model_dir / ROLLOUT_FILE
    step = step_from_rollout(rollout)
    inputs = [value.name for value in step.graph.input]
    if inputs != list(STEP_INPUTS):
        raise QuantizeError(
            f"{path}: its rollout step takes {inputs}, where this wmpc's export takes "
            f"{list(STEP_INPUTS)} (the file is from an older export); write the fp32 files "
            f"again from the checkpoint: wmpc quantize {model_dir} --calib DIR --reexport"
        )
    return step


def calibration_data(
    model_dir: Path,
    step_fp32: onnx.ModelProto,
    episodes: list[Episode],
    pre: Preprocessor,
    seed: int = 0,
    rollout_steps: int = max(HORIZONS),
) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
    """(encoder batches, step batches) drawn from `episodes` with the fp32 encoder of
    `model_dir` and its rollout's step `step_fp32` (fp32_step)."""
    encoder = session(model_dir / ENCODER_FILE)
    step = session(step_fp32.SerializeToString())
    rng = np.random.default_rng(seed)
    low, high = np.array(ACTION_LOW, np.float32), np.array(ACTION_HIGH, np.float32)
    centre, half_range = (high + low) / 2, (high - low) / 2
    encoder_batches, step_batches = [], []
    for index, rows in _calibration_rows(episodes, CALIBRATION_TICKS):
        episode = episodes[index]
        for b in range(0, rows.size, CALIBRATION_BATCH):
            chunk = rows[b : b + CALIBRATION_BATCH]
            inputs = pre.normalise({name: episode.arrays[name][chunk] for name in INPUT_NAMES})
            encoder_batches.append(inputs)
            (z0,) = encoder.run(["z"], inputs)
            # Recorded actions where the episode has them, then the planner's kind: uniform.
            for kind in ("recorded", "uniform"):
                z = z0
                for h in range(rollout_steps):
                    if kind == "recorded":
                        action = episode.arrays["action"][np.minimum(chunk + h, episode.ticks - 1)]
                    else:
                        action = rng.uniform(low, high, size=(chunk.size, low.size))
                    # The step takes actions scaled to [-1, 1] (RolloutPrelude does it).
                    unit = (action - centre) / half_range
                    feed = dict(zip(STEP_INPUTS, (z, unit.astype(np.float32)), strict=True))
                    step_batches.append(feed)
                    z = step.run([STEP_OUTPUTS[0]], feed)[0]
    return encoder_batches, step_batches


def quantize_graph(
    model: onnx.ModelProto,
    out_path: Path,
    batches: list[dict],
    float_inputs: tuple[str, ...] = (),
) -> None:
    """Static QDQ INT8 (symmetric, per-channel weights, min-max) of `model` to `out_path`."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="wmpc_quant_") as tmp:
        source, prepared = Path(tmp) / "fp32.onnx", Path(tmp) / "prepared.onnx"
        onnx.save(model, source)
        # Shape inference and constant folding first, as ONNX Runtime recommends for QDQ.
        quant_pre_process(str(source), str(prepared))
        # Tensors that also flow on unquantized into the latent must not be rounded to 8 bits
        # for their quantized readers (ONNX Runtime shares that rounding with every reader):
        # the state z' (a graph output; the head trunk reads a copy of it instead, see
        # StepGraph) and the ee position sliced from the proprio input. Their readers stay
        # fp32, as does the first layer of each input named in `float_inputs`; everything
        # else is INT8.
        graph = onnx.load(prepared).graph
        keep = {value.name for value in graph.output}
        keep |= {n.input[0] for n in graph.node if n.op_type == "Slice"}
        float_nodes = [n.name for n in graph.node if keep.intersection(n.input)]
        # A product that adds a computed tensor (the step's z + gain x step, StepGraph) is
        # exact bookkeeping of the commanded step, not a learned layer: it stays fp32.
        constants = {init.name for init in graph.initializer}
        float_nodes += _first_layers(graph, float_inputs)
        float_nodes += [
            n.name
            for n in graph.node
            if n.op_type == "Gemm" and len(n.input) > 2 and n.input[2] not in constants
        ]
        quantize_static(
            str(prepared),
            str(out_path),
            _Batches(batches).reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            # The matrix products carry the cost; layer norms and activations stay float.
            op_types_to_quantize=list(QUANTIZED_OPS),
            nodes_to_exclude=float_nodes,
            extra_options={
                "ActivationSymmetric": True,
                "WeightSymmetric": True,
                "OpTypesToExcludeOutputQuantization": ["Gemm", "Conv"],
            },
        )


# Why a model input's first layer may be kept fp32 (`wmpc quantize --float-inputs`): the
# normalised taxels of a model trained on raised tables span impact spikes of up to ~60
# training stds, so a per-tensor INT8 scale rounds the 1-3 stds of steady contact to a few
# levels: on that model (2026-12-04) it took the held-out contact Brier score from 0.043 to
# 0.195 and the force error h1 from 0.63 to 1.00 N, and leaving the skin's 48 x 128 first
# layer in float gave back fp32's figures (one-off script). On the shipped model it makes no
# difference worth a changed file (force h1 0.657 against 0.645 N), so it is not the default.
def _first_layers(graph: onnx.GraphProto, inputs: tuple[str, ...]) -> list[str]:
    """Names of the quantizable nodes that read one of the graph inputs `inputs`, directly or
    through reshaping only (graphs without those inputs: none)."""
    tensors = {value.name for value in graph.input if value.name in inputs}
    found, grew = [], True
    while grew:
        grew = False
        for node in graph.node:
            if not tensors.intersection(node.input):
                continue
            if node.op_type in RESHAPING_OPS and not tensors.issuperset(node.output):
                tensors.update(node.output)
                grew = True
            elif node.op_type in QUANTIZED_OPS and node.name not in found:
                found.append(node.name)
    return found


def quantize_model(
    model_dir: Path,
    episodes: list[Episode],
    pre: Preprocessor,
    seed: int = 0,
    float_inputs: tuple[str, ...] = (),
) -> dict[str, Path]:
    """Write encoder.int8.onnx and rollout.int8.onnx beside the fp32 files.

    `float_inputs`: model inputs (of INPUT_NAMES) whose first layer stays fp32.
    """
    unknown = sorted(set(float_inputs) - set(INPUT_NAMES))
    if unknown:
        raise QuantizeError(
            f"float_inputs {unknown} are not model inputs; choose from {list(INPUT_NAMES)}"
        )
    rollout = onnx.load(model_dir / ROLLOUT_FILE)
    step_fp32 = fp32_step(model_dir, rollout)
    encoder_batches, step_batches = calibration_data(model_dir, step_fp32, episodes, pre, seed)
    paths = {"encoder": model_dir / ENCODER_INT8_FILE, "rollout": model_dir / ROLLOUT_INT8_FILE}
    quantize_graph(
        onnx.load(model_dir / ENCODER_FILE), paths["encoder"], encoder_batches, float_inputs
    )
    with tempfile.TemporaryDirectory(prefix="wmpc_quant_") as tmp:
        step_int8 = Path(tmp) / "step.int8.onnx"
        quantize_graph(step_fp32, step_int8, step_batches, float_inputs)
        wrapped = with_step(rollout, onnx.load(step_int8))
    onnx.checker.check_model(wrapped, full_check=True)
    onnx.save(wrapped, paths["rollout"])
    onnx.checker.check_model(onnx.load(paths["encoder"]), full_check=True)
    return paths


def measure_accuracy(
    encoder_path: Path,
    rollout_path: Path,
    episodes: Iterable[Episode],
    pre: Preprocessor,
    horizons: tuple[int, ...] = HORIZONS,
    batch: int = 256,
) -> tuple[dict[str, dict[str, float | None]], int]:
    """Per-head error at each horizon over every window of held-out `episodes`.

    Returns ({head: {"h1": error, ...}}, number of windows); see metrics.METRICS.
    A head whose labels no window has (real bags: marker, block) gets None.
    """
    encoder, rollout = session(encoder_path), session(rollout_path)
    depth = max(horizons)
    sums = {name: dict.fromkeys(horizons, 0.0) for name in HEADS}
    counts = {name: dict.fromkeys(horizons, 0) for name in HEADS}
    windows = 0
    for episode in episodes:
        starts = episode.window_starts(depth)
        for b in range(0, starts.size, batch):
            rows = starts[b : b + batch, None] + np.arange(depth + 1)  # (K, depth + 1)
            first = rows[:, 0]
            inputs = pre.normalise({name: episode.arrays[name][first] for name in INPUT_NAMES})
            (z,) = encoder.run(["z"], inputs)
            actions = episode.arrays["action"][rows[:, :depth]].astype(np.float32)
            predicted = dict(
                zip(HEADS, rollout.run(list(HEADS), {"z": z, "actions": actions}), strict=True)
            )
            windows += first.size
            for name in HEADS:
                for h in horizons:
                    label = episode.arrays[name][rows[:, h]]
                    per_window = window_errors(name, predicted[name][:, h - 1], label)
                    if name in PRIVILEGED_HEADS:
                        per_window = per_window[episode.arrays["privileged"][rows[:, h]]]
                    sums[name][h] += float(per_window.sum())
                    counts[name][h] += int(per_window.size)
    result = {
        name: {
            f"h{h}": (round(sums[name][h] / counts[name][h], 6) if counts[name][h] else None)
            for h in horizons
        }
        for name in HEADS
    }
    return result, windows
