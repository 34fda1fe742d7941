"""Camera capture without ROS: OpenCV VideoCapture from a V4L2 device or a video file.

The requested size and frame rate are asked of a device, then read back; what the device
actually gives is what gets published, and any difference is reported (logged once and kept
in `notes` for diagnostics), never silently replaced. A video file is a source that gives its
own size and rate, and is played in real time: frame i is released at start + i / fps and
stamped so. Frames are dropped (and counted) when the consumer falls behind, as a camera
drops them; for a device, drops are gaps of more than 1.5 frame periods between reads.
"""

from __future__ import annotations

import glob
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from wmpc.config import CameraConfig, ConfigError
from wmpc.drivers.calibration import CameraCalibration, load_camera_calibration
from wmpc.types import ImageFrame

log = logging.getLogger(__name__)

# Reads in a row that may fail before a device counts as lost and is reopened.
MAX_FAILED_READS = 30
REOPEN_MIN_S, REOPEN_MAX_S = 0.5, 5.0


class CameraError(ConfigError):
    """The camera source cannot be opened or disagrees with its calibration."""


def classify_source(source: str) -> tuple[str, int | str]:
    """('device', index or /dev path) or ('file', path) for parameter 'source'."""
    source = source.strip()
    if source.isdigit():
        return "device", int(source)
    if source.startswith("/dev/"):
        return "device", source
    return "file", source


def video_devices() -> list[str]:
    """The V4L2 device nodes present on this machine."""
    return sorted(glob.glob("/dev/video*"))


