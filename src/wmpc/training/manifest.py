"""manifest.json: the contract between training and the runtime (format wmpc-world-model/1).

Inputs and outputs are read back from the ONNX graphs themselves (never typed in), every
model file is listed with its sha256, and the INT8 files must have exactly the fp32 files'
inputs and outputs. The keys written are the project's manifest schema plus `accuracy_info`
(what each accuracy number measures) and `training.artifacts`. Every manifest written is read
back with the runtime's own reader (`wmpc.model.read_manifest`), so training cannot produce a
model the runtime refuses. ManifestError and sha256_file are the runtime's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx

from wmpc.model import ManifestError, sha256_file
from wmpc.training.dataset import action_space
from wmpc.training.model import HEADS

FORMAT = "wmpc-world-model/1"
MANIFEST_FILE = "manifest.json"
__all__ = ["ManifestError", "build_manifest", "check_with_runtime", "graph_io", "sha256_file"]
GRAPHS = ("encoder", "rollout")
PRECISIONS = ("fp32", "int8")
_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16"}


def _values(values) -> list[dict[str, Any]]:
    out = []
    for value in values:
        tensor = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        out.append(
            {
                "name": value.name,
                "shape": shape,
                "dtype": _DTYPES.get(tensor.elem_type, str(tensor.elem_type)),
            }
        )
    return out


def graph_io(path: Path) -> tuple[list[dict], list[dict]]:
    """(inputs, outputs) of an ONNX file: name, shape (None = dynamic), dtype."""
    model = onnx.load(path, load_external_data=False)
    return _values(model.graph.input), _values(model.graph.output)


def build_manifest(
    model_dir: Path,
    *,
    name: str,
    files: dict[str, dict[str, str]],
    modalities: dict[str, Any],
    normalisation: dict[str, Any],
    latent_dim: int,
    control_period_s: float,
    training: dict[str, Any],
    accuracy: dict[str, Any],
    accuracy_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest dict for `files` ({graph: {precision: file name}}) in `model_dir`."""
    for graph in GRAPHS:
        if "fp32" not in files.get(graph, {}):
            raise ManifestError(f"files.{graph} has no fp32 file")
    precision = "int8" if all("int8" in files[g] for g in GRAPHS) else "fp32"
    listed: dict[str, dict[str, dict[str, str]]] = {}
    inputs, outputs = {}, {}
    for graph in GRAPHS:
        listed[graph] = {}
        for prec, filename in files[graph].items():
            path = model_dir / filename
            if not path.is_file():
                raise ManifestError(f"files.{graph}.{prec}: {path} does not exist")
            listed[graph][prec] = {"path": filename, "sha256": sha256_file(path)}
            graph_inputs, graph_outputs = graph_io(path)
            if graph not in inputs:
                inputs[graph], outputs[graph] = graph_inputs, graph_outputs
            elif (graph_inputs, graph_outputs) != (inputs[graph], outputs[graph]):
                raise ManifestError(
                    f"files.{graph}.{prec} ({filename}) has inputs/outputs {graph_inputs} -> "
                    f"{graph_outputs}, unlike the fp32 graph's {inputs[graph]} -> "
                    f"{outputs[graph]}"
                )
    for value in outputs["rollout"]:
        if value["name"] in HEADS:
            value["unit"] = HEADS[value["name"]][1]
    return {
        "format": FORMAT,
        "name": name,
        "precision": precision,
        "control_period_s": control_period_s,
        "latent_dim": latent_dim,
        "modalities": modalities,
        "normalisation": normalisation,
        "action_space": action_space(),
        "files": listed,
        "inputs": inputs,
        "outputs": outputs,
        "training": training,
        "accuracy": accuracy,
        "accuracy_info": accuracy_info or {},
    }


def write_manifest(model_dir: Path, manifest: dict[str, Any]) -> Path:
    """Write manifest.json (atomically) and return its path."""
    path = model_dir / MANIFEST_FILE
    tmp = path.with_name(MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(path)
    return path


def check_with_runtime(model_dir: Path) -> None:
    """Read the manifest back exactly as the runtime does (ManifestError on any mismatch)."""
    from wmpc.model import read_manifest

    read_manifest(model_dir)


def checkpoint_problem(model_dir: Path, manifest: dict[str, Any]) -> str | None:
    """Why checkpoint.pt beside the ONNX files is not shown to be their run's, or None.

    The manifest lists its sha256 under training.artifacts: a model is the checkpoint and
    the files exported from it, and only that sha256 ties the two together.
    """
    from wmpc.model import sha256_file

    path = Path(model_dir) / "checkpoint.pt"
    if not path.is_file():
        return f"{path} not found (`wmpc train` saves it beside the ONNX files)"
    listed = manifest.get("training", {}).get("artifacts", {}).get("checkpoint.pt")
    if listed is None:
        return (
            f"{Path(model_dir) / MANIFEST_FILE} does not list checkpoint.pt under "
            "training.artifacts, so its weights cannot be shown to be the ONNX files' weights"
        )
    if sha256_file(path) != listed:
        return (
            f"{path} does not match the sha256 in training.artifacts of its manifest: it is "
            "not the checkpoint these ONNX files were exported from"
        )
    return None
