"""Simulated camera and tactile pad on a MuJoCo model (no ROS).

Both work on any model that has the named parts: a camera, and touch sensors named
`taxel_<row>_<col>` on sites of one pad body. The world builds them; the sim node and the
episode runner only see their arrays.
"""

from __future__ import annotations

import atexit
import logging
import math
import queue
import threading
import weakref
from collections.abc import Callable
from typing import NamedTuple

import mujoco
import numpy as np

from wmpc.errors import WmpcError

log = logging.getLogger(__name__)


class SensorError(WmpcError, ValueError):
    """A simulated sensor cannot be built on this model; the message names the missing part."""


class CameraIntrinsics(NamedTuple):
    """Pinhole intrinsics in pixels (OpenCV convention: pixel centres at integer coordinates)."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def matrix(self) -> np.ndarray:
        """The 3x3 camera matrix K."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])


def camera_intrinsics(
    model: mujoco.MjModel, camera_name: str, width: int, height: int
) -> CameraIntrinsics:
    """Pinhole intrinsics of a MuJoCo camera rendered at width x height.

    MuJoCo cameras have square pixels and a vertical field of view `fovy`; the optical axis
    passes through the centre of the image, which lies between pixel centres when a side is
    even: (size - 1) / 2 with pixel centres at integer coordinates.
    """
    camera_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera_name)
    if camera_id < 0:
        names = [
            mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(model.ncam)
        ]
        raise SensorError(f"model has no camera named '{camera_name}'; it has {names}")
    if np.any(model.cam_sensorsize[camera_id] > 0):
        raise SensorError(
            f"camera '{camera_name}' is defined by sensorsize/focal; give it a fovy instead "
            "so its intrinsics follow from the vertical field of view"
        )
    fovy_rad = math.radians(float(model.cam_fovy[camera_id]))
    focal_px = 0.5 * height / math.tan(0.5 * fovy_rad)
    return CameraIntrinsics(
        fx=focal_px,
        fy=focal_px,
        cx=0.5 * (width - 1),
        cy=0.5 * (height - 1),
        width=int(width),
        height=int(height),
    )


