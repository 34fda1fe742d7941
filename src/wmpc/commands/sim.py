"""Run simulated episodes (MuJoCo) with a chosen controller and print a results table.

With --headless only the physics runs, as fast as the CPU allows, without ROS or sensors.
Without it the episodes run inside sim_node in this process, which publishes every topic
(camera, microphone, tactile, arm state, /clock) at --real-time-factor, so the run can be
watched or recorded while it goes. Either way each episode ends on success or at the task's
time limit, and episode k uses seed S + k.

--snapshot also runs one episode with every sensor on and writes, under runs/<timestamp>/,
the camera view and the tactile pad at the last moment the pad touched something (the end
of the episode if it never did), and a spectrogram of the episode's audio.

examples:
  wmpc sim --task press --episodes 10 --headless
  wmpc sim --task push --controller oracle --episodes 3 --seed 7 --headless --json
  wmpc sim --task reach --episodes 2 --snapshot
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

from wmpc.errors import WmpcError
from wmpc.paths import new_run_dir

HELP = "Run simulated episodes (MuJoCo) with a chosen controller and print a results table."
TASKS = ("reach", "press", "push")
# Controllers `wmpc sim` can run. The learned runtime ('wmpc') and --compare (several
# controllers on the same seeds) plug in here: `results` already maps controller -> summary.
CONTROLLERS = ("wmpc", "expert", "noisy_expert", "random", "oracle")
# The column of the results table that says how well the task was done, per task.
CONTACT_FORCE_N = 0.5  # pad force above which the snapshot counts the pad as touching
TASK_METRIC = {
    "reach": ("final_position_error_m_mean", "final error (mm)", 1e3),
    "press": ("press_force_error_n_mean", "force error (N)", 1.0),
    "push": ("final_block_goal_distance_m_mean", "block to goal (mm)", 1e3),
}


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Task, episodes, seed, controller and output options."""
    parser.add_argument("--task", choices=TASKS, default="reach", help="task (default reach)")
    parser.add_argument(
        "--episodes", type=_positive_int, default=10, help="episodes to run (default 10)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the first episode")
    parser.add_argument(
        "--controller",
        choices=CONTROLLERS,
        default="wmpc",
        help="who drives the arm: wmpc (the learned world model + planner, runtime_node over "
        "DDS; default) or a reference controller",
    )
    parser.add_argument(
        "--compare",
        nargs="+",
        choices=CONTROLLERS,
        metavar="CONTROLLER",
        help="run several controllers on the same seeds, one row each (e.g. wmpc expert oracle)",
    )
    parser.add_argument(
        "--model",
        default="",
        metavar="DIR",
        help="world model for the wmpc controller (default: the shipped models/default)",
    )
    parser.add_argument(
        "--precision",
        choices=("int8", "fp32"),
        default=None,
        help="which files of the model the wmpc controller loads (default: the manifest's)",
    )
    parser.add_argument(
        "--runtime-param",
        action="append",
        default=[],
        type=_runtime_param,
        metavar="NAME=VALUE",
        help="set a runtime_node parameter for the wmpc controller, e.g. "
        "planner.smoothness_weight=5 (repeatable; values are read as YAML)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object on stdout instead of a table"
    )
    parser.add_argument(
        "--snapshot",
        action="store_true",
        help="write a camera PNG, a tactile heat map and an audio spectrogram under runs/",
    )
    parser.add_argument(
        "--headless", action="store_true", help="physics only: no ROS, no sensors, max speed"
    )
    parser.add_argument(
        "--real-time-factor",
        type=_non_negative_float,
        default=1.0,
        help="sim seconds per wall second without --headless (0 = as fast as possible)",
    )
    parser.add_argument(
        "--no-lockstep",
        dest="lockstep",
        action="store_false",
        help="wmpc controller: let sim time follow the wall clock only, however late the "
        "runtime's commands are (default: the sim waits for each control tick's command, so "
        "results do not depend on CPU load)",
    )
    parser.add_argument(
        "--table-height-m",
        type=float,
        nargs="+",
        metavar=("LOW", "HIGH"),
        help="table top height above the arm's base (m): one value, or LOW HIGH to draw each "
        "episode's uniformly (default: the params file's table_height_range_m, i.e. 0; at "
        "most 0.05)",
    )
    parser.add_argument(
        "--params-file",
        type=Path,
        help="ros__parameters YAML with a sim_node section (default: the installed sim.yaml)",
    )
    parser.add_argument(
        "--no-report",
        dest="report",
        action="store_false",
        help="wmpc controller: do not write runs/sim-<time>-<task>/ (the bag of every topic "
        "but the camera, results.json and closed_loop.png)",
    )
    parser.add_argument(
        "--record-camera",
        action="store_true",
        help="wmpc controller: record the camera frames too (about 27 MB per sim second "
        "before compression; `wmpc evaluate` can then replay the run through a model)",
    )
    parser.add_argument(
        "--runs-dir",
        type=Path,
        default=Path("runs"),
        help="where the report and --snapshot are written (runs/)",
    )


