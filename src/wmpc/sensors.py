"""SensorBuffer: the latest sample per modality, an audio ring, staleness, on header stamps only.

The runtime node, offline evaluation and the training dataset builder all feed this one class,
so a tick sees exactly the same observation whether it comes from DDS, a bag or the simulator.

- `offer_<modality>(msg_or_decoded, now_s)` takes a raw ROS message (rclpy or rosbags; decoded
  through `wmpc.codecs`) or the decoded dataclass. It never raises for bad data: it returns
  None when the sample is kept, or the reason it was rejected, and counts rejects per topic.
- `observation(now_s)` assembles an Observation when every modality is present and fresh.
  Otherwise the observation is None and `problems` names each missing or stale modality.
  The wrist wrench can be left out of "every" (`wrench_required=False`, for a model that
  does not read it): then it is still kept and reported, but never waited for.

Only header stamps count (never the host clock), so the buffer works unchanged on /clock in
simulation and replay. Audio is a ring of the newest `audio_window_samples` samples, built
from chunk stamps and the sample rate: a chunk that starts later than the buffered audio ends
is a gap and restarts the window (the missing samples are never invented); a chunk that
starts earlier overlaps, and its repeated samples are dropped.
"""

from __future__ import annotations

import logging
import math
from typing import Any, NamedTuple

import numpy as np

from wmpc import codecs
from wmpc.codecs import CodecError
from wmpc.config import SensorBufferConfig
from wmpc.types import (
    AudioChunk,
    ImageFrame,
    JointSample,
    Observation,
    Pose,
    TactileFrame,
    Wrench,
)

log = logging.getLogger(__name__)

MODALITIES = ("image", "audio", "tactile", "joints", "ee_pose", "wrench")
INT16_SCALE = 1.0 / 32768.0


class Snapshot(NamedTuple):
    """What `observation(now_s)` returns; unpacks as (observation, staleness_s, problems)."""

    observation: Observation | None
    staleness_s: dict[str, float]  # modality -> age (s); inf when nothing was received
    problems: list[str]  # "<modality>: <why>" for each missing or stale modality


class _RejectedError(Exception):
    """Internal: a sample failed a check; the message is the reason."""


def _finite(name: str, array: np.ndarray) -> None:
    if not np.all(np.isfinite(array)):
        raise _RejectedError(f"{name} has non-finite values")


def _to_rgb(frame: ImageFrame) -> np.ndarray:
    """(H, W, 3) uint8 RGB from an rgb8/bgr8/rgba8/bgra8/mono8 frame."""
    pixels, encoding = frame.pixels, frame.encoding
    if pixels.dtype != np.uint8:
        raise _RejectedError(f"encoding '{encoding}' is not 8-bit; the model takes colour images")
    if encoding == "rgb8" and pixels.ndim == 3 and pixels.shape[2] == 3:
        return np.ascontiguousarray(pixels)
    if encoding == "bgr8" and pixels.ndim == 3 and pixels.shape[2] == 3:
        return np.ascontiguousarray(pixels[..., ::-1])
    if encoding == "rgba8" and pixels.ndim == 3 and pixels.shape[2] == 4:
        return np.ascontiguousarray(pixels[..., :3])
    if encoding == "bgra8" and pixels.ndim == 3 and pixels.shape[2] == 4:
        return np.ascontiguousarray(pixels[..., 2::-1])
    if encoding == "mono8":
        gray = pixels if pixels.ndim == 2 else pixels[..., 0]
        return np.repeat(gray[..., np.newaxis], 3, axis=2)
    raise _RejectedError(
        f"image encoding '{encoding}' with shape {pixels.shape} is not one of rgb8, bgr8, "
        "rgba8, bgra8, mono8"
    )