class CameraDriver:
    """Reads frames on its own thread and hands rgb8 ImageFrames to `sink`.

    Construction opens the source and raises CameraError naming the parameter when it cannot;
    `calibration` is what /camera/camera_info should carry, checked against the frame size.
    """

    def __init__(
        self,
        config: CameraConfig,
        sink: Callable[[ImageFrame], None],
        clock: Callable[[], float] = time.time,
    ):
        self.config = config
        self._sink = sink
        self._clock = clock
        self.kind, self._target = classify_source(config.source)
        self.published = 0
        self.dropped = 0
        self.read_failures = 0
        self.reopens = 0
        self.wrong_size = 0
        self.sink_errors = 0
        self.finished = False
        self.connected = False
        self.last_error = ""
        self.notes: list[str] = []  # differences between what was asked and what is given
        self._last_frame_mono: float | None = None
        self._started_mono = time.monotonic()
        self._health_mark = (time.monotonic(), 0)
        self._stop = threading.Event()
        self._cap = self._open()
        self.width = int(self._cap.get(self._cv2.CAP_PROP_FRAME_WIDTH))
        self.height = int(self._cap.get(self._cv2.CAP_PROP_FRAME_HEIGHT))
        self.fps = self._check_format()
        if config.calibration_file:
            self.calibration = load_camera_calibration(config.calibration_file)
            self.calibration.check_size(self.width, self.height)
        else:
            self.calibration = CameraCalibration.uncalibrated(self.width, self.height)
        self._thread = threading.Thread(target=self._run, name="camera_reader", daemon=True)

    # ---- opening -----------------------------------------------------------------------------

    @property
    def _cv2(self) -> Any:
        import cv2

        return cv2

    def _open(self) -> Any:
        """Open the source and request size, rate and pixel format from a device."""
        cv2 = self._cv2
        source = self.config.source
        if self.kind == "file":
            if not Path(self._target).is_file():
                raise CameraError(f"parameter 'source' = '{source}': video file not found")
            cap = cv2.VideoCapture(str(self._target))
            if not cap.isOpened():
                raise CameraError(
                    f"parameter 'source' = '{source}': OpenCV cannot decode this video file"
                )
            self.connected = True
            return cap
        present = video_devices()
        if isinstance(self._target, str) and not Path(self._target).exists():
            raise CameraError(
                f"parameter 'source' = '{source}': no such device; video devices here: "
                f"{present or 'none'}"
            )
        cap = cv2.VideoCapture(self._target, cv2.CAP_V4L2)
        if not cap.isOpened():
            raise CameraError(
                f"parameter 'source' = '{source}': cannot open the V4L2 device (busy, or this "
                f"user is not in the 'video' group?); video devices here: {present or 'none'}"
            )
        if self.config.fourcc:
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*self.config.fourcc))
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.config.width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.config.height)
        cap.set(cv2.CAP_PROP_FPS, self.config.fps)
        # Keep the driver's queue short: a deep queue hands out stale frames.
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        self.connected = True
        return cap

    def _check_format(self) -> float:
        """Compare what the source gives with what was asked; the rate to run at."""
        cfg = self.config
        given_fps = float(self._cap.get(self._cv2.CAP_PROP_FPS))
        if (self.width, self.height) != (cfg.width, cfg.height):
            self._note(
                f"requested {cfg.width}x{cfg.height} but the {self.kind} gives "
                f"{self.width}x{self.height}; publishing {self.width}x{self.height}"
            )
        if not np.isfinite(given_fps) or given_fps <= 0:
            self._note(
                f"the {self.kind} does not report its frame rate; assuming the requested "
                f"{cfg.fps:g} fps"
            )
            return cfg.fps
        if abs(given_fps - cfg.fps) > 0.01 * cfg.fps:
            self._note(
                f"requested {cfg.fps:g} fps but the {self.kind} gives {given_fps:g} fps; "
                f"publishing at {given_fps:g} fps"
            )
        return given_fps

    def _note(self, text: str) -> None:
        self.notes.append(text)
        log.warning("camera %s: %s", self.config.source, text)

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the reader thread."""
        self._started_mono = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        """Stop the reader thread; it releases the capture itself."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=3.0)
        if not self._thread.is_alive() and self._cap is not None:
            self._cap.release()
            self._cap = None

    def _emit(self, bgr: np.ndarray, stamp_s: float) -> None:
        if bgr.shape[:2] != (self.height, self.width):
            # camera_info describes width x height; a frame of another size would lie about it.
            self.wrong_size += 1
            return
        rgb = self._cv2.cvtColor(bgr, self._cv2.COLOR_BGR2RGB)
        try:
            self._sink(ImageFrame(stamp_s, rgb, "rgb8", self.config.frame_id))
        except Exception:  # the reader must outlive a failing consumer
            self.sink_errors += 1
            log.exception("camera frame consumer failed")
            return
        self.published += 1
        self._last_frame_mono = time.monotonic()

    def _run(self) -> None:
        if self.kind == "file":
            self._run_file()
        else:
            self._run_device()

    # ---- file source ---------------------------------------------------------------------

    def _read_file(self, decode: bool) -> np.ndarray | bool | None:
        """Next frame (or True when only grabbed); None at the end of a non-looping file."""
        for _ in range(2):  # at most one rewind per call: an empty file must not spin
            if decode:
                ok, bgr = self._cap.read()
                if ok:
                    return bgr
            elif self._cap.grab():
                return True
            if not self.config.loop:
                return None
            self._cap.set(self._cv2.CAP_PROP_POS_FRAMES, 0)
        return None

    def _run_file(self) -> None:
        period_s = 1.0 / self.fps
        start_stamp_s = self._clock()
        start_mono = time.monotonic()
        i = 0
        while not self._stop.is_set():
            late_s = time.monotonic() - (start_mono + i * period_s)
            if late_s < 0:
                if self._stop.wait(-late_s):
                    break
            elif late_s > period_s:
                # Behind by whole frames: skip them (undecoded) as a camera would drop them.
                skip = int(late_s / period_s)
                for _ in range(skip):
                    if self._read_file(decode=False) is None:
                        break
                self.dropped += skip
                i += skip
                continue
            bgr = self._read_file(decode=True)
            if bgr is None:
                self.finished = True
                log.info("camera: finished playing %s", self.config.source)
                break
            self._emit(bgr, start_stamp_s + i * period_s)
            i += 1

    # ---- device source -------------------------------------------------------------------

    def _reopen(self) -> None:
        """Release a failing device and reopen it with backoff until it works or we stop."""
        self.connected = False
        self._cap.release()
        wait_s = REOPEN_MIN_S
        while not self._stop.wait(wait_s):
            try:
                self._cap = self._open()
            except CameraError as exc:
                self.last_error = str(exc)
                wait_s = min(wait_s * 2.0, REOPEN_MAX_S)
                continue
            self.reopens += 1
            return

    def _run_device(self) -> None:
        period_s = 1.0 / self.fps
        failed_in_row = 0
        last_mono: float | None = None
        while not self._stop.is_set():
            ok, bgr = self._cap.read()
            received_s = self._clock()
            now_mono = time.monotonic()
            if not ok:
                self.read_failures += 1
                failed_in_row += 1
                if failed_in_row >= MAX_FAILED_READS:
                    self.last_error = f"{failed_in_row} reads in a row failed"
                    log.error("camera %s: %s; reopening", self.config.source, self.last_error)
                    self._reopen()
                    failed_in_row, last_mono = 0, None
                else:
                    self._stop.wait(0.01)
                continue
            failed_in_row = 0
            if last_mono is not None:
                gap_periods = (now_mono - last_mono) / period_s
                if gap_periods > 1.5:
                    self.dropped += round(gap_periods) - 1
            last_mono = now_mono
            self._emit(bgr, received_s - self.config.latency_s)

    # ---- reporting -------------------------------------------------------------------------

    def health(self) -> tuple[str, str, dict[str, str]]:
        """(level 'OK'/'WARN'/'ERROR', message, counters) for diagnostics."""
        now = time.monotonic()
        mark_time, mark_published = self._health_mark
        self._health_mark = (now, self.published)
        measured_fps = (self.published - mark_published) / max(now - mark_time, 1e-9)
        cfg = self.config
        values = {
            "source": cfg.source,
            "kind": self.kind,
            "requested": f"{cfg.width}x{cfg.height} @ {cfg.fps:g} fps",
            "given": f"{self.width}x{self.height} @ {self.fps:g} fps",
            "measured_fps": f"{measured_fps:.1f}",
            "published": str(self.published),
            "dropped": str(self.dropped),
            "read_failures": str(self.read_failures),
            "reopens": str(self.reopens),
            "wrong_size": str(self.wrong_size),
            "sink_errors": str(self.sink_errors),
            "calibration": cfg.calibration_file or "uncalibrated",
        }
        if not self.connected:
            return "ERROR", f"camera {cfg.source} lost ({self.last_error}); reopening", values
        if self.finished:
            return "OK", f"finished playing {cfg.source}", values
        if self._stop.is_set():
            return "WARN", "driver stopped", values
        last = self._last_frame_mono if self._last_frame_mono is not None else self._started_mono
        if now - last > cfg.stale_after_s:
            return "WARN", f"no frame for {now - last:.1f} s", values
        if self.notes:
            return "WARN", "; ".join(self.notes), values
        return "OK", "streaming", values