def _runtime_param(text: str) -> tuple[str, object]:
    """NAME=VALUE -> (name, value read as YAML); argparse turns the error into exit 2."""
    import yaml

    name, sep, value = text.partition("=")
    name = name.strip()
    # A ROS parameter name: rcl would otherwise reject e.g. "name:=1" with its own traceback.
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", name):
        raise argparse.ArgumentTypeError(f"'{text}' is not NAME=VALUE (e.g. planner.max_std=1.0)")
    try:
        return name, yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise argparse.ArgumentTypeError(f"value of '{name}' is not YAML: {exc}") from None


def run(args: argparse.Namespace) -> int:
    """Run the episodes, print the results, write the snapshot if asked."""
    world_config, params_file = load_world_config(args.params_file)
    if args.table_height_m is not None:
        import dataclasses

        from wmpc.commands.collect import table_height_range

        world_config = dataclasses.replace(
            world_config, table_height_range_m=table_height_range(args.table_height_m)
        )
    controllers = list(dict.fromkeys(args.compare or [args.controller]))
    if "wmpc" in controllers and args.headless:
        raise WmpcError(
            "the wmpc controller sees the world through the sensor topics: drop --headless"
        )
    report_dir = None
    if "wmpc" in controllers and args.report:
        report_dir = new_run_dir(args.runs_dir, f"sim-%Y%m%d-%H%M%S-{args.task}")
    results = {}
    for name in controllers:
        progress = _progress_printer(name, args.episodes)
        if args.headless or (len(controllers) > 1 and name != "wmpc"):
            # Reference controllers need no topics; compared runs use the same seeds.
            results[name] = run_headless(args, name, world_config, progress)
        else:
            recorded = report_dir is not None and name == "wmpc"
            with _recording(report_dir if recorded else None, args.record_camera):
                results[name] = run_with_ros(
                    args, name, params_file, world_config, progress, recorded
                )
    snapshot_dir = None
    if args.snapshot:
        # The snapshot episode runs in-process on the world's sensors; the learned
        # controller needs the full graph, so it is pictured with the scripted expert.
        pictured = next((c for c in controllers if c != "wmpc"), "expert")
        print(f"snapshot: one {args.task} episode with the {pictured} controller", file=sys.stderr)
        snapshot_dir = write_snapshot(args.task, pictured, args.seed, world_config, args.runs_dir)
    report = {"task": args.task, "seed": args.seed, "episodes": args.episodes}
    report["table_height_range_m"] = list(world_config.table_height_range_m)
    report["results"] = results
    if snapshot_dir is not None:
        report["snapshot"] = str(snapshot_dir)
    if report_dir is not None:
        report["report"] = str(report_dir)
        _write_report(report_dir, args.task, report)
    if args.json:
        print(json.dumps(_json_safe(report)))
    else:
        print(results_table(args.task, args.seed, results))
        if snapshot_dir is not None:
            print(f"snapshot: {snapshot_dir}")
        if report_dir is not None:
            print(f"report: {report_dir}")
    return 0


