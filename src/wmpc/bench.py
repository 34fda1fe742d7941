"""Benchmark sections behind `wmpc bench`: each returns a flat dict of measured figures."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from wmpc.errors import WmpcError


def percentiles_ms(samples_s: list[float] | np.ndarray) -> tuple[float, float]:
    """(p50, p99) in milliseconds of durations given in seconds."""
    arr = np.asarray(samples_s, dtype=np.float64) * 1e3
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


def time_calls(fn: Callable[[], object], repeats: int, warmup: int = 5) -> np.ndarray:
    """Wall time of `repeats` calls of fn (after `warmup` untimed calls), in seconds."""
    for _ in range(warmup):
        fn()
    out = np.empty(repeats)
    for i in range(repeats):
        start = time.perf_counter()
        fn()
        out[i] = time.perf_counter() - start
    return out


def time_interleaved(
    first: Callable[[], object],
    second: Callable[[], object],
    repeats: int,
    every: int = 1,
    warmup: int = 3,
) -> tuple[np.ndarray, np.ndarray]:
    """Wall times (s) of `repeats` calls of `first`, and of `second` after every `every`-th."""
    for _ in range(warmup):
        first()
        second()
    first_s, second_s = [], []
    for i in range(repeats):
        start = time.perf_counter()
        first()
        first_s.append(time.perf_counter() - start)
        if i % every == 0:
            start = time.perf_counter()
            second()
            second_s.append(time.perf_counter() - start)
    return np.asarray(first_s), np.asarray(second_s)


def gemm_peak_gflops(n: int = 1024, repeats: int = 10) -> float:
    """This machine's fp32 matrix-multiply rate through numpy's BLAS (best of `repeats`)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    best_s = float(np.min(time_calls(lambda: a @ b, repeats, warmup=2)))
    return 2.0 * n**3 / best_s / 1e9


SECTIONS: dict[str, Callable] = {}


# ---- planner ---------------------------------------------------------------------------------

# The budget TD-MPC2 plans with: 512 samples x 6 iterations over a horizon of 3.
TDMPC2_BUDGET = {"samples": 512, "iterations": 6, "horizon": 3}
# Both planners get the same CPU threads. One, as the runtime uses (ModelConfig default):
# these small matrices do not split well, and with two threads a loaded 2-core host makes
# torch collapse, which would flatter the speedup (measured: a "6-27x" that was contention).
PLANNER_THREADS = 1
CAMERA_RATE_HZ = 30.0
CAMERA_HW = (480, 640)
AUDIO_CHUNK_SAMPLES = 512
# The bench's press goal: 5 N down on the table at the marker of the sim scene.
BENCH_GOAL_POSITION_M = (0.55, 0.10, 0.0)
BENCH_GOAL_FORCE_N = 5.0


class BenchError(WmpcError, RuntimeError):
    """A benchmark cannot measure honestly (no model, no checkpoint, no plan); says why."""


def _say(line: str) -> None:
    print(f"bench: {line}", file=sys.stderr, flush=True)


def _model_dir(model: str) -> Path:
    """--model, or the installed models/default; BenchError when it holds no model."""
    from wmpc.paths import ShareNotFoundError, share_path

    if model:
        path = Path(model)
        what = f"--model {model}"
    else:
        try:
            path = share_path("models", "default")
        except ShareNotFoundError as exc:
            raise BenchError(f"cannot find the shipped model: {exc}") from None
        what = f"the shipped model {path}"
    if not (path / "manifest.json").is_file():
        raise BenchError(
            f"{what} has no manifest.json, so there is no model to measure; train one with "
            "`wmpc train DATA_DIR --out models/default` (and `wmpc quantize`), or pass "
            "--model DIR"
        )
    return path


def _checkpoint(model_dir: Path, manifest: dict) -> Path:
    """checkpoint.pt beside the ONNX files, proven by the manifest's sha256 to be their run's."""
    from wmpc.training.manifest import checkpoint_problem

    problem = checkpoint_problem(model_dir, manifest)
    if problem is not None:
        raise BenchError(
            f"{problem}; the PyTorch reference planner needs the very weights of these ONNX "
            "files, so without them there is nothing honest to compare with (re-train the "
            "model with `wmpc train`)"
        )
    return model_dir / "checkpoint.pt"


