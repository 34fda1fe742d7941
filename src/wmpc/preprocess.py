"""Observation -> the world model's inputs: image, audio log-mel, tactile grid, proprio vector.

Two steps, shared exactly by training and the runtime:

- `features(obs)`: the deterministic transforms (centre crop + INTER_AREA resize to the model
  size, log-mel spectrogram, tactile grid, proprio vector). The dataset stores these.
- `normalise(features)`: (x - mean) / std with the statistics from the manifest, and the layout
  the ONNX encoder takes. It broadcasts over leading batch dimensions, so training normalises
  whole batches with the very same function the runtime calls on one observation.

Model inputs (float32), with N the batch:
  image   (N, 3, H, W)          pixels / 255, normalised per channel
  audio   (N, n_mels, frames)   ln(mel power + log_offset), normalised per mel band
  tactile (N, rows, cols, 3)    taxel xyz, normalised per taxel and axis
  proprio (N, J + 3 [+ 6])      joint positions (rad), ee position (m)[, wrist wrench (N, N m)]

The wrist wrench is optional (manifest `modalities.proprio.fields`): a model trained without
it must read contact force from touch and audio alone. Stored features (the dataset's) always
carry every field; the fields a model takes are a prefix of them, so `normalise` keeps that
prefix.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from wmpc.config import CROP_SIDES, PreprocessConfig, SensorBufferConfig, crop_box_problem
from wmpc.errors import WmpcError
from wmpc.types import Observation

INPUT_NAMES = ("image", "audio", "tactile", "proprio")
PROPRIO_FIELDS = ("joint_position_rad", "ee_position_m", "wrench_wrist")  # the stored layout
# The field lists a model may take, each a prefix of PROPRIO_FIELDS (the ee position then
# sits at the same index, where the network copies it into z).
PROPRIO_CHOICES = (PROPRIO_FIELDS, PROPRIO_FIELDS[:2])
WRENCH_SIZE = 6
TACTILE_CHANNELS = 3


class PreprocessError(WmpcError, ValueError):
    """An observation or a manifest does not fit the model's inputs; the message says which."""


# ---- audio -------------------------------------------------------------------------------


