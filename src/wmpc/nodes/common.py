"""Shared rclpy plumbing: parameters from config dataclasses, QoS, stamps and a clean main()."""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import rclpy
from builtin_interfaces.msg import Time as TimeMsg
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from rclpy.signals import SignalHandlerOptions

from wmpc import codecs
from wmpc.config import build_config
from wmpc.errors import WmpcError
from wmpc.paths import use_wmpc_fastdds_profile

T = TypeVar("T")

# Sensors: best effort, keep last (as qos_profile_sensor_data). Commands, goals and e-stop:
# reliable. Goals and e-stop are also transient-local so a late joiner gets the latest value.
SENSOR_QOS = qos_profile_sensor_data
COMMAND_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE
)
LATCHED_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)


def declare_config(node: Node, cls: type[T], prefix: str = "") -> T:
    """Declare one ROS parameter per field of `cls` (default + description) and freeze them.

    With `prefix` ("planner"), parameters are named "planner.<field>": nested keys under
    `planner:` in the YAML file. Raises ConfigError naming the bad parameter; the caller
    decides whether to exit.
    """
    dotted = f"{prefix}." if prefix else ""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        name = dotted + f.name
        default = f.default
        if isinstance(default, tuple):
            default = list(default)
        descriptor = ParameterDescriptor(description=f.metadata.get("description", ""))
        if isinstance(default, list) and not default:
            # An empty list has no element type for rclpy to infer; declare it as strings.
            node.declare_parameter(name, Parameter.Type.STRING_ARRAY, descriptor)
            # get_parameter() raises for a typed parameter nobody set; _or gives value None.
            value = node.get_parameter_or(name).value
            values[f.name] = list(value) if value is not None else []
            continue
        # Dynamic typing: a YAML `12` for a float parameter reaches build_config, which
        # coerces it or names the parameter, instead of rclpy raising a type exception.
        descriptor.dynamic_typing = True
        node.declare_parameter(name, default, descriptor)
        values[f.name] = node.get_parameter(name).value
    where = f"node '{node.get_name()}'" + (f", parameters '{dotted}*'" if prefix else "")
    return build_config(cls, values, source=where)


def to_stamp(stamp_s: float) -> TimeMsg:
    """Seconds (float) to builtin_interfaces/Time (kept for callers; see codecs.s_to_stamp)."""
    return codecs.s_to_stamp(stamp_s)


def now_s(node: Node) -> float:
    """The node's clock (sim time under use_sim_time) in seconds."""
    return node.get_clock().now().nanoseconds * 1e-9


class RateLimitedLog:
    """Log an error at most once per `period_s` per key and count every occurrence."""

    def __init__(self, node: Node, period_s: float = 5.0):
        self._node = node
        self._period_s = period_s
        self._last: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def error(self, key: str, message: str) -> None:
        """Count one occurrence of `key`; log `message` if this key was quiet long enough."""
        self.counts[key] = self.counts.get(key, 0) + 1
        now = time.monotonic()
        if now - self._last.get(key, -1e9) >= self._period_s:
            self._last[key] = now
            suffix = f" ({self.counts[key]} so far)" if self.counts[key] > 1 else ""
            self._node.get_logger().error(message + suffix)


def short_gil_slices() -> None:
    """Hand the GIL between threads every 0.1 ms instead of Python's default 5 ms.

    MuJoCo and ONNX Runtime release the GIL inside each call; while an executor thread is
    busy dispatching callbacks, every re-acquire waited out the full slice. Measured: 100
    physics steps took 0.78 s beside a busy Python thread at 5 ms, 0.05 s at 0.1 ms.
    """
    sys.setswitchinterval(1e-4)


class _DrainingExecutor(MultiThreadedExecutor):
    """A MultiThreadedExecutor whose shutdown first lets the callbacks in flight finish.

    rclpy 9.1's Executor.shutdown destroys the guard condition each callback's task triggers
    without waiting for them (its wait is skipped once the shutdown flag is set), so a
    callback still running at Ctrl-C printed "The following exception was never retrieved:
    cannot use Destroyable because destruction was requested" at exit.
    """

    def shutdown(self, timeout_sec: float | None = None, *, wait_for_threads: bool = True):
        """Wait for the worker threads (their queued callbacks run), then shut down."""
        self._executor.shutdown(wait=wait_for_threads)  # the thread pool (rclpy 9.1)
        return super().shutdown(timeout_sec, wait_for_threads=wait_for_threads)


