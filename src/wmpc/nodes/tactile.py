"""tactile_node: a magnetometer skin on a serial port -> /tactile/image (32FC3).

Publishes one row per chip by default (5 x 1 x 3 for ReSkin/AnySkin), xyz minus the baseline,
stamped with the host receive time minus `latency_s`. The serial port is read on the driver's
own thread, so nothing here blocks the executor; the port is reopened with backoff when it
disappears, and /diagnostics says ERROR meanwhile.

Services: ~/calibrate (std_srvs/Trigger) averages the next `calibration_frames` frames into a
new baseline; keep the skin unloaded while it runs (progress in /diagnostics).
"""

from __future__ import annotations

import sys

from rclpy.node import Node
from sensor_msgs.msg import Image
from std_srvs.srv import Trigger

from wmpc.codecs import tactile_to_msg
from wmpc.config import TactileConfig
from wmpc.drivers.tactile_serial import TactileSerialDriver
from wmpc.nodes.common import (
    SENSOR_QOS,
    declare_config,
    log_at_level,
    now_s,
    report_health,
    run_node_with_option,
)
from wmpc.types import TactileFrame

TOPIC = "/tactile/image"


class TactileNode(Node):
    """Serial skin driver: publishes taxel images, serves ~/calibrate, reports at 1 Hz."""

    def __init__(self, **kwargs):
        super().__init__("tactile_node", **kwargs)
        self.config = c = declare_config(self, TactileConfig)
        self._publisher = self.create_publisher(Image, TOPIC, SENSOR_QOS)
        self.create_service(Trigger, "~/calibrate", self._on_calibrate)
        self.driver = TactileSerialDriver(c, self._publish, clock=lambda: now_s(self))
        report_health(self, "tactile skin", c.port, self.driver.health)
        self.driver.start()
        baseline = f"; averaging {c.calibration_frames} frames for a baseline"
        self.get_logger().info(
            f"reading a {c.n_chips}-chip skin on {c.port} ({c.format}, {c.baud_rate} baud), "
            f"publishing {c.rows}x{c.cols}x3 on {TOPIC}"
            + (baseline if c.calibrate_on_start else "")
        )

    def _publish(self, frame: TactileFrame) -> None:
        """Called on the driver's reader thread for each good frame."""
        self._publisher.publish(tactile_to_msg(frame))

    def _on_calibrate(self, request: Trigger.Request, response: Trigger.Response):
        # Only starts the averaging; the reader thread finishes it, so this returns at once.
        response.success, response.message = self.driver.calibrate()
        log_at_level(self, "OK" if response.success else "WARN", response.message)
        return response

    def close(self) -> None:
        """Stop the reader thread and close the port."""
        self.driver.stop()


def main(argv: list[str] | None = None) -> int:
    """Entry point of `tactile_node [--port DEVICE] [--ros-args ...]`."""
    return run_node_with_option(
        lambda overrides: TactileNode(parameter_overrides=overrides),
        "port",
        "port",
        "serial device of the skin",
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
