"""Check this host: ROS 2 and DDS, ONNX Runtime providers, MuJoCo rendering, serial ports,
the planner's compiled loops, and the shipped model's manifest and checksums.

Each line is OK, WARN (works, degraded or optional) or FAIL. Exit code 0 when nothing
failed, 1 otherwise. On a GPU host, look for CUDAExecutionProvider and
TensorrtExecutionProvider under "model session": that line is the provider a real
session actually loaded, not just what the wheel advertises.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from importlib import metadata

HELP = "Check ROS 2/DDS, ONNX Runtime providers, MuJoCo EGL, serial ports and the model."

OK, WARN, FAIL = "OK", "WARN", "FAIL"


def add_arguments(parser) -> None:
    """--json, --model."""
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--model",
        default="",
        metavar="DIR",
        help="model directory to verify (default: the shipped models/default)",
    )


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not from pip (ROS install)"


def check_ros() -> tuple[str, str]:
    """rclpy distro and RMW, then a real DDS loopback publish/receive."""
    from wmpc.nodes.probe import dds_loopback, rmw_identifier

    distro = os.environ.get("ROS_DISTRO", "unset (PyPI wheels)")
    ok, detail = dds_loopback()
    domain = os.environ.get("ROS_DOMAIN_ID", "0")
    line = (
        f"rclpy {_version('ros-rclpy')}, ROS_DISTRO={distro}, RMW {rmw_identifier()}, "
        f"domain {domain}: {detail}"
    )
    return (OK if ok else FAIL), line


def check_onnxruntime() -> tuple[str, str]:
    """The providers this onnxruntime build offers."""
    import onnxruntime as ort

    providers = ort.get_available_providers()
    gpu = [p for p in providers if p in ("TensorrtExecutionProvider", "CUDAExecutionProvider")]
    detail = f"onnxruntime {ort.__version__} ({ort.get_device()}): {', '.join(providers)}"
    if not gpu:
        detail += " — no GPU provider: plans run on the CPU (install onnxruntime-gpu on GPU hosts)"
        return WARN, detail
    return OK, detail


def check_mujoco() -> tuple[str, str]:
    """Render a lit box offscreen and check the picture is not blank."""
    import mujoco
    import numpy as np

    xml = (
        "<mujoco><worldbody><light pos='0 0 2'/>"
        "<geom type='box' size='.1 .1 .1' rgba='1 0 0 1'/>"
        "<camera name='c' pos='0 -1 0' xyaxes='1 0 0 0 0 1'/></worldbody></mujoco>"
    )
    model = mujoco.MjModel.from_xml_string(xml)
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    with mujoco.Renderer(model, 48, 64) as renderer:
        renderer.update_scene(data, "c")
        pixels = renderer.render()
    backend = os.environ.get("MUJOCO_GL", "default")
    if pixels.shape != (48, 64, 3) or not np.any(pixels[..., 0] > 100):
        return FAIL, f"mujoco {mujoco.__version__}, MUJOCO_GL={backend}: rendered a blank image"
    return OK, f"mujoco {mujoco.__version__}, MUJOCO_GL={backend}: offscreen render works"


def check_serial() -> tuple[str, str]:
    """Serial ports present (a tactile skin shows up as /dev/ttyACM* or /dev/ttyUSB*)."""
    from serial.tools import list_ports

    ports = [f"{p.device} ({p.description})" for p in list_ports.comports()]
    if not ports:
        return WARN, "no serial ports found (fine without a tactile skin attached)"
    return OK, ", ".join(ports)


def check_planner() -> tuple[str, str]:
    """The planner's compiled loops: numba's version, and how long they take to be ready."""
    import time

    import numba

    from wmpc import planning_kernels

    start_s = time.perf_counter()
    planning_kernels.compile_kernels()
    took_s = time.perf_counter() - start_s
    return OK, (
        f"numba {numba.__version__}: planner loops ready in {took_s:.1f} s (compiled on the "
        "first run, then loaded from numba's cache)"
    )


def check_model(model_dir: str) -> tuple[str, str]:
    """Load the model as the runtime does: manifest, sha256, shapes, providers."""
    from wmpc.model import WorldModel
    from wmpc.paths import share_path

    path = model_dir or str(share_path("models", "default"))
    model = WorldModel.load(path)
    return OK, (f"{path}: manifest and sha256 valid, {model.precision} on {model.provider}")


def run(args) -> int:
    """Run every check, print a table (or JSON), exit 1 if any failed."""
    from wmpc.errors import WmpcError

    checks: list[tuple[str, Callable[[], tuple[str, str]]]] = [
        ("ros2 / dds", check_ros),
        ("onnxruntime", check_onnxruntime),
        ("mujoco egl", check_mujoco),
        ("serial ports", check_serial),
        ("planner loops", check_planner),
        ("model session", lambda: check_model(args.model)),
    ]
    results = []
    for name, check in checks:
        try:
            status, detail = check()
        except (WmpcError, ImportError, OSError, RuntimeError) as exc:
            status, detail = FAIL, f"{type(exc).__name__}: {exc}"
        results.append({"check": name, "status": status, "detail": detail})
        if not args.json:
            print(f"{status:<5} {name:<14} {detail}", flush=True)
    failed = [r["check"] for r in results if r["status"] == FAIL]
    if args.json:
        host = {"python": platform.python_version(), "machine": platform.machine()}
        print(json.dumps({"host": host, "checks": results, "ok": not failed}))
    elif failed:
        print(f"\n{len(failed)} check(s) failed: {', '.join(failed)}")
    else:
        print("\nall checks passed")
    return 1 if failed else 0
