"""The world model at run time: manifest check, ONNX Runtime sessions, encode() and rollout().

`manifest.json` is the contract between training and the runtime. `read_manifest` checks all
of it (keys, shapes, action space, file hashes) before any file is loaded, `WorldModel.load`
then checks the sessions' real inputs and outputs against it, and refuses to start on any
mismatch with a ManifestError that names the key or file, what was expected and what was
found. No torch here: the runtime needs numpy and onnxruntime only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from wmpc.config import ModelConfig
from wmpc.errors import WmpcError
from wmpc.types import ACTION_NAMES

log = logging.getLogger(__name__)

FORMAT = "wmpc-world-model/1"
PARTS = ("encoder", "rollout")
PRECISIONS = ("int8", "fp32")
REQUIRED_KEYS = (
    "format",
    "name",
    "precision",
    "control_period_s",
    "latent_dim",
    "modalities",
    "normalisation",
    "action_space",
    "files",
    "inputs",
    "outputs",
)
# manifest dtype -> (ONNX Runtime type string, numpy dtype)
DTYPES = {
    "float32": ("tensor(float)", np.float32),
    "float16": ("tensor(float16)", np.float16),
    "float64": ("tensor(double)", np.float64),
    "int64": ("tensor(int64)", np.int64),
    "int32": ("tensor(int32)", np.int32),
    "int16": ("tensor(int16)", np.int16),
    "int8": ("tensor(int8)", np.int8),
    "uint8": ("tensor(uint8)", np.uint8),
    "bool": ("tensor(bool)", np.bool_),
}
# A name's suffix fixes its unit, so a head or action cannot say metres and mean newtons.
UNIT_OF_SUFFIX = {"_m": "m", "_n": "N", "_prob": "1", "_rad": "rad", "_nm": "N m"}
TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
DEFAULT_PROVIDERS = (TENSORRT, CUDA, CPU)
# What onnxruntime raises for a file it cannot load or a run it cannot do.
ORT_ERRORS = (
    ort_state.Fail,
    ort_state.InvalidArgument,
    ort_state.InvalidProtobuf,
    ort_state.InvalidGraph,
    ort_state.NoSuchFile,
    ort_state.NoModel,
    ort_state.NotImplemented,
    ort_state.RuntimeException,
    ort_state.EngineError,
)


class ManifestError(WmpcError, ValueError):
    """manifest.json is malformed or disagrees with the model files; the message says where."""


class ModelLoadError(WmpcError, RuntimeError):
    """An ONNX file cannot be loaded or run, or no requested execution provider exists."""


class ModelInputError(WmpcError, ValueError):
    """encode() or rollout() got inputs that do not fit the manifest."""


class FlopCountError(WmpcError, ValueError):
    """The FLOPs of an ONNX graph cannot be counted honestly (unknown dims or opaque ops)."""


# ---- the manifest -------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, shape (None = dynamic), dtype and unit (heads)."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str
    unit: str = ""

    @property
    def numpy_dtype(self) -> np.dtype:
        """The numpy dtype of this tensor."""
        return np.dtype(DTYPES[self.dtype][1])


@dataclass(frozen=True)
class ActionSpace:
    """The model's action: names, bounds (physical units) and units, in ACTION_NAMES order."""

    names: tuple[str, ...]
    low: np.ndarray  # (A,)
    high: np.ndarray  # (A,)
    units: tuple[str, ...]

    @property
    def dim(self) -> int:
        """A, the number of action components."""
        return len(self.names)


@dataclass(frozen=True)
class ModelFile:
    """One ONNX file of the model and the sha256 the manifest promises for it."""

    path: Path
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """A checked manifest.json; `raw` keeps the document for sections read elsewhere."""

    path: Path
    name: str
    precision: str
    control_period_s: float
    latent_dim: int
    modalities: Mapping[str, Any]
    normalisation: Mapping[str, Any]
    action_space: ActionSpace
    files: Mapping[str, Mapping[str, ModelFile]]  # part -> precision -> file
    inputs: Mapping[str, tuple[TensorSpec, ...]]  # part -> specs
    outputs: Mapping[str, tuple[TensorSpec, ...]]
    training: Mapping[str, Any]
    accuracy: Mapping[str, Any]
    raw: Mapping[str, Any]

    @property
    def heads(self) -> dict[str, TensorSpec]:
        """Rollout outputs by name: each (K, H, ...) with its unit."""
        return {spec.name: spec for spec in self.outputs["rollout"]}


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fail(where: Path, key: str, problem: str) -> ManifestError:
    return ManifestError(f"{where}: '{key}' {problem}")


def _get(doc: Mapping[str, Any], key: str, kind: type | tuple, where: Path, path: str) -> Any:
    """doc[key], which must exist and be of `kind`; `path` names it in errors."""
    if not isinstance(doc, Mapping) or key not in doc:
        raise _fail(where, path, "is missing")
    value = doc[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _tuple(kind)):
        raise _fail(where, path, f"must be {_kind_name(kind)}, got {type(value).__name__}")
    return value


def _tuple(kind: type | tuple) -> tuple:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_name(kind: type | tuple) -> str:
    names = {dict: "a mapping", list: "a list", str: "a string", int: "an integer"}
    return " or ".join(names.get(k, k.__name__) for k in _tuple(kind))