def run_node(make_node: Callable[[], Node], *, threads: int = 2) -> int:
    """Init rclpy, spin the node until Ctrl-C, SIGTERM or external shutdown; return exit code.

    A WmpcError at construction (bad parameter, model, scene or device) prints one line
    and returns 2.
    """
    # rclpy's own SIGINT handler would shut the context down before `close()` runs, and a
    # node could no longer publish its last words (the runtime's hold). Ours only set a
    # flag: an exception raised at an arbitrary point could land inside the executor while
    # it starts a worker thread, and that orphaned thread then blocks interpreter exit.
    # SIGTERM (from `wmpc launch` or ros2 launch) ends the spin like Ctrl-C does.
    use_wmpc_fastdds_profile()
    short_gil_slices()
    rclpy.init(args=sys.argv, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    node = None
    executor = None
    try:
        node = make_node()
        executor = _DrainingExecutor(num_threads=threads)
        executor.add_node(node)
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    except WmpcError as exc:  # a bad parameter, model, scene or device: one line, exit 2
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ExternalShutdownException:
        pass
    finally:
        if executor is not None:
            executor.shutdown(timeout_sec=5)
        if node is not None:
            close = getattr(node, "close", None)
            if close is not None:
                close()
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


def diagnostic_array(
    node: Node,
    name: str,
    level: str,
    message: str,
    values: dict[str, str],
    hardware_id: str = "",
):
    """A DiagnosticArray stamped now holding one status; `level` is 'OK', 'WARN' or 'ERROR'."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

    levels = {"OK": DiagnosticStatus.OK, "WARN": DiagnosticStatus.WARN}
    status = DiagnosticStatus(
        level=levels.get(level, DiagnosticStatus.ERROR),
        name=name,
        message=message,
        hardware_id=hardware_id,
        values=[KeyValue(key=k, value=str(v)) for k, v in values.items()],
    )
    array = DiagnosticArray(status=[status])
    array.header.stamp = node.get_clock().now().to_msg()
    return array


def log_at_level(node: Node, level: str, message: str) -> None:
    """Log `message` at diagnostics level 'OK' (info), 'WARN' or 'ERROR'."""
    # rclpy refuses one call site logging at changing severities, hence a line per level.
    logger = node.get_logger()
    if level == "OK":
        logger.info(message)
    elif level == "WARN":
        logger.warning(message)
    else:
        logger.error(message)


def report_health(
    node: Node,
    name: str,
    hardware_id: str,
    health: Callable[[], tuple[str, str, dict[str, str]]],
    period_s: float = 1.0,
):
    """Publish `health()` = (level, message, values) on /diagnostics every `period_s`.

    Each change of level is also logged once. Returns the timer.
    """
    from diagnostic_msgs.msg import DiagnosticArray

    publisher = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
    last_level = [""]

    def tick() -> None:
        level, message, values = health()
        if level != last_level[0]:
            log_at_level(node, level, f"{name}: {message}")
            last_level[0] = level
        status_name = f"{node.get_name()}: {name}"
        publisher.publish(diagnostic_array(node, status_name, level, message, values, hardware_id))

    return node.create_timer(period_s, tick)


def run_node_with_option(
    make_node: Callable[[list[Parameter]], Node],
    option: str,
    parameter: str,
    help_text: str,
    argv: list[str] | None = None,
) -> int:
    """run_node() for a node whose `--<option> VALUE` command-line flag sets `parameter`."""
    import argparse

    from rclpy.utilities import remove_ros_args

    argv = sys.argv if argv is None else argv
    parser = argparse.ArgumentParser(prog=argv[0].rsplit("/", 1)[-1])
    parser.add_argument(f"--{option}", help=f"{help_text} (sets parameter '{parameter}')")
    value = getattr(parser.parse_args(remove_ros_args(argv)[1:]), option.replace("-", "_"))
    overrides = [Parameter(parameter, value=value)] if value else []
    return run_node(lambda: make_node(overrides))


def command_node_main(
    node_name: str, command, run: Callable[[Any, list[str]], int], argv: list[str] | None
) -> int:
    """main() of a node that takes a `wmpc` sub-command's options (record, replay).

    The options are parsed exactly as `wmpc <command>` parses them, ROS arguments removed;
    a WmpcError becomes one line and exit code 2.
    """
    import argparse

    from rclpy.utilities import remove_ros_args

    from wmpc.paths import ensure_venv_prefix

    ensure_venv_prefix()
    argv = list(sys.argv if argv is None else argv)
    parser = argparse.ArgumentParser(prog=node_name, description=command.__doc__)
    command.add_arguments(parser)
    args = parser.parse_args(remove_ros_args(argv)[1:])
    try:
        return run(args, argv)
    except WmpcError as exc:
        print(f"{node_name}: error: {exc}", file=sys.stderr)
        return 2


@contextlib.contextmanager
def stoppable_context(
    ros_argv: list[str] | None,
) -> Iterator[tuple[rclpy.Context, threading.Event]]:
    """(context, stop) for a command node (record, replay) that must end its own way.

    Ctrl-C and SIGTERM only set `stop`: rclpy's handlers would shut the context down under
    the node, and the node's thread is to close its bag or player itself. On the way out
    the context is shut down and the previous handlers are back. Destroy the node first.
    """
    context = rclpy.Context()
    rclpy.init(args=ros_argv, context=context, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    previous = {
        s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield context, stop
    finally:
        if context.ok():
            context.shutdown()
        for s, handler in previous.items():
            signal.signal(s, handler)
