"""The learned controller in the simulated loop: a runtime_node process beside the sim node.

`wmpc sim --controller wmpc` runs the sim node in its own process and the runtime node as
another process, on sim time, talking over real DDS exactly as on a robot. This module
starts and stops that runtime process and listens to its /diagnostics for plan latency.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node

from wmpc.errors import WmpcError
from wmpc.graph import NodeSpec, ros_args
from wmpc.launcher import find_executable


class RuntimeProcess:
    """runtime_node as a child process (autostart, sim time); output kept for errors."""

    def __init__(self, task: str, model_dir: str = "", parameters: dict | None = None):
        params: dict[str, object] = {
            "use_sim_time": True,
            "autostart": True,
            "task": task,
            **(parameters or {}),
        }
        if model_dir:
            params["model.model_dir"] = str(Path(model_dir).resolve())
        self.spec = NodeSpec("wmpc", "runtime_node", "runtime_node", parameters=params)
        self.output: deque[str] = deque(maxlen=200)
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> RuntimeProcess:
        exe = find_executable(self.spec)
        if exe is None:
            raise WmpcError("runtime_node executable not found; run `make venv`")
        self.proc = subprocess.Popen(
            [str(exe), *ros_args(self.spec)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
        threading.Thread(target=self._pump, daemon=True).start()
        return self

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in iter(self.proc.stdout.readline, b""):
            line = raw.decode(errors="replace").rstrip()
            self.output.append(line)
            if os.environ.get("WMPC_VERBOSE"):
                print(f"[runtime_node] {line}", file=sys.stderr, flush=True)

    def check_alive(self) -> None:
        """WmpcError with the node's last output if it has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            tail = "\n".join(list(self.output)[-20:])
            raise WmpcError(f"runtime_node exited with code {self.proc.returncode}:\n{tail}")

    def __exit__(self, *exc) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(2)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class RecorderProcess:
    """`wmpc record BAG ARGS...` as a child process while a `with` block runs.

    On leaving the block it gets SIGINT, as from Ctrl-C, and closes a valid bag; a recorder
    that fails is reported with its exit code (the run it recorded still stands).
    """

    JOIN_S = 2.0  # time for the recorder to join the graph before the first message
    CAMERA_TOPICS_REGEX = "^/camera/image_raw$"

    def __init__(self, bag: Path, args: list[str]):
        self.command = [sys.executable, "-m", "wmpc.cli", "record", str(bag), *args]
        self.proc: subprocess.Popen | None = None

    @classmethod
    def of_run(cls, bag: Path, camera: bool) -> RecorderProcess:
        """Every topic of a closed-loop run, zstd per message, no progress lines; the
        camera frames (about 27 MB per sim second before compression) only if `camera`."""
        args = ["--all", "--compression-mode", "message", "--progress-period", "0"]
        if not camera:
            args += ["--exclude-regex", cls.CAMERA_TOPICS_REGEX]
        return cls(bag, args)

    def __enter__(self) -> RecorderProcess:
        # Its progress lines go to stderr: stdout may be carrying `--json` output.
        self.proc = subprocess.Popen(self.command, stdout=sys.stderr, start_new_session=True)
        time.sleep(self.JOIN_S)
        if self.proc.poll() is not None:
            raise WmpcError(f"`{' '.join(self.command[2:])}` exited with {self.proc.returncode}")
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        if code != 0:
            print(f"wmpc record exited with {code}; the bag may be incomplete", file=sys.stderr)


class RuntimeMonitor:
    """Subscribes to /diagnostics on `node` and keeps the runtime's latest figures."""

    def __init__(self, node: Node):
        self.plan_ms: list[float] = []
        self.last: dict[str, str] = {}
        self.levels: list[int] = []
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name != "wmpc: runtime":
                continue
            values = {kv.key: kv.value for kv in status.values}
            self.last = {**values, "message": status.message}
            self.levels.append(int.from_bytes(status.level, "little"))
            if "plan_ms" in values:
                self.plan_ms.append(float(values["plan_ms"]))

    @property
    def active(self) -> bool:
        """True once the runtime reports it is configured and its timer runs."""
        return self.last.get("active") == "True"
