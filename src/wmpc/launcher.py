"""Run graph.NodeSpec lists as processes: the engine behind `wmpc launch`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from wmpc.graph import GraphError, NodeSpec, ros_args


def parse_launch_args(items: Iterable[str]) -> dict[str, str]:
    """NAME:=VALUE strings to a dict; a malformed item raises GraphError."""
    values: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition(":=")
        if not sep or not name:
            raise GraphError(f"launch argument '{item}' is not NAME:=VALUE")
        values[name] = value
    return values


def find_executable(spec: NodeSpec) -> Path | None:
    """The node's executable in lib/<package> of an ament prefix, or the venv's bin/."""
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    for prefix in prefixes:
        candidate = Path(prefix) / "lib" / spec.package / spec.executable
        if candidate.is_file():
            return candidate
    if spec.package == "wmpc":
        # pip (editable) installs console scripts into the environment's bin/.
        candidate = Path(sys.prefix) / "bin" / spec.executable
        if candidate.is_file():
            return candidate
    return None


class NodeProcessGroup:
    """Start every node as a process, prefix its output, and stop them all together."""

    def __init__(self, specs: list[NodeSpec], stop_timeout_s: float = 10.0):
        self.specs = specs
        self.stop_timeout_s = stop_timeout_s
        self._print_lock = threading.Lock()
        self._reported: set[int] = set()  # pids whose exit was already printed

    def commands(self) -> list[tuple[NodeSpec, list[str] | None]]:
        """(spec, argv) per node; argv is None for an external node that is not installed."""
        out = []
        for spec in self.specs:
            exe = find_executable(spec)
            if exe is None and not spec.external:
                raise GraphError(
                    f"executable '{spec.executable}' of package '{spec.package}' not found in "
                    "AMENT_PREFIX_PATH or this environment's bin/; run `make venv` (or "
                    "`colcon build` and source install/setup.bash on a robot)"
                )
            out.append((spec, None if exe is None else [str(exe), *ros_args(spec)]))
        return out

    def describe(self) -> list[str]:
        """One line per node: its command, or why it is skipped."""
        lines = []
        for spec, argv in self.commands():
            if argv is None:
                lines.append(f"[{spec.name}] skipped: {spec.package} is not installed here")
            else:
                shown = [a if len(a) < 200 else "<...>" for a in argv]
                lines.append(f"[{spec.name}] " + " ".join(shown))
        return lines

    def _say(self, name: str, line: str) -> None:
        with self._print_lock:
            print(f"[{name}] {line}", flush=True)

    def _pump(self, name: str, stream) -> None:
        for raw in iter(stream.readline, b""):
            self._say(name, raw.decode(errors="replace").rstrip())
        stream.close()

    def run(self) -> int:
        """Start all nodes, wait until Ctrl-C/SIGTERM or a shutdown node exits; return code.

        After Ctrl-C the code is 0 when every node ended cleanly (exit code 0, or killed by
        our SIGINT), else 1; otherwise it is the exit code that ended the setup.
        """
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        procs: list[tuple[NodeSpec, subprocess.Popen]] = []
        pumps: list[threading.Thread] = []
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        # Started as a background job, a process inherits SIGINT *ignored* and Python then
        # installs no KeyboardInterrupt handler: Ctrl-C (or a supervisor's SIGINT) would be
        # lost and the nodes never stopped. Take SIGINT explicitly.
        previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
        code = 0
        interrupted = False
        try:
            for spec, argv in self.commands():
                if argv is None:
                    self._say(
                        spec.name,
                        f"skipped: package '{spec.package}' is not installed on this host "
                        "(ros2 launch starts it on a robot)",
                    )
                    continue
                # A new session per node: only we send it signals, in a controlled order.
                proc = subprocess.Popen(
                    argv,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
                self._say(spec.name, f"started (pid {proc.pid})")
                thread = threading.Thread(
                    target=self._pump, args=(spec.name, proc.stdout), daemon=True
                )
                thread.start()
                procs.append((spec, proc))
                pumps.append(thread)
            code = self._wait(procs)
        except KeyboardInterrupt:
            interrupted = True
            self._say("launch", "stopping all nodes")
        finally:
            self._stop(procs)
            # The nodes are gone; give their output 2 s in all to drain, not 2 s per node.
            deadline = time.monotonic() + 2.0
            for thread in pumps:
                thread.join(timeout=max(0.0, deadline - time.monotonic()))
            self._report_exits(procs)
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGINT, previous_int)
        if interrupted:
            unclean = [
                f"{s.name} ({p.returncode})"
                for s, p in procs
                if p.returncode not in (0, -signal.SIGINT)
            ]
            if unclean:
                self._say("launch", "not stopped cleanly: " + ", ".join(unclean))
                return 1
        return code

    def _report_exits(self, procs: list[tuple[NodeSpec, subprocess.Popen]]) -> None:
        """Print the exit code of every node that ended and was not reported yet."""
        for spec, proc in procs:
            rc = proc.poll()
            if rc is not None and proc.pid not in self._reported:
                self._reported.add(proc.pid)
                self._say(spec.name, f"exited with code {rc}")

    def _wait(self, procs: list[tuple[NodeSpec, subprocess.Popen]]) -> int:
        while True:
            running = 0
            for spec, proc in procs:
                rc = proc.poll()
                if rc is None:
                    running += 1
                    continue
                if proc.pid not in self._reported:
                    self._reported.add(proc.pid)
                    self._say(spec.name, f"exited with code {rc}")
                    if spec.shutdown_on_exit:
                        self._say("launch", f"{spec.name} finished: shutting down")
                        return rc
            if running == 0:
                return max((abs(p.returncode) for _, p in procs), default=0)
            time.sleep(0.1)

    def _stop(self, procs: list[tuple[NodeSpec, subprocess.Popen]]) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            alive = [(s, p) for s, p in procs if p.poll() is None]
            if not alive:
                return
            for _, proc in alive:
                proc.send_signal(sig)
            deadline = time.monotonic() + self.stop_timeout_s
            try:
                while time.monotonic() < deadline and any(p.poll() is None for _, p in alive):
                    time.sleep(0.05)
            except KeyboardInterrupt:
                # A second Ctrl-C means hurry: go on to the next signal at once. Leaving here
                # would orphan the nodes, which sit in their own sessions out of Ctrl-C's reach.
                self._say("launch", "interrupted again: sending the next signal now")
            for spec, proc in alive:
                if proc.poll() is None and sig != signal.SIGKILL:
                    self._say(spec.name, f"still running after {sig.name}; escalating")


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
