"""The simulated arm's own controller: operational-space Cartesian impedance plus a command gate.

`ImpedanceController` turns a target end-effector pose and a feed-forward wrench into joint
torques (pure numpy + MuJoCo). `CommandGate` holds the latest `types.Command`, validates it,
and falls back to holding a safe pose when commands go stale, as a robot's controller does
when its command stream stops.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import mujoco
import numpy as np

from wmpc import types

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImpedanceGains:
    """Impedance loop gains; bandwidths set the closed-loop natural frequency of the ee."""

    position_bandwidth_hz: float = 3.0
    orientation_bandwidth_hz: float = 3.0
    damping_ratio: float = 1.0
    nullspace_stiffness_nm_rad: float = 10.0
    nullspace_damping_ratio: float = 1.0
    # Along a commanded feed-forward force the position stiffness drops to this fraction, so
    # the force, not a millimetre of target height, sets how hard the pad presses.
    force_axis_stiffness_scale: float = 0.05
    force_blend_n: float = 1.0  # feed-forward force at which the drop is complete


@dataclass(frozen=True)
class ControlTarget:
    """What the impedance loop tracks during one physics step (base frame)."""

    position_m: np.ndarray  # (3,)
    orientation_xyzw: np.ndarray  # (4,)
    wrench: np.ndarray  # (6,) feed-forward force (N) then torque (N m) applied by the ee
    holding: bool


def quat_xyzw_to_wxyz(q: np.ndarray) -> np.ndarray:
    """(x, y, z, w) -> MuJoCo's (w, x, y, z)."""
    return np.array([q[3], q[0], q[1], q[2]], dtype=np.float64)


def quat_wxyz_to_xyzw(q: np.ndarray) -> np.ndarray:
    """MuJoCo's (w, x, y, z) -> (x, y, z, w)."""
    return np.array([q[1], q[2], q[3], q[0]], dtype=np.float64)


def orientation_error_rad(current_xyzw: np.ndarray, target_xyzw: np.ndarray) -> float:
    """Angle (rad) of the rotation between two orientations, in [0, pi]."""
    dot = abs(float(np.dot(current_xyzw, target_xyzw)))
    dot /= float(np.linalg.norm(current_xyzw) * np.linalg.norm(target_xyzw))
    return 2.0 * math.acos(min(1.0, dot))


