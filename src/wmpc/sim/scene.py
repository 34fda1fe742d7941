"""Build the instrumented MuJoCo model: urdf/scene.xml (world + arm from the URDF) plus sensors.

scene.xml attaches the arm straight from urdf/wmpc_arm.urdf, so the kinematics live in one
file. A URDF cannot carry MuJoCo sites, sensors or actuators, and MJCF cannot add children to
the bodies of an attached model, so this module adds them with MjSpec after loading the
scene: the end-effector site, the wrist force/torque site and sensors, one taxel site and
touch sensor per pad tile, a torque motor per joint (limits = the URDF's effort limits),
rotor armature, and the collision filter that keeps the arm from colliding with itself.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import mujoco
import numpy as np

from wmpc.errors import WmpcError
from wmpc.paths import share_path

log = logging.getLogger(__name__)

ARM_JOINTS = tuple(f"panda_joint{i}" for i in range(1, 8))
ARM_BODIES = (
    "base",
    *(f"panda_link{i}" for i in range(1, 8)),
    "probe",
    "ee_link",
)
# The Panda's usual ready pose: tool pointing straight down 0.48 m above the table.
HOME_JOINT_POSITIONS_RAD = (0.0, -0.7853982, 0.0, -2.3561945, 0.0, 1.5707963, 0.7853982)

EE_SITE = "ee_site"
WRIST_SITE = "wrist_ft"
WRIST_FORCE_SENSOR = "wrist_force"
WRIST_TORQUE_SENSOR = "wrist_torque"
TAXEL_ROWS = 4
TAXEL_COLS = 4
TABLE_GEOM = "table"
TABLE_HEIGHT_M = 0.0
BLOCK_BODY = "block"
BLOCK_JOINT = "block_joint"
BLOCK_HALF_SIZE_M = 0.025
MARKER_BODY = "marker"
PUSH_GOAL_BODY = "push_goal"
CAMERA = "scene_cam"

# Reflected rotor inertia of the joint drives (kg m^2). A URDF has no field for it; values of
# this order are what Panda-class harmonic drives reflect, and they keep the light wrist links
# well conditioned at a 2 ms step.
ARMATURE_KG_M2 = 0.1
# Collision filter: arm geoms have contype 2 / conaffinity 1, the world's have 1 / 1, so arm
# links collide with the table and the block but never with each other (bit 2 & bit 1 = 0).
ARM_CONTYPE = 2
ARM_CONAFFINITY = 1
# Taxel sites reach a little beyond the pad face so contact points (which lie between the two
# surfaces) and pushes on the pad's rim fall inside them.
TAXEL_SITE_HALF_HEIGHT_M = 0.005
SENSOR_SITE_GROUP = 4  # not drawn by the default visual options, so cameras never see it

COLOURS_RGBA = {
    "base": (0.35, 0.35, 0.38, 1.0),
    "probe": (0.15, 0.15, 0.17, 1.0),
    "pad": (0.05, 0.05, 0.05, 1.0),
    "link": (0.92, 0.92, 0.90, 1.0),
}


class SceneError(WmpcError, ValueError):
    """The scene or arm description is missing or lacks an element wmpc relies on."""


def taxel_name(row: int, col: int) -> str:
    """Name of the taxel site and touch sensor at (row, col); row runs along the pad's x."""
    return f"taxel_{row}_{col}"


def pad_tile_name(row: int, col: int) -> str:
    """Name of the pad's collision tile (a URDF collision element) at (row, col)."""
    return f"pad_{row}_{col}"


def default_scene_path() -> Path:
    """urdf/scene.xml of the installed package."""
    return share_path("urdf", "scene.xml")


def default_urdf_path() -> Path:
    """urdf/wmpc_arm.urdf of the installed package."""
    return share_path("urdf", "wmpc_arm.urdf")


@contextlib.contextmanager
def quiet_empty_prefix_warning() -> Iterator[None]:
    """Silence MuJoCo's warning about attaching the arm with an empty prefix, and only that.

    The arm is attached with an empty prefix on purpose: joint names must stay
    `panda_joint1..7` as in the URDF. MuJoCo warns that such a model may not save back to one
    XML file (wmpc never saves it), both as a Python warning and through its C warning hook,
    which otherwise also appends to MUJOCO_LOG.TXT in the working directory.
    """
    previous = mujoco.get_mju_user_warning()

    def handler(message: str) -> None:
        if "empty prefix" in message:
            return
        if previous is not None:
            previous(message)
        else:
            log.warning("MuJoCo: %s", message)

    mujoco.set_mju_user_warning(handler)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Attaching a spec with an empty prefix")
            yield
    finally:
        mujoco.set_mju_user_warning(previous)


def load_spec(scene_path: str | Path | None = None) -> mujoco.MjSpec:
    """Parse scene.xml (which attaches the URDF arm) into an MjSpec, without instrumenting it."""
    path = Path(scene_path) if scene_path else default_scene_path()
    if not path.is_file():
        raise SceneError(f"scene file not found: {path}")
    with quiet_empty_prefix_warning():
        try:
            return mujoco.MjSpec.from_file(str(path))
        except ValueError as exc:
            raise SceneError(f"cannot load scene {path}: {exc}") from None


def _body(spec: mujoco.MjSpec, name: str) -> mujoco.MjsBody:
    body = spec.body(name)
    if body is None:
        raise SceneError(f"scene lacks body '{name}' (check urdf/scene.xml and the URDF)")
    return body