class PendingFrame:
    """A camera frame captured at one instant and being drawn on the camera's render thread."""

    def __init__(self, on_done: Callable[[np.ndarray], None] | None = None) -> None:
        self._ready = threading.Event()
        self._pixels: np.ndarray | None = None
        self._error: BaseException | None = None
        self._on_done = on_done

    def done(self) -> bool:
        """True once the pixels (or the error that stopped them) are there."""
        return self._ready.is_set()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the frame is drawn and its callback has run; False on timeout."""
        return self._ready.wait(timeout_s)

    def result(self, timeout_s: float | None = None) -> np.ndarray:
        """The (height, width, 3) uint8 RGB image, top row first; waits for the render."""
        if not self._ready.wait(timeout_s):
            raise SensorError(f"the camera frame was not rendered within {timeout_s} s")
        if self._error is not None:
            raise SensorError(f"rendering the camera frame failed: {self._error}")
        return self._pixels

    def _finish(self, pixels: np.ndarray | None, error: BaseException | None) -> None:
        """Called on the render thread: store the outcome, run the callback, wake waiters."""
        self._pixels, self._error = pixels, error
        try:
            if error is None and self._on_done is not None:
                self._on_done(pixels)
        except Exception:
            # The callback's failure is its owner's to report; the render thread goes on.
            log.exception("a camera frame's on_done callback failed")
        finally:
            self._ready.set()


def _stop_render_threads() -> None:
    """At interpreter exit: finish and free every render thread before EGL shuts down.

    Registered after the first OpenGL context exists, so it runs before mujoco.egl's own
    exit handler (last registered, first run); a frame still drawing when EGL terminates
    would crash the process.
    """
    for renderer in list(_RENDER_THREADS):
        renderer.stop()


_RENDER_THREADS: weakref.WeakSet = weakref.WeakSet()


class _RenderThread:
    """Owns one OpenGL context and draws captured scenes in the order they come.

    Holds no reference to its Camera, so an unclosed Camera can still be collected (its
    finaliser stops this thread).
    """

    def __init__(
        self, model: mujoco.MjModel, width: int, height: int, antialias: bool, name: str
    ) -> None:
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()  # (scene, frame) or None to stop
        self.free_scenes: queue.SimpleQueue = queue.SimpleQueue()
        self._rect = mujoco.MjrRect(0, 0, width, height)
        self._buffer = np.empty((height, width, 3), dtype=np.uint8)
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self.thread = threading.Thread(
            target=self._run,
            args=(model, width, height, antialias),
            name=f"render {name}",
            daemon=True,
        )
        self.thread.start()
        self._started.wait()
        if self._start_error is not None:
            self.thread.join()
            raise SensorError(
                f"cannot make an offscreen OpenGL context for camera '{name}' "
                f"(MUJOCO_GL=egl needs libEGL): {self._start_error}"
            )
        if not _RENDER_THREADS:
            atexit.unregister(_stop_render_threads)
            atexit.register(_stop_render_threads)
        _RENDER_THREADS.add(self)

    def _run(self, model: mujoco.MjModel, width: int, height: int, antialias: bool) -> None:
        try:
            gl, context = self._make_context(model, width, height, antialias)
        except Exception as exc:  # reported by __init__ on the caller's thread
            self._start_error = exc
            self._started.set()
            return
        self._started.set()
        # The context stays current on this thread for its whole life: switching it per frame
        # costs more than drawing a small frame.
        try:
            while (job := self.jobs.get()) is not None:
                scene, frame = job
                try:
                    mujoco.mjr_render(self._rect, scene, context)
                    mujoco.mjr_readPixels(self._buffer, None, self._rect, context)
                    # OpenGL's first row is the bottom of the image.
                    pixels, error = np.ascontiguousarray(self._buffer[::-1]), None
                except Exception as exc:  # handed to whoever waits for this frame
                    pixels, error = None, exc
                self.free_scenes.put(scene)
                frame._finish(pixels, error)
        finally:
            context.free()
            gl.free()

    @staticmethod
    def _make_context(model: mujoco.MjModel, width: int, height: int, antialias: bool):
        # The offscreen framebuffer's size and multisampling are read when the render context
        # is made: set them for this camera only, and leave the model as it was.
        visual = model.vis
        saved = (visual.global_.offwidth, visual.global_.offheight, visual.quality.offsamples)
        visual.global_.offwidth = max(saved[0], width)
        visual.global_.offheight = max(saved[1], height)
        # Multisampling quadruples the fragment work of software rendering (EGL on the CPU
        # here) and about doubles the time per frame at any size.
        visual.quality.offsamples = saved[2] if antialias else 0
        gl = mujoco.GLContext(width, height)
        try:
            gl.make_current()
            context = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_100)
            mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, context)
        except Exception:
            gl.free()
            raise
        finally:
            visual.global_.offwidth, visual.global_.offheight = saved[:2]
            visual.quality.offsamples = saved[2]
        return gl, context

    def stop(self) -> None:
        """Draw what is queued, then free the OpenGL resources and end the thread."""
        if self.thread.is_alive():
            self.jobs.put(None)
            # A camera collected by a frame's own callback: the thread ends by itself.
            if threading.current_thread() is not self.thread:
                self.thread.join()


class Camera:
    """An RGB camera rendered offscreen from a named MuJoCo camera, on a render thread.

    `submit(data)` captures the view of the current state (mjv_updateScene copies every
    geom's pose into a scene, a few microseconds) and returns a PendingFrame; the render
    thread draws that scene while the caller steps physics on (MuJoCo's render calls release
    the GIL). The pixels are those a render on the spot gives: the thread draws exactly the
    captured scene. `render(data)` is submit and wait, and may be called from any thread.
    At most `max_in_flight` frames wait to be drawn; `submit` blocks for a free slot.
    """

    def __init__(
        self,
        model: mujoco.MjModel,
        width: int = 640,
        height: int = 480,
        camera_name: str = "scene_camera",
        *,
        shadows: bool = False,
        antialias: bool = False,
        max_in_flight: int = 2,
    ):
        if width <= 0 or height <= 0:
            raise SensorError(f"camera size must be positive, got {width}x{height}")
        if max_in_flight < 1:
            raise SensorError(f"camera max_in_flight must be >= 1, got {max_in_flight}")
        camera_intrinsics(model, camera_name, width, height)  # checks the camera
        self._camera_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera_name)
        self.camera_name = camera_name
        self.width = int(width)
        self.height = int(height)
        self._model = model
        self._option = mujoco.MjvOption()
        self._camera = mujoco.MjvCamera()
        self._camera.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self._camera.fixedcamid = self._camera_id
        self._capture_lock = threading.Lock()
        self._last_frame: PendingFrame | None = None
        self._renderer: _RenderThread | None = _RenderThread(
            model, self.width, self.height, antialias, camera_name
        )
        for _ in range(max_in_flight):
            scene = mujoco.MjvScene(model, maxgeom=max(1000, 4 * model.ngeom))
            # Shadow maps and reflections cost ~25 ms a frame at any image size in software
            # rendering; they carry no information the world model needs.
            scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = shadows
            scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = shadows
            self._renderer.free_scenes.put(scene)
        # An unclosed camera still stops its thread when collected; at interpreter exit the
        # daemon thread just ends with the process.
        self._finalizer = weakref.finalize(self, self._renderer.stop)
        self._finalizer.atexit = False

    def submit(
        self, data: mujoco.MjData, on_done: Callable[[np.ndarray], None] | None = None
    ) -> PendingFrame:
        """Capture the view of `data` now and draw it on the render thread.

        `on_done(pixels)`, if given, runs on the render thread as soon as the frame is drawn
        (frames finish in the order they were submitted).
        """
        renderer = self._renderer
        if renderer is None:
            raise SensorError(f"camera '{self.camera_name}' was closed")
        frame = PendingFrame(on_done)
        with self._capture_lock:
            scene = self._free_scene(renderer)
            mujoco.mjv_updateScene(
                self._model,
                data,
                self._option,
                None,
                self._camera,
                mujoco.mjtCatBit.mjCAT_ALL,
                scene,
            )
            renderer.jobs.put((scene, frame))
            self._last_frame = frame
        return frame

    def _free_scene(self, renderer: _RenderThread) -> mujoco.MjvScene:
        """A scene no queued frame uses; waits while `max_in_flight` frames are queued."""
        while True:
            try:
                return renderer.free_scenes.get(timeout=1.0)
            except queue.Empty:
                if not renderer.thread.is_alive():
                    raise SensorError(
                        f"the render thread of camera '{self.camera_name}' has stopped"
                    ) from None

    def render(self, data: mujoco.MjData) -> np.ndarray:
        """The current view as a new (height, width, 3) uint8 RGB array, top row first."""
        return self.submit(data).result()

    def wait(self) -> None:
        """Block until every submitted frame is drawn and its callback has run."""
        frame = self._last_frame  # frames finish in order: the last one finishes last
        if frame is not None:
            frame.wait()

    def camera_info(self) -> CameraIntrinsics:
        """Intrinsics that match `render`."""
        return camera_intrinsics(self._model, self.camera_name, self.width, self.height)

    def close(self) -> None:
        """Finish the frames in flight, then free the OpenGL resources; safe to call twice."""
        if self._renderer is not None:
            self._renderer = None
            self._finalizer()


class TactileArray:
    """A rows x cols taxel grid on a pad: per taxel (shear x, shear y, normal) in newtons.

    Normal force comes from MuJoCo touch sensors `taxel_<r>_<c>` (their sites tile the pad).
    Shear is the tangential contact force on the pad's geoms, resolved in the pad frame (the
    frame of site `taxel_0_0`, z out of the pad) and shared among the taxels nearest to each
    contact point with Gaussian weights one half-pitch wide. Gaussian noise is added per
    channel from `rng`, so a seeded generator gives bit-identical readings.
    """

    def __init__(
        self,
        model: mujoco.MjModel,
        rows: int = 4,
        cols: int = 4,
        noise_std_n: float = 0.02,
        rng: np.random.Generator | None = None,
    ):
        if rows <= 0 or cols <= 0:
            raise SensorError(f"taxel grid must be at least 1x1, got {rows}x{cols}")
        if not math.isfinite(noise_std_n) or noise_std_n < 0:
            raise SensorError(f"tactile noise_std_n must be >= 0, got {noise_std_n}")
        if rng is None:
            raise SensorError("TactileArray needs a numpy Generator (rng) for its noise")
        self.rows, self.cols = int(rows), int(cols)
        self.noise_std_n = float(noise_std_n)
        self._model = model
        self._rng = rng

        names = [f"taxel_{r}_{c}" for r in range(self.rows) for c in range(self.cols)]
        sensor_ids = [mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SENSOR, n) for n in names]
        missing = [n for n, i in zip(names, sensor_ids, strict=True) if i < 0]
        if missing:
            raise SensorError(
                f"model lacks {len(missing)} of {len(names)} touch sensors for a "
                f"{self.rows}x{self.cols} pad, e.g. {missing[:3]}; name them taxel_<row>_<col>"
            )
        not_touch = [
            n
            for n, i in zip(names, sensor_ids, strict=True)
            if model.sensor_type[i] != mujoco.mjtSensor.mjSENS_TOUCH
        ]
        if not_touch:
            raise SensorError(f"sensors {not_touch[:3]} must be <touch> sensors")
        self._sensor_adr = np.array([model.sensor_adr[i] for i in sensor_ids])
        self._site_ids = np.array([model.sensor_objid[i] for i in sensor_ids])
        bodies = set(model.site_bodyid[self._site_ids].tolist())
        if len(bodies) != 1:
            raise SensorError(f"taxel sites must all be on one pad body, found bodies {bodies}")
        self.pad_body_id = bodies.pop()
        self._pad_geoms = np.flatnonzero(model.geom_bodyid == self.pad_body_id)
        if self._pad_geoms.size == 0:
            raise SensorError("the pad body that holds the taxel sites has no geom to touch")
        # Lookup table geom id -> on the pad: far cheaper than np.isin at 200 reads a second.
        self._geom_on_pad = np.zeros(model.ngeom, dtype=bool)
        self._geom_on_pad[self._pad_geoms] = True
        self._sigma_m = 0.5 * _pitch_m(model, self._site_ids)
        # A flat pad: every taxel site shares the frame of taxel_0_0.
        self._half_extent_m = np.array([_half_extents_m(model, s) for s in self._site_ids])
        self._force6 = np.zeros(6)

    def read(self, data: mujoco.MjData) -> np.ndarray:
        """(rows, cols, 3) float32: shear x, shear y and normal force per taxel, with noise."""
        n_taxels = self.rows * self.cols
        shear_pad = np.zeros((n_taxels, 2))
        if data.ncon:
            contact = data.contact
            on_pad = self._geom_on_pad[contact.geom[: data.ncon]]  # (ncon, 2)
            hits = np.flatnonzero(on_pad[:, 0] | on_pad[:, 1])
            if hits.size:
                pad_rot = data.site_xmat[self._site_ids[0]].reshape(3, 3)
                centres_m = data.site_xpos[self._site_ids]  # (N, 3)
                contact_pos_m, contact_frames = contact.pos, contact.frame
                for i in hits.tolist():
                    # Only contacts inside a taxel's volume are felt, as the touch sensors
                    # decide for the normal force: a push on the probe's shaft is not.
                    offset_pad = (contact_pos_m[i] - centres_m) @ pad_rot  # (N, 3)
                    if not (np.abs(offset_pad) <= self._half_extent_m).all(axis=1).any():
                        continue
                    # The contact frame's normal points from geom1 to geom2, and the force it
                    # reports acts on geom2; the pad feels the opposite when it is geom1.
                    sign = 1.0 if on_pad[i, 1] else -1.0
                    mujoco.mj_contactForce(self._model, data, i, self._force6)
                    frame = contact_frames[i].reshape(3, 3)
                    force_pad = pad_rot.T @ (sign * frame.T @ self._force6[:3])
                    dist2 = offset_pad[:, 0] ** 2 + offset_pad[:, 1] ** 2
                    weights = np.exp(-0.5 * (dist2 - dist2.min()) / self._sigma_m**2)
                    shear_pad += np.outer(weights / weights.sum(), force_pad[:2])
        taxels = np.empty((n_taxels, 3))
        taxels[:, :2] = shear_pad
        taxels[:, 2] = data.sensordata[self._sensor_adr]
        if self.noise_std_n > 0:
            taxels += self._rng.normal(0.0, self.noise_std_n, size=taxels.shape)
        return taxels.reshape(self.rows, self.cols, 3).astype(np.float32)


def _half_extents_m(model: mujoco.MjModel, site_id: int) -> np.ndarray:
    """Half extents of a site's bounding box along its own axes."""
    size = model.site_size[site_id]
    kind = model.site_type[site_id]
    if kind == mujoco.mjtGeom.mjGEOM_SPHERE:
        return np.full(3, size[0])
    if kind == mujoco.mjtGeom.mjGEOM_CAPSULE:
        return np.array([size[0], size[0], size[1] + size[0]])
    if kind == mujoco.mjtGeom.mjGEOM_CYLINDER:
        return np.array([size[0], size[0], size[1]])
    return size.copy()  # box and ellipsoid


def _pitch_m(model: mujoco.MjModel, site_ids: np.ndarray) -> float:
    """Smallest distance between taxel site centres (the site size for a single taxel)."""
    positions = model.site_pos[site_ids]
    if len(site_ids) == 1:
        return float(2.0 * model.site_size[site_ids[0]][0])
    deltas = positions[:, None, :] - positions[None, :, :]
    dists = np.linalg.norm(deltas, axis=-1)
    return float(dists[dists > 0].min())