class SensorBuffer:
    """Latest sample per modality plus an audio ring; see the module docstring."""

    def __init__(self, config: SensorBufferConfig | None = None, wrench_required: bool = True):
        """`wrench_required`: False for a model without the wrist wrench in its input
        (`runtime.ControlLoop` decides from the manifest); a robot may then have no sensor."""
        self.config = config or SensorBufferConfig()
        self.wrench_required = bool(wrench_required)
        # The modalities an observation waits for (and whose age the safety filter watches).
        self.required = tuple(m for m in MODALITIES if m != "wrench" or self.wrench_required)
        cfg = self.config
        self.topics = {
            "image": cfg.image_topic,
            "audio": cfg.audio_topic,
            "tactile": cfg.tactile_topic,
            "joints": cfg.joints_topic,
            "ee_pose": cfg.ee_pose_topic,
            "wrench": cfg.wrench_topic,
        }
        self.max_age_s = {
            "image": cfg.image_max_age_s,
            "audio": cfg.audio_max_age_s,
            "tactile": cfg.tactile_max_age_s,
            "joints": cfg.joints_max_age_s,
            "ee_pose": cfg.ee_pose_max_age_s,
            "wrench": cfg.wrench_max_age_s,
        }
        self._joint_index = {name: i for i, name in enumerate(cfg.joint_names)}
        self.accepted = dict.fromkeys(self.topics.values(), 0)
        self.rejects = dict.fromkeys(self.topics.values(), 0)
        self.last_reject: dict[str, str] = {}
        self.audio_gaps = 0
        self.audio_overlaps = 0
        self.clock_resets = 0
        self._scratch: SensorBuffer | None = None  # check()'s empty buffer, made on first use
        self.clear()

    # ---- state ------------------------------------------------------------------------------

    def clear(self) -> None:
        """Forget every sample (counters are kept)."""
        n_joints = len(self.config.joint_names)
        self._image: tuple[float, np.ndarray] | None = None
        self._tactile: tuple[float, np.ndarray] | None = None
        self._ee_pose: tuple[float, Pose] | None = None
        self._wrench: tuple[float, Wrench] | None = None
        self._joint_position = np.full(n_joints, np.nan)
        self._joint_stamp = np.full(n_joints, np.nan)
        self._audio = np.zeros(self.config.audio_window_samples, dtype=np.float32)
        self._audio_valid = 0  # contiguous real samples at the end of the ring
        self._audio_end_s: float | None = None  # time just after the newest buffered sample
        self._newest_s = -math.inf

    def stats(self) -> dict[str, Any]:
        """Counters for diagnostics: accepted and rejected per topic, audio gaps and overlaps."""
        return {
            "accepted": dict(self.accepted),
            "rejected": dict(self.rejects),
            "last_reject": dict(self.last_reject),
            "audio_gaps": self.audio_gaps,
            "audio_overlaps": self.audio_overlaps,
            "clock_resets": self.clock_resets,
        }

    # ---- offers -----------------------------------------------------------------------------

    def offer_image(self, msg: Any, now_s: float) -> str | None:
        """Keep a camera frame (sensor_msgs/Image or ImageFrame); None, or why it was rejected."""
        return self._offer("image", msg, now_s, self._take_image)

    def offer_audio(self, msg: Any, now_s: float) -> str | None:
        """Append an audio chunk (16SC1 Image or AudioChunk) to the ring; None, or why not."""
        return self._offer("audio", msg, now_s, self._take_audio)

    def offer_tactile(self, msg: Any, now_s: float) -> str | None:
        """Keep a taxel frame (32FC3/32FC1 Image or TactileFrame); None, or why not."""
        return self._offer("tactile", msg, now_s, self._take_tactile)

    def offer_joints(self, msg: Any, now_s: float) -> str | None:
        """Update the configured joints from JointState or JointSample; None, or why not."""
        return self._offer("joints", msg, now_s, self._take_joints)

    def offer_ee_pose(self, msg: Any, now_s: float) -> str | None:
        """Keep the ee pose (PoseStamped, or (stamp_s, Pose)); None, or why it was rejected."""
        return self._offer("ee_pose", msg, now_s, self._take_ee_pose)

    def offer_wrench(self, msg: Any, now_s: float) -> str | None:
        """Keep the wrist wrench (WrenchStamped, or (stamp_s, Wrench)); None, or why not."""
        return self._offer("wrench", msg, now_s, self._take_wrench)

    def offer(self, modality: str, msg: Any, now_s: float) -> str | None:
        """`offer_<modality>` by name (one of MODALITIES)."""
        if modality not in MODALITIES:
            raise KeyError(f"unknown modality '{modality}'; known: {list(MODALITIES)}")
        return getattr(self, f"offer_{modality}")(msg, now_s)

    def check(self, modality: str, msg: Any, now_s: float) -> str | None:
        """Validate a sample without keeping it; None, or why it was rejected (counted).

        For a sample that a newer one of its topic replaced before any tick used it: it gets
        every check of `offer` except those against held samples (order, clock restart), on
        an empty scratch buffer, and is counted as accepted or rejected like an offered one.
        """
        if modality not in MODALITIES:
            raise KeyError(f"unknown modality '{modality}'; known: {list(MODALITIES)}")
        if self._scratch is None:
            self._scratch = SensorBuffer(self.config, self.wrench_required)
        self._scratch.clear()
        return self._offer(modality, msg, now_s, getattr(self._scratch, f"_take_{modality}"))

    def reject(self, modality: str, reason: str) -> str:
        """Count a sample of `modality` that could not be read at all (e.g. undecodable bytes)."""

        def unreadable(msg: Any, now_s: float) -> float:
            raise _RejectedError(reason)

        return self._offer(modality, None, 0.0, unreadable)

    def _offer(self, modality: str, msg: Any, now_s: float, take) -> str | None:
        topic = self.topics[modality]
        try:
            stamp_s = take(msg, float(now_s))
        except (CodecError, _RejectedError) as exc:
            reason = f"{topic}: {exc}"
            self.rejects[topic] += 1
            if topic not in self.last_reject:
                log.warning("rejected a sample on %s (counted from now on): %s", topic, exc)
            else:
                log.debug("rejected %s", reason)
            self.last_reject[topic] = reason
            return reason
        self.accepted[topic] += 1
        self._newest_s = max(self._newest_s, stamp_s)
        return None

    def _check_stamp(self, stamp_s: float, held_s: float | None, now_s: float) -> None:
        """Reject non-finite, future and out-of-order stamps; clear on a clock restart."""
        if not math.isfinite(stamp_s):
            raise _RejectedError(f"stamp {stamp_s} is not finite")
        if stamp_s > now_s + self.config.max_future_s:
            raise _RejectedError(
                f"stamp {stamp_s:.6f} s is {stamp_s - now_s:.3f} s ahead of now {now_s:.6f} s "
                "(do the publisher and this node use the same clock, e.g. use_sim_time?)"
            )
        if self._maybe_clock_restart(stamp_s):
            held_s = None
        if held_s is not None and stamp_s < held_s:
            raise _RejectedError(
                f"stamp {stamp_s:.6f} s is older than the held sample's {held_s:.6f} s "
                "(out of order)"
            )

    def _maybe_clock_restart(self, time_s: float) -> bool:
        if time_s < self._newest_s - self.config.clock_jump_s:
            log.warning(
                "time went back from %.3f s to %.3f s: clock restarted, buffer cleared",
                self._newest_s,
                time_s,
            )
            self.clock_resets += 1
            self.clear()
            return True
        return False

    def _take_image(self, msg: Any, now_s: float) -> float:
        frame = msg if isinstance(msg, ImageFrame) else codecs.image_to_frame(msg)
        self._check_stamp(frame.stamp_s, self._image[0] if self._image else None, now_s)
        rgb = _to_rgb(frame)
        if rgb.shape[0] == 0 or rgb.shape[1] == 0:
            raise _RejectedError(f"image is empty ({rgb.shape})")
        self._image = (frame.stamp_s, rgb)
        return frame.stamp_s

    def _take_tactile(self, msg: Any, now_s: float) -> float:
        frame = msg if isinstance(msg, TactileFrame) else codecs.tactile_from_msg(msg)
        self._check_stamp(frame.stamp_s, self._tactile[0] if self._tactile else None, now_s)
        taxels = np.asarray(frame.taxels, dtype=np.float32)
        if taxels.ndim == 2:
            taxels = taxels[..., np.newaxis]
        if taxels.ndim != 3 or taxels.shape[2] not in (1, 3) or taxels.size == 0:
            raise _RejectedError(
                f"taxels must be (rows, cols, 3) or (rows, cols, 1), got {taxels.shape}"
            )
        _finite("taxels", taxels)
        if taxels.shape[2] == 1:
            # A normal-only grid is the z (normal) axis of an xyz grid with no shear.
            full = np.zeros((*taxels.shape[:2], 3), dtype=np.float32)
            full[..., 2] = taxels[..., 0]
            taxels = full
        self._tactile = (frame.stamp_s, taxels.copy())
        return frame.stamp_s

    def _take_joints(self, msg: Any, now_s: float) -> float:
        sample = msg if isinstance(msg, JointSample) else codecs.joint_state_from_msg(msg)
        positions = np.asarray(sample.position_rad, dtype=np.float64)
        if positions.shape != (len(sample.names),):
            raise _RejectedError(
                f"{len(sample.names)} joint names but {positions.shape} positions"
            )
        ours = [
            (i, self._joint_index[n]) for i, n in enumerate(sample.names) if n in self._joint_index
        ]
        if not ours:
            raise _RejectedError(
                f"none of the configured joints {list(self.config.joint_names)} in "
                f"{list(sample.names)}"
            )
        src = np.array([i for i, _ in ours])
        dst = np.array([j for _, j in ours])
        held = self._joint_stamp[dst]
        held_s = float(np.nanmax(held)) if np.any(np.isfinite(held)) else None
        self._check_stamp(sample.stamp_s, held_s, now_s)
        _finite("joint positions", positions[src])
        self._joint_position[dst] = positions[src]
        self._joint_stamp[dst] = sample.stamp_s
        return sample.stamp_s

    def _stamped(self, msg: Any, kind: type, decode) -> tuple[float, Any]:
        if isinstance(msg, tuple):
            if len(msg) != 2 or not isinstance(msg[1], kind):
                raise TypeError(f"expected (stamp_s, {kind.__name__}), got {msg!r}")
            return float(msg[0]), msg[1]
        return decode(msg)

    def _check_frame(self, frame_id: str) -> None:
        if frame_id and frame_id != self.config.base_frame:
            raise _RejectedError(
                f"frame '{frame_id}' is not the base frame '{self.config.base_frame}'"
            )

    def _take_ee_pose(self, msg: Any, now_s: float) -> float:
        stamp_s, pose = self._stamped(msg, Pose, codecs.pose_from_msg)
        self._check_stamp(stamp_s, self._ee_pose[0] if self._ee_pose else None, now_s)
        _finite("ee position", pose.position_m)
        _finite("ee orientation", pose.orientation_xyzw)
        self._check_frame(pose.frame_id)
        self._ee_pose = (stamp_s, pose)
        return stamp_s

    def _take_wrench(self, msg: Any, now_s: float) -> float:
        stamp_s, wrench = self._stamped(msg, Wrench, codecs.wrench_from_msg)
        self._check_stamp(stamp_s, self._wrench[0] if self._wrench else None, now_s)
        _finite("wrench", wrench.as_array())
        self._check_frame(wrench.frame_id)
        self._wrench = (stamp_s, wrench)
        return stamp_s

    def _take_audio(self, msg: Any, now_s: float) -> float:
        cfg = self.config
        chunk = (
            msg if isinstance(msg, AudioChunk) else codecs.audio_from_msg(msg, cfg.audio_rate_hz)
        )
        if abs(chunk.rate_hz - cfg.audio_rate_hz) > 1e-6:
            raise _RejectedError(
                f"audio at {chunk.rate_hz} Hz; the buffer expects {cfg.audio_rate_hz} Hz"
            )
        samples = np.asarray(chunk.samples)
        if samples.ndim != 2 or samples.shape[1] == 0 or samples.shape[0] == 0:
            raise _RejectedError(f"audio samples must be (channels, n > 0), got {samples.shape}")
        if samples.dtype != np.int16:
            raise _RejectedError(f"audio samples must be int16, got {samples.dtype}")
        start_s = float(chunk.stamp_s)
        # A chunk is complete only after its last sample: that is when it may be used.
        end_s = start_s + samples.shape[1] / cfg.audio_rate_hz
        self._check_stamp(end_s, None, now_s)
        mono = samples.astype(np.float32).mean(axis=0) * np.float32(INT16_SCALE)
        tolerance = cfg.audio_stamp_tolerance_s
        if self._audio_end_s is not None:
            offset_s = start_s - self._audio_end_s
            if offset_s > tolerance:
                self.audio_gaps += 1
                log.info(
                    "audio gap of %.1f ms at %.3f s: window restarts", offset_s * 1e3, start_s
                )
                self._audio_valid = 0
            elif offset_s < -tolerance:
                if end_s <= self._audio_end_s + tolerance:
                    raise _RejectedError(
                        f"audio chunk {start_s:.6f}..{end_s:.6f} s repeats samples already "
                        f"buffered up to {self._audio_end_s:.6f} s"
                    )
                self.audio_overlaps += 1
                mono = mono[round(-offset_s * cfg.audio_rate_hz) :]
        self._push_audio(mono)
        self._audio_end_s = end_s
        return end_s

    def _push_audio(self, mono: np.ndarray) -> None:
        n, window = mono.size, self._audio.size
        if n >= window:
            self._audio[:] = mono[-window:]
        else:
            self._audio[:-n] = self._audio[n:]
            self._audio[-n:] = mono
        self._audio_valid = min(window, self._audio_valid + n)

    # ---- observation ------------------------------------------------------------------------

    def _stamps(self) -> dict[str, float | None]:
        joints = None if np.any(np.isnan(self._joint_stamp)) else float(self._joint_stamp.min())
        return {
            "image": self._image[0] if self._image else None,
            "audio": self._audio_end_s,
            "tactile": self._tactile[0] if self._tactile else None,
            "joints": joints,
            "ee_pose": self._ee_pose[0] if self._ee_pose else None,
            "wrench": self._wrench[0] if self._wrench else None,
        }

    def latest_ee_pose(self) -> tuple[float, Pose] | None:
        """(stamp_s, pose) of the newest measured end-effector pose, fresh or not."""
        return self._ee_pose

    def fresh_wrench(self, now_s: float) -> Wrench | None:
        """The newest wrist wrench if fresh at `now_s` by the rule `observation` applies to
        every modality, whether or not this buffer requires it; else None."""
        if self._wrench is None:
            return None
        return None if self._age_problem("wrench", now_s - self._wrench[0]) else self._wrench[1]

    def _age_problem(self, modality: str, age_s: float) -> str | None:
        """Why a sample `age_s` old is not fresh enough for `modality`, or None."""
        limit_s = self.max_age_s[modality]
        if age_s > limit_s:
            return f"{modality}: stale, {age_s:.3f} s old > {limit_s:.3f} s"
        if age_s < -self.config.max_future_s:
            return f"{modality}: stamped {-age_s:.3f} s after now"
        return None

    def observation(self, now_s: float) -> Snapshot:
        """The observation at `now_s`, or None with the reasons (see Snapshot)."""
        self._maybe_clock_restart(now_s)
        staleness: dict[str, float] = {}
        problems: list[str] = []
        for modality, stamp_s in self._stamps().items():
            if modality not in self.required:  # reported, never waited for
                staleness[modality] = math.inf if stamp_s is None else now_s - stamp_s
                continue
            if stamp_s is None:
                staleness[modality] = math.inf
                if modality == "joints" and np.any(np.isfinite(self._joint_stamp)):
                    missing = [
                        n
                        for n, s in zip(self.config.joint_names, self._joint_stamp, strict=True)
                        if np.isnan(s)
                    ]
                    problems.append(f"joints: no sample yet for {missing}")
                else:
                    problems.append(f"{modality}: no sample yet")
                continue
            age_s = now_s - stamp_s
            staleness[modality] = age_s
            problem = self._age_problem(modality, age_s)
            if problem is not None:
                problems.append(problem)
        window = self._audio.size
        if self._audio_end_s is not None and self._audio_valid < window:
            problems.append(
                f"audio: window holds {self._audio_valid} of {window} samples since the start "
                "or the last gap"
            )
        if problems:
            return Snapshot(None, staleness, problems)
        obs = Observation(
            stamp_s=float(now_s),
            image_rgb=self._image[1],
            audio=self._audio.copy(),
            audio_rate_hz=float(self.config.audio_rate_hz),
            tactile=self._tactile[1],
            joint_position_rad=self._joint_position.copy(),
            ee_pose=self._ee_pose[1],
            wrench_wrist=self._wrench[1] if self.wrench_required else None,
            staleness_s=dict(staleness),
        )
        return Snapshot(obs, staleness, problems)
