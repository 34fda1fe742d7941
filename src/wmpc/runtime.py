"""One control tick without ROS: observation -> model -> plan -> command -> safety filter.

The runtime node calls `ControlLoop.tick` from its timer; `wmpc evaluate` calls it on bag
time. Both feed sensor messages into the same `ControlLoop.buffer`, so a tick on a robot, in
simulation and on a recorded bag goes through exactly the same code.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace

import numpy as np

from wmpc.config import PlannerConfig, SafetyConfig, SensorBufferConfig
from wmpc.errors import WmpcError
from wmpc.model import WorldModel
from wmpc.planning import Planner
from wmpc.preprocess import Preprocessor
from wmpc.safety import SafetyFilter, SafetyInputs, SafetyState
from wmpc.sensors import SensorBuffer
from wmpc.types import TOOL_DOWN_XYZW, Command, Goal, Observation, Plan, Pose, Wrench

log = logging.getLogger(__name__)

# What a failed inference may raise: our own errors (bad shapes, unknown task) and ONNX
# Runtime's, which are RuntimeError subclasses. Anything else is a bug and propagates.
INFERENCE_ERRORS = (WmpcError, RuntimeError, ValueError, FloatingPointError)


@dataclass(frozen=True)
class TickResult:
    """Everything one tick decided, for publishing, diagnostics and evaluation."""

    stamp_s: float
    command: Command | None  # what to send (None: nothing, no pose known yet)
    violations: list[str]  # limits that changed the command, or hold reasons
    plan: Plan | None  # None when no plan was made this tick
    observation: Observation | None
    staleness_s: dict[str, float]
    problems: list[str]  # missing/stale modalities, or the inference error
    latency_s: float  # observation assembly to filtered command (wall time)
    plan_latency_s: float = 0.0  # encode + plan only (wall time); 0 when no plan
    proposed: Command | None = None  # the planner's command before the safety filter
    z: np.ndarray | None = field(default=None, repr=False)  # (1, latent) when encoded


@dataclass(frozen=True)
class Sensed:
    """The first half of a tick (`ControlLoop.sense`): what `decide` plans from."""

    stamp_s: float
    goal: Goal | None
    observation: Observation | None  # None when a modality was missing or stale
    ee_pose: Pose | None  # the observation's end-effector pose (what a step is taken from)
    measured_pose: Pose | None  # the latest end-effector pose, even a stale one
    staleness_s: dict[str, float]
    problems: list[str]  # missing/stale modalities, no goal, a failed encode
    z: np.ndarray | None = field(repr=False)  # (1, latent) when encoded
    inference_error: str  # the failed encode's error ("" when none)
    estop: bool  # the e-stop input when the tick began
    latency_s: float  # wall time of this half
    encode_s: float  # of which preprocessing and encoding


def command_from_action(
    action: np.ndarray, reference: Pose, stamp_s: float, frame_id: str = "base"
) -> Command:
    """The command for one action (ACTION_NAMES order) applied to the reference target pose.

    The step moves the previous target (not the measured pose): in contact the measured pose
    lags the target by design, and the training data's actions are target deltas too.
    """
    position_m = np.asarray(reference.position_m, dtype=np.float64) + action[:3]
    force_n = np.array([0.0, 0.0, -float(action[3])])  # pressing down is -z of base
    return Command(
        stamp_s=stamp_s,
        pose=Pose(position_m, TOOL_DOWN_XYZW.copy(), frame_id),
        wrench=Wrench(force_n, np.zeros(3), frame_id),
    )


def model_sensor_config(model: WorldModel, config: SensorBufferConfig) -> SensorBufferConfig:
    """`config` with the audio window, audio rate and joint order the model was trained on.

    The manifest is the contract: these three shape the model's inputs, so they come from
    it, not from parameters. A parameter file that says otherwise is reported once.
    """
    audio = model.modalities["audio"]
    owned = {
        "audio_window_samples": int(audio["window_samples"]),
        "audio_rate_hz": int(audio["rate_hz"]),
        "joint_names": tuple(model.modalities["proprio"]["joint_names"]),
    }
    for name, value in owned.items():
        if getattr(config, name) != value:
            log.info(
                "sensors.%s = %s differs from model '%s' (%s): using the model's",
                name,
                getattr(config, name),
                model.manifest.name,
                value,
            )
    return replace(config, **owned)


class ControlLoop:
    """Sensor buffer, preprocessing, world model, planner and safety filter for one arm."""

    def __init__(
        self,
        model: WorldModel,
        planner_config: PlannerConfig,
        safety_config: SafetyConfig,
        sensor_config: SensorBufferConfig,
        task: str,
    ) -> None:
        self.model = model
        self.task = task
        self.preprocess = Preprocessor.from_manifest(model.manifest.raw)
        # A model that does not read the wrist wrench does not wait for it (or need a sensor).
        self.buffer = SensorBuffer(
            model_sensor_config(model, sensor_config),
            wrench_required="wrench_wrist" in self.preprocess.proprio_fields,
        )
        self.safety = SafetyFilter(safety_config)
        self.planner = Planner(
            model, planner_config, safety_config.workspace_min_m, safety_config.workspace_max_m
        )
        self.state = SafetyState()
        self.estop_requested = False
        # Sensor callbacks may run on other threads than tick(): the lock covers the buffer
        # only (offer and observation assembly), never a plan, so they never wait behind one.
        self._buffer_lock = threading.Lock()

    def offer(self, modality: str, msg: object, now_s: float) -> str | None:
        """Hand a sensor message to the buffer; returns the reject reason or None."""
        with self._buffer_lock:
            return self.buffer.offer(modality, msg, now_s)

    def check(self, modality: str, msg: object, now_s: float) -> str | None:
        """Validate and count a sensor message a newer one replaced (SensorBuffer.check)."""
        with self._buffer_lock:
            return self.buffer.check(modality, msg, now_s)

    def reject(self, modality: str, reason: str) -> str:
        """Count a sensor message that could not be read at all (SensorBuffer.reject)."""
        with self._buffer_lock:
            return self.buffer.reject(modality, reason)

    def reset(self, seed: int | None = None) -> None:
        """New episode: forget samples, the warm start and the last command (e-stop stays)."""
        with self._buffer_lock:
            self.buffer.clear()
        self.planner.reset(seed)
        self.state = SafetyState(estop_latched=self.state.estop_latched)

    def reset_estop(self) -> None:
        """Release a latched e-stop (it latches again if the e-stop input is still true)."""
        self.state = SafetyFilter.reset(self.state)

    def counters(self) -> dict[str, dict[str, int]]:
        """Per-topic accepted and rejected message counts of the buffer."""
        with self._buffer_lock:
            return {"accepted": dict(self.buffer.accepted), "rejected": dict(self.buffer.rejects)}

    def hold(self, now_s: float, why: str) -> TickResult:
        """A hold through the safety filter (current pose, zero force), e.g. on deactivate."""
        start = time.perf_counter()
        with self._buffer_lock:
            measured_pose = self._measured_pose()
        inputs = SafetyInputs(stamp_s=now_s, measured_pose=measured_pose)
        command, violations, self.state = self.safety.filter(None, inputs, self.state)
        return TickResult(
            stamp_s=now_s,
            command=command,
            violations=[why, *violations],
            plan=None,
            observation=None,
            staleness_s={},
            problems=[why],
            latency_s=time.perf_counter() - start,
        )

    def _measured_pose(self) -> Pose | None:
        latest = self.buffer.latest_ee_pose()
        return None if latest is None else latest[1]

    def tick(self, now_s: float, goal: Goal | None) -> TickResult:
        """Plan and filter one command at `now_s` (ROS clock seconds) towards `goal`."""
        return self.decide(self.sense(now_s, goal))

    def sense(self, now_s: float, goal: Goal | None) -> Sensed:
        """The tick's first half: the buffer's observation at `now_s`, encoded (with a goal).

        `wmpc evaluate` runs this half next to the bag replay and `decide` in another process
        (the second one needs nothing from the buffer); `tick` runs both in turn.
        """
        start = time.perf_counter()
        with self._buffer_lock:
            snapshot = self.buffer.observation(now_s)
            measured_pose = self._measured_pose()
        problems = list(snapshot.problems)
        z, inference_error, encode_s = None, "", 0.0
        if goal is None:
            problems.append("goal: none received yet")
        if snapshot.observation is not None and goal is not None:
            encode_start = time.perf_counter()
            try:
                z = self.model.encode(self.preprocess(snapshot.observation))  # (1, latent)
            except INFERENCE_ERRORS as exc:
                inference_error = f"{type(exc).__name__}: {exc}"
                problems.append(f"inference: {inference_error}")
            encode_s = time.perf_counter() - encode_start
        return Sensed(
            stamp_s=now_s,
            goal=goal,
            observation=snapshot.observation,
            ee_pose=None if snapshot.observation is None else snapshot.observation.ee_pose,
            measured_pose=measured_pose,
            staleness_s=snapshot.staleness_s,
            problems=problems,
            z=z,
            inference_error=inference_error,
            estop=self.estop_requested,
            latency_s=time.perf_counter() - start,
            encode_s=encode_s,
        )

    def decide(self, sensed: Sensed) -> TickResult:
        """The tick's second half: plan from `sensed.z`, then the safety filter.

        It reads nothing of `sensed.observation` (which may be left out to send `sensed` to
        another process cheaply) and nothing of the buffer but its fixed configuration.
        """
        start = time.perf_counter()
        problems = list(sensed.problems)
        plan, proposed, plan_latency_s = None, None, 0.0
        inference_error = sensed.inference_error
        if sensed.z is not None and sensed.goal is not None and sensed.ee_pose is not None:
            plan_start = time.perf_counter()
            goal, reference = sensed.goal, sensed.ee_pose
            try:
                self.planner.observe(reference.position_m)
                plan = self.planner.plan(sensed.z, Goal(goal.pose, goal.wrench, self.task))
                # The step is taken from the measured pose, not the last command: the model
                # predicts ee' = ee + step from what it observes, and nothing it observes says
                # where an earlier command still pulls the arm. Stepping from the last command
                # let command and arm drift apart (reach: 1 of 2 seeds, 3 of 3 after).
                proposed = command_from_action(plan.actions[0], reference, sensed.stamp_s)
            except INFERENCE_ERRORS as exc:
                inference_error = f"{type(exc).__name__}: {exc}"
                problems.append(f"inference: {inference_error}")
                plan = None
            plan_latency_s = sensed.encode_s + time.perf_counter() - plan_start
        elif sensed.inference_error:
            plan_latency_s = sensed.encode_s  # the encode failed: no plan, but it took time
        inputs = SafetyInputs(
            stamp_s=sensed.stamp_s,
            measured_pose=sensed.measured_pose,
            # Only what the model reads: the age of a wrench it ignores must not hold the arm.
            sensor_age_s={
                m: age for m, age in sensed.staleness_s.items() if m in self.buffer.required
            },
            estop=sensed.estop,
            inference_error=inference_error,
        )
        command, violations, self.state = self.safety.filter(proposed, inputs, self.state)
        return TickResult(
            stamp_s=sensed.stamp_s,
            command=command,
            violations=violations,
            plan=plan,
            observation=sensed.observation,
            staleness_s=sensed.staleness_s,
            problems=problems,
            latency_s=sensed.latency_s + time.perf_counter() - start,
            plan_latency_s=plan_latency_s,
            proposed=proposed,
            z=sensed.z,
        )