def _recording(report_dir: Path | None, camera: bool):
    """A `wmpc record` child process into report_dir/bag, or nothing without a report."""
    import contextlib

    if report_dir is None:
        return contextlib.nullcontext()
    from wmpc.nodes.closed_loop import RecorderProcess
    from wmpc.sim_report import BAG_DIR

    return RecorderProcess.of_run(report_dir / BAG_DIR, camera)


def _write_report(report_dir: Path, task: str, report: dict) -> None:
    """results.json and closed_loop.png beside the bag."""
    from wmpc.sim_report import BAG_DIR, PLOT_FILE, RESULTS_FILE, write_plot

    (report_dir / RESULTS_FILE).write_text(json.dumps(_json_safe(report), indent=1) + "\n")
    write_plot(report_dir / BAG_DIR, task, report_dir / PLOT_FILE)


# ---- configuration ----------------------------------------------------------------------


def load_world_config(params_file: Path | None):
    """SimConfig from the sim_node section of `params_file` (default: installed sim.yaml).

    The section also holds sim_node's own parameters (SimNodeConfig); keys of neither class
    are an error that names them.
    """
    import dataclasses

    from wmpc.config import (
        ConfigError,
        SimConfig,
        SimNodeConfig,
        build_config,
        read_parameter_file,
    )
    from wmpc.paths import ShareNotFoundError, share_path

    if params_file is None:
        try:
            params_file = share_path("config", "sim.yaml")
        except ShareNotFoundError as exc:
            raise WmpcError(f"{exc} Or pass --params-file.") from None
    values = read_parameter_file(params_file, "sim_node")
    world_keys = {f.name for f in dataclasses.fields(SimConfig)}
    node_keys = {f.name for f in dataclasses.fields(SimNodeConfig)} | {"use_sim_time"}
    unknown = sorted(set(values) - world_keys - node_keys)
    if unknown:
        raise ConfigError(
            f"unknown parameter(s) {unknown} in {params_file} [sim_node]; known: "
            f"{sorted(world_keys | node_keys)}"
        )
    world = {k: v for k, v in values.items() if k in world_keys}
    return build_config(SimConfig, world, source=f"{params_file} [sim_node]"), params_file


# ---- running ------------------------------------------------------------------------------


def _progress_printer(controller: str, episodes: int) -> Callable[[int, dict], None]:
    """A callback that prints one line per finished episode on stderr."""

    def progress(index: int, result: dict) -> None:
        if result["success"]:
            outcome = f"success at {result['time_to_success_s']:.2f} s"
        else:
            outcome = f"failed (time limit {result['sim_s']:.1f} s)"
        print(
            f"[{controller}] episode {index + 1}/{episodes} seed {result['seed']}: {outcome} "
            f"(wall {result['wall_s']:.1f} s)",
            file=sys.stderr,
            flush=True,
        )

    return progress


def run_headless(args, controller: str, world_config, progress) -> dict:
    """Episodes on the physics alone; the summary plus per-episode results."""
    from wmpc.sim.episodes import run_episodes

    report = run_episodes(
        args.task, controller, args.episodes, args.seed, config=world_config, progress=progress
    )
    return {**report["summary"], "per_episode": report["per_episode"]}