def _shape_text(shape: Sequence[int | None]) -> str:
    """A shape as the manifest writes it: [null, 3]."""
    return "[" + ", ".join("null" if d is None else str(d) for d in shape) + "]"


def _unit_problem(name: str, unit: str) -> str | None:
    """Why `unit` does not fit the suffix of `name`, or None."""
    for suffix, expected in UNIT_OF_SUFFIX.items():
        if name.endswith(suffix) and unit != expected:
            return f"unit '{unit}' does not match the name '{name}' (expected '{expected}')"
    return None


def _tensor_specs(doc: Mapping[str, Any], section: str, part: str, where: Path) -> tuple:
    entries = _get(
        _get(doc, section, dict, where, section), part, list, where, f"{section}.{part}"
    )
    if not entries:
        raise _fail(where, f"{section}.{part}", "must list at least one tensor")
    specs = []
    for i, entry in enumerate(entries):
        name = _get(entry, "name", str, where, f"{section}.{part}[{i}].name")
        path = f"{section}.{part}.{name}"
        shape = _get(entry, "shape", list, where, f"{path}.shape")
        if not shape or any(
            d is not None and (isinstance(d, bool) or not isinstance(d, int) or d <= 0)
            for d in shape
        ):
            raise _fail(where, f"{path}.shape", f"= {shape}: each dim must be null or an int > 0")
        # dtype defaults to float32: the brief's example omits it on some heads, and the
        # session check below compares it with the real graph anyway.
        dtype = entry.get("dtype", "float32")
        if dtype not in DTYPES:
            raise _fail(where, f"{path}.dtype", f"= {dtype!r}: use one of {sorted(DTYPES)}")
        unit = entry.get("unit", "")
        if not isinstance(unit, str):
            raise _fail(where, f"{path}.unit", "must be a string")
        specs.append(TensorSpec(name, tuple(shape), dtype, unit))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise _fail(where, f"{section}.{part}", f"repeats a tensor name: {names}")
    return tuple(specs)


def _check_io(inputs: dict, outputs: dict, latent: int, where: Path) -> None:
    """The fixed parts of the contract: z in and out, actions, and the rollout heads."""
    n_actions = len(ACTION_NAMES)
    expect = {
        ("outputs", "encoder", "z"): (None, latent),
        ("inputs", "rollout", "z"): (None, latent),
        ("inputs", "rollout", "actions"): (None, None, n_actions),
    }
    sections = {"inputs": inputs, "outputs": outputs}
    for (section, part, name), shape in expect.items():
        specs = {s.name: s for s in sections[section][part]}
        if name not in specs:
            raise _fail(
                where, f"{section}.{part}", f"lacks the tensor '{name}' {_shape_text(shape)}"
            )
        if specs[name].shape != shape:
            raise _fail(
                where,
                f"{section}.{part}.{name}.shape",
                f"= {_shape_text(specs[name].shape)}, expected {_shape_text(shape)} "
                f"(latent_dim = {latent}, {n_actions} actions)",
            )
        if specs[name].dtype != "float32":
            raise _fail(where, f"{section}.{part}.{name}.dtype", "must be float32")
    if [s.name for s in inputs["rollout"]] != ["z", "actions"]:
        raise _fail(where, "inputs.rollout", "must be exactly [z, actions]")
    if [s.name for s in outputs["encoder"]] != ["z"]:
        raise _fail(where, "outputs.encoder", "must be exactly [z]")
    heads = {s.name: s for s in outputs["rollout"]}
    if "ee_position_m" not in heads:
        raise _fail(where, "outputs.rollout", "lacks the head 'ee_position_m' the planner needs")
    for spec in outputs["rollout"]:
        path = f"outputs.rollout.{spec.name}"
        if len(spec.shape) < 3 or spec.shape[:2] != (None, None):
            raise _fail(
                where, f"{path}.shape", f"= {_shape_text(spec.shape)} must be [null, null, ...]"
            )
        if None in spec.shape[2:]:
            raise _fail(where, f"{path}.shape", "may only be dynamic in K and H")
        if not spec.unit:
            raise _fail(where, f"{path}.unit", "is missing: every head carries its unit")
        problem = _unit_problem(spec.name, spec.unit)
        if problem:
            raise _fail(where, f"{path}.unit", problem)
    if heads["ee_position_m"].shape[2:] != (3,):
        raise _fail(where, "outputs.rollout.ee_position_m.shape", "must be [null, null, 3]")