class ImpedanceController:
    """Operational-space impedance control of a site's pose with gravity compensation.

    tau = J^T (Lambda (Kp e - Kd v) + w_ff) + N^T tau_posture + qfrc_bias, clipped to the
    joints' effort limits. Lambda = (J M^-1 J^T)^-1 decouples the end-effector dynamics, so
    `position_bandwidth_hz` is the closed-loop natural frequency in every direction and
    posture. The posture term pulls towards `home_q_rad` inside the null space of the task,
    with the dynamically consistent projector N = I - J^T Jbar^T.

    Near the table Lambda is 8-15 kg along z, so the full stiffness is 3-5 kN/m: one
    millimetre of target error would be 3-5 N. Along a commanded feed-forward force the
    controller therefore works like a force-mode controller (hybrid motion/force): the
    motion wrench loses its component along the force and its response to the error along
    it, and a soft, critically damped spring (`force_axis_stiffness_scale` of the full
    stiffness) takes its place; the commanded force then sets the contact force, and the
    target sets the other axes without leaking into the force through Lambda's coupling.
    The switch blends in over the first `force_blend_n` of commanded force.
    """

    def __init__(
        self,
        model: mujoco.MjModel,
        joint_names: tuple[str, ...],
        site_name: str,
        home_q_rad: np.ndarray,
        gains: ImpedanceGains,
    ) -> None:
        self.model = model
        self.gains = gains
        self.joint_ids = np.array([model.joint(n).id for n in joint_names])
        self.qpos_adr = model.jnt_qposadr[self.joint_ids]
        self.dof_adr = model.jnt_dofadr[self.joint_ids]
        self.site_id = model.site(site_name).id
        self.home_q_rad = np.asarray(home_q_rad, dtype=np.float64)
        # Torque limits are the URDF's joint effort limits (MuJoCo keeps them in actfrcrange).
        self.torque_limit_nm = model.jnt_actfrcrange[self.joint_ids, 1].copy()
        if np.any(self.torque_limit_nm <= 0):
            raise ValueError("every arm joint needs an effort limit (URDF <limit effort>)")
        wp = 2.0 * math.pi * gains.position_bandwidth_hz
        wr = 2.0 * math.pi * gains.orientation_bandwidth_hz
        self.kp = np.array([wp * wp] * 3 + [wr * wr] * 3)
        self.kd = 2.0 * gains.damping_ratio * np.sqrt(self.kp)
        self.kn = gains.nullspace_stiffness_nm_rad
        self.dn = 2.0 * gains.nullspace_damping_ratio * math.sqrt(self.kn)
        # A slice instead of an index array when the arm's dofs are contiguous (they are in
        # the wmpc scene): it saves a copy per use, and this runs every physics step.
        first = int(self.dof_adr[0])
        contiguous = np.array_equal(self.dof_adr, np.arange(first, first + len(self.dof_adr)))
        self._dofs = slice(first, first + len(self.dof_adr)) if contiguous else self.dof_adr
        self._jac = np.zeros((6, model.nv))
        self._minv_jt = np.zeros((6, model.nv))
        self._regulariser = 1e-6 * np.eye(6)
        self._quat_site = np.zeros(4)
        self._quat_err = np.zeros(4)
        self._quat_conj = np.zeros(4)
        self._rotvec = np.zeros(3)
        self._rhs = np.zeros((6, 2))

    def ee_pose(self, data: mujoco.MjData) -> tuple[np.ndarray, np.ndarray]:
        """(position (3,), orientation xyzw (4,)) of the controlled site."""
        mujoco.mju_mat2Quat(self._quat_site, data.site_xmat[self.site_id])
        return data.site_xpos[self.site_id].copy(), quat_wxyz_to_xyzw(self._quat_site)

    def pose_error(self, data: mujoco.MjData, target: ControlTarget) -> np.ndarray:
        """(6,) = target minus current: position (m) then rotation vector (rad), base frame."""
        error = np.empty(6)
        error[:3] = target.position_m - data.site_xpos[self.site_id]
        mujoco.mju_mat2Quat(self._quat_site, data.site_xmat[self.site_id])
        mujoco.mju_negQuat(self._quat_conj, self._quat_site)
        mujoco.mju_mulQuat(
            self._quat_err, quat_xyzw_to_wxyz(target.orientation_xyzw), self._quat_conj
        )
        # q and -q are the same rotation; take the short way round.
        if self._quat_err[0] < 0:
            self._quat_err *= -1.0
        mujoco.mju_quat2Vel(self._rotvec, self._quat_err, 1.0)
        error[3:] = self._rotvec
        return error

    def torques(self, data: mujoco.MjData, target: ControlTarget) -> np.ndarray:
        """Joint torques (N m) in `joint_names` order for one step; within effort limits."""
        m = self.model
        dofs = self._dofs
        mujoco.mj_jacSite(m, data, self._jac[:3], self._jac[3:], self.site_id)
        jac = self._jac[:, dofs]  # (6, n)
        # M^-1 J^T, using MuJoCo's factorisation of M from this step's mj_step1.
        mujoco.mj_solveM(m, data, self._minv_jt, self._jac)
        minv_jt = self._minv_jt[:, dofs].T  # (n, 6)
        # The regulariser is negligible inside the workspace and bounds Lambda near a
        # singularity.
        lambda_inv = jac @ minv_jt + self._regulariser  # (6, 6)

        qvel = data.qvel[dofs]
        ee_vel = jac @ qvel  # (6,)
        error = self.pose_error(data, target)
        posture = self.kn * (self.home_q_rad - data.qpos[self.qpos_adr]) - self.dn * qvel
        force_ff = target.wrench[:3]
        force_ff_n = math.sqrt(float(force_ff @ force_ff))
        blend = min(1.0, force_ff_n / self.gains.force_blend_n) if force_ff_n > 1e-9 else 0.0
        if blend > 0.0:
            axis = force_ff / force_ff_n
            axial_error = float(axis @ error[:3])
            # The motion part leaves the force axis alone: without the axial error it cannot
            # push other axes through Lambda's coupling, and the axial spring replaces it.
            error[:3] -= blend * axial_error * axis
        # One solve with Lambda^-1 for two right-hand sides: the motion wrench and the
        # task-space image of the posture torque (for the null-space projection).
        rhs = self._rhs  # (6, 2)
        rhs[:, 0] = self.kp * error - self.kd * ee_vel
        rhs[:, 1] = minv_jt.T @ posture
        solved = np.linalg.solve(lambda_inv, rhs)  # (6, 2)
        task_wrench = solved[:, 0] + target.wrench
        if blend > 0.0:
            # Along the force axis: remove the motion wrench and put a soft spring in its
            # place, stiffness_scale x the full stiffness at the axis's apparent mass, and
            # critically damped, so the commanded force sets the contact force.
            axial_mass_kg = 1.0 / float(axis @ lambda_inv[:3, :3] @ axis)
            scale = self.gains.force_axis_stiffness_scale
            spring_n = axial_mass_kg * (
                scale * self.kp[0] * axial_error
                - math.sqrt(scale) * self.kd[0] * float(axis @ ee_vel[:3])
            )
            along_n = float(axis @ solved[:3, 0])
            task_wrench[:3] += blend * (spring_n - along_n) * axis
        # Posture in the null space: N^T tau_p = tau_p - J^T Lambda J M^-1 tau_p, i.e. the
        # dynamically consistent projector N = I - Jbar J with Jbar = M^-1 J^T Lambda.
        tau = jac.T @ (task_wrench - solved[:, 1]) + posture
        tau += data.qfrc_bias[dofs]  # gravity and Coriolis compensation
        return np.minimum(np.maximum(tau, -self.torque_limit_nm), self.torque_limit_nm)


