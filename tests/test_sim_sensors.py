"""Simulated camera and tactile pad on a real MuJoCo model (rendered offscreen with EGL)."""

from __future__ import annotations

import threading

import mujoco
import numpy as np
import pytest

from wmpc.sim.sensors import Camera, SensorError, TactileArray

BOX_MASS_KG = 0.2
GRAVITY_M_S2 = 9.81


def pad_xml(
    drop_z_m: float = 0.05, box_x_m: float = 0.0, box_half_m: float = 0.015, n: int = 4
) -> str:
    """A fixed 8 cm pad with an n x n grid of touch sensors, a box above it and a camera.

    Also used by test_sim_audio.py: the pad and floor are named after materials (wood,
    plastic) so the audio synth can look them up.
    """
    pitch_m = 0.08 / n
    sites, sensors = [], []
    for r in range(n):
        for c in range(n):
            x, y = -0.04 + pitch_m * (c + 0.5), 0.04 - pitch_m * (r + 0.5)
            half = 0.49 * pitch_m  # touching sites would count a contact on the seam twice
            sites.append(
                f'<site name="taxel_site_{r}_{c}" type="box" pos="{x} {y} 0.01" '
                f'size="{half} {half} 0.004"/>'
            )
            sensors.append(f'<touch name="taxel_{r}_{c}" site="taxel_site_{r}_{c}"/>')
    return f"""
<mujoco model="pad_test">
  <option timestep="0.002"/>
  <asset>
    <material name="wood_table" rgba=".6 .4 .2 1"/>
    <material name="plastic_box" rgba=".2 .2 .9 1"/>
    <material name="marker" rgba="1 0 0 1" emission="1"/>
  </asset>
  <worldbody>
    <light pos="0 0 2" dir="0 0 -1"/>
    <geom name="floor" type="plane" size="1 1 .05" material="wood_table"/>
    <body name="pad" pos="0 0 0.01">
      <geom name="pad_geom" type="box" size=".04 .04 .01" rgba=".2 .2 .2 1"/>
      <geom name="pad_rim" type="box" pos="0.1 0 0" size=".03 .03 .01" rgba=".3 .3 .3 1"/>
      {"".join(sites)}
    </body>
    <body name="box" pos="{box_x_m} 0 {drop_z_m}">
      <freejoint/>
      <geom name="box_geom" type="box" size="{box_half_m} {box_half_m} {box_half_m}"
            mass="{BOX_MASS_KG}" material="plastic_box"/>
    </body>
    <body name="marker" pos="0.1 0.05 0.15">
      <geom name="marker_geom" type="sphere" size="0.01" material="marker" contype="0"
            conaffinity="0"/>
    </body>
    <camera name="scene_camera" pos="0 -0.6 0.35" xyaxes="1 0 0 0 0.5 1" fovy="50"/>
  </worldbody>
  <sensor>{"".join(sensors)}</sensor>
</mujoco>
"""


def settle(model: mujoco.MjModel, data: mujoco.MjData, steps: int = 600) -> None:
    """Step the model `steps` times (1.2 s at 2 ms: a dropped box comes to rest)."""
    for _ in range(steps):
        mujoco.mj_step(model, data)


@pytest.fixture
def scene():
    """A model and data with the box resting on the pad."""
    model = mujoco.MjModel.from_xml_string(pad_xml())
    data = mujoco.MjData(model)
    settle(model, data)
    return model, data


# ---- camera --------------------------------------------------------------------------------


@pytest.mark.parametrize("width,height", [(64, 64), (640, 480)])
def test_camera_renders_rgb8_of_configured_size(scene, width, height):
    model, data = scene
    visual_before = (model.vis.global_.offwidth, model.vis.quality.offsamples)
    camera = Camera(model, width, height, "scene_camera")
    try:
        image = camera.render(data)
        again = camera.render(data)
    finally:
        camera.close()
    camera.close()  # twice is harmless
    assert (model.vis.global_.offwidth, model.vis.quality.offsamples) == visual_before
    assert image.shape == (height, width, 3) and image.dtype == np.uint8
    assert image.flags.c_contiguous
    assert np.array_equal(image, again), "rendering the same state twice must give one image"
    assert image.std() > 5, "the image is flat: nothing was rendered"


