"""Export the trained network to ONNX: encoder.onnx and rollout.onnx (opset 17).

- encoder.onnx: image, audio, tactile, proprio (K, ...) -> z (K, latent).
- rollout.onnx: z (K, latent), actions (K, H, A) -> every head (K, H, size).

The rollout must take any horizon H, so it is not a traced, unrolled loop: the one-step
network (z, a) -> (z', head layer) is exported on its own and run by an ONNX `Scan` over the
action axis, between a prelude that scales all H actions at once and a tail that turns all H
steps' outputs into the heads in units (`wmpc.training.model`: RolloutPrelude, StepGraph,
RolloutHeads). The INT8 rollout is the fp32 one with its Scan body swapped for the quantized
step (`wmpc.training.quantize`), so both precisions share one graph structure.

torch's default exporter (dynamo) needs the onnxscript package, which this project does not
ship; the TorchScript exporter handles these plain feed-forward graphs and is used instead.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from wmpc.preprocess import INPUT_NAMES
from wmpc.training.model import (
    HEADS,
    EncoderGraph,
    RolloutHeads,
    RolloutPrelude,
    StepGraph,
    WorldModelNet,
)

OPSET = 17
ENCODER_FILE = "encoder.onnx"
ROLLOUT_FILE = "rollout.onnx"
STEP_PREFIX = "step/"
PRELUDE_PREFIX = "prelude/"
HEADS_PREFIX = "heads/"
STEP_INPUTS = ("z", "action_unit")
STEP_OUTPUTS = ("z_next", "ee_latent", "head_layer")


def _export(module: torch.nn.Module, args: tuple, names_in, names_out, dynamic) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo (see the module docstring).
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module,
            args,
            buffer,
            dynamo=False,
            opset_version=OPSET,
            input_names=list(names_in),
            output_names=list(names_out),
            dynamic_axes=dynamic,
            do_constant_folding=True,
        )
    return onnx.load_from_string(buffer.getvalue())


def export_encoder(net: WorldModelNet) -> onnx.ModelProto:
    """encoder graph with a dynamic batch K."""
    net.eval()
    dummy = tuple(torch.zeros((2, *net.input_shapes[name])) for name in INPUT_NAMES)
    dynamic = {name: {0: "K"} for name in (*INPUT_NAMES, "z")}
    model = _export(EncoderGraph(net), dummy, INPUT_NAMES, ("z",), dynamic)
    model.graph.name = "wmpc_encoder"
    return model


def export_step(step: StepGraph) -> onnx.ModelProto:
    """One rollout step (z, action in [-1, 1]) -> (z', its ee part, head layer); dynamic K."""
    net = step.net
    action_dim = int(net.action_centre.shape[0])
    dummy = (torch.zeros(2, net.latent_dim), torch.zeros(2, action_dim))
    dynamic = {name: {0: "K"} for name in (*STEP_INPUTS, *STEP_OUTPUTS)}
    model = _export(step, dummy, STEP_INPUTS, STEP_OUTPUTS, dynamic)
    model.graph.name = "wmpc_step"
    return model


def export_rollout(net: WorldModelNet) -> onnx.ModelProto:
    """rollout.onnx: prelude, Scan over the step, heads; dynamic K and H."""
    net.eval()
    step = StepGraph(net)
    action_dim = int(net.action_centre.shape[0])
    per_tick = {0: "K", 1: "H"}
    prelude = _export(
        RolloutPrelude(net),
        (torch.zeros(2, 3, action_dim),),
        ("actions",),
        ("actions_unit",),
        {"actions": per_tick, "actions_unit": per_tick},
    )
    heads = _export(
        RolloutHeads(step),
        (torch.zeros(2, 3, 3), torch.zeros(2, 3, sum(step.sizes))),
        ("ee_latent", "head_layer"),
        tuple(HEADS),
        {name: per_tick for name in ("ee_latent", "head_layer", *HEADS)},
    )
    return assemble_rollout(prelude, export_step(step), heads, net.latent_dim, action_dim)


def _rename_all(graph: onnx.GraphProto, prefix: str, bind: dict[str, str] | None = None) -> None:
    """Prefix every value name in `graph`, except those in `bind`, which get its names.

    Subgraph names must not shadow the outer graph, and graphs stitched into one must not
    share names; `bind` connects a part's inputs and outputs to its neighbours'.
    """
    bind = bind or {}
    rename = {}
    for value in [*graph.input, *graph.output, *graph.value_info]:
        rename[value.name] = prefix + value.name
    for init in graph.initializer:
        rename[init.name] = prefix + init.name
    for node in graph.node:
        for name in [*node.input, *node.output]:
            if name:
                rename[name] = prefix + name
        node.name = prefix + node.name if node.name else node.name
    rename.update(bind)
    for value in [*graph.input, *graph.output, *graph.value_info]:
        value.name = rename[value.name]
    for init in graph.initializer:
        init.name = rename[init.name]
    for node in graph.node:
        node.input[:] = [rename.get(n, n) if n else n for n in node.input]
        node.output[:] = [rename.get(n, n) if n else n for n in node.output]


def _scan_body(step: onnx.ModelProto) -> onnx.GraphProto:
    body = onnx.GraphProto()
    body.CopyFrom(step.graph)
    body.name = "rollout_step"
    if [v.name for v in body.input] != list(STEP_INPUTS) or [v.name for v in body.output] != list(
        STEP_OUTPUTS
    ):
        raise ValueError(
            f"step graph must have inputs {STEP_INPUTS} and outputs {STEP_OUTPUTS}; it has "
            f"{[v.name for v in body.input]} -> {[v.name for v in body.output]}"
        )
    _rename_all(body, STEP_PREFIX)
    return body


def assemble_rollout(
    prelude: onnx.ModelProto,
    step: onnx.ModelProto,
    heads: onnx.ModelProto,
    latent_dim: int,
    action_dim: int,
) -> onnx.ModelProto:
    """z (K, L), actions (K, H, A) -> heads: prelude, a Scan of `step` over H, heads."""
    before, after = onnx.GraphProto(), onnx.GraphProto()
    before.CopyFrom(prelude.graph)
    after.CopyFrom(heads.graph)
    scaled, ee_latent, head_layer = "actions_unit", "scan/ee_latent", "scan/head_layer"
    _rename_all(before, PRELUDE_PREFIX, {"actions": "actions", "actions_unit": scaled})
    _rename_all(
        after,
        HEADS_PREFIX,
        {"ee_latent": ee_latent, "head_layer": head_layer, **{name: name for name in HEADS}},
    )
    scan = helper.make_node(
        "Scan",
        inputs=["z", scaled],
        outputs=["z_final", ee_latent, head_layer],
        name="rollout_scan",
        body=_scan_body(step),
        num_scan_inputs=1,
        scan_input_axes=[1],
        scan_output_axes=[1, 1],
    )
    inputs = [
        helper.make_tensor_value_info("z", TensorProto.FLOAT, ["K", latent_dim]),
        helper.make_tensor_value_info("actions", TensorProto.FLOAT, ["K", "H", action_dim]),
    ]
    outputs = [
        helper.make_tensor_value_info(name, TensorProto.FLOAT, ["K", "H", size])
        for name, (size, _) in HEADS.items()
    ]
    graph = helper.make_graph(
        [*before.node, scan, *after.node],
        "wmpc_rollout",
        inputs,
        outputs,
        initializer=[*before.initializer, *after.initializer],
    )
    model = helper.make_model(graph, opset_imports=list(step.opset_import))
    model.ir_version = step.ir_version
    model.producer_name = "wmpc"
    return model


def scan_node(rollout: onnx.ModelProto) -> onnx.NodeProto:
    """The rollout graph's one Scan node (ValueError unless there is exactly one)."""
    scans = [n for n in rollout.graph.node if n.op_type == "Scan"]
    if len(scans) != 1:
        raise ValueError(f"rollout graph must hold exactly one Scan node, found {len(scans)}")
    return scans[0]


def step_from_rollout(rollout: onnx.ModelProto) -> onnx.ModelProto:
    """The step model inside a rollout's Scan, as a standalone model (for quantization)."""
    body = onnx.GraphProto()
    body.CopyFrom(next(a.g for a in scan_node(rollout).attribute if a.name == "body"))
    for value in [*body.input, *body.output, *body.value_info]:
        value.name = value.name.removeprefix(STEP_PREFIX)
    for init in body.initializer:
        init.name = init.name.removeprefix(STEP_PREFIX)
    for node in body.node:
        node.input[:] = [n.removeprefix(STEP_PREFIX) for n in node.input]
        node.output[:] = [n.removeprefix(STEP_PREFIX) for n in node.output]
        node.name = node.name.removeprefix(STEP_PREFIX)
    body.name = "wmpc_step"
    model = helper.make_model(body, opset_imports=list(rollout.opset_import))
    model.ir_version = rollout.ir_version
    return model


def with_step(rollout: onnx.ModelProto, step: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `rollout` whose Scan runs `step` (e.g. its INT8 version) instead."""
    model = onnx.ModelProto()
    model.CopyFrom(rollout)
    for attribute in scan_node(model).attribute:
        if attribute.name == "body":
            attribute.g.CopyFrom(_scan_body(step))
    for opset in step.opset_import:  # the quantized step may use another domain's ops
        if not any(o.domain == opset.domain for o in model.opset_import):
            model.opset_import.append(opset)
    return model


def export_model(net: WorldModelNet, out_dir: Path) -> dict[str, Path]:
    """Write encoder.onnx and rollout.onnx (checked with onnx.checker) into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    encoder = export_encoder(net)
    rollout = export_rollout(net)
    paths = {"encoder": out_dir / ENCODER_FILE, "rollout": out_dir / ROLLOUT_FILE}
    for model, path in ((encoder, paths["encoder"]), (rollout, paths["rollout"])):
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, path)
    return paths


def compare_with_torch(
    net: WorldModelNet,
    encoder_path: Path,
    rollout_path: Path,
    inputs: dict[str, np.ndarray],
    actions: np.ndarray,
) -> dict[str, float]:
    """Largest absolute difference between ONNX Runtime and torch, per output."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    encoder = ort.InferenceSession(str(encoder_path), options, providers=["CPUExecutionProvider"])
    rollout = ort.InferenceSession(str(rollout_path), options, providers=["CPUExecutionProvider"])
    (z_onnx,) = encoder.run(["z"], inputs)
    heads_onnx = rollout.run(list(HEADS), {"z": z_onnx, "actions": actions})
    with torch.no_grad():
        z_torch = net.encode(**{k: torch.from_numpy(v) for k, v in inputs.items()})
        heads_torch = net.rollout(z_torch, torch.from_numpy(actions))
    diffs = {"z": float(np.abs(z_onnx - z_torch.numpy()).max())}
    for name, value in zip(HEADS, heads_onnx, strict=True):
        diffs[name] = float(np.abs(value - heads_torch[name].numpy()).max())
    return diffs
