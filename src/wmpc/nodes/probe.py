"""A real DDS publish-and-receive on loopback, for `wmpc doctor`."""

from __future__ import annotations

import time

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from std_msgs.msg import String


def dds_loopback(timeout_s: float = 5.0) -> tuple[bool, str]:
    """Publish a String and receive it in the same process over DDS; (ok, detail)."""
    context = rclpy.Context()
    rclpy.init(context=context)
    node = Node("wmpc_doctor_probe", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    received: list[str] = []
    try:
        node.create_subscription(
            String, "/wmpc_doctor/probe", lambda m: received.append(m.data), 10
        )
        pub = node.create_publisher(String, "/wmpc_doctor/probe", 10)
        start = time.monotonic()
        while not received and time.monotonic() - start < timeout_s:
            pub.publish(String(data="ping"))
            executor.spin_once(timeout_sec=0.05)
        elapsed_ms = (time.monotonic() - start) * 1e3
        if received:
            return True, f"publish -> receive in {elapsed_ms:.0f} ms"
        return False, f"nothing received within {timeout_s:.0f} s (check firewall / ROS_DOMAIN_ID)"
    finally:
        executor.shutdown()
        node.destroy_node()
        context.shutdown()


def rmw_identifier() -> str:
    """The RMW implementation rclpy is using."""
    return rclpy.get_rmw_implementation_identifier()
