"""Unroll the rollout graph's Scan over a fixed number of steps, for the planner's horizon.

The exported rollout runs its step network by an ONNX `Scan` over the horizon, so that one
file serves any H. ONNX Runtime pays for the loop on every step: a frame for the body, the
slice of the actions, the copies of the carried latent and of each step's outputs. The
planner always asks for the same H, and for that H the same graph can be written out step
by step. Measured on this machine (one thread, the shipped INT8 rollout lowered for the CPU,
K = 512, H = 3; /tmp one-off script, 2026-12-03): 0.71 -> 0.65 ms a run, 0.726 -> 0.646 and
0.709 -> 0.648 in two more rounds, with every output bit-identical.

`unroll_scan` copies the graph and replaces its one top-level Scan by `steps` copies of the
body: step t reads scan input t (a Gather on the scan axis) and the state the step before
wrote, and the stacked outputs are the steps' outputs concatenated on the scan axis. The
file on disk is not touched. The result reads steps 0 .. steps-1 of its scanned inputs and
fails on fewer; `WorldModel.rollout` runs it only for exactly that horizon.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from wmpc.errors import WmpcError


class UnrollError(WmpcError, ValueError):
    """A graph this module cannot unroll (no single forward Scan, or a nested graph)."""


def _attribute(node: onnx.NodeProto, name: str, default):
    """A Scan attribute: an int, a list of ints, or the body graph; `default` if absent."""
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _the_scan(graph: onnx.GraphProto) -> onnx.NodeProto:
    """The graph's one top-level Scan (UnrollError otherwise)."""
    scans = [n for n in graph.node if n.op_type == "Scan"]
    if len(scans) != 1:
        raise UnrollError(f"the graph holds {len(scans)} top-level Scan nodes, not one")
    return scans[0]


def unroll_scan(model: onnx.ModelProto, steps: int) -> onnx.ModelProto:
    """A copy of `model` with its Scan written out for exactly `steps` steps."""
    if steps < 1:
        raise UnrollError(f"cannot unroll {steps} steps")
    scan = _the_scan(model.graph)
    body: onnx.GraphProto = _attribute(scan, "body", None)
    n_scanned = _attribute(scan, "num_scan_inputs", 0)
    n_state = len(body.input) - n_scanned
    n_stacked = len(body.output) - n_state
    input_axes = list(_attribute(scan, "scan_input_axes", [0] * n_scanned))
    output_axes = list(_attribute(scan, "scan_output_axes", [0] * n_stacked))
    directions = list(_attribute(scan, "scan_input_directions", [])) + list(
        _attribute(scan, "scan_output_directions", [])
    )
    if any(directions) or any(a < 0 for a in input_axes + output_axes):
        raise UnrollError("a Scan that runs backwards or counts axes from the end")
    nested = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
    if any(a.type in nested for node in body.node for a in node.attribute):
        raise UnrollError("the Scan body holds a nested graph")
    if body.sparse_initializer:
        raise UnrollError("the Scan body holds sparse initializers")
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < 13:  # Unsqueeze takes its axes as an input from opset 13 on
        raise UnrollError(f"opset {opset}: unrolling needs 13 or later")

    unrolled = onnx.ModelProto()
    unrolled.CopyFrom(model)
    graph = unrolled.graph
    scan = _the_scan(graph)
    prefix = f"unrolled{steps}/"
    body_inputs = [i.name for i in body.input]
    body_outputs = [o.name for o in body.output]
    produced = {name for node in body.node for name in node.output} | set(body_inputs)
    constants = {prefix + t.name for t in body.initializer}
    axes_made: set[str] = set()  # the Unsqueeze axes initializers added so far
    nodes: list[onnx.NodeProto] = []
    initializers = [
        numpy_helper.from_array(numpy_helper.to_array(t), prefix + t.name)
        for t in body.initializer
    ]
    state = list(scan.input[:n_state])
    stacked: list[list[str]] = [[] for _ in range(n_stacked)]
    for t in range(steps):
        index = f"{prefix}step{t}"
        initializers.append(numpy_helper.from_array(np.array(t, dtype=np.int64), index))
        names = dict(zip(body_inputs[:n_state], state, strict=True))
        for i, (outer, axis) in enumerate(zip(scan.input[n_state:], input_axes, strict=True)):
            names[body_inputs[n_state + i]] = f"{prefix}t{t}/{outer}"
            nodes.append(
                helper.make_node(
                    "Gather", [outer, index], [names[body_inputs[n_state + i]]], axis=axis
                )
            )

        def renamed(name: str, t: int = t, names: dict = names) -> str:
            if name in names:
                return names[name]
            if name in produced:  # a value of this step
                return f"{prefix}t{t}/{name}"
            if prefix + name in constants:
                return prefix + name
            return name  # the outer graph's, or "" (an omitted optional input)

        for number, node in enumerate(body.node):
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.name = f"{prefix}t{t}/{number}/{node.name or node.op_type}"  # unique
            copy.input[:] = [renamed(n) for n in node.input]
            copy.output[:] = [renamed(n) for n in node.output]
            nodes.append(copy)
        state = [renamed(n) for n in body_outputs[:n_state]]
        for i, (name, axis) in enumerate(zip(body_outputs[n_state:], output_axes, strict=True)):
            one = f"{prefix}t{t}/{name}/stacked"
            axes = f"{prefix}axis{axis}"
            if axes not in axes_made:
                axes_made.add(axes)
                initializers.append(
                    numpy_helper.from_array(np.array([axis], dtype=np.int64), axes)
                )
            nodes.append(helper.make_node("Unsqueeze", [renamed(name), axes], [one]))
            stacked[i].append(one)
    outputs = list(scan.output)
    for final, outer in zip(state, outputs[:n_state], strict=True):
        if outer:
            nodes.append(helper.make_node("Identity", [final], [outer]))
    for parts, outer, axis in zip(stacked, outputs[n_state:], output_axes, strict=True):
        if outer:
            nodes.append(helper.make_node("Concat", parts, [outer], axis=axis))

    position = list(graph.node).index(scan)
    rest = list(graph.node)
    del graph.node[:]
    graph.node.extend(rest[:position] + nodes + rest[position + 1 :])
    graph.initializer.extend(initializers)
    return unrolled
