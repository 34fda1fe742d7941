"""Sensor calibration without ROS: the tactile skin's zero baseline and camera intrinsics files.

Camera intrinsics use the camera_calibration_parsers YAML format (what `cameracalibrator`
writes and ROS camera drivers read), so a calibration made with the standard ROS tools can be
used unchanged.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from wmpc.config import ConfigError


class CalibrationError(ConfigError):
    """A calibration file is missing, malformed or disagrees with the sensor."""


# ---- tactile baseline --------------------------------------------------------------------


class TactileBaseline:
    """Zero offset of a magnetometer skin: the mean of N frames at rest, subtracted afterwards.

    A magnetometer reads the earth's field, nearby steel and its own offset even when nothing
    touches it; contact is the change from that. Collection runs alongside publishing: frames
    keep getting the previous offset (or none) until N new frames have been averaged. Safe to
    use from a reader thread and a service callback at once.
    """

    def __init__(self, n_frames: int):
        if n_frames < 1:
            raise ConfigError(f"baseline needs at least 1 frame, got n_frames={n_frames}")
        self.n_frames = n_frames
        self._lock = threading.Lock()
        self._sum: np.ndarray | None = None
        self._count = 0
        self._collecting = False
        self.offset: np.ndarray | None = None  # (..., 3) float32, None until first baseline
        self.completed = 0  # baselines finished since construction

    def start(self) -> None:
        """Begin averaging the next `n_frames` frames; the current offset stays until done."""
        with self._lock:
            self._sum = None
            self._count = 0
            self._collecting = True

    @property
    def collecting(self) -> bool:
        """True while a baseline is being averaged."""
        return self._collecting

    @property
    def progress(self) -> tuple[int, int]:
        """(frames averaged so far, frames needed) of the baseline being collected."""
        return self._count, self.n_frames

    def add(self, field: np.ndarray) -> bool:
        """Feed one raw frame (any shape); True when it completed a new baseline."""
        with self._lock:
            if not self._collecting:
                return False
            # float64 sum: 1000 frames of ~1e4 readings in float32 would lose the low digits.
            field64 = np.asarray(field, dtype=np.float64)
            self._sum = field64.copy() if self._sum is None else self._sum + field64
            self._count += 1
            if self._count < self.n_frames:
                return False
            self.offset = (self._sum / self._count).astype(np.float32)
            self._collecting = False
            self.completed += 1
            return True

    def apply(self, field: np.ndarray) -> np.ndarray:
        """`field` minus the baseline (unchanged, as float32, when there is none yet)."""
        offset = self.offset
        field = np.asarray(field, dtype=np.float32)
        return field if offset is None else field - offset


# ---- camera intrinsics -------------------------------------------------------------------

# Distortion models of sensor_msgs/distortion_models.h with their coefficient counts.
DISTORTION_COEFFICIENTS = {"plumb_bob": 5, "rational_polynomial": 8, "equidistant": 4}


@dataclass(frozen=True)
class CameraCalibration:
    """Intrinsics as in sensor_msgs/CameraInfo: K (3x3), D, R (3x3), P (3x4), in pixels."""

    camera_name: str
    width: int
    height: int
    camera_matrix: np.ndarray  # (3, 3) K
    distortion_model: str
    distortion: np.ndarray  # (n,) D
    rectification: np.ndarray  # (3, 3) R
    projection: np.ndarray  # (3, 4) P
    source: str = ""  # the file it came from, for messages

    @property
    def calibrated(self) -> bool:
        """False for the all-zero K that ROS uses to say 'uncalibrated'."""
        return bool(self.camera_matrix[0, 0] != 0.0)

    @staticmethod
    def uncalibrated(width: int, height: int, camera_name: str = "camera") -> CameraCalibration:
        """The ROS convention for a camera without intrinsics: size only, K = 0."""
        return CameraCalibration(
            camera_name=camera_name,
            width=width,
            height=height,
            camera_matrix=np.zeros((3, 3)),
            distortion_model="",
            distortion=np.zeros(0),
            rectification=np.zeros((3, 3)),
            projection=np.zeros((3, 4)),
        )

    def check_size(self, width: int, height: int) -> None:
        """Raise CalibrationError when the images are not the size this calibration is for."""
        if (width, height) != (self.width, self.height):
            raise CalibrationError(
                f"calibration {self.source or self.camera_name!r} is for "
                f"{self.width}x{self.height} images but the camera gives {width}x{height}; "
                "calibrate at this resolution or set 'width'/'height' to match"
            )


def _matrix(doc: dict[str, Any], key: str, shape: tuple[int, int] | None, path: Path):
    """Read a {rows, cols, data} block as a float64 array, checking its declared shape."""
    block = doc.get(key)
    if not isinstance(block, dict) or not {"rows", "cols", "data"} <= set(block):
        raise CalibrationError(f"{path}: '{key}' must be a mapping with rows, cols and data")
    rows, cols, data = block["rows"], block["cols"], block["data"]
    if not isinstance(data, list) or len(data) != rows * cols:
        got = len(data) if isinstance(data, list) else type(data).__name__
        raise CalibrationError(
            f"{path}: '{key}' declares {rows}x{cols} but its data has {got} values"
        )
    if shape is not None and (rows, cols) != shape:
        raise CalibrationError(f"{path}: '{key}' must be {shape[0]}x{shape[1]}, got {rows}x{cols}")
    try:
        values = np.array([float(v) for v in data], dtype=np.float64)
    except (TypeError, ValueError):
        raise CalibrationError(f"{path}: '{key}' data must be numbers") from None
    if not np.all(np.isfinite(values)):
        raise CalibrationError(f"{path}: '{key}' data must be finite")
    return values.reshape(rows, cols)


def load_camera_calibration(path: str | Path) -> CameraCalibration:
    """Read a camera_calibration_parsers YAML file; errors name the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"camera calibration file not found: {path}")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise CalibrationError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise CalibrationError(f"{path}: expected a mapping of calibration fields")
    missing = [k for k in ("image_width", "image_height", "camera_matrix") if k not in doc]
    if missing:
        raise CalibrationError(f"{path}: missing field(s) {missing}")
    width, height = doc["image_width"], doc["image_height"]
    for key, value in (("image_width", width), ("image_height", height)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise CalibrationError(f"{path}: '{key}' = {value!r} must be a positive integer")
    camera_matrix = _matrix(doc, "camera_matrix", (3, 3), path)
    model = doc.get("distortion_model", "plumb_bob")
    if not isinstance(model, str):
        raise CalibrationError(f"{path}: 'distortion_model' must be a string")
    if "distortion_coefficients" in doc:
        distortion = _matrix(doc, "distortion_coefficients", None, path).reshape(-1)
    else:
        distortion = np.zeros(DISTORTION_COEFFICIENTS.get(model, 0))
    expected = DISTORTION_COEFFICIENTS.get(model)
    if expected is not None and distortion.size != expected:
        raise CalibrationError(
            f"{path}: distortion_model '{model}' takes {expected} coefficients, "
            f"'distortion_coefficients' has {distortion.size}"
        )
    # A monocular calibration may omit R and P: identity R and P = [K | 0], as the parsers do.
    if "rectification_matrix" in doc:
        rectification = _matrix(doc, "rectification_matrix", (3, 3), path)
    else:
        rectification = np.eye(3)
    if "projection_matrix" in doc:
        projection = _matrix(doc, "projection_matrix", (3, 4), path)
    else:
        projection = np.hstack([camera_matrix, np.zeros((3, 1))])
    if not math.isclose(camera_matrix[2, 2], 1.0) and camera_matrix[0, 0] != 0.0:
        raise CalibrationError(
            f"{path}: 'camera_matrix' must have 1 in its last element, got {camera_matrix[2, 2]}"
        )
    return CameraCalibration(
        camera_name=str(doc.get("camera_name", "camera")),
        width=width,
        height=height,
        camera_matrix=camera_matrix,
        distortion_model=model,
        distortion=distortion,
        rectification=rectification,
        projection=projection,
        source=str(path),
    )
