"""microphone_node: PortAudio capture, or real-time replay of a WAV file -> /microphone/audio.

Each message is a sensor_msgs/Image with encoding 16SC1, height = channels, width = samples,
stamped with the capture time of its first sample. `--file WAV` (parameter `file`) replays a
recording at `rate_hz` (resampled) with the same stamping, for machines without a sound card.
Capture runs on PortAudio's thread and a driver thread; overruns and dropouts are counted in
/diagnostics.
"""

from __future__ import annotations

import sys

from rclpy.node import Node
from sensor_msgs.msg import Image

from wmpc.codecs import audio_to_msg
from wmpc.config import MicrophoneConfig
from wmpc.drivers.microphone import MicrophoneDriver
from wmpc.nodes.common import (
    SENSOR_QOS,
    declare_config,
    now_s,
    report_health,
    run_node_with_option,
)
from wmpc.types import AudioChunk

TOPIC = "/microphone/audio"


class MicrophoneNode(Node):
    """Audio driver: publishes fixed-size chunks and reports at 1 Hz."""

    def __init__(self, **kwargs):
        super().__init__("microphone_node", **kwargs)
        self.config = c = declare_config(self, MicrophoneConfig)
        self._publisher = self.create_publisher(Image, TOPIC, SENSOR_QOS)
        # Construction checks the device or file and raises MicrophoneError naming it.
        self.driver = MicrophoneDriver(c, self._publish, clock=lambda: now_s(self))
        report_health(self, "microphone", self.driver.source, self.driver.health)
        self.driver.start()
        self.get_logger().info(
            f"capturing from {self.driver.source}: {c.channels} ch at {c.rate_hz} Hz in "
            f"{c.chunk_samples}-sample chunks on {TOPIC}"
        )

    def _publish(self, chunk: AudioChunk) -> None:
        """Called on a driver thread for each chunk."""
        self._publisher.publish(audio_to_msg(chunk))

    def close(self) -> None:
        """Stop capturing."""
        self.driver.stop()


def main(argv: list[str] | None = None) -> int:
    """Entry point of `microphone_node [--file WAV] [--ros-args ...]`."""
    return run_node_with_option(
        lambda overrides: MicrophoneNode(parameter_overrides=overrides),
        "file",
        "file",
        "WAV file to replay instead of capturing",
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
