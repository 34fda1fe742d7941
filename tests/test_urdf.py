"""The arm description loads three ways (MuJoCo from the URDF, the MuJoCo scene, a plain XML
parse of the kinematic tree) and has the Franka Panda's kinematics."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

import mujoco
import numpy as np
import pytest

from wmpc.sim import scene

REPO = Path(__file__).resolve().parents[1]
URDF = REPO / "urdf" / "wmpc_arm.urdf"
SCENE = REPO / "urdf" / "scene.xml"
JOINTS = [f"panda_joint{i}" for i in range(1, 8)]
# The Panda's published joint limits: (lower, upper) rad, effort N m, velocity rad/s.
PANDA_LIMITS = {
    "panda_joint1": (-2.8973, 2.8973, 87.0, 2.1750),
    "panda_joint2": (-1.7628, 1.7628, 87.0, 2.1750),
    "panda_joint3": (-2.8973, 2.8973, 87.0, 2.1750),
    "panda_joint4": (-3.0718, -0.0698, 87.0, 2.1750),
    "panda_joint5": (-2.8973, 2.8973, 12.0, 2.6100),
    "panda_joint6": (-0.0175, 3.7525, 12.0, 2.6100),
    "panda_joint7": (-2.8973, 2.8973, 12.0, 2.6100),
}
# The Panda's modified (Craig) DH parameters (a_{i-1}, d_i, alpha_{i-1}), then the flange.
PANDA_DH = [
    (0.0, 0.333, 0.0),
    (0.0, 0.0, -math.pi / 2),
    (0.0, 0.316, math.pi / 2),
    (0.0825, 0.0, math.pi / 2),
    (-0.0825, 0.384, -math.pi / 2),
    (0.0, 0.0, math.pi / 2),
    (0.088, 0.0, math.pi / 2),
]
FLANGE_D_M = 0.107


def dh_flange(q: np.ndarray) -> np.ndarray:
    """4x4 pose of the Panda flange from modified DH parameters (independent of the URDF)."""

    def rot_x(a):
        c, s = math.cos(a), math.sin(a)
        return np.array([[1, 0, 0, 0], [0, c, -s, 0], [0, s, c, 0], [0, 0, 0, 1.0]])

    def rot_z(a):
        c, s = math.cos(a), math.sin(a)
        return np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])

    def trans(x, y, z):
        t = np.eye(4)
        t[:3, 3] = (x, y, z)
        return t

    pose = np.eye(4)
    for (a, d, alpha), theta in zip(PANDA_DH, q, strict=True):
        pose = pose @ rot_x(alpha) @ trans(a, 0, 0) @ rot_z(theta) @ trans(0, 0, d)
    return pose @ trans(0, 0, FLANGE_D_M)


# ---- (a) MuJoCo straight from the URDF ---------------------------------------------------


def test_mujoco_loads_the_urdf_with_panda_joints_and_limits():
    model = mujoco.MjModel.from_xml_path(str(URDF))
    assert model.njnt == 7 and model.nv == 7
    for name, (lower, upper, effort, _velocity) in PANDA_LIMITS.items():
        joint = model.joint(name)
        assert joint.type[0] == mujoco.mjtJoint.mjJNT_HINGE
        np.testing.assert_allclose(model.jnt_range[joint.id], [lower, upper])
        np.testing.assert_allclose(model.jnt_actfrcrange[joint.id], [-effort, effort])
    # fusestatic="false" in the URDF's <mujoco> element keeps the probe and ee frame bodies.
    for body in ("base", "probe", "ee_link"):
        assert model.body(body).id >= 0
    assert model.body("probe").parentid[0] == model.body("panda_link7").id


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_urdf_kinematics_match_panda_dh(seed):
    model = mujoco.MjModel.from_xml_path(str(URDF))
    data = mujoco.MjData(model)
    rng = np.random.default_rng(seed)
    low, high = model.jnt_range[:, 0], model.jnt_range[:, 1]
    q = low + (high - low) * rng.random(7)
    data.qpos[:] = q
    mujoco.mj_kinematics(model, data)
    flange = dh_flange(q)
    probe = model.body("probe").id
    np.testing.assert_allclose(data.xpos[probe], flange[:3, 3], atol=1e-6)
    # The probe is mounted turned -45 degrees about the flange axis, as the Panda hand is.
    c, s = math.cos(-math.pi / 4), math.sin(-math.pi / 4)
    mount = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    np.testing.assert_allclose(data.xmat[probe].reshape(3, 3), flange[:3, :3] @ mount, atol=1e-6)
    # ee_link is 0.106 m further along the tool axis: the centre of the pad's face.
    ee = data.xpos[model.body("ee_link").id]
    np.testing.assert_allclose(ee, flange[:3, 3] + 0.106 * flange[:3, 2], atol=1e-6)


def test_home_pose_points_the_tool_down():
    model = mujoco.MjModel.from_xml_path(str(URDF))
    data = mujoco.MjData(model)
    data.qpos[:] = scene.HOME_JOINT_POSITIONS_RAD
    mujoco.mj_forward(model, data)
    ee = model.body("ee_link").id
    np.testing.assert_allclose(data.xmat[ee].reshape(3, 3)[:, 2], [0, 0, -1], atol=1e-5)
    assert 0.25 < data.xpos[ee][0] < 0.35 and data.xpos[ee][2] > 0.4
    assert data.ncon == 0, "the arm collides with itself at home"


# ---- (b) the MuJoCo scene ----------------------------------------------------------------


def test_scene_xml_alone_loads_the_world_with_the_arm():
    with scene.quiet_empty_prefix_warning():
        model = mujoco.MjSpec.from_file(str(SCENE)).compile()
    for name in JOINTS:
        assert model.joint(name).id >= 0
    assert model.geom("table").id >= 0
    assert model.body("block").id >= 0
    assert model.body("marker").mocapid[0] >= 0
    assert model.camera("scene_cam").id >= 0
    assert model.nlight >= 1
    assert model.opt.timestep == pytest.approx(0.002)


def test_instrumented_scene_has_sites_sensors_and_motors():
    model = scene.build_model(SCENE)
    ee_site = model.site("ee_site")
    assert ee_site.bodyid[0] == model.body("ee_link").id
    for name, kind in (
        ("wrist_force", mujoco.mjtSensor.mjSENS_FORCE),
        ("wrist_torque", mujoco.mjtSensor.mjSENS_TORQUE),
    ):
        sensor = model.sensor(name)
        assert sensor.type[0] == kind and sensor.dim[0] == 3
    probe = model.body("probe").id
    face_z = []
    for r in range(4):
        for c in range(4):
            name = f"taxel_{r}_{c}"
            sensor = model.sensor(name)
            assert sensor.type[0] == mujoco.mjtSensor.mjSENS_TOUCH
            site = model.site(name)
            assert sensor.objid[0] == site.id and site.bodyid[0] == probe
            face_z.append(model.site_pos[site.id][2])
    np.testing.assert_allclose(face_z, 0.106)  # all on the pad face
    for name, (_lo, _hi, effort, _vel) in PANDA_LIMITS.items():
        actuator = model.actuator(f"{name}_motor")
        np.testing.assert_allclose(model.actuator_ctrlrange[actuator.id], [-effort, effort])
    assert model.key("home").id >= 0


def test_scene_at_home_has_no_arm_contacts():
    model = scene.build_model(SCENE)
    data = mujoco.MjData(model)
    mujoco.mj_resetDataKeyframe(model, data, model.key("home").id)
    mujoco.mj_forward(model, data)
    arm_bodies = {model.body(b).id for b in scene.ARM_BODIES}
    touching = {
        (int(model.geom_bodyid[c.geom[0]]), int(model.geom_bodyid[c.geom[1]]))
        for c in data.contact
    }
    assert not [pair for pair in touching if set(pair) & arm_bodies]


def test_missing_scene_file_names_it(tmp_path):
    with pytest.raises(scene.SceneError, match="scene file not found"):
        scene.build_model(tmp_path / "nope.xml")


# ---- (c) a plain parse of the URDF's kinematic tree ---------------------------------------


def test_urdf_tree_is_well_formed():
    root = ET.parse(URDF).getroot()
    assert root.tag == "robot"
    links = {link.get("name"): link for link in root.findall("link")}
    joints = root.findall("joint")
    children = [j.find("child").get("link") for j in joints]
    parents = [j.find("parent").get("link") for j in joints]
    assert len(children) == len(set(children)), "a link has two parent joints"
    assert set(children) | set(parents) <= set(links)
    roots = set(links) - set(children)
    assert roots == {"base"}, f"expected one root 'base', got {roots}"

    revolute = [j for j in joints if j.get("type") == "revolute"]
    assert [j.get("name") for j in revolute] == JOINTS
    for joint in revolute:
        limit = joint.find("limit")
        assert limit is not None, f"{joint.get('name')} has no <limit>"
        lower, upper, effort, velocity = (
            float(limit.get(k)) for k in ("lower", "upper", "effort", "velocity")
        )
        assert (lower, upper, effort, velocity) == pytest.approx(PANDA_LIMITS[joint.get("name")])
        axis = [float(v) for v in joint.find("axis").get("xyz").split()]
        assert axis == [0.0, 0.0, 1.0]
    others = {j.get("type") for j in joints} - {"revolute"}
    assert others == {"fixed"}

    # Walk from the root: every link is reachable, so the tree is connected.
    child_of = {}
    for joint in joints:
        child_of.setdefault(joint.find("parent").get("link"), []).append(
            joint.find("child").get("link")
        )
    seen, stack = set(), ["base"]
    while stack:
        link = stack.pop()
        seen.add(link)
        stack.extend(child_of.get(link, []))
    assert seen == set(links)
    # The chain ends in the probe and the end-effector frame.
    assert "probe" in child_of["panda_link7"] and child_of["probe"] == ["ee_link"]


def test_urdf_links_have_physical_inertials_and_primitive_geometry():
    root = ET.parse(URDF).getroot()
    frames = set()
    for link in root.findall("link"):
        name = link.get("name")
        for tag in ("visual", "collision"):
            for element in link.findall(tag):
                shape = element.find("geometry")[0].tag
                assert shape in ("box", "cylinder", "sphere"), f"{name} uses {shape}"
        inertial = link.find("inertial")
        if inertial is None:
            frames.add(name)
            continue
        mass = float(inertial.find("mass").get("value"))
        assert mass > 0
        i = {k: float(v) for k, v in inertial.find("inertia").attrib.items()}
        tensor = np.array(
            [
                [i["ixx"], i["ixy"], i["ixz"]],
                [i["ixy"], i["iyy"], i["iyz"]],
                [i["ixz"], i["iyz"], i["izz"]],
            ]
        )
        principal = np.linalg.eigvalsh(tensor)
        assert principal.min() > 0, f"{name}: inertia not positive definite"
        a, b, c = principal
        assert a + b >= c - 1e-12, f"{name}: inertia violates the triangle inequality"
    # Only the root (bolted down; KDL rejects a root inertia) and the pure ee frame lack one.
    assert frames == {"base", "ee_link"}
    masses = {
        link.get("name"): float(link.find("inertial/mass").get("value"))
        for link in root.findall("link")
        if link.find("inertial") is not None
    }
    assert 14.0 < sum(masses.values()) < 20.0  # a Panda arm weighs ~16-18 kg


def test_pad_is_four_by_four_tiles_of_three_centimetres():
    root = ET.parse(URDF).getroot()
    probe = next(link for link in root.findall("link") if link.get("name") == "probe")
    tiles = [c for c in probe.findall("collision") if (c.get("name") or "").startswith("pad_")]
    assert sorted(c.get("name") for c in tiles) == sorted(
        f"pad_{r}_{c}" for r in range(4) for c in range(4)
    )
    centres = np.array([[float(v) for v in t.find("origin").get("xyz").split()] for t in tiles])
    sizes = np.array(
        [[float(v) for v in t.find("geometry/box").get("size").split()] for t in tiles]
    )
    extent = centres[:, :2].max(axis=0) - centres[:, :2].min(axis=0) + sizes[0, :2]
    np.testing.assert_allclose(extent, [0.0295, 0.0295], atol=1e-6)
    face = centres[:, 2] + sizes[:, 2] / 2
    np.testing.assert_allclose(face, 0.106)