class CommandGate:
    """Latest command, validated; holds a safe pose when commands stop coming.

    A command older than `timeout_s` of sim time is stale: the gate then latches the measured
    end-effector pose (a pose the arm is physically at, so reachable and collision free,
    clipped to the workspace) and holds it with zero feed-forward wrench until a fresh
    command arrives. Non-finite commands are rejected and counted.
    """

    def __init__(
        self,
        timeout_s: float,
        workspace_min_m: np.ndarray,
        workspace_max_m: np.ndarray,
        max_feedforward_force_n: float,
        max_feedforward_torque_nm: float,
    ) -> None:
        self.timeout_s = timeout_s
        self.workspace_min_m = np.asarray(workspace_min_m, dtype=np.float64)
        self.workspace_max_m = np.asarray(workspace_max_m, dtype=np.float64)
        self.max_force_n = max_feedforward_force_n
        self.max_torque_nm = max_feedforward_torque_nm
        self.reset(np.zeros(3), types.TOOL_DOWN_XYZW)

    def reset(self, hold_position_m: np.ndarray, hold_orientation_xyzw: np.ndarray) -> None:
        """Forget commands; hold the given pose (the arm's pose after a reset)."""
        self._command: ControlTarget | None = None
        self._stamp_s = -math.inf
        self._submitted: types.Command | None = None
        self._hold = self._safe_target(hold_position_m, hold_orientation_xyzw, np.zeros(6), True)
        self.rejected = 0
        self.stale_events = 0
        self._was_stale = True  # before any command the gate holds

    def copy_from(self, other: CommandGate) -> None:
        """Take over another gate's state (for forked worlds)."""
        self._command = other._command
        self._stamp_s = other._stamp_s
        self._submitted = other._submitted
        self._hold = other._hold
        self.rejected = other.rejected
        self.stale_events = other.stale_events
        self._was_stale = other._was_stale

    def _safe_target(
        self, position_m: np.ndarray, orientation_xyzw: np.ndarray, wrench: np.ndarray, hold: bool
    ) -> ControlTarget:
        position = np.clip(position_m, self.workspace_min_m, self.workspace_max_m)
        quat = np.asarray(orientation_xyzw, dtype=np.float64)
        quat = quat / np.linalg.norm(quat)
        w = np.array(wrench, dtype=np.float64)
        force_norm = np.linalg.norm(w[:3])
        if force_norm > self.max_force_n:
            w[:3] *= self.max_force_n / force_norm
        torque_norm = np.linalg.norm(w[3:])
        if torque_norm > self.max_torque_nm:
            w[3:] *= self.max_torque_nm / torque_norm
        return ControlTarget(position, quat, w, hold)

    def submit(self, command: types.Command) -> bool:
        """Take a new command; False (and counted) when it is not finite or has no rotation."""
        if command is self._submitted:
            return True  # the same object again (a node re-sending its latest): nothing new
        pose = command.pose.as_array()
        wrench = command.wrench.as_array()
        stamp_ok = math.isfinite(command.stamp_s)
        if not (stamp_ok and np.all(np.isfinite(pose)) and np.all(np.isfinite(wrench))):
            self.rejected += 1
            return False
        if np.linalg.norm(pose[3:]) < 0.5:
            self.rejected += 1
            return False
        self._submitted = command
        self._stamp_s = command.stamp_s
        self._command = self._safe_target(pose[:3], pose[3:], wrench, command.hold)
        return True

    def is_stale(self, time_s: float) -> bool:
        """True when no command is newer than the timeout."""
        return self._command is None or time_s - self._stamp_s > self.timeout_s

    def target(
        self, time_s: float, ee_position_m: np.ndarray, ee_orientation_xyzw: np.ndarray
    ) -> ControlTarget:
        """What to track now: the latest command, or the latched hold pose if it is stale."""
        if not self.is_stale(time_s):
            self._was_stale = False
            return self._command
        if not self._was_stale:
            self._was_stale = True
            self.stale_events += 1
            self._hold = self._safe_target(ee_position_m, ee_orientation_xyzw, np.zeros(6), True)
            log.debug("command stale at t=%.3f s; holding the measured pose", time_s)
        return self._hold