@pytest.mark.parametrize("marker_m", [(0.1, 0.05, 0.15), (-0.12, 0.0, 0.05), (0.05, -0.2, 0.1)])
def test_camera_info_projects_a_point_onto_its_rendered_pixel(scene, marker_m):
    """The red marker's pixel centroid lies where the pinhole model puts its centre.

    Within a third of a pixel: a principal point off by half a pixel fails.
    """
    model, data = scene
    model.body_pos[model.body("marker").id] = marker_m
    mujoco.mj_forward(model, data)
    camera = Camera(model, 320, 240, "scene_camera")
    try:
        image = camera.render(data).astype(int)
        info = camera.camera_info()
    finally:
        camera.close()
    red = (image[..., 0] > 200) & (image[..., 1] < 60) & (image[..., 2] < 60)
    assert red.sum() > 20, "marker not visible in the render"
    rows, cols = np.nonzero(red)

    cam_id = model.camera("scene_camera").id
    rot = data.cam_xmat[cam_id].reshape(3, 3)  # columns: camera x right, y up, z backwards
    p_cam = rot.T @ (data.xpos[model.body("marker").id] - data.cam_xpos[cam_id])
    x_cv, y_cv, z_cv = p_cam[0], -p_cam[1], -p_cam[2]  # OpenCV: x right, y down, z forward
    u = info.fx * x_cv / z_cv + info.cx
    v = info.fy * y_cv / z_cv + info.cy
    assert (info.width, info.height) == (320, 240)
    assert cols.mean() == pytest.approx(u, abs=0.33)
    assert rows.mean() == pytest.approx(v, abs=0.33)
    assert info.matrix()[0, 0] == info.fx and info.matrix()[1, 2] == info.cy


def test_camera_renders_from_another_thread(scene):
    """An executor's worker threads take turns at the timer; rendering must follow them."""
    model, data = scene
    camera = Camera(model, 64, 48, "scene_camera")
    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def worker():
        try:
            results.append(camera.render(data))
        except BaseException as exc:  # reported in the main thread below
            errors.append(exc)

    try:
        first = camera.render(data)
        for _ in range(2):
            thread = threading.Thread(target=worker)
            thread.start()
            thread.join()
    finally:
        camera.close()
    assert not errors, f"render from a second thread failed: {errors[0]!r}"
    assert all(np.array_equal(first, r) for r in results)


def test_submitted_frame_shows_the_instant_it_was_captured(scene):
    """Frames draw on the render thread while physics moves on; each shows its own instant."""
    model, data = scene
    camera = Camera(model, 64, 48, "scene_camera")
    seen: list[np.ndarray] = []
    try:
        before = camera.render(data)
        pending = [camera.submit(data, seen.append)]
        data.qpos[0] += 0.02  # slide the box (its free joint's x) and capture again
        mujoco.mj_forward(model, data)
        pending.append(camera.submit(data, seen.append))
        after = camera.render(data)
        frames = [p.result() for p in pending]
    finally:
        camera.close()
    assert not np.array_equal(before, after), "the box moved: the view must change"
    assert np.array_equal(frames[0], before) and np.array_equal(frames[1], after)
    # Callbacks run in submission order, with the pixels result() returns.
    assert len(seen) == 2 and all(a is b for a, b in zip(seen, frames, strict=True))


def test_closed_camera_refuses_to_render(scene):
    model, data = scene
    camera = Camera(model, 32, 24, "scene_camera")
    pending = camera.submit(data)
    camera.close()  # finishes the frame in flight first
    assert pending.done() and pending.result().shape == (24, 32, 3)
    with pytest.raises(SensorError, match="closed"):
        camera.render(data)


