"""camera_node: OpenCV capture from a V4L2 device or a video file -> /camera/image_raw (rgb8).

Every image goes out with a /camera/camera_info of the same stamp, loaded from a
camera_calibration_parsers YAML (`calibration_file`), or all-zero intrinsics (the ROS sign of
an uncalibrated camera) without one. A size or rate the device cannot give is published as
the device gives it and reported in the log and /diagnostics; frame drops are counted there.
"""

from __future__ import annotations

import sys

from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image

from wmpc.codecs import numpy_to_image, s_to_stamp
from wmpc.config import CameraConfig
from wmpc.drivers.calibration import CameraCalibration
from wmpc.drivers.camera import CameraDriver
from wmpc.nodes.common import (
    SENSOR_QOS,
    declare_config,
    now_s,
    report_health,
    run_node_with_option,
)
from wmpc.types import ImageFrame

IMAGE_TOPIC = "/camera/image_raw"
INFO_TOPIC = "/camera/camera_info"


def camera_info_msg(calibration: CameraCalibration, frame_id: str) -> CameraInfo:
    """sensor_msgs/CameraInfo for `calibration` (the stamp is set per image)."""
    msg = CameraInfo()
    msg.header.frame_id = frame_id
    msg.width, msg.height = calibration.width, calibration.height
    msg.distortion_model = calibration.distortion_model
    msg.d = [float(v) for v in calibration.distortion]
    msg.k = [float(v) for v in calibration.camera_matrix.reshape(-1)]
    msg.r = [float(v) for v in calibration.rectification.reshape(-1)]
    msg.p = [float(v) for v in calibration.projection.reshape(-1)]
    return msg


class CameraNode(Node):
    """Camera driver: publishes images with matching camera_info and reports at 1 Hz."""

    def __init__(self, **kwargs):
        super().__init__("camera_node", **kwargs)
        self.config = c = declare_config(self, CameraConfig)
        self._image_publisher = self.create_publisher(Image, IMAGE_TOPIC, SENSOR_QOS)
        self._info_publisher = self.create_publisher(CameraInfo, INFO_TOPIC, SENSOR_QOS)
        # Construction opens the source and raises CameraError/CalibrationError naming it.
        self.driver = d = CameraDriver(c, self._publish, clock=lambda: now_s(self))
        self._info = camera_info_msg(d.calibration, c.frame_id)
        for note in d.notes:
            self.get_logger().warning(f"camera {c.source}: {note}")
        if not d.calibration.calibrated:
            self.get_logger().warning(
                "no 'calibration_file': camera_info carries zero intrinsics (uncalibrated)"
            )
        report_health(self, "camera", c.source, d.health)
        d.start()
        self.get_logger().info(
            f"publishing {d.width}x{d.height} at {d.fps:g} fps from {d.kind} {c.source} "
            f"on {IMAGE_TOPIC}"
        )

    def _publish(self, frame: ImageFrame) -> None:
        """Called on the driver's reader thread for each frame."""
        image = numpy_to_image(frame.pixels, "rgb8", frame.stamp_s, frame.frame_id)
        self._info.header.stamp = s_to_stamp(frame.stamp_s)
        self._image_publisher.publish(image)
        self._info_publisher.publish(self._info)

    def close(self) -> None:
        """Stop the reader thread and release the capture."""
        self.driver.stop()


def main(argv: list[str] | None = None) -> int:
    """Entry point of `camera_node [--source DEVICE_OR_FILE] [--ros-args ...]`."""
    return run_node_with_option(
        lambda overrides: CameraNode(parameter_overrides=overrides),
        "source",
        "source",
        "V4L2 device, device index or video file",
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