def run_with_ros(
    args, controller: str, params_file: Path, world_config, progress, recorded: bool = False
) -> dict:
    """Episodes inside sim_node (all topics published), spun in this process until done.

    `recorded`: a `wmpc record` process is recording; the sim starts once it has subscribed.

    With the wmpc controller, runtime_node runs as its own process on sim time and drives
    the arm over DDS; it is started (and active) before the first episode begins.
    """
    import contextlib

    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter

    from wmpc.nodes.sim import SimNode, shut_down_in_process
    from wmpc.sim.episodes import summarise

    overrides = {
        # The world's parameters as run_headless gets them (the params file's, or the flag's).
        "table_height_range_m": [float(v) for v in world_config.table_height_range_m],
        "task": args.task,
        "seed": args.seed,
        "controller": controller,
        "episodes": args.episodes,
        "reset_when_done": True,
        "real_time_factor": float(args.real_time_factor),
    }
    if controller == "wmpc" and args.lockstep:
        from wmpc.config import RuntimeNodeConfig

        # The runtime's control period, as --runtime-param may have set it.
        rate_hz = dict(args.runtime_param).get(
            "control_rate_hz", RuntimeNodeConfig().control_rate_hz
        )
        if isinstance(rate_hz, (int, float)) and rate_hz > 0:
            overrides["lockstep_period_s"] = 1.0 / float(rate_hz)
        # else runtime_node refuses the parameter at start-up, naming it.
    context = rclpy.Context()
    rclpy.init(context=context)
    node = executor = monitor = None
    runtime = contextlib.nullcontext()
    if controller == "wmpc":
        from wmpc.nodes.closed_loop import RuntimeProcess

        params = dict(args.runtime_param)
        if args.precision:
            params["model.precision"] = args.precision
        runtime = RuntimeProcess(args.task, args.model, params)
    try:
        with runtime:
            executor = SingleThreadedExecutor(context=context)
            if controller == "wmpc":
                monitor = _wait_for_runtime(context, executor, runtime)
                if recorded:
                    _wait_for_recorder(monitor, executor, ("/arm/pose_command",))
            node = SimNode(
                context=context,
                cli_args=["--ros-args", "--params-file", str(params_file)],
                parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()],
            )
            if recorded and monitor is not None:
                # The sim steps once spun: the bag is to hold its first messages too.
                _wait_for_recorder(monitor, executor, ("/clock", "/arm/ee_pose"))
            executor.add_node(node)
            reported = 0
            next_check_s = time.monotonic() + COMPANY_CHECK_PERIOD_S
            while not node.finished:
                executor.spin_once(timeout_sec=0.1)
                if time.monotonic() >= next_check_s:
                    _refuse_company(node)
                    next_check_s += COMPANY_CHECK_PERIOD_S
                while reported < len(node.results):
                    progress(reported, node.results[reported])
                    reported += 1
                if controller == "wmpc":
                    runtime.check_alive()
        summary = {**summarise(args.task, node.results), "per_episode": node.results}
        if monitor is not None and monitor.monitor.plan_ms:
            import numpy as np

            plan_ms = np.array(monitor.monitor.plan_ms)
            summary["plan_ms_p50"] = float(np.percentile(plan_ms, 50))
            summary["plan_ms_p99"] = float(np.percentile(plan_ms, 99))
            summary["runtime"] = monitor.monitor.last
        return summary
    finally:
        shut_down_in_process(executor, node, context)


# Topics only the simulation publishes: a second publisher is someone else on this domain.
SIM_ONLY_TOPICS = ("/clock", "/arm/ee_pose")
COMPANY_CHECK_PERIOD_S = 0.5


def _refuse_company(node) -> None:
    """WmpcError if another node publishes what the simulation does on this ROS domain: a
    second `wmpc sim`, a robot or a bag being replayed would mix its messages with ours (two
    sims side by side drove each other's runtime), so the run would measure nothing."""
    import os

    for topic in SIM_ONLY_TOPICS:
        if node.count_publishers(topic) > 1:
            domain = os.environ.get("ROS_DOMAIN_ID", "0")
            raise WmpcError(
                f"another node publishes {topic} on ROS_DOMAIN_ID {domain} (a second `wmpc "
                "sim`, a robot or a bag being replayed), so its messages would mix with this "
                "simulation's; stop it, or give this run a domain of its own, e.g. "
                "ROS_DOMAIN_ID=42 wmpc sim ..."
            )