def test_camera_unknown_name_is_named(scene):
    model, _ = scene
    with pytest.raises(SensorError, match=r"no camera named 'wrist'.*scene_camera"):
        Camera(model, 64, 64, "wrist")


# ---- tactile -------------------------------------------------------------------------------


def test_tactile_shape_dtype_and_resting_load(scene):
    """A box at rest on the pad: normal forces add up to its weight, no net shear."""
    model, data = scene
    pad = TactileArray(model, 4, 4, 0.0, np.random.default_rng(0))
    taxels = pad.read(data)
    assert taxels.shape == (4, 4, 3) and taxels.dtype == np.float32
    assert np.isfinite(taxels).all()
    assert taxels[..., 2].sum() == pytest.approx(BOX_MASS_KG * GRAVITY_M_S2, rel=0.02)
    assert abs(taxels[..., 0].sum()) < 0.01 and abs(taxels[..., 1].sum()) < 0.01
    assert (taxels[..., 2] >= 0).all(), "touch sensors report pressing force only"


def test_tactile_shear_follows_a_tangential_push(scene):
    """Pushing the resting box along +x (below the friction limit) drags the pad along +x."""
    model, data = scene
    pad = TactileArray(model, 4, 4, 0.0, np.random.default_rng(0))
    push_n = 0.5
    data.xfrc_applied[model.body("box").id, :3] = [push_n, 0.0, 0.0]
    settle(model, data, 300)
    taxels = pad.read(data)
    assert taxels[..., 0].sum() == pytest.approx(push_n, rel=0.05)
    assert abs(taxels[..., 1].sum()) < 0.02
    assert taxels[..., 2].sum() == pytest.approx(BOX_MASS_KG * GRAVITY_M_S2, rel=0.02)


def test_tactile_localises_the_contact():
    """A small box resting on the +x half loads the taxels of columns 2 and 3 only."""
    model = mujoco.MjModel.from_xml_string(pad_xml(drop_z_m=0.032, box_x_m=0.02, box_half_m=0.01))
    data = mujoco.MjData(model)
    settle(model, data)
    normal = TactileArray(model, 4, 4, 0.0, np.random.default_rng(0)).read(data)[..., 2]
    assert normal[:, 2:].sum() > 0.95 * normal.sum() > 0


def test_tactile_ignores_contacts_outside_the_taxels():
    """A box pushed on another geom of the pad's body (outside every taxel) is not felt."""
    model = mujoco.MjModel.from_xml_string(pad_xml(box_x_m=0.1))
    data = mujoco.MjData(model)
    data.xfrc_applied[model.body("box").id, :3] = [0.5, 0.0, 0.0]
    settle(model, data)
    assert data.ncon > 0, "the box should rest on the pad's rim"
    taxels = TactileArray(model, 4, 4, 0.0, np.random.default_rng(0)).read(data)
    assert np.abs(taxels).max() == 0.0


def test_tactile_noise_is_seeded_and_sized(scene):
    model, data = scene
    reads = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        pad = TactileArray(model, 4, 4, 0.05, np.random.default_rng(seed))
        reads[name] = np.stack([pad.read(data) for _ in range(50)])
    assert np.array_equal(reads["a"], reads["b"]), "same seed must give bit-identical readings"
    assert not np.array_equal(reads["a"], reads["c"])
    noise = reads["a"] - reads["a"].mean(axis=0)
    assert noise.std() == pytest.approx(0.05, rel=0.15)


def test_tactile_missing_taxels_are_named(scene):
    model, _ = scene
    with pytest.raises(SensorError, match=r"lacks 9 of 25 touch sensors.*taxel_0_4"):
        TactileArray(model, 5, 5, 0.0, np.random.default_rng(0))
