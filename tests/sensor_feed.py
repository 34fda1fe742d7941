"""Synthetic but well-formed sensor messages for every modality, stamped on a given clock.

Used by the runtime tests to drive the control loop and the runtime node; the values are
plain (a still arm at a known pose) so the tests can reason about what the planner does.
"""

from __future__ import annotations

import numpy as np

from wmpc import codecs
from wmpc.types import TOOL_DOWN_XYZW, AudioChunk, JointSample, Pose, TactileFrame, Wrench

JOINTS = tuple(f"panda_joint{i}" for i in range(1, 8))
AUDIO_CHUNK = 512
AUDIO_RATE_HZ = 16000


class SensorFeed:
    """Makes each modality's next message; audio chunks are contiguous in stamp time."""

    def __init__(self, ee_position_m=(0.5, 0.0, 0.2), seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.ee_position_m = np.asarray(ee_position_m, dtype=np.float64)
        self._audio_next_s: float | None = None

    def image(self, stamp_s: float):
        pixels = self.rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        return codecs.numpy_to_image(pixels, "rgb8", stamp_s, "camera")

    def tactile(self, stamp_s: float):
        taxels = self.rng.normal(0, 0.01, (4, 4, 3)).astype(np.float32)
        return codecs.tactile_to_msg(TactileFrame(stamp_s, taxels, "pad"))

    def joints(self, stamp_s: float):
        q = np.array([0.0, -0.3, 0.0, -2.2, 0.0, 1.9, 0.8])
        sample = JointSample(stamp_s, JOINTS, q, np.zeros(7), np.zeros(7))
        return codecs.joint_state_to_msg(sample)

    def ee_pose(self, stamp_s: float):
        return codecs.pose_to_msg(Pose(self.ee_position_m, TOOL_DOWN_XYZW, "base"), stamp_s)

    def wrench(self, stamp_s: float):
        return codecs.wrench_to_msg(Wrench.zero("base"), stamp_s)

    def audio_until(self, stamp_s: float) -> list:
        """Every 512-sample chunk that ended by `stamp_s`, contiguous with the last."""
        if self._audio_next_s is None:
            self._audio_next_s = stamp_s - 0.2  # a full window's worth of history
        chunks = []
        chunk_s = AUDIO_CHUNK / AUDIO_RATE_HZ
        while self._audio_next_s + chunk_s <= stamp_s + 1e-9:
            samples = self.rng.integers(-300, 300, (1, AUDIO_CHUNK), dtype=np.int16)
            chunk = AudioChunk(self._audio_next_s, samples, float(AUDIO_RATE_HZ), "mic")
            chunks.append(codecs.audio_to_msg(chunk))
            self._audio_next_s += chunk_s
        return chunks

    def all_at(self, stamp_s: float) -> list[tuple[str, object]]:
        """(modality, message) for every modality, fresh at `stamp_s`."""
        out = [(m, getattr(self, m)(stamp_s)) for m in ("image", "tactile", "joints")]
        out += [("ee_pose", self.ee_pose(stamp_s)), ("wrench", self.wrench(stamp_s))]
        out += [("audio", msg) for msg in self.audio_until(stamp_s)]
        return out