def _wait_for_recorder(watcher, executor, topics: tuple[str, ...], timeout_s: float = 20.0):
    """Spin until `wmpc record`'s node subscribes to every one of `topics` (it polls the
    graph every 0.5 s, and subscribes once a topic has a publisher)."""
    import time

    from wmpc.nodes.record import NODE_NAME

    def subscribed(topic: str) -> bool:
        infos = watcher.get_subscriptions_info_by_topic(topic)
        return any(info.node_name == NODE_NAME for info in infos)

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(subscribed(topic) for topic in topics):
            return
        executor.spin_once(timeout_sec=0.1)
    missing = [topic for topic in topics if not subscribed(topic)]
    raise WmpcError(
        f"wmpc record did not subscribe to {missing} within {timeout_s:.0f} s; the report's "
        "bag would miss the start of the run (or pass --no-report)"
    )


def _wait_for_runtime(context, executor, runtime, timeout_s: float = 60.0):
    """Spin until runtime_node reports the active lifecycle state; returns its monitor node."""
    import time

    from lifecycle_msgs.srv import GetState
    from rclpy.node import Node

    from wmpc.nodes.closed_loop import RuntimeMonitor

    watcher = Node("wmpc_sim_watcher", context=context)
    watcher.monitor = RuntimeMonitor(watcher)
    executor.add_node(watcher)
    client = watcher.create_client(GetState, "/runtime_node/get_state")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runtime.check_alive()
        if client.wait_for_service(timeout_sec=0.5):
            future = client.call_async(GetState.Request())
            while not future.done() and time.monotonic() < deadline:
                executor.spin_once(timeout_sec=0.1)
            if future.done() and future.result().current_state.label == "active":
                return watcher
            time.sleep(0.2)
    raise WmpcError(f"runtime_node did not become active within {timeout_s:.0f} s")


# ---- output -------------------------------------------------------------------------------


def _fmt(value, scale: float = 1.0, digits: int = 2) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value * scale:.{digits}f}"