def _action_space(m: Mapping[str, Any], where: Path) -> ActionSpace:
    section = _get(m, "action_space", dict, where, "action_space")
    names = tuple(_get(section, "names", list, where, "action_space.names"))
    if names != ACTION_NAMES:
        raise _fail(
            where,
            "action_space.names",
            f"= {list(names)}; this runtime sends {list(ACTION_NAMES)}",
        )
    arrays = {}
    for key in ("low", "high"):
        values = _get(section, key, list, where, f"action_space.{key}")
        if len(values) != len(names) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in values
        ):
            raise _fail(
                where, f"action_space.{key}", f"= {values}: need {len(names)} finite numbers"
            )
        arrays[key] = np.asarray(values, dtype=np.float64)
    if np.any(arrays["low"] >= arrays["high"]):
        raise _fail(
            where,
            "action_space.low",
            f"= {arrays['low'].tolist()} must be below high = {arrays['high'].tolist()}",
        )
    units = tuple(_get(section, "units", list, where, "action_space.units"))
    if len(units) != len(names):
        raise _fail(where, "action_space.units", f"has {len(units)} entries for {len(names)}")
    for name, unit in zip(names, units, strict=True):
        problem = _unit_problem(name, unit)
        if problem:
            raise _fail(where, "action_space.units", problem)
    return ActionSpace(names, arrays["low"], arrays["high"], units)


def _files(m: Mapping[str, Any], model_dir: Path, where: Path) -> dict:
    section = _get(m, "files", dict, where, "files")
    files: dict[str, dict[str, ModelFile]] = {}
    for part in PARTS:
        by_precision = _get(section, part, dict, where, f"files.{part}")
        if not by_precision:
            raise _fail(where, f"files.{part}", "lists no file")
        files[part] = {}
        for precision, entry in by_precision.items():
            key = f"files.{part}.{precision}"
            if precision not in PRECISIONS:
                raise _fail(where, key, f"is not a known precision {list(PRECISIONS)}")
            rel = _get(entry, "path", str, where, f"{key}.path")
            expected = _get(entry, "sha256", str, where, f"{key}.sha256").lower()
            path = (model_dir / rel).resolve()
            if not path.is_file():
                raise ManifestError(f"{where}: {key}: file not found: {path}")
            actual = sha256_file(path)
            if actual != expected:
                raise ManifestError(
                    f"{where}: {key}: sha256 of {path} is {actual}, the manifest expects "
                    f"{expected or '(empty)'}; the file changed after export, re-export or "
                    "re-quantize the model"
                )
            files[part][precision] = ModelFile(path, expected)
    return files


def _check_normalisation(norm: Mapping[str, Any], encoder_inputs: tuple, where: Path) -> None:
    """Every normalisation entry names an encoder input (the preprocessor checks the stats)."""
    names = {s.name for s in encoder_inputs}
    for name in norm:
        if name not in names:
            raise _fail(where, f"normalisation.{name}", f"names no encoder input {sorted(names)}")


def _check_modalities(m: Mapping[str, Any], encoder_inputs: tuple, where: Path) -> None:
    """Every encoder input is a modality, with the shape the preprocessor will produce."""
    from wmpc.preprocess import PreprocessError, Preprocessor

    try:
        expected = Preprocessor.from_manifest(m).input_shapes
    except PreprocessError as exc:
        raise ManifestError(f"{where}: {exc}") from None
    specs = {s.name: s for s in encoder_inputs}
    if set(specs) != set(expected):
        raise _fail(
            where, "inputs.encoder", f"are {sorted(specs)}; the modalities give {sorted(expected)}"
        )
    for name, shape in expected.items():
        if specs[name].shape != (None, *shape):
            raise _fail(
                where,
                f"inputs.encoder.{name}.shape",
                f"= {_shape_text(specs[name].shape)} but modalities.{name} gives "
                f"{_shape_text([None, *shape])}",
            )