def _add_site_sensor(spec: mujoco.MjSpec, name: str, kind: mujoco.mjtSensor, site: str) -> None:
    spec.add_sensor(name=name, type=kind, objtype=mujoco.mjtObj.mjOBJ_SITE, objname=site)


def instrument(spec: mujoco.MjSpec) -> None:
    """Add wmpc's sites, sensors, motors, armature, colours and collision filter to `spec`."""
    for name in ARM_BODIES:
        body = _body(spec, name)
        for geom in body.geoms:
            geom.contype = ARM_CONTYPE
            geom.conaffinity = ARM_CONAFFINITY
            if geom.name.startswith("pad_"):
                geom.rgba = COLOURS_RGBA["pad"]
            else:
                geom.rgba = COLOURS_RGBA.get(name, COLOURS_RGBA["link"])

    for joint_name in ARM_JOINTS:
        joint = spec.joint(joint_name)
        if joint is None:
            raise SceneError(f"arm lacks joint '{joint_name}' (check urdf/wmpc_arm.urdf)")
        joint.armature = ARMATURE_KG_M2
        effort_nm = float(joint.actfrcrange[1])
        if effort_nm <= 0:
            raise SceneError(f"joint '{joint_name}' has no effort limit in the URDF")
        spec.add_actuator(
            name=f"{joint_name}_motor",
            target=joint_name,
            trntype=mujoco.mjtTrn.mjTRN_JOINT,
            ctrlrange=[-effort_nm, effort_nm],
            ctrllimited=True,
            gear=[1, 0, 0, 0, 0, 0],
        )

    ee_link = _body(spec, "ee_link")
    ee_link.add_site(name=EE_SITE, pos=[0, 0, 0], size=[0.004, 0, 0], group=SENSOR_SITE_GROUP)

    probe = _body(spec, "probe")
    # The wrist F/T sensor sits at the flange, between panda_link7 and the probe: it measures
    # everything the probe and its contacts load the flange with.
    probe.add_site(name=WRIST_SITE, pos=[0, 0, 0], size=[0.005, 0, 0], group=SENSOR_SITE_GROUP)
    _add_site_sensor(spec, WRIST_FORCE_SENSOR, mujoco.mjtSensor.mjSENS_FORCE, WRIST_SITE)
    _add_site_sensor(spec, WRIST_TORQUE_SENSOR, mujoco.mjtSensor.mjSENS_TORQUE, WRIST_SITE)

    tiles = {geom.name: geom for geom in probe.geoms}
    missing = [
        pad_tile_name(r, c)
        for r in range(TAXEL_ROWS)
        for c in range(TAXEL_COLS)
        if pad_tile_name(r, c) not in tiles
    ]
    if missing:
        raise SceneError(
            f"probe lacks pad tile(s) {missing} in the URDF; the pad must have "
            f"{TAXEL_ROWS} x {TAXEL_COLS} collision elements named pad_<row>_<col>"
        )
    centres = np.array(
        [[tiles[pad_tile_name(r, c)].pos for c in range(TAXEL_COLS)] for r in range(TAXEL_ROWS)]
    )  # (rows, cols, 3)
    pitch_m = float(np.linalg.norm(centres[1, 0] - centres[0, 0]))
    # Sites span 98 % of the pitch: neighbours never share a boundary, so no contact point is
    # counted by two taxels, and the tiles (narrower than the pitch) stay inside their site.
    half_xy = 0.49 * pitch_m
    for row in range(TAXEL_ROWS):
        for col in range(TAXEL_COLS):
            tile = tiles[pad_tile_name(row, col)]
            face_z = float(tile.pos[2]) + float(tile.size[2])
            name = taxel_name(row, col)
            probe.add_site(
                name=name,
                type=mujoco.mjtGeom.mjGEOM_BOX,
                pos=[float(tile.pos[0]), float(tile.pos[1]), face_z],
                size=[half_xy, half_xy, TAXEL_SITE_HALF_HEIGHT_M],
                group=SENSOR_SITE_GROUP,
            )
            _add_site_sensor(spec, name, mujoco.mjtSensor.mjSENS_TOUCH, name)


def build_model(scene_path: str | Path | None = None) -> mujoco.MjModel:
    """The compiled, instrumented model of the wmpc world, with a `home` keyframe."""
    spec = load_spec(scene_path)
    instrument(spec)
    with quiet_empty_prefix_warning():
        model = spec.compile()
        # The keyframe needs the compiled qpos layout: arm at home, everything else at rest.
        qpos = model.qpos0.copy()
        for name, q in zip(ARM_JOINTS, HOME_JOINT_POSITIONS_RAD, strict=True):
            qpos[model.jnt_qposadr[model.joint(name).id]] = q
        mocap_pos = np.zeros((model.nmocap, 3))
        mocap_quat = np.zeros((model.nmocap, 4))
        for body_id, mocap_id in enumerate(model.body_mocapid):
            if mocap_id >= 0:
                mocap_pos[mocap_id] = model.body_pos[body_id]
                mocap_quat[mocap_id] = model.body_quat[body_id]
        spec.add_key(
            name="home",
            qpos=qpos.tolist(),
            mpos=mocap_pos.ravel().tolist(),
            mquat=mocap_quat.ravel().tolist(),
        )
        return spec.compile()