class SyntheticSensors:
    """Fresh, plausible sensor samples for a ControlLoop's buffer, on a synthetic clock.

    A 640x480 camera at 30 Hz (a fixed scene plus per-frame noise), continuous 16 kHz audio
    in 512-sample chunks (a tone in noise), a tactile grid, joint states, ee pose and wrist
    wrench of an arm hovering over the table; everything stamped like a live robot's.
    """

    def __init__(self, manifest: dict, seed: int = 0, start_s: float = 10.0) -> None:
        mods = manifest["modalities"]
        self.rng = np.random.default_rng(seed)
        self.joint_names = tuple(mods["proprio"]["joint_names"])
        self.rate_hz = int(mods["audio"]["rate_hz"])
        self.tactile_shape = (int(mods["tactile"]["rows"]), int(mods["tactile"]["cols"]), 3)
        rows = np.linspace(0, 1, CAMERA_HW[0])[:, None, None]
        cols = np.linspace(0, 1, CAMERA_HW[1])[None, :, None]
        self.scene = (80 + 120 * rows * np.array([1.0, 0.6, 0.3]) + 40 * cols).astype(np.int16)
        # Audio starts one window before the first tick, so the first observation is complete.
        self.audio_end_s = start_s - int(mods["audio"]["window_samples"]) / self.rate_hz
        self.audio_phase = 0
        self.last_frame_s = -np.inf
        self.start_s = start_s

    def feed(self, offer: Callable[[str, object, float], str | None], now_s: float) -> None:
        """Offer every sample due at `now_s` (to ControlLoop.offer); BenchError on a reject."""
        from wmpc.types import (
            TOOL_DOWN_XYZW,
            AudioChunk,
            ImageFrame,
            JointSample,
            Pose,
            TactileFrame,
            Wrench,
        )

        t = now_s - self.start_s
        offers = []
        frame_s = np.floor(now_s * CAMERA_RATE_HZ) / CAMERA_RATE_HZ
        if frame_s > self.last_frame_s:
            noise = self.rng.integers(-6, 7, size=self.scene.shape, dtype=np.int16)
            pixels = np.clip(self.scene + noise, 0, 255).astype(np.uint8)
            offers.append(("image", ImageFrame(frame_s, pixels, "rgb8", "camera")))
            self.last_frame_s = frame_s
        chunk_s = AUDIO_CHUNK_SAMPLES / self.rate_hz
        while self.audio_end_s + chunk_s <= now_s:
            n = self.audio_phase + np.arange(AUDIO_CHUNK_SAMPLES)
            wave = 900 * np.sin(2 * np.pi * 440.0 * n / self.rate_hz)
            wave = wave + self.rng.normal(0, 120, AUDIO_CHUNK_SAMPLES)
            samples = np.clip(wave, -32768, 32767).astype(np.int16)[None]
            offers.append(("audio", AudioChunk(self.audio_end_s, samples, float(self.rate_hz))))
            self.audio_end_s += chunk_s
            self.audio_phase += AUDIO_CHUNK_SAMPLES
        taxels = self.rng.normal(0, 0.02, self.tactile_shape).astype(np.float32)
        offers.append(("tactile", TactileFrame(now_s, taxels, "probe")))
        joints = np.array([0.0, -0.3, 0.0, -2.2, 0.0, 1.9, 0.8])[: len(self.joint_names)]
        joints = np.resize(joints, len(self.joint_names)) + 0.01 * np.sin(t)
        n = len(self.joint_names)
        offers.append(
            ("joints", JointSample(now_s, self.joint_names, joints, np.zeros(n), np.zeros(n)))
        )
        ee_m = np.array([0.5 + 0.02 * np.sin(t), 0.02 * np.cos(t), 0.15])
        offers.append(("ee_pose", (now_s, Pose(ee_m, TOOL_DOWN_XYZW.copy()))))
        force_n = self.rng.normal(0, 0.2, 3)
        offers.append(("wrench", (now_s, Wrench(force_n, self.rng.normal(0, 0.01, 3)))))
        for modality, sample in offers:
            reason = offer(modality, sample, now_s)
            if reason is not None:
                raise BenchError(f"the synthetic {modality} sample was rejected: {reason}")


