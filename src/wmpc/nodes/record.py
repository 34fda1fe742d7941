"""record_node: record topics into a rosbag2 bag (MCAP or sqlite3), as `ros2 bag record` does.

Subscriptions are generic: messages arrive as serialized CDR (raw=True) and go to the bag
untouched. Topic types and the publishers' offered QoS come from the ROS graph, which is polled
for new topics the whole time. Ctrl-C or SIGTERM stops the node; what already arrived is
taken from the middleware and written, then the bag is closed with its metadata.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

from rclpy.clock import Clock, ClockType
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

from wmpc.bag.reader import BagError
from wmpc.bag.writer import BagWriter, subscription_qos
from wmpc.config import ConfigError, RecordConfig
from wmpc.nodes.common import command_node_main, declare_config, stoppable_context
from wmpc.nodes.replay import message_class, parameter_overrides, qos_from_ros, qos_to_ros

NODE_NAME = "record_node"
DRAIN_S = 0.3  # after a stop request, how long messages already delivered are still taken


def _hidden(topic: str) -> bool:
    """A topic is hidden when a part of its name starts with '_' (as in ROS 2)."""
    return any(part.startswith("_") for part in topic.split("/"))


class RecordNode(Node):
    """Subscribes to the chosen topics as they appear and writes every message to a bag."""

    def __init__(self, output: str | Path, overrides: Mapping[str, Any] | None = None, **kwargs):
        super().__init__(
            NODE_NAME, parameter_overrides=parameter_overrides(overrides or {}), **kwargs
        )
        self.config = config = declare_config(self, RecordConfig)
        if not (config.topics or config.all_topics or config.regex):
            raise ConfigError(
                "nothing to record: set 'topics' (--topics), 'all_topics' (--all) or 'regex'"
            )
        # Names are resolved from the root namespace, as `ros2 bag record chatter` does.
        self._topics = {t if t.startswith("/") else f"/{t}" for t in config.topics}
        self._include = re.compile(config.regex) if config.regex else None
        self._exclude = re.compile(config.exclude_regex) if config.exclude_regex else None
        self.writer = BagWriter(
            output,
            storage=config.storage,
            max_file_bytes=config.max_bag_size_bytes,
            max_file_duration_ns=int(config.max_bag_duration_s * 1e9),
            compression=config.compression_mode,
        )
        self._lock = threading.Lock()
        self._recorded: dict[str, Any] = {}
        self._skipped: set[str] = set()
        self._started = time.monotonic()
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._discover()
        self.create_timer(config.discovery_period_s, self._discover, clock=steady)
        if config.progress_period_s > 0:
            self.create_timer(config.progress_period_s, self._progress, clock=steady)

    def _wanted(self, topic: str) -> bool:
        c = self.config
        if self._exclude is not None and self._exclude.search(topic):
            return False
        if topic in self._topics:
            return True
        if _hidden(topic) and not c.include_hidden_topics:
            return False
        return c.all_topics or bool(self._include and self._include.search(topic))

    def _skip(self, topic: str, reason: str) -> None:
        """Warn once about a topic that cannot be recorded."""
        self._skipped.add(topic)
        self.get_logger().warning(f"not recording {topic}: {reason}")

    def _discover(self) -> None:
        """Subscribe to wanted topics that have appeared since the last poll."""
        for topic, types in self.get_topic_names_and_types():
            if topic in self._recorded or topic in self._skipped or not self._wanted(topic):
                continue
            if len(types) != 1:
                self._skip(topic, f"it has several types {types}")
                continue
            msgtype = types[0]
            cls = message_class(msgtype)
            if cls is None:
                self._skip(topic, f"message type {msgtype} is not installed")
                continue
            publishers = self.get_publishers_info_by_topic(topic)
            if not publishers:
                continue  # only subscribers so far: the offered QoS is not known yet
            offered = [qos_from_ros(p.qos_profile) for p in publishers]
            try:
                with self._lock:
                    self.writer.add_topic(topic, msgtype, offered)
            except BagError as exc:
                self._skip(topic, str(exc))
                continue
            self._recorded[topic] = self.create_subscription(
                cls,
                topic,
                partial(self._on_message, topic),
                qos_to_ros(subscription_qos(offered)),
                raw=True,
            )
            print(f"record: subscribed to {topic} [{msgtype}]", flush=True)

    def _on_message(self, topic: str, data: bytes) -> None:
        # Receive time on the node's clock, as rosbag2 stamps messages (sim time if used).
        stamp_ns = self.get_clock().now().nanoseconds
        with self._lock:
            self.writer.write(topic, stamp_ns, data)

    def progress_line(self) -> str:
        """Messages, topics, megabytes and seconds so far."""
        w = self.writer
        return (
            f"record: {w.message_count} messages on {len(self._recorded)} topics, "
            f"{w.bytes_written / 1e6:.2f} MB, {time.monotonic() - self._started:.1f} s"
        )

    def _progress(self) -> None:
        print(self.progress_line(), flush=True)

    def close(self) -> None:
        """Close the bag: the last split file and metadata.yaml."""
        with self._lock:
            self.writer.close()


def run(args: Any, ros_argv: list[str] | None = None) -> int:
    """Record with the options in `args` (see commands/record.py) until Ctrl-C or SIGTERM."""
    from wmpc.commands.record import overrides_from_args

    with stoppable_context(ros_argv) as (context, stop):
        node = None
        try:
            node = RecordNode(args.output, overrides_from_args(args), context=context)
            executor = SingleThreadedExecutor(context=context)
            executor.add_node(node)
            print(f"record: writing {args.output} (Ctrl-C to stop)", flush=True)
            while not stop.is_set() and context.ok():
                executor.spin_once(timeout_sec=0.1)
            # Take what the middleware has already delivered before closing the bag.
            deadline = time.monotonic() + DRAIN_S
            while time.monotonic() < deadline and context.ok():
                executor.spin_once(timeout_sec=0.02)
            node.close()
            w = node.writer
            print(
                f"record: wrote {w.message_count} messages on {len(w.topics)} topics in "
                f"{len(w.files)} file(s) to {w.path}",
                flush=True,
            )
            return 0
        finally:
            if node is not None:
                node.close()
                node.destroy_node()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the record_node executable: `record_node OUT [options] [--ros-args ...]`."""
    from wmpc.commands import record as command

    return command_node_main(NODE_NAME, command, run, argv)


if __name__ == "__main__":
    sys.exit(main())
