"""Lower a QDQ INT8 graph to the integer kernels ONNX Runtime's CPU provider runs fast.

The shipped INT8 files are QDQ graphs with signed, symmetric 8-bit activations and weights:
the form TensorRT takes on a Jetson. ONNX Runtime's CPU provider executes two parts of such a
graph slowly or not in integers at all (measured on this machine's AVX-512 VNNI CPU, one
thread, a 512 x 96 by 96 x 96 product):

- signed activations: its s8 x s8 matrix kernel took 324 us where the u8 x s8 kernel took
  36 us and float took 94 us, because the fast x86 instructions multiply unsigned by signed
  bytes;
- a Gemm whose float output feeds a Relu: its QDQ fusion leaves these (the two hidden layers
  of the dynamics) as float Gemms on dequantized weights.

`lower_for_cpu` rewrites the graph, in memory and before the session is made, without
changing what it computes:

1. Every activation QuantizeLinear/DequantizeLinear pair with an int8 zero point of 0 gets the
   uint8 zero point 128 instead. The grid is the same (q_u8 = q_s8 + 128 for every value), so
   the rounded values, and everything after them, are unchanged.
2. Every Gemm that reads a dequantized activation, a dequantized int8 weight and (optionally) a
   dequantized int32 bias becomes one `com.microsoft.QGemm` with a float output: the same
   integer products, accumulated exactly and scaled once, where ONNX Runtime would dequantize
   both operands and multiply in float. The Relu after it stays a float Relu.

The file on disk is never changed: its sha256 stays that of the manifest, and TensorRT still
gets the signed QDQ graph. Float graphs have nothing to rewrite and come back unchanged.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MS_DOMAIN = "com.microsoft"
U8_ZERO_SUFFIX = "_as_u8"


def lower_for_cpu(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
    """A copy of `model` lowered for the CPU provider, and what was rewritten (counts)."""
    lowered = onnx.ModelProto()
    lowered.CopyFrom(model)
    counts: Counter[str] = Counter()
    _lower_graph(lowered.graph, counts)
    if counts["qgemm"] and not any(o.domain == MS_DOMAIN for o in lowered.opset_import):
        lowered.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return lowered, dict(counts)


def _lower_graph(graph: onnx.GraphProto, counts: Counter) -> None:
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                _lower_graph(attribute.g, counts)
    _unsigned_activations(graph, counts)
    _gemms_to_qgemm(graph, counts)


def _initializers(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    return {init.name: init for init in graph.initializer}


def _unsigned_activations(graph: onnx.GraphProto, counts: Counter) -> None:
    """Step 1: activation Q/DQ with an int8 zero point of 0 -> uint8 zero point 128."""
    inits = _initializers(graph)
    retyped = set()
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            continue  # a weight or bias: stays signed (the u8 x s8 kernels want s8 weights)
        zero = inits.get(node.input[2])
        if zero is None:
            continue
        values = numpy_helper.to_array(zero)
        if values.dtype != np.int8 or values.size != 1 or int(values.reshape(-1)[0]) != 0:
            continue
        name = node.input[2] + U8_ZERO_SUFFIX
        if name not in inits:
            shifted = numpy_helper.from_array(np.full(values.shape, 128, np.uint8), name)
            graph.initializer.append(shifted)
            inits[name] = shifted
        node.input[2] = name
        if node.op_type == "QuantizeLinear":
            retyped.add(node.output[0])
        counts["unsigned_" + node.op_type] += 1
    for value in [*graph.value_info, *graph.output]:
        if value.name in retyped:
            value.type.tensor_type.elem_type = TensorProto.UINT8


def _gemms_to_qgemm(graph: onnx.GraphProto, counts: Counter) -> None:
    """Step 2: DQ(activation), DQ(int8 weight)[, DQ(int32 bias)] -> Gemm  =>  QGemm."""
    inits = _initializers(graph)
    producer = {out: node for node in graph.node for out in node.output}
    readers = Counter(name for node in graph.node for name in _reads(node))
    replaced: dict[int, onnx.NodeProto] = {}
    for index, node in enumerate(graph.node):
        if node.op_type != "Gemm":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1:
            continue
        a_dq, b_dq = producer.get(node.input[0]), producer.get(node.input[1])
        c_dq = producer.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if not (_is_dq(a_dq) and _is_dq(b_dq)) or (len(node.input) > 2 and not _is_dq(c_dq)):
            continue
        if len(a_dq.input) < 3 or len(b_dq.input) < 3:
            continue  # a zero point left to its default: not the form step 1 or QGemm takes
        a_q = producer.get(a_dq.input[0])
        a_zero = inits.get(a_dq.input[2])
        b_w, b_zero = inits.get(b_dq.input[0]), inits.get(b_dq.input[2])
        if a_q is None or a_q.op_type != "QuantizeLinear" or a_zero is None:
            continue
        if numpy_helper.to_array(a_zero).dtype != np.uint8 or b_w is None or b_zero is None:
            continue
        if b_w.data_type != TensorProto.INT8 or numpy_helper.to_array(b_zero).any():
            continue
        b_scale = numpy_helper.to_array(inits[b_dq.input[1]])
        axis = next((a.i for a in b_dq.attribute if a.name == "axis"), 1)
        out_axis = 0 if attrs.get("transB", 0) else 1
        if b_scale.size > 1 and axis != out_axis:
            continue  # per-channel along the reduced axis: not a QGemm weight
        inputs = [a_dq.input[0], a_dq.input[1], a_dq.input[2], b_dq.input[0], b_dq.input[1]]
        inputs.append(b_dq.input[2])
        if c_dq is not None:
            c_values = inits.get(c_dq.input[0])
            if c_values is None or c_values.data_type != TensorProto.INT32:
                continue
            a_scale = numpy_helper.to_array(inits[a_dq.input[1]])
            c_scale = numpy_helper.to_array(inits[c_dq.input[1]])
            # QGemm reads C on the product's grid: scale a_scale * b_scale, zero point 0.
            if not np.allclose(c_scale, a_scale * b_scale, rtol=1e-6, atol=0):
                continue
            inputs.append(c_dq.input[0])
        qgemm = helper.make_node(
            "QGemm",
            inputs,
            list(node.output),
            name=node.name + "_qgemm",
            domain=MS_DOMAIN,
            transA=0,
            transB=int(attrs.get("transB", 0)),
            alpha=1.0,
        )
        replaced[index] = qgemm
        for name in node.input:
            readers[name] -= 1
        counts["qgemm"] += 1
    if not replaced:
        return
    kept = []
    for index, node in enumerate(graph.node):
        node = replaced.get(index, node)
        # A DequantizeLinear whose every reader became a QGemm computes nothing any more.
        unread = node.op_type == "DequantizeLinear" and readers[node.output[0]] <= 0
        if unread and not any(node.output[0] == out.name for out in graph.output):
            continue
        kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)


def _is_dq(node: onnx.NodeProto | None) -> bool:
    return node is not None and node.op_type == "DequantizeLinear" and len(node.input) >= 2


def _reads(node: onnx.NodeProto) -> list[str]:
    """Every value `node` reads: its inputs, and what its subgraphs read from outside."""
    names = [name for name in node.input if name]
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH:
            for inner in attribute.g.node:
                names.extend(_reads(inner))
    return names