def results_table(task: str, seed: int, results: dict[str, dict]) -> str:
    """A plain-text table: one row per controller."""
    key, label, scale = TASK_METRIC[task]
    header = (
        "controller",
        "success",
        "time to success (s)",
        label,
        "plan ms p50/p99",
        "real-time factor",
    )
    rows = [header]
    for name, summary in results.items():
        rows.append(
            (
                name,
                f"{summary['successes']}/{summary['episodes']} "
                f"({100 * summary['success_rate']:.0f}%)",
                _fmt(summary.get("time_to_success_s_mean")),
                _fmt(summary.get(key), scale),
                f"{_fmt(summary.get('plan_ms_p50'), digits=1)}/"
                f"{_fmt(summary.get('plan_ms_p99'), digits=1)}"
                if "plan_ms_p50" in summary
                else "-",
                _fmt(summary.get("real_time_factor"), digits=1),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [f"task {task}, seeds {seed}.."]
    lines[0] += f"{seed + max(s['episodes'] for s in results.values()) - 1}"
    for i, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _json_safe(value):
    """JSON has no inf or NaN (they become null), and no numpy scalars."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str):
        value = value.item() if getattr(value, "size", 1) == 1 else value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ---- snapshot -----------------------------------------------------------------------------


def write_snapshot(task: str, controller: str, seed: int, world_config, runs_dir: Path) -> Path:
    """One episode with every sensor on; PNGs of its last contact and of its audio."""
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np

    from wmpc.sim.experts import make_controller
    from wmpc.sim.world import SimWorld

    out = new_run_dir(runs_dir, "%Y%m%d-%H%M%S")
    print(f"snapshot: running one {task} episode (seed {seed}) with sensors", file=sys.stderr)

    world = SimWorld(world_config, seed)
    try:
        world.reset(task, seed)
        policy = make_controller(controller, task, seed)
        last_contact = None  # (camera frame, tactile frame, pad force) at the latest contact
        audio = []
        while not world.task_status()["done"]:
            world.step_tick(policy.act(world))
            audio.append(world.read_audio(world.audio_available()).samples[0])
            force_n = world.pad_force_n()
            if force_n > CONTACT_FORCE_N:
                last_contact = (world.read_camera(), world.read_tactile(), force_n)
        if last_contact is None:
            last_contact = (world.read_camera(), world.read_tactile(), world.pad_force_n())
        status = world.task_status()
        grid_axes = _taxel_grid_axes(world.model)
    finally:
        world.close()

    camera, tactile, force_n = last_contact
    samples = np.concatenate(audio)
    rate_hz = float(world_config.audio_rate_hz)
    _save_camera(out / "camera.png", camera)
    _save_tactile(out / "tactile.png", tactile, force_n, grid_axes)
    _save_spectrogram(out / "audio_spectrogram.png", samples, rate_hz)
    meta = {
        "task": task,
        "controller": controller,
        "seed": seed,
        "snapshot_time_s": camera.stamp_s,
        "pad_force_n": force_n,
        "status": status,
    }
    (out / "snapshot.json").write_text(json.dumps(_json_safe(meta), indent=2) + "\n")
    return out


def _save_camera(path: Path, frame) -> None:
    import matplotlib.pyplot as plt

    plt.imsave(path, frame.pixels)


def _taxel_grid_axes(model) -> tuple:
    """Unit vectors, in the pad's (x, y), along which the taxel columns and rows increase."""
    import numpy as np

    def site(name: str) -> np.ndarray:
        return model.site_pos[model.site(name).id][:2]

    col_axis = site("taxel_0_1") - site("taxel_0_0")
    row_axis = site("taxel_1_0") - site("taxel_0_0")
    return col_axis / np.linalg.norm(col_axis), row_axis / np.linalg.norm(row_axis)


def _save_tactile(path: Path, frame, force_n: float, grid_axes: tuple) -> None:
    """Normal force as a heat map, shear as arrows drawn in the grid's own directions."""
    import matplotlib.pyplot as plt
    import numpy as np

    taxels = frame.taxels
    rows, cols = taxels.shape[:2]
    shear = taxels[..., :2]  # (rows, cols, 2) in the pad's x, y
    col_axis, row_axis = grid_axes
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    image = ax.imshow(taxels[..., 2], cmap="viridis", vmin=0.0)
    ax.set_xticks(range(cols))
    ax.set_yticks(range(rows))
    fig.colorbar(image, ax=ax, label="normal force (N)")
    ys, xs = np.mgrid[0:rows, 0:cols]
    ax.quiver(xs, ys, shear @ col_axis, shear @ row_axis, color="white", angles="xy")
    ax.set_title(f"t = {frame.stamp_s:.2f} s, pad force {force_n:.2f} N\n(arrows: shear)")
    ax.set_xlabel("column")
    ax.set_ylabel("row")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _save_spectrogram(path: Path, samples, rate_hz: float) -> None:
    """Waveform and log-power spectrogram of the episode's audio."""
    import matplotlib.pyplot as plt
    import numpy as np
    from scipy import signal

    audio = samples.astype(np.float64) / 32768.0
    freqs, times, power = signal.spectrogram(audio, fs=rate_hz, nperseg=512, noverlap=384)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5), sharex=True, height_ratios=(1, 3))
    top.plot(np.arange(audio.size) / rate_hz, audio, linewidth=0.5)
    top.set_ylabel("amplitude")
    mesh = bottom.pcolormesh(
        times, freqs, 10 * np.log10(power + 1e-12), shading="auto", cmap="magma"
    )
    fig.colorbar(mesh, ax=[top, bottom], label="power (dB)")
    bottom.set_xlabel("time (s)")
    bottom.set_ylabel("frequency (Hz)")
    fig.savefig(path, dpi=120)
    plt.close(fig)