def read_manifest(model_dir: str | Path) -> Manifest:
    """Read and fully check `model_dir`/manifest.json, including every file's sha256."""
    model_dir = Path(model_dir)
    where = model_dir / "manifest.json"
    if not where.is_file():
        raise ManifestError(f"{where}: not found; is {model_dir} a wmpc model directory?")
    try:
        m = json.loads(where.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(m, dict):
        raise ManifestError(f"{where}: must hold a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in m]
    if missing:
        raise ManifestError(f"{where}: missing required key(s) {missing}")
    if m["format"] != FORMAT:
        raise _fail(where, "format", f"= {m['format']!r}; this runtime reads {FORMAT!r}")
    name = _get(m, "name", str, where, "name")
    precision = _get(m, "precision", str, where, "precision")
    if precision not in PRECISIONS:
        raise _fail(where, "precision", f"= {precision!r}; use one of {list(PRECISIONS)}")
    period = _get(m, "control_period_s", (int, float), where, "control_period_s")
    if not math.isfinite(period) or period <= 0:
        raise _fail(where, "control_period_s", f"= {period} must be a finite number > 0")
    latent = _get(m, "latent_dim", int, where, "latent_dim")
    if latent <= 0:
        raise _fail(where, "latent_dim", f"= {latent} must be > 0")
    _get(m, "modalities", dict, where, "modalities")
    normalisation = _get(m, "normalisation", dict, where, "normalisation")
    training = m.get("training", {})
    accuracy = m.get("accuracy", {})
    for key, value in (("training", training), ("accuracy", accuracy)):
        if not isinstance(value, dict):
            raise _fail(where, key, "must be a mapping")
    inputs = {part: _tensor_specs(m, "inputs", part, where) for part in PARTS}
    outputs = {part: _tensor_specs(m, "outputs", part, where) for part in PARTS}
    _check_io(inputs, outputs, latent, where)
    action_space = _action_space(m, where)
    _check_modalities(m, inputs["encoder"], where)
    _check_normalisation(normalisation, inputs["encoder"], where)
    files = _files(m, model_dir, where)
    for part in PARTS:
        if precision not in files[part]:
            raise _fail(where, f"files.{part}.{precision}", "is missing (the default precision)")
    return Manifest(
        path=where,
        name=name,
        precision=precision,
        control_period_s=float(period),
        latent_dim=latent,
        modalities=m["modalities"],
        normalisation=normalisation,
        action_space=action_space,
        files=files,
        inputs=inputs,
        outputs=outputs,
        training=training,
        accuracy=accuracy,
        raw=m,
    )


# ---- execution providers ------------------------------------------------------------------


def select_providers(requested: Sequence[str], available: Sequence[str]) -> list[str]:
    """The requested providers this onnxruntime build has, in order; warns once per skip."""
    if not requested:
        raise ModelLoadError("parameter 'providers' is empty: name at least one provider")
    chosen = []
    for name in requested:
        if name in available:
            chosen.append(name)
        else:
            log.warning(
                "execution provider %s is not available in this onnxruntime build "
                "(available: %s); skipping it",
                name,
                ", ".join(available),
            )
    if not chosen:
        raise ModelLoadError(
            f"none of the requested execution providers {list(requested)} is available; this "
            f"onnxruntime has {list(available)}. Add CPUExecutionProvider to 'providers', or "
            "install onnxruntime-gpu with CUDA/TensorRT"
        )
    return chosen


def provider_options(
    name: str,
    precision: str,
    device_id: int = 0,
    trt_cache_dir: str | Path = "",
    trt_profile: Mapping[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]
    | None = None,
) -> dict[str, str]:
    """ONNX Runtime options for one provider; TensorRT gets INT8 for the int8 files.

    `trt_profile` maps input name -> (min, opt, max) shape, so TensorRT builds one engine for
    every batch K and horizon H the planner uses instead of rebuilding on each new shape.
    """
    if name == TENSORRT:
        options = {
            "device_id": str(device_id),
            # The int8 files carry Q/DQ nodes: TensorRT takes their scales, no calibration table.
            # FP16 lets it run the layers left unquantized in half precision; the fp32 files
            # are asked for to get fp32 numerics, so they get neither.
            "trt_int8_enable": "True" if precision == "int8" else "False",
            "trt_fp16_enable": "True" if precision == "int8" else "False",
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": str(trt_cache_dir),
            "trt_timing_cache_enable": "True",
            "trt_timing_cache_path": str(trt_cache_dir),
        }
        if trt_profile:
            for i, key in enumerate(("min", "opt", "max")):
                options[f"trt_profile_{key}_shapes"] = ",".join(
                    f"{tensor}:{'x'.join(str(d) for d in shapes[i])}"
                    for tensor, shapes in trt_profile.items()
                )
        return options
    if name == CUDA:
        return {"device_id": str(device_id)}
    return {}


def session_options(intra_op_threads: int, qdq_cleanup: bool) -> ort.SessionOptions:
    """ONNX Runtime options of both sessions: sequential, fully optimised, quiet.

    `qdq_cleanup` lets ONNX Runtime drop the QuantizeLinear -> DequantizeLinear pairs its int8
    kernels did not absorb. On CPU those pairs only round activations to the int8 grid and back
    in float, at a cost: with them gone an int8 rollout (K = 512, H = 3, latent 48, hidden 96)
    took 1.08 instead of 1.39 ms of CPU and came closer to the fp32 one. It changes nothing in
    fp32 files. Only for CPU sessions: TensorRT reads the Q/DQ pairs to decide which layers
    run in int8.
    """
    options = ort.SessionOptions()
    # One thread by default: the planner's matrices (K = 512 rows, widths of 64-256) are too
    # small for ONNX Runtime to split, and a second spinning thread on a 2-core robot computer
    # competes with the DDS and sensor threads (measured: no gain idle, much slower under load).
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: our own log says what matters
    if qdq_cleanup:
        options.add_session_config_entry("session.enable_quant_qdq_cleanup", "1")
    return options


# ---- the model ----------------------------------------------------------------------------


def cpu_int8_source(path: Path, part: str) -> tuple[bytes, dict[str, int]]:
    """An int8 ONNX file lowered for the CPU provider (`wmpc.int8_cpu`), as session bytes,
    and what was rewritten.

    The file's sha256 was checked against the manifest before; only the in-memory graph is
    rewritten. Needs the `onnx` package (requirements/runtime.txt).
    """
    try:
        import onnx
        from google.protobuf.message import DecodeError
    except ImportError as exc:
        raise ModelLoadError(
            f"the int8 CPU kernels need the 'onnx' package ({exc}); install it "
            "(pip install -r requirements/runtime.txt) or set model.cpu_int8_kernels false"
        ) from None
    from wmpc.int8_cpu import lower_for_cpu

    try:
        model = onnx.load(str(path))
    except (DecodeError, ValueError, OSError) as exc:
        raise ModelLoadError(
            f"{path}: cannot parse this {part} file as ONNX ({type(exc).__name__}: "
            f"{str(exc)[:300]}); is it truncated or corrupt? Re-export the model"
        ) from None
    lowered, rewrites = lower_for_cpu(model)
    log.info("%s: int8 CPU kernels: %s", path.name, rewrites or "nothing to rewrite")
    return lowered.SerializeToString(), rewrites


def _session_problem(spec: TensorSpec, actual: Any, is_input: bool) -> str | None:
    """Why a session tensor (NodeArg) disagrees with its manifest spec, or None."""
    expected_type = DTYPES[spec.dtype][0]
    if actual.type != expected_type:
        return f"dtype {actual.type}, manifest says {spec.dtype} ({expected_type})"
    shape = actual.shape
    if len(shape) != len(spec.shape):
        return f"rank {len(shape)} ({shape}), manifest says {list(spec.shape)}"
    for i, (want, got) in enumerate(zip(spec.shape, shape, strict=True)):
        fixed = isinstance(got, int)
        if want is None and fixed:
            return f"dim {i} fixed at {got}, manifest says dynamic (null)"
        if want is not None and fixed and got != want:
            return f"dim {i} = {got}, manifest says {want}"
        if want is not None and not fixed and is_input:
            return f"dim {i} dynamic ({got!r}), manifest says {want}"
    return None


class WorldModel:
    """A loaded world model: `encode(inputs) -> z`, `rollout(z, actions) -> heads`."""

    def __init__(
        self,
        manifest: Manifest,
        precision: str,
        sessions: Mapping[str, ort.InferenceSession],
        requested_providers: Sequence[str],
        int8_rewrites: Mapping[str, dict[str, int]] | None = None,
        rollout_source: tuple[str | bytes, ort.SessionOptions] | None = None,
    ) -> None:
        """`int8_rewrites`: part -> what `wmpc.int8_cpu` rewrote in it (none: as the files are).
        `rollout_source`: the rollout session's file (or lowered bytes) and options, from which
        `prepare_horizon` opens an unrolled one (none: it cannot)."""
        self.manifest = manifest
        self.precision = precision
        self.encoder_session = sessions["encoder"]
        self.rollout_session = sessions["rollout"]
        self.providers = {part: s.get_providers()[0] for part, s in sessions.items()}
        # The rollout is the hot path (one run per planner iteration): its provider is "the"
        # provider of the model.
        self.provider = self.providers["rollout"]
        self.degraded = ""
        if self.provider != requested_providers[0] or len(set(self.providers.values())) > 1:
            self.degraded = (
                f"running on {self.provider} (encoder on {self.providers['encoder']}), "
                f"not the preferred {requested_providers[0]}"
            )
            log.warning("world model '%s' degraded: %s", manifest.name, self.degraded)
        self.int8_rewrites = dict(int8_rewrites or {})
        self._head_names = [o.name for o in self.rollout_session.get_outputs()]
        self._heads = manifest.heads  # looked up on every rollout: build the dict once
        self._rollout_source = rollout_source
        self._unrolled: dict[int, ort.InferenceSession] = {}  # horizon -> session

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        precision: str | None = None,
        providers: Sequence[str] = DEFAULT_PROVIDERS,
        intra_op_threads: int = 1,
        device_id: int = 0,
        trt_cache_dir: str | Path = "",
        trt_profile_kh: tuple[int, int] | None = None,
        qdq_cleanup: bool = True,
        cpu_int8_kernels: bool = True,
    ) -> WorldModel:
        """Check the manifest and files, open both ONNX files, check them against it.

        `precision` None = the manifest's. `trt_profile_kh` = (K, H) the planner uses, for
        TensorRT's shape profile. `qdq_cleanup`: see `session_options`. `cpu_int8_kernels`:
        on the CPU provider, open int8 files through `wmpc.int8_cpu.lower_for_cpu`.
        """
        manifest = read_manifest(model_dir)
        precision = precision or manifest.precision
        if precision not in PRECISIONS:
            raise ModelLoadError(f"precision {precision!r}: use one of {list(PRECISIONS)}")
        for part in PARTS:
            if precision not in manifest.files[part]:
                raise ManifestError(
                    f"{manifest.path}: 'files.{part}.{precision}' is missing; this model has "
                    f"{sorted(manifest.files[part])} files for the {part}"
                )
        chosen = select_providers(providers, ort.get_available_providers())
        if TENSORRT in chosen:
            trt_cache_dir = Path(trt_cache_dir or Path.home() / ".cache" / "wmpc" / "trt")
            trt_cache_dir.mkdir(parents=True, exist_ok=True)
        options = session_options(intra_op_threads, qdq_cleanup and chosen[0] == CPU)
        sessions, rewrites, sources = {}, {}, {}
        for part in PARTS:
            profile = None
            if trt_profile_kh is not None:
                profile = trt_profile_shapes(manifest, part, *trt_profile_kh)
            with_options = [
                (p, provider_options(p, precision, device_id, trt_cache_dir, profile))
                for p in chosen
            ]
            path = manifest.files[part][precision].path
            source: str | bytes = str(path)
            if cpu_int8_kernels and precision == "int8" and chosen[0] == CPU:
                source, rewrites[part] = cpu_int8_source(path, part)
            try:
                session = ort.InferenceSession(source, options, providers=with_options)
            except ORT_ERRORS as exc:
                first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise ModelLoadError(
                    f"{path}: ONNX Runtime cannot load this {part} file "
                    f"({type(exc).__name__}: {first_line[:300]}); is it truncated or corrupt? "
                    "Re-export the model"
                ) from None
            _check_session(manifest, part, session, path)
            sessions[part] = session
            sources[part] = (source, options)
        model = cls(manifest, precision, sessions, providers, rewrites, sources["rollout"])
        log.info(
            "loaded world model '%s' (%s) from %s on %s",
            manifest.name,
            precision,
            model_dir,
            model.provider,
        )
        return model

    @classmethod
    def from_config(
        cls, config: ModelConfig, trt_profile_kh: tuple[int, int] | None = None
    ) -> WorldModel:
        """Load the model a ModelConfig names ('' model_dir = the installed models/default)."""
        model_dir = config.model_dir
        if not model_dir:
            from wmpc.paths import share_path

            model_dir = share_path("models", "default")
        return cls.load(
            model_dir,
            precision=config.precision or None,
            providers=config.providers,
            intra_op_threads=config.intra_op_threads,
            device_id=config.device_id,
            trt_cache_dir=config.trt_engine_cache_dir,
            trt_profile_kh=trt_profile_kh,
            qdq_cleanup=config.qdq_cleanup,
            cpu_int8_kernels=config.cpu_int8_kernels,
        )

    @property
    def int8_cpu_kernels(self) -> bool:
        """Whether any product runs on the integer kernels of `wmpc.int8_cpu`."""
        return any(r.get("qgemm") for r in self.int8_rewrites.values())

    # -- typed views of the manifest ---------------------------------------------------------

    @property
    def action_space(self) -> ActionSpace:
        """Action names, bounds and units."""
        return self.manifest.action_space

    @property
    def control_period_s(self) -> float:
        """Seconds per action (one rollout step)."""
        return self.manifest.control_period_s

    @property
    def latent_dim(self) -> int:
        """Size of z."""
        return self.manifest.latent_dim

    @property
    def heads(self) -> dict[str, TensorSpec]:
        """Rollout heads by name, with shapes and units."""
        return self._heads

    @property
    def modalities(self) -> Mapping[str, Any]:
        """The manifest's modality specs (topics, sizes, audio parameters)."""
        return self.manifest.modalities

    # -- inference ---------------------------------------------------------------------------

    def encode(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Normalised model inputs (batch N, usually 1) -> z (N, latent_dim) float32."""
        feed = _feed(self.manifest.inputs["encoder"], inputs, "encode")
        return self.encoder_session.run(None, feed)[0]

    def prepare_horizon(self, horizon: int) -> bool:
        """Open a rollout session unrolled for `horizon` steps (`wmpc.unroll`), which
        `rollout` then runs for that horizon; True when it did (or had already).

        Only on the CPU provider, where it was measured (ONNX Runtime's Scan costs ~10 % of
        a planner rollout there); TensorRT builds its own engine from the Scan graph, and
        the change is not tested on it. A graph that cannot be unrolled keeps the Scan,
        logged once.
        """
        if horizon in self._unrolled:
            return True
        if self.provider != CPU or self._rollout_source is None:
            return False
        import onnx

        from wmpc.unroll import UnrollError, unroll_scan

        source, options = self._rollout_source
        if not isinstance(source, bytes):  # the file itself: read it again, as checked at load
            promised = self.manifest.files["rollout"][self.precision].sha256
            source = Path(source).read_bytes()
            if hashlib.sha256(source).hexdigest() != promised:
                raise ManifestError(
                    f"{self.manifest.path}: the rollout file changed on disk since it was "
                    "loaded (its sha256 is no longer the manifest's); reload the model"
                )
        graph = onnx.load_from_string(source)
        try:
            unrolled = unroll_scan(graph, horizon)
        except UnrollError as exc:
            log.info("rollout of '%s' not unrolled: %s", self.manifest.name, exc)
            self._rollout_source = None  # so that this is said once
            return False
        try:
            session = ort.InferenceSession(unrolled.SerializeToString(), options, providers=[CPU])
        except ORT_ERRORS as exc:
            raise ModelLoadError(
                f"{self.manifest.path}: ONNX Runtime refused the rollout unrolled for H = "
                f"{horizon} ({type(exc).__name__}: {str(exc).strip()[:300]})"
            ) from None
        if [o.name for o in session.get_outputs()] != self._head_names:
            raise ManifestError(f"{self.manifest.path}: the unrolled rollout lost its outputs")
        self._unrolled[horizon] = session
        log.info("rollout of '%s' unrolled for H = %d", self.manifest.name, horizon)
        return True

    def rollout(self, z: np.ndarray, actions: np.ndarray) -> dict[str, np.ndarray]:
        """z (1 or K, latent), actions (K, H, A) physical -> head -> (K, H, ...); one run."""
        actions = np.asarray(actions, dtype=np.float32)
        if actions.ndim != 3 or actions.shape[2] != self.action_space.dim:
            raise ModelInputError(
                f"rollout actions must be (K, H, {self.action_space.dim}), got {actions.shape}"
            )
        k, h = actions.shape[:2]
        z = np.asarray(z, dtype=np.float32)
        if z.ndim != 2 or z.shape[1] != self.latent_dim or z.shape[0] not in (1, k):
            raise ModelInputError(
                f"rollout z must be (1 or {k}, {self.latent_dim}), got {z.shape}"
            )
        if z.shape[0] != k:
            z = np.broadcast_to(z, (k, self.latent_dim))  # (K, latent)
        feed = {"z": np.ascontiguousarray(z), "actions": np.ascontiguousarray(actions)}
        out = self._unrolled.get(h, self.rollout_session).run(None, feed)
        heads = dict(zip(self._head_names, out, strict=True))
        for name, value in heads.items():
            want = (k, h, *self.heads[name].shape[2:])
            if value.shape != want:
                raise ManifestError(
                    f"{self.manifest.path}: rollout head '{name}' came out {value.shape}, the "
                    f"manifest promises {want} for K={k}, H={h}"
                )
        return heads

    # -- cost --------------------------------------------------------------------------------

    def rollout_flops(self, k: int, h: int) -> int:
        """FLOPs of one rollout run with K samples and horizon H (matrix products only)."""
        path = self.manifest.files["rollout"][self.precision].path
        shapes = {"z": (k, self.latent_dim), "actions": (k, h, self.action_space.dim)}
        return onnx_flops(path, shapes)

    def encoder_flops(self) -> int:
        """FLOPs of one encode() of a single observation (matrix products only)."""
        path = self.manifest.files["encoder"][self.precision].path
        shapes = {s.name: (1, *s.shape[1:]) for s in self.manifest.inputs["encoder"]}
        return onnx_flops(path, shapes)


def trt_profile_shapes(manifest: Manifest, part: str, k: int, h: int) -> dict:
    """(min, opt, max) shapes of each input: encoder batch 1, rollout up to K x H."""
    profile = {}
    for spec in manifest.inputs[part]:
        if part == "encoder":
            one = tuple(1 if d is None else d for d in spec.shape)
            profile[spec.name] = (one, one, one)
        else:
            dyn = iter((k, h))
            top = tuple(next(dyn) if d is None else d for d in spec.shape)
            low = tuple(1 if d is None else d for d in spec.shape)
            profile[spec.name] = (low, top, top)
    return profile


def _check_session(
    manifest: Manifest, part: str, session: ort.InferenceSession, path: Path
) -> None:
    """The session's inputs and outputs are exactly the manifest's, in names, dtypes, dims."""
    for section, nodes, is_input in (
        ("inputs", session.get_inputs(), True),
        ("outputs", session.get_outputs(), False),
    ):
        specs = {s.name: s for s in getattr(manifest, section)[part]}
        actual = {n.name: n for n in nodes}
        if set(specs) != set(actual):
            raise ManifestError(
                f"{manifest.path}: '{section}.{part}' names {sorted(specs)}, but {path.name} "
                f"has {sorted(actual)}"
            )
        for name, spec in specs.items():
            problem = _session_problem(spec, actual[name], is_input)
            if problem:
                raise ManifestError(
                    f"{manifest.path}: '{section}.{part}.{name}': {path.name} has {problem}"
                )


def _feed(specs: tuple[TensorSpec, ...], inputs: Mapping[str, np.ndarray], what: str) -> dict:
    """Inputs checked against the specs and cast to their dtypes."""
    names = {s.name for s in specs}
    if set(inputs) != names:
        raise ModelInputError(
            f"{what} needs inputs {sorted(names)}, got {sorted(inputs)} "
            f"(missing {sorted(names - set(inputs))}, unexpected {sorted(set(inputs) - names)})"
        )
    feed = {}
    for spec in specs:
        value = np.ascontiguousarray(inputs[spec.name], dtype=spec.numpy_dtype)
        ok = value.ndim == len(spec.shape) and all(
            d is None or d == n for d, n in zip(spec.shape, value.shape, strict=True)
        )
        if not ok:
            raise ModelInputError(
                f"{what} input '{spec.name}' has shape {value.shape}, the model takes "
                f"{list(spec.shape)} (None = any)"
            )
        feed[spec.name] = value
    return feed


# ---- FLOPs --------------------------------------------------------------------------------

# op -> (index of the weight input, kind); FLOPs = 2 x multiply-accumulates.
_COUNTED = {
    "MatMul": (1, "matmul"),
    "MatMulInteger": (1, "matmul"),
    "QLinearMatMul": (3, "matmul"),
    "Gemm": (1, "gemm"),
    "Conv": (1, "conv"),
    "ConvInteger": (1, "conv"),
    "QLinearConv": (3, "conv"),
    "ConvTranspose": (1, "conv_transpose"),
}
# Heavy ops whose cost the counter does not model: it refuses rather than undercount.
_OPAQUE = {"LSTM", "GRU", "RNN", "Einsum", "Attention", "Loop", "If"}


def onnx_flops(path: str | Path, input_shapes: Mapping[str, tuple[int, ...]]) -> int:
    """FLOPs (2 x multiply-accumulates) of the MatMul/Gemm/Conv-family ops of an ONNX file.

    Dynamic input dims are fixed to `input_shapes` and shapes are inferred through the graph;
    a Scan body (a rollout over the horizon) counts once per step. Elementwise ops are not
    counted (memory-bound, small next to the products). Needs `onnx` (requirements/train.txt).
    """
    import onnx

    model = onnx.load(str(path))
    return _graph_flops(model.graph, list(model.opset_import), input_shapes, {}, str(path))


def _graph_flops(graph, opsets: list, input_shapes: Mapping, outer: Mapping, where: str) -> int:
    """FLOPs of one graph whose inputs have `input_shapes`.

    `outer` maps names of the enclosing graphs (value infos and initializers) that a
    subgraph may read.
    """
    import onnx
    from onnx import helper, shape_inference

    opaque = sorted({n.op_type for n in graph.node if n.op_type in _OPAQUE})
    if opaque:
        raise FlopCountError(f"{where}: cannot count FLOPs through {opaque}")
    graph = onnx.GraphProto.FromString(graph.SerializeToString())  # a copy to edit
    initializers = {t.name for t in graph.initializer}
    for value in graph.input:
        if value.name in initializers:
            continue
        if value.name not in input_shapes:
            raise FlopCountError(f"{where}: no shape given for input '{value.name}'")
        dims = value.type.tensor_type.shape.dim
        if len(dims) != len(input_shapes[value.name]):
            raise FlopCountError(
                f"{where}: input '{value.name}' has rank {len(dims)}, shape given is "
                f"{input_shapes[value.name]}"
            )
        for dim, size in zip(dims, input_shapes[value.name], strict=True):
            dim.Clear()
            dim.dim_value = int(size)
    # A subgraph may read values of the graph around it: declare them as inputs here.
    known = (
        initializers | {v.name for v in graph.input} | {o for n in graph.node for o in n.output}
    )
    used = {name for n in graph.node for name in n.input if name}
    for name in sorted(used - known):
        if isinstance(outer.get(name), onnx.TensorProto):
            graph.initializer.append(outer[name])
        elif name in outer:
            graph.input.append(outer[name])
    del graph.output[:]  # declared output dims may be symbolic; inference recomputes them
    graph.value_info.clear()
    model = helper.make_model(graph, opset_imports=opsets)
    inferred = shape_inference.infer_shapes(model, data_prop=True).graph
    infos = {v.name: v for v in [*inferred.input, *inferred.value_info, *inferred.output]}
    shapes: dict[str, tuple] = {t.name: tuple(t.dims) for t in inferred.initializer}
    for name, value in infos.items():
        dims = value.type.tensor_type.shape.dim
        shapes[name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
    total = 0
    for node in inferred.node:
        if node.op_type == "Scan":
            scope = {**outer, **infos, **{t.name: t for t in inferred.initializer}}
            total += _scan_flops(node, shapes, opsets, scope, where)
        elif node.op_type in _COUNTED:
            total += _node_flops(node, shapes, where)
    return int(total)


def _node_flops(node, shapes: Mapping[str, tuple], where: str) -> int:
    """2 x multiply-accumulates of one MatMul/Gemm/Conv-family node."""
    weight_index, kind = _COUNTED[node.op_type]
    a = shapes.get(node.input[0])
    w = shapes.get(node.input[weight_index])
    out = shapes.get(node.output[0])
    if not a or not w or not out or None in a + w + out:
        raise FlopCountError(
            f"{where}: shapes of {node.op_type} '{node.name}' are not all known "
            f"(input {a}, weight {w}, output {out})"
        )
    if kind == "matmul":
        macs = math.prod(out) * a[-1]
    elif kind == "gemm":
        trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
        macs = math.prod(out) * (a[0] if trans_a else a[1])
    elif kind == "conv":
        macs = math.prod(out) * math.prod(w[1:])
    else:  # conv_transpose: each input element is spread over Cout/group x kernel
        macs = math.prod(a) * math.prod(w[1:])
    return 2 * macs


def _scan_flops(node, shapes: Mapping, opsets: list, outer: Mapping, where: str) -> int:
    """FLOPs of a Scan: its body's, once per element along the scanned axis."""
    attrs = {a.name: a for a in node.attribute}
    body = attrs["body"].g
    n_scan = attrs["num_scan_inputs"].i
    n_state = len(node.input) - n_scan
    axes = list(attrs["scan_input_axes"].ints) if "scan_input_axes" in attrs else [0] * n_scan
    body_shapes, steps = {}, None
    for i, (name, value) in enumerate(zip(node.input, body.input, strict=True)):
        shape = shapes.get(name)
        if shape is None or None in shape:
            raise FlopCountError(f"{where}: Scan '{node.name}' input '{name}' has shape {shape}")
        if i >= n_state:  # a scanned input: the body sees one slice of it
            axis = axes[i - n_state] % len(shape)
            steps = shape[axis]
            shape = shape[:axis] + shape[axis + 1 :]
        body_shapes[value.name] = shape
    if steps is None:
        raise FlopCountError(f"{where}: Scan '{node.name}' scans no input")
    return steps * _graph_flops(body, opsets, body_shapes, outer, f"{where} (Scan body)")
