"""Unrolling the rollout's Scan: the same outputs for the horizon it was written for."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

import tiny_model
from wmpc.unroll import UnrollError, unroll_scan


def _run(model: onnx.ModelProto, z: np.ndarray, actions: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (ee,) = session.run(["ee_position_m"], {"z": z, "actions": actions})
    return ee


@pytest.mark.parametrize("steps", [1, 2, 3, 5])
def test_unrolled_scan_gives_the_scans_outputs(steps):
    """The tiny Scan reads an initializer of its body and a tensor of the outer graph."""
    graph = tiny_model.scan_rollout_graph(np.random.default_rng(0), hidden=8)
    rng = np.random.default_rng(1)
    z = rng.standard_normal((16, 8)).astype(np.float32)
    actions = rng.standard_normal((16, steps, 4)).astype(np.float32)
    unrolled = unroll_scan(graph, steps)
    assert not [n for n in unrolled.graph.node if n.op_type == "Scan"]
    assert sum(n.op_type == "Tanh" for n in unrolled.graph.node) == steps
    onnx.checker.check_model(unrolled)
    np.testing.assert_array_equal(_run(unrolled, z, actions), _run(graph, z, actions))
    # The original is left as it was.
    assert [n.op_type for n in graph.graph.node] == ["Scan"]


def test_an_unrolled_graph_refuses_fewer_steps():
    graph = tiny_model.scan_rollout_graph(np.random.default_rng(0), hidden=8)
    z, actions = np.ones((2, 8), np.float32), np.ones((2, 2, 4), np.float32)
    with pytest.raises(Exception, match="indices"):
        _run(unroll_scan(graph, 3), z, actions)


def test_graphs_it_cannot_unroll_are_named():
    scan_graph = tiny_model.scan_rollout_graph(np.random.default_rng(0), hidden=8)
    with pytest.raises(UnrollError, match="cannot unroll 0 steps"):
        unroll_scan(scan_graph, 0)
    backwards = onnx.ModelProto()
    backwards.CopyFrom(scan_graph)
    backwards.graph.node[0].attribute.append(helper.make_attribute("scan_input_directions", [1]))
    with pytest.raises(UnrollError, match="backwards"):
        unroll_scan(backwards, 3)
    old = onnx.ModelProto()
    old.CopyFrom(scan_graph)
    old.opset_import[0].version = 11
    with pytest.raises(UnrollError, match="opset 11"):
        unroll_scan(old, 3)
    no_scan = helper.make_model(
        helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])],
            "plain",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
        )
    )
    with pytest.raises(UnrollError, match="0 top-level Scan nodes"):
        unroll_scan(no_scan, 3)