def _bench_goal():
    """The press goal the planner benchmarks plan towards."""
    from wmpc.types import TOOL_DOWN_XYZW, Goal, Pose, Wrench

    return Goal(
        Pose(np.array(BENCH_GOAL_POSITION_M), TOOL_DOWN_XYZW.copy()),
        Wrench(np.array([0.0, 0.0, -BENCH_GOAL_FORCE_N]), np.zeros(3)),
        "press",
    )


def _ticks(loop, sensors: SyntheticSensors, goal, count: int, start_s: float) -> list:
    """`count` control ticks fed with fresh samples; BenchError on a tick without a plan."""
    results = []
    period_s = loop.model.control_period_s
    for i in range(count):
        now_s = start_s + i * period_s
        sensors.feed(loop.offer, now_s)
        result = loop.tick(now_s, goal)
        if result.plan is None:
            # A tick that holds skips the model: timing it would flatter the figure.
            raise BenchError(f"control tick at {now_s:.3f} s made no plan: {result.problems}")
        results.append(result)
    return results


def planner_section(args) -> dict:
    """Plan and tick latency, throughput, FLOPs and the PyTorch-eager reference planner."""
    import dataclasses

    import torch

    from wmpc.config import ModelConfig, PlannerConfig, SafetyConfig, SensorBufferConfig
    from wmpc.model import WorldModel
    from wmpc.planning import Planner, plan_flops
    from wmpc.runtime import ControlLoop
    from wmpc.training.reference_planner import TorchReferencePlanner
    from wmpc.training.train import load_checkpoint

    repeats = int(args.repeats)
    if repeats < 2:
        raise BenchError(f"--repeats = {repeats}: need at least 2 timed plans for percentiles")
    model_dir = _model_dir(args.model)
    model_config = ModelConfig(model_dir=str(model_dir), intra_op_threads=PLANNER_THREADS)
    model = WorldModel.from_config(model_config)
    checkpoint = _checkpoint(model_dir, dict(model.manifest.raw))
    default = PlannerConfig()
    budget = dataclasses.replace(default, **TDMPC2_BUDGET)
    safety = SafetyConfig()
    goal = _bench_goal()
    _say(
        f"planner: model '{model.manifest.name}' ({model.precision}, {model.provider}) from "
        f"{model_dir}, {PLANNER_THREADS} threads"
    )

    flops = plan_flops(model, budget)
    _say("planner: fp32 GEMM peak ...")
    peak_gflops = gemm_peak_gflops()

    _say(f"planner: {repeats} control ticks (preprocess, encode, plan, safety filter) ...")
    # The loop takes the audio window, rate and joint order from the manifest itself.
    loop = ControlLoop(model, default, safety, SensorBufferConfig(), goal.task)
    sensors = SyntheticSensors(model.manifest.raw)
    warm = _ticks(loop, sensors, goal, 5, sensors.start_s)
    ticks = _ticks(loop, sensors, goal, repeats, sensors.start_s + 5 * model.control_period_s)
    tick_p50, tick_p99 = percentiles_ms([r.latency_s for r in ticks])
    z = warm[0].z  # (1, latent): the encoding of a complete, realistic observation

    # Our TD-MPC2-budget plans and the torch reference's are timed interleaved, so a change of
    # load on a shared machine hits both alike; the slower reference is timed on every
    # `every`-th round only (about 50 plans), which still gives a steady median.
    every = max(1, repeats // 50)
    _say(
        f"planner: {repeats} plans at the TD-MPC2 budget ({_budget_name(budget)}), "
        f"interleaved with {-(-repeats // every)} PyTorch-eager reference plans ..."
    )
    threads_before = torch.get_num_threads()
    torch.set_num_threads(PLANNER_THREADS)
    try:
        ours = Planner(model, budget, safety.workspace_min_m, safety.workspace_max_m)
        reference = TorchReferencePlanner(
            load_checkpoint(checkpoint), budget, safety.workspace_min_m, safety.workspace_max_m
        )
        budget_s, torch_s = time_interleaved(
            lambda: ours.plan(z, goal), lambda: reference.plan(z, goal), repeats, every
        )
    finally:
        torch.set_num_threads(threads_before)
    budget_p50, budget_p99 = percentiles_ms(budget_s)
    torch_p50, torch_p99 = percentiles_ms(torch_s)
    if budget == default:
        _say("planner: the default config is the TD-MPC2 budget; one measurement serves both")
        plan_p50, plan_p99 = budget_p50, budget_p99
    else:
        _say(f"planner: {repeats} plans at the default config ({_budget_name(default)}) ...")
        planner = Planner(model, default, safety.workspace_min_m, safety.workspace_max_m)
        plan_p50, plan_p99 = percentiles_ms(time_calls(lambda: planner.plan(z, goal), repeats))

    steps = budget.samples * budget.horizon * budget.iterations
    return {
        "model_name": model.manifest.name,
        "model_precision": model.precision,
        "planner_provider": model.provider,
        "planner_threads": PLANNER_THREADS,
        "planner_int8_cpu_kernels": model.int8_cpu_kernels,
        "plan_ms_p50": plan_p50,
        "plan_ms_p99": plan_p99,
        "tdmpc2_budget_plan_ms_p50": budget_p50,
        "tdmpc2_budget_plan_ms_p99": budget_p99,
        "latent_steps_per_s": steps / (budget_p50 / 1e3),
        "plan_flops": flops,
        "achieved_gflops": flops / (budget_p50 / 1e3) / 1e9,
        "gemm_peak_gflops": peak_gflops,
        "torch_eager_plan_ms_p50": torch_p50,
        "torch_eager_plan_ms_p99": torch_p99,
        "speedup_vs_torch_eager": torch_p50 / budget_p50,
        "tick_ms_p50": tick_p50,
        "tick_ms_p99": tick_p99,
    }


def _budget_name(config) -> str:
    """'K x iterations x H' of a planner config."""
    return f"{config.samples} x {config.iterations} x H{config.horizon}"


SECTIONS["planner"] = planner_section


def e2e_section(args) -> dict:
    """Sensor stamp -> command publish latency through DDS with a real runtime_node process."""
    from wmpc.nodes.bench_e2e import measure

    return measure(args.model, duration_s=float(args.e2e_seconds))


def _collect(argv: list[str]) -> int:
    """`wmpc ARGV` (a collect) in this process; its report goes to stderr, since the
    bench's stdout is for its own figures (--json)."""
    import contextlib

    from wmpc.cli import main as wmpc_main

    with contextlib.redirect_stdout(sys.stderr):
        return wmpc_main(argv)


def replay_section(args) -> dict:
    """Replay throughput flat out (640x480 images) and offline evaluate speed."""
    from wmpc.bag.player import bench_replay

    figures = {k: v for k, v in bench_replay().items() if k.startswith(("replay_", "spacing_"))}
    from wmpc.evaluate import bench_evaluate

    bag = args.bag
    if not bag:
        import tempfile

        # One press episode by the scripted expert (about 3 s to success, then 3 s holding:
        # a 6 s bag), recorded as `wmpc collect` does.
        out = Path(tempfile.mkdtemp(prefix="wmpc_bench_")) / "episodes"
        argv = ["collect", str(out), "--episodes", "1", "--seed", "7"]
        argv += ["--tasks", "press", "--controllers", "expert", "--linger-s", "3"]
        if _collect(argv) != 0:
            raise BenchError("recording the evaluation bag with `wmpc collect` failed")
        bag = str(next(p for p in sorted(out.iterdir()) if p.is_dir()))
    figures.update(bench_evaluate(bag, args.model))
    return figures


SECTIONS["e2e"] = e2e_section
SECTIONS["replay"] = replay_section


# ---- sim ---------------------------------------------------------------------------------------

SIM_TASK = "press"  # contact makes audio clicks and tactile load, so every sensor has work
SIM_SEED = 0
SIM_RENDER_HW = (480, 640)
SIM_RENDER_REPEATS = 30
# A seed whose first three `wmpc collect` episodes are reach, press and push.
COLLECT_SEED = 1
COLLECT_EPISODE_SIM_S = 4.0  # about how long a collected episode runs, to size the run


def sim_section(args) -> dict:
    """Sim node RTF with every sensor over DDS, headless and collection speed, render time."""
    import os

    from wmpc.nodes.bench_sim import measure_sim_node

    sim_seconds = float(args.sim_seconds)
    if not sim_seconds > 0:
        raise BenchError(f"--sim-seconds = {sim_seconds}: need a positive sim duration")
    figures: dict[str, float | int] = {"sim_load_avg_1min": os.getloadavg()[0]}
    _say(f"sim: one {SIM_RENDER_HW[1]}x{SIM_RENDER_HW[0]} camera render ...")
    figures["sim_render_ms_640x480"] = _sim_render_ms(SIM_RENDER_HW, SIM_RENDER_REPEATS)
    _say(f"sim: headless {SIM_TASK} episodes (physics + expert) for {sim_seconds:g} s sim ...")
    figures.update(_sim_headless(sim_seconds))
    _say(
        f"sim: sim_node flat out with every sensor on (640x480 camera at 30 Hz) and a DDS "
        f"listener process, {sim_seconds:g} s sim ..."
    )
    figures.update(measure_sim_node(sim_seconds, SIM_TASK, SIM_SEED))
    _say("sim: headless `wmpc collect` at the model's input resolution ...")
    figures.update(_collect_speed(sim_seconds))
    return figures


def _sim_render_ms(height_width: tuple[int, int], repeats: int) -> float:
    """Median time (ms) of one offscreen camera render of the sim scene at that size."""
    from wmpc.config import SimConfig
    from wmpc.sim.world import SimWorld

    height, width = height_width
    world = SimWorld(SimConfig(camera_width=width, camera_height=height), SIM_SEED)
    try:
        world.reset(SIM_TASK, SIM_SEED)
        p50_ms, _ = percentiles_ms(time_calls(world.read_camera, repeats, warmup=3))
    finally:
        world.close()
    return p50_ms


def _sim_headless(sim_seconds: float) -> dict:
    """Physics + scripted expert without sensors: sim s per wall s and per CPU s."""
    from wmpc.sim.episodes import run_episodes

    # The first episode is a warm-up (scene built, caches filled); the clock runs from its end.
    marks: list[tuple[float, float, float]] = []

    def mark(_index: int, result: dict) -> None:
        marks.append((result["sim_s"], time.perf_counter(), time.process_time()))

    episode_sim_s = 3.0  # the expert's press episodes end on success after about this long
    episodes = 1 + max(1, int(np.ceil(sim_seconds / episode_sim_s)))
    run_episodes(SIM_TASK, "expert", episodes, SIM_SEED, progress=mark)
    sim_s = sum(m[0] for m in marks[1:])
    wall_s = marks[-1][1] - marks[0][1]
    cpu_s = marks[-1][2] - marks[0][2]
    return {"sim_headless_rtf": sim_s / wall_s, "sim_headless_cpu_rtf": sim_s / cpu_s}


def _collect_speed(sim_seconds: float) -> dict:
    """`wmpc collect` (default task and controller mix) into a temp dir: sim s per wall s.

    Collection renders the camera at SimConfig's size (160x120, the 4:3 of the published
    640x480), which preprocessing centre-crops and resizes to the model's input (64x64 in
    the shipped manifest): the resolution the model's data is made at. Rendering 64x64
    directly would be cheaper but would give other pixels than the model was trained on.
    """
    import importlib
    import json
    import tempfile

    from wmpc.config import SimConfig

    # What collect imports is imported before the clock starts: import time is not
    # collection time.
    for module in ("wmpc.commands.collect", "wmpc.sim.world", "wmpc.training.dataset"):
        importlib.import_module(module)
    episodes = max(1, int(np.ceil(sim_seconds / COLLECT_EPISODE_SIM_S)))
    with tempfile.TemporaryDirectory(prefix="wmpc_bench_collect_") as tmp:
        out = Path(tmp) / "episodes"
        argv = ["collect", str(out), "--episodes", str(episodes), "--seed", str(COLLECT_SEED)]
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        code = _collect(argv)
        wall_s = time.perf_counter() - wall_start
        cpu_s = time.process_time() - cpu_start
        if code != 0:
            raise BenchError(f"`wmpc {' '.join(argv)}` failed with exit code {code}")
        infos = [json.loads(p.read_text()) for p in sorted(out.glob("episode_*/episode.json"))]
    if len(infos) != episodes:
        raise BenchError(f"`wmpc collect` recorded {len(infos)} of {episodes} episodes")
    sim_s = sum(info["sim_s"] for info in infos)
    # The whole run (world and renderer built, bags written), imports excluded.
    sim_config = SimConfig()
    return {
        "collect_rtf": sim_s / wall_s,
        "collect_cpu_rtf": sim_s / cpu_s,
        "collect_episodes": episodes,
        "collect_sim_s": sim_s,
        "collect_camera_width": sim_config.camera_width,
        "collect_camera_height": sim_config.camera_height,
    }


SECTIONS["sim"] = sim_section
