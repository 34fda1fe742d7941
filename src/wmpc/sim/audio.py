"""Microphone audio synthesised from MuJoCo physics events (no ROS).

Four sources add up, as they do at a contact microphone on a real arm:

- impacts: two bodies that start touching ring the modes of both surfaces (a few
  exponentially decaying sinusoids per material) after a short broadband attack. Loudness is
  linear in the impact impulse, as the modal amplitude of a struck body is: the impulse that
  stops the approach at all the new contacts at once, through the arm's and objects' inertia
  (A p = -v_n with A = J M^-1 J^T), scaled down for soft surfaces;
- sliding: band-limited noise scaled by slip speed x normal force, summed over contacts;
- motors: a quiet whine whose loudness and pitch follow the actuated joints' speeds;
- background: white noise of the room and preamp.

`observe` runs after every physics step and only records events and per-step levels;
`read` renders the next samples in one vectorised pass, so the cost per physics step stays
small. All randomness comes from the given generator in call order, so a seeded generator
and the same sequence of calls give bit-identical samples.

Decay times and spectra were chosen against real impact recordings (CC0 snare, wood block
and finger snap in the shared test data): their envelopes fall by 20 dB in 65-120 ms and
their spectral centroids below 8 kHz lie between 0.6 and 4.2 kHz.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import mujoco
import numpy as np
from scipy import signal

from wmpc.sim.sensors import SensorError

FULL_SCALE = 32767.0


@dataclass(frozen=True)
class Material:
    """How a surface sounds: its ringing modes when struck and its roughness when rubbed."""

    modes_hz: tuple[float, ...]
    decays_s: tuple[float, ...]  # amplitude time constant of each mode
    gains: tuple[float, ...]  # relative amplitude of each mode
    roughness: float  # friction-noise gain relative to plastic
    # Loudness of an impact relative to wood: a soft surface stretches the contact in time,
    # so less of the impulse reaches the ringing modes.
    hardness: float


# Modal sets in the ranges measured for small solid objects: wood and plastic ring for tens of
# milliseconds, metal for longer and higher, rubber barely at all.
MATERIALS: dict[str, Material] = {
    "wood": Material((520.0, 1250.0, 2300.0, 3900.0), (0.045, 0.030, 0.018, 0.010),
                     (1.0, 0.6, 0.35, 0.2), 1.2, 1.0),
    "plastic": Material((880.0, 2100.0, 3500.0, 5200.0), (0.035, 0.022, 0.012, 0.008),
                        (1.0, 0.6, 0.4, 0.2), 1.0, 0.9),
    "metal": Material((1750.0, 4100.0, 6300.0), (0.12, 0.08, 0.05), (1.0, 0.5, 0.3), 0.8,
                      1.2),
    "rubber": Material((310.0, 820.0), (0.015, 0.008), (1.0, 0.4), 2.0, 0.25),
}  # fmt: skip
DEFAULT_MATERIAL = "plastic"


def material_names(model: mujoco.MjModel, overrides: Mapping[str, str] | None = None) -> list[str]:
    """The audio material of each geom, by geom id.

    From `overrides` (geom name -> material), else the first known material name among the
    words of the geom's MJCF material name and of its own name ("wood_table"), else plastic.
    """
    overrides = dict(overrides or {})
    unknown = sorted({m for m in overrides.values() if m not in MATERIALS})
    if unknown:
        raise SensorError(f"unknown audio material(s) {unknown}; known: {sorted(MATERIALS)}")
    names = []
    for g in range(model.ngeom):
        geom_name = mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_GEOM, g) or ""
        if geom_name in overrides:
            names.append(overrides[geom_name])
            continue
        mat_id = model.geom_matid[g]
        mat_name = (
            mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_MATERIAL, mat_id) if mat_id >= 0 else ""
        )
        words = f"{mat_name or ''}_{geom_name}".replace("-", "_").split("_")
        names.append(next((w for w in words if w in MATERIALS), DEFAULT_MATERIAL))
    return names


class AudioSynth:
    """Mono int16 audio at `rate_hz` rendered from the contacts and joint speeds of a model."""

    def __init__(
        self,
        model: mujoco.MjModel,
        rate_hz: float = 16000.0,
        rng: np.random.Generator | None = None,
        *,
        materials: Mapping[str, str] | None = None,
        click_gain_per_ns: float = 0.5,
        friction_gain: float = 0.004,
        hum_gain: float = 0.002,
        noise_std: float = 0.0015,
        min_impulse_ns: float = 1e-4,
        min_slip_m_s: float = 0.002,
        max_unread_s: float = 10.0,
    ):
        if not math.isfinite(rate_hz) or rate_hz < 4000:
            raise SensorError(f"audio rate_hz must be >= 4000, got {rate_hz}")
        if rng is None:
            raise SensorError("AudioSynth needs a numpy Generator (rng) for its noise")
        for name, value in (
            ("click_gain_per_ns", click_gain_per_ns),
            ("friction_gain", friction_gain),
            ("hum_gain", hum_gain),
            ("noise_std", noise_std),
        ):
            if not math.isfinite(value) or value < 0:
                raise SensorError(f"audio {name} must be >= 0, got {value}")
        self.rate_hz = float(rate_hz)
        self._model = model
        self._rng = rng
        self._geom_material = [MATERIALS[n] for n in material_names(model, materials)]
        self._geom_body = model.geom_bodyid.copy()
        self._body_root = model.body_rootid.copy()
        self._roughness = np.array([m.roughness for m in self._geom_material])
        self.click_gain_per_ns = click_gain_per_ns
        self.friction_gain = friction_gain
        self.hum_gain = hum_gain
        self.noise_std = noise_std
        self.min_impulse_ns = min_impulse_ns
        self.min_slip_m_s = min_slip_m_s
        self._max_unread = int(max_unread_s * self.rate_hz)
        # Motors drive the joints that actuators act on; their dof addresses give the speeds.
        joints = [
            model.actuator_trnid[a, 0]
            for a in range(model.nu)
            if model.actuator_trntype[a] == mujoco.mjtTrn.mjTRN_JOINT
        ]
        self._motor_dofs = np.array(sorted({model.jnt_dofadr[j] for j in joints}), dtype=int)
        nyquist = 0.5 * self.rate_hz
        band_hz = [400.0, min(4000.0, 0.45 * self.rate_hz)]
        self._friction_sos = signal.butter(2, band_hz, "bandpass", fs=self.rate_hz, output="sos")
        self._attack_sos = signal.butter(
            2, 0.25 * nyquist, "highpass", fs=self.rate_hz, output="sos"
        )
        self.reset()

    def reset(self) -> None:
        """Forget all events and restart the sample clock at time zero (a new episode)."""
        self._observed_samples = 0.0  # sim time observed so far, in samples (fractional)
        self._read_samples = 0  # samples handed out by read()
        self._pending = np.zeros(0)  # clicks still to be played, from the read position on
        # Level control points (sample position, friction, hum level, hum pitch), the first one
        # at or before the read position, for linear interpolation between physics steps.
        self._points = [(0.0, 0.0, 0.0, 0.0)]
        self._friction_zi = np.zeros((self._friction_sos.shape[0], 2))
        self._hum_phase = 0.0
        self._touching: set[int] = set()  # body pairs (b1 * nbody + b2) in contact last step
        self.onsets: list[tuple[float, float]] = []  # (time_s, impulse_ns), newest last

    @property
    def available(self) -> int:
        """Samples that physics has covered but `read` has not yet returned."""
        return int(self._observed_samples) - self._read_samples

    @property
    def read_position_s(self) -> float:
        """Sim time of the next sample `read` returns."""
        return self._read_samples / self.rate_hz

    def observe(self, data: mujoco.MjData, dt_s: float) -> None:
        """Record the events of the physics step that just ran (call after every mj_step)."""
        start = self._observed_samples
        self._observed_samples += dt_s * self.rate_hz
        friction = 0.0
        n = data.ncon
        if n:
            contact = data.contact
            geoms = contact.geom[:n]  # (n, 2)
            points_m = contact.pos[:n]  # (n, 3)
            normals = contact.frame[:n, :3]  # (n, 3), from geom1 towards geom2
            bodies = self._geom_body[geoms]  # (n, 2)
            both = self._body_point_velocities(data, bodies.T.ravel(), points_m)
            rel_vel = both[n:] - both[:n]  # geom2's point relative to geom1's
            normal_speed = np.einsum("ij,ij->i", rel_vel, normals)  # < 0 while approaching
            tangential = rel_vel - normal_speed[:, None] * normals  # (n, 3)
            # |tangential| per row: np.linalg.norm's own arithmetic, without its checks.
            slip_m_s = np.sqrt(np.add.reduce(tangential * tangential, axis=1))
            # Objects collide, not geoms: a pad of 16 tiles landing is one impact.
            pairs = (bodies.min(axis=1) * self._model.nbody + bodies.max(axis=1)).tolist()
            touching = self._touching
            new_flags = [p not in touching for p in pairs]
            self._touching = set(pairs)
            if any(new_flags):
                new = np.array(new_flags)
                for pair in sorted({p for p, is_new in zip(pairs, new, strict=True) if is_new}):
                    group = np.flatnonzero((np.array(pairs) == pair) & (normal_speed < 0))
                    if group.size == 0:
                        continue
                    impulses_ns = self._impulses_ns(data, group, normal_speed[group])
                    if impulses_ns.sum() >= self.min_impulse_ns:
                        loudest = group[int(np.argmax(impulses_ns))]
                        g1, g2 = geoms[loudest]
                        self._add_click(start, float(impulses_ns.sum()), int(g1), int(g2))
                sliding = np.flatnonzero(~new & (slip_m_s > self.min_slip_m_s))
            else:
                # Most steps: the same bodies touch as before (a block resting on the table).
                sliding = np.flatnonzero(slip_m_s > self.min_slip_m_s)
            if sliding.size:
                normal_n = self._normal_forces_n(data, sliding)
                roughness = self._roughness[geoms[sliding]].mean(axis=1)
                friction = float((roughness * slip_m_s[sliding] * normal_n).sum())
        else:
            self._touching = set()

        motor_speed = (
            float(np.abs(data.qvel[self._motor_dofs]).sum()) if self._motor_dofs.size else 0.0
        )
        self._points.append(
            (
                self._observed_samples,
                self.friction_gain * friction,
                self.hum_gain * min(motor_speed, 5.0),
                90.0 + 60.0 * min(motor_speed, 5.0),
            )
        )
        if self.available > self._max_unread:
            # Nobody is listening: drop the oldest audio, as a full capture buffer does.
            self.read(self.available - self._max_unread)

    def read(self, n_samples: int) -> np.ndarray:
        """The next `n_samples` as (n,) int16; physics must have covered them already."""
        if n_samples < 0 or n_samples > self.available:
            raise SensorError(
                f"audio read of {n_samples} samples, but physics has covered only "
                f"{self.available} unread samples; step the simulation further first"
            )
        n = int(n_samples)
        first = self._read_samples
        positions = first + np.arange(n, dtype=np.float64)
        xs, friction, hum_level, hum_hz = (np.array(v) for v in zip(*self._points, strict=True))
        friction_env = np.interp(positions, xs, friction)
        hum_env = np.interp(positions, xs, hum_level)
        pitch_hz = np.interp(positions, xs, hum_hz)

        # Filter the noise even when quiet so the filter state runs continuously.
        rub, self._friction_zi = signal.sosfilt(
            self._friction_sos, self._rng.standard_normal(n), zi=self._friction_zi
        )
        phase = self._hum_phase + 2.0 * math.pi * np.cumsum(pitch_hz) / self.rate_hz
        self._hum_phase = float(phase[-1] % (2.0 * math.pi)) if n else self._hum_phase
        hum = np.sin(phase) + 0.5 * np.sin(2.0 * phase + 0.3)
        audio = friction_env * rub + hum_env * hum
        audio += self.noise_std * self._rng.standard_normal(n)
        clicks = self._pending[:n]
        audio[: clicks.size] += clicks
        self._pending = self._pending[n:]

        self._read_samples += n
        keep = [p for p in self._points if p[0] > self._read_samples]
        before = [p for p in self._points if p[0] <= self._read_samples]
        self._points = before[-1:] + keep
        return np.clip(np.round(audio * FULL_SCALE), -32768, 32767).astype(np.int16)

    # ---- events -------------------------------------------------------------------------

    def _body_point_velocities(
        self, data: mujoco.MjData, bodies: np.ndarray, points_m: np.ndarray
    ) -> np.ndarray:
        """(2n, 3) world velocities of the material points at `points_m` (n, 3) of `bodies`.

        `bodies` (2n,) names the body of each point twice over: the first n, then the second
        n, both at the same n points (the two sides of each contact). From the step's
        com-based body velocities (cvel: angular, linear at the subtree centre of mass of the
        body's tree), as mj_objectVelocity computes them one at a time.
        """
        cvel = data.cvel[bodies]  # (2n, 6)
        centres_m = data.subtree_com[self._body_root[bodies]]  # (2n, 3)
        n = points_m.shape[0]
        w = cvel[:, :3]
        r = (points_m - centres_m.reshape(2, n, 3)).reshape(2 * n, 3)
        velocity = cvel[:, 3:].copy()  # + w x r, written out: np.cross costs 20 us a call
        velocity[:, 0] += w[:, 1] * r[:, 2] - w[:, 2] * r[:, 1]
        velocity[:, 1] += w[:, 2] * r[:, 0] - w[:, 0] * r[:, 2]
        velocity[:, 2] += w[:, 0] * r[:, 1] - w[:, 1] * r[:, 0]
        return velocity

    def _normal_forces_n(self, data: mujoco.MjData, contacts: np.ndarray) -> np.ndarray:
        """Normal force of each contact from the solver's forces, as mj_contactForce gives it.

        Vectorised because a pad of tiles on a table makes dozens of contacts per step. A
        pyramidal cone spreads the normal force over its 2 (dim - 1) edges, which sum to it.
        """
        address = data.contact.efc_address[contacts]
        dim = data.contact.dim[contacts]
        active = address >= 0  # contacts excluded from the solver carry no force
        forces = np.zeros(contacts.size)
        if not active.any():
            return forces
        address, dim = address[active], dim[active]
        pyramid = self._model.opt.cone == mujoco.mjtCone.mjCONE_PYRAMIDAL
        rows = np.where(pyramid & (dim > 1), 2 * (dim - 1), 1)  # (k,) rows per contact
        starts = np.cumsum(rows) - rows
        offsets = np.arange(rows.sum()) - np.repeat(starts, rows)
        solver_forces = data.efc_force[np.repeat(address, rows) + offsets]
        forces[active] = np.maximum(np.add.reduceat(solver_forces, starts), 0.0)
        return forces

    def _impulses_ns(
        self, data: mujoco.MjData, contacts: np.ndarray, normal_speed_m_s: np.ndarray
    ) -> np.ndarray:
        """Normal impulses (N s) that stop the approach at `contacts`, solved jointly.

        With J the contacts' normal rows, A = J M^-1 J^T maps impulses to velocity changes;
        the least-norm p with A p = -v_n shares one impact among coupled contacts, so four
        corners of a box landing flat add up to m v, not 4 m v.
        """
        rows = np.zeros((contacts.size, self._model.nv))  # (n_contacts, nv)
        jacp = np.zeros((3, self._model.nv))
        for row, i in zip(rows, contacts, strict=True):
            contact = data.contact[int(i)]
            normal = contact.frame[:3]
            for geom, sign in ((contact.geom[1], 1.0), (contact.geom[0], -1.0)):
                body = self._geom_body[geom]
                if body != 0:
                    mujoco.mj_jac(self._model, data, jacp, None, contact.pos, body)
                    row += sign * (normal @ jacp)
        solved = np.zeros_like(rows)
        mujoco.mj_solveM(self._model, data, solved, rows)
        inverse_mass = rows @ solved.T  # (n_contacts, n_contacts)
        impulses, *_ = np.linalg.lstsq(inverse_mass, -normal_speed_m_s, rcond=1e-9)
        return np.clip(impulses, 0.0, None)

    def _add_click(self, start_samples: float, impulse_ns: float, g1: int, g2: int) -> None:
        """Mix a click for an impact of `impulse_ns` between geoms g1 and g2 into the future."""
        self.onsets.append((start_samples / self.rate_hz, impulse_ns))
        del self.onsets[:-64]
        nyquist = 0.5 * self.rate_hz
        modes = [
            (f, tau, gain)
            for material in (self._geom_material[g1], self._geom_material[g2])
            for f, tau, gain in zip(
                material.modes_hz, material.decays_s, material.gains, strict=True
            )
            if f < 0.9 * nyquist
        ]
        longest_s = max(tau for _, tau, _ in modes)
        n = int(min(7.0 * longest_s, 0.6) * self.rate_hz)  # ring down to -60 dB
        t = np.arange(n) / self.rate_hz
        # Slight per-impact detuning: the same block never rings at exactly the same pitch.
        detune = self._rng.uniform(0.97, 1.03, size=len(modes))
        ring = np.zeros(n)
        for (f, tau, gain), d in zip(modes, detune, strict=True):
            ring += gain * np.exp(-t / tau) * np.sin(2.0 * math.pi * f * d * t)
        # The attack: the few milliseconds of contact itself are a broadband burst.
        n_attack = min(n, int(0.004 * self.rate_hz))
        burst = self._rng.standard_normal(n_attack) * np.exp(-t[:n_attack] / 0.001)
        ring[:n_attack] += 0.6 * signal.sosfilt(self._attack_sos, burst)
        hardness = math.sqrt(self._geom_material[g1].hardness * self._geom_material[g2].hardness)
        ring *= self.click_gain_per_ns * hardness * impulse_ns / np.abs(ring).max()

        offset = max(round(start_samples) - self._read_samples, 0)
        if self._pending.size < offset + n:
            grown = np.zeros(offset + n)
            grown[: self._pending.size] = self._pending
            self._pending = grown
        self._pending[offset : offset + n] += ring
