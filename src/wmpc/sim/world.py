"""SimWorld: the MuJoCo arm world behind one small API (no ROS).

One `step(command)` is one physics step (2 ms by default). The arm's impedance controller
runs inside every step on the latest command, as a robot's controller does between commands;
reference controllers and the world model act every `control_period_s` (0.05 s). Sensors are
read on demand: nothing is rendered unless `read_camera()` is called, so headless episodes
run many times faster than real time. `request_camera()` captures a frame and lets the world
step on while a render thread draws it.

Everything random (layout, initial joints, taxel noise, audio noise) comes from generators
spawned from the reset seed, so the same seed and the same commands give bit-identical
observations.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import mujoco
import numpy as np

from wmpc import types
from wmpc.config import SimConfig
from wmpc.sim import audio, scene, sensors, tasks
from wmpc.sim.controller import CommandGate, ImpedanceController, ImpedanceGains
from wmpc.sim.tasks import SimError, TaskMonitor, TaskState

log = logging.getLogger(__name__)

GRAVITY_AXIS = 2
# The pad is a silicone skin and the table top wood; the synthesised microphone rings them so.
AUDIO_MATERIALS = {
    scene.TABLE_GEOM: "wood",
    **{
        scene.pad_tile_name(r, c): "rubber"
        for r in range(scene.TAXEL_ROWS)
        for c in range(scene.TAXEL_COLS)
    },
}
TACTILE_FRAME_ID = "probe"
MICROPHONE_FRAME_ID = "microphone"


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a x b of two 3-vectors: np.cross's products and differences, without its overhead."""
    a0, a1, a2 = a.tolist()
    b0, b1, b2 = b.tolist()
    return np.array([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0])


class PendingImage:
    """A camera frame of one instant that is still being drawn; `result()` waits for it."""

    def __init__(
        self,
        frame: sensors.PendingFrame,
        image: Callable[[np.ndarray], types.ImageFrame],
    ) -> None:
        self._frame = frame
        self._image = image

    def done(self) -> bool:
        """True once the frame is drawn (`result()` then returns at once)."""
        return self._frame.done()

    def result(self) -> types.ImageFrame:
        """The frame, rgb8 at the configured size, stamped with the instant it shows."""
        return self._image(self._frame.result())


def yaw_quat_wxyz(yaw_rad: float) -> np.ndarray:
    """MuJoCo quaternion of a rotation by `yaw_rad` about z."""
    return np.array([np.cos(yaw_rad / 2), 0.0, 0.0, np.sin(yaw_rad / 2)])