def hz_to_mel(f_hz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale: 2595 log10(1 + f / 700)."""
    return 2595.0 * np.log10(1.0 + np.asarray(f_hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    """Inverse of `hz_to_mel`."""
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(
    rate_hz: float, n_fft: int, n_mels: int, fmin_hz: float, fmax_hz: float
) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular filters, equally spaced in mel, peak 1.

    The triangles are evaluated at each FFT bin's exact frequency rather than snapped to bins,
    so the narrow low bands still get weight at n_fft = 512.
    """
    if fmax_hz > rate_hz / 2 + 1e-9:
        raise PreprocessError(
            f"mel_fmax_hz = {fmax_hz} is above the Nyquist frequency {rate_hz / 2} of "
            f"rate {rate_hz} Hz"
        )
    bins_hz = np.arange(n_fft // 2 + 1) * rate_hz / n_fft
    edges_hz = mel_to_hz(np.linspace(hz_to_mel(fmin_hz), hz_to_mel(fmax_hz), n_mels + 2))
    low, centre, high = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    rising = (bins_hz[None, :] - low) / (centre - low)
    falling = (high - bins_hz[None, :]) / (high - centre)
    bank = np.maximum(0.0, np.minimum(rising, falling))
    empty = np.flatnonzero(bank.sum(axis=1) <= 0)
    if empty.size:
        raise PreprocessError(
            f"mel bands {empty.tolist()} cover no FFT bin: use fewer mels or a longer n_fft"
        )
    return bank.astype(np.float32)


def n_frames(window_samples: int, n_fft: int, hop: int) -> int:
    """Spectrogram frames in one window (frames lie fully inside it; no padding)."""
    if window_samples < n_fft:
        raise PreprocessError(f"audio window {window_samples} is shorter than n_fft {n_fft}")
    return 1 + (window_samples - n_fft) // hop


def log_mel(
    samples: np.ndarray, filterbank: np.ndarray, n_fft: int, hop: int, log_offset: float
) -> np.ndarray:
    """(n_mels, frames) float32 log-mel power of mono samples in [-1, 1] (periodic Hann)."""
    frames = np.lib.stride_tricks.sliding_window_view(
        np.asarray(samples, dtype=np.float32), n_fft
    )[::hop]  # (frames, n_fft)
    window = (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)
    spectrum = np.fft.rfft(frames * window, axis=-1)  # (frames, n_fft // 2 + 1)
    power = spectrum.real**2 + spectrum.imag**2
    mel = filterbank @ power.T.astype(np.float32)  # (n_mels, frames)
    return np.log(mel + np.float32(log_offset)).astype(np.float32)


# ---- image -------------------------------------------------------------------------------


def resize_image(
    image_rgb: np.ndarray, height: int, width: int, crop_box: Sequence[float] | None = None
) -> np.ndarray:
    """(height, width, 3) uint8 by INTER_AREA resize of, without `crop_box`, the centre crop
    to the target aspect, or with it, that part of the frame (top, bottom, left, right as
    fractions of its height and width; resized to the target whatever its aspect)."""
    h, w = image_rgb.shape[:2]
    if crop_box is not None:
        top, bottom, left, right = crop_box
        rows = slice(round(top * h), round(bottom * h))
        cols = slice(round(left * w), round(right * w))
        image_rgb = image_rgb[rows, cols]
    elif h * width > w * height:  # too tall: crop rows
        keep = max(1, round(w * height / width))
        top = (h - keep) // 2
        image_rgb = image_rgb[top : top + keep]
    elif h * width < w * height:  # too wide: crop columns
        keep = max(1, round(h * width / height))
        left = (w - keep) // 2
        image_rgb = image_rgb[:, left : left + keep]
    if image_rgb.shape[:2] == (height, width):
        return np.array(image_rgb, order="C")  # a copy: callers may keep it
    return cv2.resize(image_rgb, (width, height), interpolation=cv2.INTER_AREA)


# ---- the modalities a model takes --------------------------------------------------------


def proprio_size(joint_count: int, fields: tuple[str, ...]) -> int:
    """Length of the proprio vector with these fields (one of PROPRIO_CHOICES)."""
    if fields not in PROPRIO_CHOICES:
        raise PreprocessError(
            f"proprio fields {list(fields)} are not ones this runtime builds; choose one of "
            f"{[list(c) for c in PROPRIO_CHOICES]}"
        )
    return joint_count + 3 + (WRENCH_SIZE if "wrench_wrist" in fields else 0)


def with_proprio_fields(modalities: Mapping[str, Any], fields: tuple[str, ...]) -> dict:
    """A copy of a `modalities` section whose proprio input takes `fields`."""
    proprio = dict(modalities["proprio"])
    proprio["fields"] = list(fields)
    proprio["size"] = proprio_size(len(proprio["joint_names"]), tuple(fields))
    return {**modalities, "proprio": proprio}


def modalities_spec(
    buffer: SensorBufferConfig, pre: PreprocessConfig, tactile_rows: int, tactile_cols: int
) -> dict[str, Any]:
    """The manifest's `modalities` section for these settings and tactile grid (every
    proprio field: what the dataset stores)."""
    return {
        "image": {
            "topic": buffer.image_topic,
            "height": pre.image_height,
            "width": pre.image_width,
            "encoding": "rgb8",
            "crop": dict(zip(CROP_SIDES, pre.image_crop, strict=True))
            if pre.image_crop
            else "centre",
            "interpolation": "area",
        },
        "audio": {
            "topic": buffer.audio_topic,
            "rate_hz": buffer.audio_rate_hz,
            "window_samples": buffer.audio_window_samples,
            "n_fft": pre.n_fft,
            "hop": pre.hop,
            "n_mels": pre.n_mels,
            "fmin_hz": pre.mel_fmin_hz,
            "fmax_hz": pre.mel_fmax_hz,
            "log_offset": pre.log_offset,
            "window": "hann",
            "mel_scale": "htk",
        },
        "tactile": {
            "topic": buffer.tactile_topic,
            "rows": int(tactile_rows),
            "cols": int(tactile_cols),
            "channels": TACTILE_CHANNELS,
        },
        "proprio": {
            "joint_names": list(buffer.joint_names),
            "fields": list(PROPRIO_FIELDS),
            "size": proprio_size(len(buffer.joint_names), PROPRIO_FIELDS),
        },
    }


def _require(section: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in section:
        raise PreprocessError(f"manifest modalities.{where} lacks '{key}'")
    return section[key]


def compute_normalisation(
    features: Mapping[str, np.ndarray], min_std: float, chunk_rows: int = 1024
) -> dict[str, dict[str, Any]]:
    """Mean and std per input from stacked features (N, ...) with a floor on std.

    image: per channel of pixels / 255; audio: per mel band; tactile and proprio: per element.
    `shape` is the shape the lists reshape to, broadcasting against one sample's model input.
    Sums run over chunks of rows in float64, so large image stacks need little extra memory.
    """
    out: dict[str, dict[str, Any]] = {}
    for name in INPUT_NAMES:
        stack = features[name]
        if name == "image":
            axes, shape, scale = (0, 1, 2), [3, 1, 1], 1.0 / 255.0  # rows are (H, W, 3)
        elif name == "audio":
            axes, shape, scale = (0, 2), [stack.shape[1], 1], 1.0  # rows are (mels, frames)
        else:
            axes, shape, scale = (0,), list(stack.shape[1:]), 1.0
        total = total_sq = 0.0
        count = 0
        for start in range(0, stack.shape[0], chunk_rows):
            x = np.asarray(stack[start : start + chunk_rows], dtype=np.float64) * scale
            total = total + x.sum(axis=axes)
            total_sq = total_sq + np.square(x).sum(axis=axes)
            count += x.size // np.asarray(total).size
        mean = np.asarray(total / count).reshape(-1)
        variance = np.maximum(np.asarray(total_sq / count).reshape(-1) - mean**2, 0.0)
        std = np.maximum(np.sqrt(variance), min_std)
        out[name] = {"mean": mean.tolist(), "std": std.tolist(), "shape": shape}
    return out


def _crop_box(crop: Any) -> tuple[float, ...] | None:
    """A manifest's modalities.image.crop: "centre" (None) or {top, bottom, left, right}."""
    if crop == "centre":
        return None
    box = tuple(crop.get(side) for side in CROP_SIDES) if isinstance(crop, Mapping) else ()
    problem = crop_box_problem(box) if box else "is neither 'centre' nor a box"
    if problem or set(crop) != set(CROP_SIDES):
        raise PreprocessError(
            f"manifest modalities.image.crop = {crop!r}: {problem or 'unknown keys'}; use "
            f"'centre' or {{{', '.join(f'{side}: <fraction>' for side in CROP_SIDES)}}}"
        )
    return box


class Preprocessor:
    """Observation -> normalised float32 model inputs, as one manifest describes them."""

    def __init__(self, modalities: Mapping[str, Any], normalisation: Mapping[str, Any] | None):
        """Build from a manifest's sections; without normalisation only `features` works."""
        image = _require(modalities, "image", "")
        audio = _require(modalities, "audio", "")
        tactile = _require(modalities, "tactile", "")
        proprio = _require(modalities, "proprio", "")
        self.image_hw = (
            int(_require(image, "height", "image")),
            int(_require(image, "width", "image")),
        )
        self.crop_box = _crop_box(image.get("crop", "centre"))
        self.audio_rate_hz = float(_require(audio, "rate_hz", "audio"))
        self.window_samples = int(_require(audio, "window_samples", "audio"))
        self.n_fft = int(_require(audio, "n_fft", "audio"))
        self.hop = int(_require(audio, "hop", "audio"))
        self.log_offset = float(audio.get("log_offset", PreprocessConfig().log_offset))
        self.filterbank = mel_filterbank(
            self.audio_rate_hz,
            self.n_fft,
            int(_require(audio, "n_mels", "audio")),
            float(audio.get("fmin_hz", PreprocessConfig().mel_fmin_hz)),
            float(audio.get("fmax_hz", self.audio_rate_hz / 2)),
        )
        self.tactile_shape = (
            int(_require(tactile, "rows", "tactile")),
            int(_require(tactile, "cols", "tactile")),
            int(_require(tactile, "channels", "tactile")),
        )
        if self.tactile_shape[2] != TACTILE_CHANNELS:
            raise PreprocessError(
                f"manifest modalities.tactile.channels = {self.tactile_shape[2]}; this runtime "
                f"feeds {TACTILE_CHANNELS} (x, y, z) per taxel"
            )
        self.joint_names = tuple(_require(proprio, "joint_names", "proprio"))
        self.proprio_fields = tuple(_require(proprio, "fields", "proprio"))
        if self.proprio_fields not in PROPRIO_CHOICES:
            raise PreprocessError(
                f"manifest modalities.proprio.fields = {list(self.proprio_fields)}; this "
                f"runtime builds one of {[list(c) for c in PROPRIO_CHOICES]}"
            )
        self.proprio_size = proprio_size(len(self.joint_names), self.proprio_fields)
        self._stored_proprio_size = proprio_size(len(self.joint_names), PROPRIO_FIELDS)
        expected = {
            "image": (3, *self.image_hw),
            "audio": (
                self.filterbank.shape[0],
                n_frames(self.window_samples, self.n_fft, self.hop),
            ),
            "tactile": self.tactile_shape,
            "proprio": (self.proprio_size,),
        }
        self.input_shapes = expected
        self._mean: dict[str, np.ndarray] = {}
        self._inv_std: dict[str, np.ndarray] = {}
        for name in INPUT_NAMES if normalisation is not None else ():
            stats = normalisation.get(name)
            if stats is None:
                raise PreprocessError(f"manifest normalisation lacks input '{name}'")
            shape = tuple(stats.get("shape", ()))
            mean = np.asarray(stats.get("mean", ()), dtype=np.float32)
            std = np.asarray(stats.get("std", ()), dtype=np.float32)
            if mean.size != math.prod(shape) or std.size != mean.size:
                raise PreprocessError(
                    f"manifest normalisation.{name}: mean ({mean.size}) and std ({std.size}) "
                    f"must hold {math.prod(shape)} values for shape {list(shape)}"
                )
            if not np.all(np.isfinite(mean)) or not np.all(std > 0):
                raise PreprocessError(
                    f"manifest normalisation.{name}: mean must be finite and std > 0"
                )
            try:
                np.broadcast_shapes(shape, expected[name])
            except ValueError:
                raise PreprocessError(
                    f"manifest normalisation.{name}.shape {list(shape)} does not broadcast "
                    f"against the input shape {list(expected[name])}"
                ) from None
            self._mean[name] = mean.reshape(shape)
            self._inv_std[name] = (1.0 / std).reshape(shape)
        self._image_table = self._image_lookup_table()

    def _image_lookup_table(self) -> np.ndarray | None:
        """(3, 256) float32: the normalised value of each 8-bit level per colour channel, or
        None without per-channel image statistics.

        Training normalises a batch of 64 x 6 frames per step (4.7 M pixels): looking each
        byte up took 9 ms where the float arithmetic took 30 ms (a tenth of a training step).
        The table holds the very float32 results of that arithmetic (same operations, same
        order), so both give identical inputs.
        """
        mean, inv_std = self._mean.get("image"), self._inv_std.get("image")
        if mean is None or mean.shape not in ((), (3, 1, 1)):
            return None
        levels = np.arange(256, dtype=np.float32) * np.float32(1.0 / 255.0)  # (256,)
        mean_c = np.broadcast_to(mean.reshape(-1), (3,))[:, None]  # (3, 1)
        inv_c = np.broadcast_to(inv_std.reshape(-1), (3,))[:, None]
        return (levels[None, :] - mean_c) * inv_c

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> Preprocessor:
        """The preprocessor a manifest describes (its `modalities` and `normalisation`)."""
        for key in ("modalities", "normalisation"):
            if key not in manifest:
                raise PreprocessError(f"manifest lacks '{key}'")
        return cls(manifest["modalities"], manifest["normalisation"])

    def features(self, obs: Observation) -> dict[str, np.ndarray]:
        """Un-normalised features of one observation (what the dataset stores)."""
        image = obs.image_rgb
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise PreprocessError(
                f"observation image_rgb must be (H, W, 3) uint8, got {image.shape} {image.dtype}"
            )
        if abs(obs.audio_rate_hz - self.audio_rate_hz) > 1e-6:
            raise PreprocessError(
                f"observation audio is at {obs.audio_rate_hz} Hz; the model takes "
                f"{self.audio_rate_hz} Hz"
            )
        if obs.audio.shape != (self.window_samples,):
            raise PreprocessError(
                f"observation audio must be ({self.window_samples},) samples, got "
                f"{obs.audio.shape}"
            )
        if obs.tactile.shape != self.tactile_shape:
            raise PreprocessError(
                f"observation tactile is {obs.tactile.shape}; the model takes "
                f"{self.tactile_shape} (rows, cols, xyz)"
            )
        if obs.joint_position_rad.shape != (len(self.joint_names),):
            raise PreprocessError(
                f"observation joint_position_rad has {obs.joint_position_rad.shape} values; "
                f"the model takes {len(self.joint_names)} ({list(self.joint_names)})"
            )
        parts = [obs.joint_position_rad, obs.ee_pose.position_m]
        if "wrench_wrist" in self.proprio_fields:
            parts.append(obs.wrench_wrist.as_array())
        proprio = np.concatenate(parts).astype(np.float32)
        return {
            "image": resize_image(image, *self.image_hw, self.crop_box),
            "audio": log_mel(obs.audio, self.filterbank, self.n_fft, self.hop, self.log_offset),
            "tactile": np.asarray(obs.tactile, dtype=np.float32),
            "proprio": proprio,
        }

    def normalise(self, features: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Features with any leading batch dims -> normalised float32 model inputs."""
        if not self._mean:
            raise PreprocessError("this preprocessor was built without normalisation statistics")
        image = np.asarray(features["image"])
        planes = np.moveaxis(image, -1, -3)  # (..., H, W, 3) -> (..., 3, H, W)
        if image.dtype == np.uint8 and self._image_table is not None:
            out = {"image": self._look_up_image(planes)}
        else:
            scaled = planes.astype(np.float32) * np.float32(1.0 / 255.0)
            out = {"image": self._standardise("image", scaled)}
        for name in ("audio", "tactile"):
            out[name] = self._standardise(name, np.asarray(features[name], dtype=np.float32))
        proprio = self.take_proprio(np.asarray(features["proprio"], dtype=np.float32))
        out["proprio"] = self._standardise("proprio", proprio)
        return out

    def _standardise(self, name: str, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray((x - self._mean[name]) * self._inv_std[name])

    def _look_up_image(self, planes: np.ndarray) -> np.ndarray:
        """(..., 3, H, W) uint8 -> normalised float32 via the table (_image_lookup_table)."""
        table = self._image_table
        out = np.empty(planes.shape, np.float32)
        for c in range(3):
            # mode "clip" never clips a byte (256 entries); it spares take()'s buffered copy.
            np.take(table[c], planes[..., c, :, :], out=out[..., c, :, :], mode="clip")
        return out

    def take_proprio(self, proprio: np.ndarray) -> np.ndarray:
        """(..., P) proprio features -> the model's fields: as they are, or the prefix it
        takes of stored ones (every field)."""
        size = proprio.shape[-1]
        if size == self.proprio_size:
            return proprio
        if size == self._stored_proprio_size:
            return proprio[..., : self.proprio_size]
        raise PreprocessError(
            f"proprio features have {size} values; the model takes {self.proprio_size} "
            f"({list(self.proprio_fields)} for {len(self.joint_names)} joints)"
        )

    def __call__(self, obs: Observation) -> dict[str, np.ndarray]:
        """Model inputs for one observation, each with a batch dimension of 1."""
        inputs = self.normalise(self.features(obs))
        return {name: x[np.newaxis] for name, x in inputs.items()}