class SimWorld:
    """The simulated arm, table, marker and block, with sensors and a task monitor."""

    def __init__(
        self,
        config: SimConfig | None = None,
        seed: int = 0,
        *,
        sensors_enabled: bool = True,
        model: mujoco.MjModel | None = None,
    ) -> None:
        self.config = config or SimConfig()
        cfg = self.config
        self.model = model if model is not None else scene.build_model(cfg.scene_file or None)
        self.model.opt.timestep = cfg.timestep_s
        self.data = mujoco.MjData(self.model)
        self.steps_per_tick = round(cfg.control_period_s / cfg.timestep_s)
        self.sensors_enabled = sensors_enabled
        m = self.model

        self.joint_names = scene.ARM_JOINTS
        joint_ids = np.array([m.joint(n).id for n in self.joint_names])
        self._qpos_adr = m.jnt_qposadr[joint_ids]
        self._dof_adr = m.jnt_dofadr[joint_ids]
        self._joint_range = m.jnt_range[joint_ids]
        self._actuator_ids = np.array([m.actuator(f"{n}_motor").id for n in self.joint_names])
        self._home_q = np.array(cfg.home_joint_positions_rad, dtype=np.float64)
        self._ee_site = m.site(scene.EE_SITE).id
        self._wrist_site = m.site(scene.WRIST_SITE).id
        self._force_adr = m.sensor_adr[m.sensor(scene.WRIST_FORCE_SENSOR).id]
        self._torque_adr = m.sensor_adr[m.sensor(scene.WRIST_TORQUE_SENSOR).id]
        taxels = [
            scene.taxel_name(r, c)
            for r in range(scene.TAXEL_ROWS)
            for c in range(scene.TAXEL_COLS)
        ]
        self._taxel_adr = np.array([m.sensor_adr[m.sensor(n).id] for n in taxels])
        probe = m.body("probe").id
        self._probe_body = probe
        self._tool_mass_kg = float(m.body_subtreemass[probe])
        self._tool_weight_n = np.zeros(3)
        self._tool_weight_n[GRAVITY_AXIS] = self._tool_mass_kg * m.opt.gravity[GRAVITY_AXIS]
        self._pad_geoms = np.array(
            [
                m.geom(scene.pad_tile_name(r, c)).id
                for r in range(scene.TAXEL_ROWS)
                for c in range(scene.TAXEL_COLS)
            ]
        )
        # Lookup table geom id -> is a pad tile: far cheaper than np.isin every physics step.
        self._geom_is_pad = np.zeros(m.ngeom, dtype=bool)
        self._geom_is_pad[self._pad_geoms] = True
        self._table_geom = m.geom(scene.TABLE_GEOM).id
        # A layout raises the table by moving its body (scene.xml): collision and camera follow.
        self._table_body = m.geom_bodyid[self._table_geom]
        self._block_geom = m.geom(scene.BLOCK_BODY).id
        self._block_body = m.body(scene.BLOCK_BODY).id
        self._block_qpos_adr = m.jnt_qposadr[m.joint(scene.BLOCK_JOINT).id]
        self._marker_mocap = m.body_mocapid[m.body(scene.MARKER_BODY).id]
        self._push_goal_mocap = m.body_mocapid[m.body(scene.PUSH_GOAL_BODY).id]

        self.controller = ImpedanceController(
            m,
            self.joint_names,
            scene.EE_SITE,
            self._home_q,
            ImpedanceGains(
                position_bandwidth_hz=cfg.position_bandwidth_hz,
                orientation_bandwidth_hz=cfg.orientation_bandwidth_hz,
                damping_ratio=cfg.damping_ratio,
                nullspace_stiffness_nm_rad=cfg.nullspace_stiffness_nm_rad,
                force_axis_stiffness_scale=cfg.force_axis_stiffness_scale,
                force_blend_n=cfg.force_blend_n,
            ),
        )
        self.gate = CommandGate(
            cfg.command_timeout_s,
            np.array(cfg.workspace_min_m),
            np.array(cfg.workspace_max_m),
            cfg.max_feedforward_force_n,
            cfg.max_feedforward_torque_nm,
        )
        self._camera: sensors.Camera | None = None
        self._tactile: sensors.TactileArray | None = None
        self._audio: audio.AudioSynth | None = None
        self._monitor: TaskMonitor | None = None
        self._quat = np.zeros(4)
        # The pad force of the last control period's physics steps (a ring), for the
        # tick-mean force label: the force at one instant chatters by ~2 N from tick to tick
        # in contact, its mean over the tick by a fraction of that.
        self._period_force_n = np.zeros(self.steps_per_tick)
        self._period_steps = 0
        self.reset("reach", seed)

    # ---- episode ----------------------------------------------------------------------------

    @property
    def time_s(self) -> float:
        """Sim time since the last reset (s)."""
        return float(self.data.time)

    @property
    def task(self) -> str:
        """The current episode's task."""
        return self.layout.task

    @property
    def goal(self) -> types.Goal:
        """The current episode's goal."""
        return self.layout.goal

    def reset(self, task: str, seed: int) -> types.Goal:
        """Start an episode of `task`: sample its layout from `seed`, put the arm at home."""
        tasks.check_task(task)
        # The table's stream comes last, so the first four (and every layout on the scene's
        # own table) are what they were before tables could move.
        streams = np.random.SeedSequence(int(seed)).spawn(5)
        layout_rng, joint_rng, tactile_rng, audio_rng, table_rng = (
            np.random.default_rng(s) for s in streams
        )
        low_m, high_m = self.config.table_height_range_m
        table_m = low_m if high_m == low_m else float(table_rng.uniform(low_m, high_m))
        self.layout = tasks.sample_layout(task, layout_rng, table_m)
        m, d = self.model, self.data
        self._place_table(table_m)
        mujoco.mj_resetData(m, d)

        q = self._home_q + joint_rng.normal(0.0, self.config.initial_joint_noise_rad, 7)
        d.qpos[self._qpos_adr] = np.clip(q, self._joint_range[:, 0], self._joint_range[:, 1])
        block = self._block_qpos_adr
        d.qpos[block : block + 3] = self.layout.block_position_m
        d.qpos[block + 3 : block + 7] = yaw_quat_wxyz(self.layout.block_yaw_rad)
        d.mocap_pos[self._marker_mocap] = self.layout.marker_position_m
        if self.layout.push_goal_position_m is not None:
            d.mocap_pos[self._push_goal_mocap] = [*self.layout.push_goal_position_m[:2], table_m]
        else:
            # Only push shows its goal region; elsewhere the disc waits under the table.
            d.mocap_pos[self._push_goal_mocap] = [0.5, 0.0, -0.5]
        mujoco.mj_forward(m, d)

        position, orientation = self.controller.ee_pose(d)
        self.gate.reset(position, orientation)
        self._monitor = tasks.make_monitor(self.layout)
        self._period_steps = 0
        if self.sensors_enabled:
            self._tactile = sensors.TactileArray(
                m, scene.TAXEL_ROWS, scene.TAXEL_COLS, self.config.tactile_noise_std_n, tactile_rng
            )
            self._audio = audio.AudioSynth(
                m, float(self.config.audio_rate_hz), audio_rng, materials=AUDIO_MATERIALS
            )
        log.debug("reset %s seed %d", task, seed)
        return self.layout.goal

    def _place_table(self, table_m: float) -> None:
        """Move the table's body so that the table top (its plane) lies at z = `table_m`."""
        m = self.model
        m.body_pos[self._table_body, 2] = table_m - m.geom_pos[self._table_geom, 2]

    def step(self, command: types.Command | None = None) -> None:
        """Advance one physics step tracking `command` (None = keep the latest one)."""
        m, d = self.model, self.data
        if command is not None:
            self.gate.submit(command)
        # Split step: the controller sees positions, Jacobians and M of the current state.
        mujoco.mj_step1(m, d)
        if self.gate.is_stale(d.time):
            position, orientation = self.controller.ee_pose(d)
            target = self.gate.target(d.time, position, orientation)
        else:
            target = self.gate.target(d.time, None, None)
        d.ctrl[self._actuator_ids] = self.controller.torques(d, target)
        mujoco.mj_step2(m, d)
        self._period_force_n[self._period_steps % self.steps_per_tick] = self.pad_force_n()
        self._period_steps += 1
        if self._audio is not None:
            self._audio.observe(d, m.opt.timestep)
        if self._monitor is not None:
            self._monitor.update(self._task_state())

    def step_tick(self, command: types.Command | None = None) -> None:
        """Advance one control period (steps_per_tick physics steps) on `command`."""
        self.step(command)
        for _ in range(self.steps_per_tick - 1):
            self.step()

    def task_status(self) -> dict:
        """success, done, time_to_success_s and task metrics, plus command gate counters."""
        if self._monitor is None:
            raise SimError("a forked world keeps no task status; ask the world it came from")
        status = self._monitor.status()
        status["holding"] = self.gate.is_stale(self.data.time)
        status["rejected_commands"] = self.gate.rejected
        status["stale_events"] = self.gate.stale_events
        return status

    # ---- forks for planning ------------------------------------------------------------------

    def fork(self) -> SimWorld:
        """A sensorless world on the same model, for rollouts; `sync_from` sets its state."""
        twin = SimWorld(self.config, 0, sensors_enabled=False, model=self.model)
        twin.sync_from(self)
        return twin

    def sync_from(self, other: SimWorld) -> None:
        """Copy another world's physics, command and layout state (not its sensors)."""
        # A fork shares the model, and making it reset the table to the fork's own seed.
        self._place_table(other.layout.table_height_m)
        mujoco.mj_copyData(self.data, self.model, other.data)
        self._period_force_n[:] = other._period_force_n
        self._period_steps = other._period_steps
        self.gate.copy_from(other.gate)
        self.layout = other.layout
        # Rollouts do not need success bookkeeping; they score states themselves.
        self._monitor = None

    # ---- sensors -----------------------------------------------------------------------------

    def read_camera(self) -> types.ImageFrame:
        """The scene camera's current view, rgb8 at the configured size."""
        return self.request_camera().result()

    def request_camera(
        self, on_done: Callable[[types.ImageFrame], None] | None = None
    ) -> PendingImage:
        """The scene camera's view now, drawn on the camera's render thread meanwhile.

        The world may step on at once; the image is that of this instant, the same pixels
        `read_camera` gives. `on_done(frame)`, if given, runs on the render thread when the
        frame is drawn; frames are drawn in the order they were requested.
        """
        if self._camera is None:
            cfg = self.config
            self._camera = sensors.Camera(
                self.model, cfg.camera_width, cfg.camera_height, cfg.camera_name
            )
        stamp_s, frame_id = self.time_s, self.config.camera_name

        def image(pixels: np.ndarray) -> types.ImageFrame:
            return types.ImageFrame(stamp_s, pixels, "rgb8", frame_id)

        callback = None if on_done is None else (lambda pixels: on_done(image(pixels)))
        return PendingImage(self._camera.submit(self.data, callback), image)

    def wait_for_camera(self) -> None:
        """Block until every requested camera frame is drawn and its callback has run."""
        if self._camera is not None:
            self._camera.wait()

    def read_tactile(self) -> types.TactileFrame:
        """The pad's taxels: (rows, cols, 3) shear x, shear y, normal force (N), with noise."""
        self._require_sensors("tactile")
        return types.TactileFrame(self.time_s, self._tactile.read(self.data), TACTILE_FRAME_ID)

    def read_audio(self, n_samples: int) -> types.AudioChunk:
        """The next `n_samples` of microphone audio (int16 mono); stamp = first sample's time."""
        self._require_sensors("audio")
        stamp_s = self._audio.read_position_s
        samples = self._audio.read(n_samples)
        return types.AudioChunk(
            stamp_s, samples[np.newaxis, :], float(self.config.audio_rate_hz), MICROPHONE_FRAME_ID
        )

    def audio_available(self) -> int:
        """Audio samples simulated but not yet read."""
        self._require_sensors("audio")
        return self._audio.available

    def read_joints(self) -> types.JointSample:
        """Joint positions, velocities and the motor torques applied in the last step."""
        d = self.data
        return types.JointSample(
            self.time_s,
            self.joint_names,
            d.qpos[self._qpos_adr].copy(),
            d.qvel[self._dof_adr].copy(),
            d.actuator_force[self._actuator_ids].copy(),
        )

    def read_ee_pose(self) -> types.Pose:
        """Pose of the pad centre (`ee_site`) in the base frame."""
        position, orientation = self.controller.ee_pose(self.data)
        return types.Pose(position, orientation)

    def read_wrench(self) -> types.Wrench:
        """External wrench on the tool at the wrist, base frame, tool weight compensated.

        As a wrist F/T sensor after tool-load compensation reports it: the force and torque
        (about the flange) that the environment applies to the probe. Pressing down on the
        table reads as +z force.
        """
        d = self.data
        rotation = d.site_xmat[self._wrist_site].reshape(3, 3)
        # MuJoCo's force/torque sensors give what the parent (link 7) exerts on the probe,
        # in the site frame. In (quasi-)static balance, parent + environment + weight = 0.
        parent_force = rotation @ d.sensordata[self._force_adr : self._force_adr + 3]
        parent_torque = rotation @ d.sensordata[self._torque_adr : self._torque_adr + 3]
        weight = self._tool_weight_n
        lever = d.subtree_com[self._probe_body] - d.site_xpos[self._wrist_site]
        force = -parent_force - weight
        torque = -parent_torque - _cross(lever, weight)
        return types.Wrench(force, torque)

    def _require_sensors(self, what: str) -> None:
        if not self.sensors_enabled:
            raise SimError(f"this world was made without sensors; cannot read {what}")

    # ---- ground truth ------------------------------------------------------------------------

    def _pad_contacts(self) -> tuple[bool, bool]:
        """(pad touches the table, pad touches the block)."""
        d = self.data
        if d.ncon == 0:
            return False, False
        geoms = d.contact.geom  # (ncon, 2)
        on_pad = self._geom_is_pad[geoms]
        pad_pair = on_pad[:, 0] | on_pad[:, 1]
        if not pad_pair.any():
            return False, False
        other = np.where(on_pad[:, 0], geoms[:, 1], geoms[:, 0])
        on_table = bool(np.any(pad_pair & (other == self._table_geom)))
        on_block = bool(np.any(pad_pair & (other == self._block_geom)))
        return on_table, on_block

    def pad_force_n(self) -> float:
        """Normal force on the pad (N): the sum of its taxels' touch sensors, noiseless."""
        return float(self.data.sensordata[self._taxel_adr].sum())

    def period_mean_force_n(self) -> float:
        """Mean pad normal force (N) over the last control period's physics steps (since the
        reset, if shorter; the force now, if no step has been taken)."""
        if self._period_steps == 0:
            return self.pad_force_n()
        return float(self._period_force_n[: min(self._period_steps, self.steps_per_tick)].mean())

    def block_position_m(self) -> np.ndarray:
        """Block centre in the base frame."""
        return self.data.xpos[self._block_body].copy()

    def _task_state(self) -> TaskState:
        d = self.data
        mujoco.mju_mat2Quat(self._quat, d.site_xmat[self._ee_site])
        on_table, _ = self._pad_contacts()
        return TaskState(
            time_s=float(d.time),
            ee_position_m=d.site_xpos[self._ee_site].copy(),
            ee_orientation_xyzw=np.array(
                [self._quat[1], self._quat[2], self._quat[3], self._quat[0]]
            ),
            block_position_m=self.block_position_m(),
            pad_force_n=self.pad_force_n(),
            pad_on_table=on_table,
        )

    def privileged(self) -> dict:
        """Ground truth for experts, the oracle and training labels (base frame, noiseless)."""
        d = self.data
        position, orientation = self.controller.ee_pose(d)
        marker = d.mocap_pos[self._marker_mocap].copy()
        on_table, on_block = self._pad_contacts()
        mujoco.mju_mat2Quat(self._quat, d.xmat[self._block_body])
        force = self.pad_force_n()
        return {
            "task": self.layout.task,
            "time_s": self.time_s,
            "ee_position_m": position,
            "ee_orientation_xyzw": orientation,
            "joint_position_rad": d.qpos[self._qpos_adr].copy(),
            "marker_position_m": marker,
            "marker_rel_m": marker - position,
            "block_position_m": self.block_position_m(),
            "block_orientation_xyzw": np.array(
                [self._quat[1], self._quat[2], self._quat[3], self._quat[0]]
            ),
            "goal_position_m": self.layout.goal.pose.position_m.copy(),
            "contact_force_n": force,
            "contact_force_period_mean_n": self.period_mean_force_n(),
            "contact": bool(on_table or on_block),
            "pad_on_table": on_table,
            "pad_on_block": on_block,
            "table_height_m": self.layout.table_height_m,
        }

    def close(self) -> None:
        """Free the renderer, if one was made."""
        if self._camera is not None:
            self._camera.close()
            self._camera = None
