"""Collect simulated episodes as rosbag2 (MCAP) bags for training.

Runs the MuJoCo world headless with the reference controllers and writes one bag per episode,
OUT_DIR/episode_NNNN, with the standard topics at robot-like rates (camera 30 Hz, tactile and
arm states 100 Hz, audio in 512-sample chunks, commands at the 20 Hz control rate) plus
/wmpc/goal and /wmpc/privileged (the simulator's ground truth per control tick, the labels
only simulation can give). Episode i's task, controller and seed follow from --seed and i
alone, so a run can be resumed: finished episodes (those with episode.json) are skipped and
an unfinished one is recorded again (one collect per OUT_DIR at a time: OUT_DIR/.collect.lock).
After success an episode goes on for --linger-s, so the data also show holding still and
pressing steadily.

examples:
  wmpc collect data/sim --episodes 200 --seed 0
  wmpc collect data/press --episodes 20 --tasks press --controllers noisy_expert random
  wmpc collect data/tables --episodes 330 --seed 100 --table-height-m 0 0.05
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

HELP = "Collect simulated episodes as rosbag2 (MCAP) bags for training."

TASKS = ("reach", "press", "push")
# The mix covers solving the tasks (expert), near misses (noisy) and broad coverage (random).
CONTROLLER_WEIGHTS = {"expert": 0.25, "noisy_expert": 0.4, "random": 0.35}
EPISODE_FILE = "episode.json"
LOCK_FILE = ".collect.lock"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """OUT_DIR, --episodes, --seed and the mix of tasks and controllers."""
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder for the episode bags")
    parser.add_argument("--episodes", type=int, required=True, help="episodes to have in OUT_DIR")
    parser.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    parser.add_argument(
        "--tasks", nargs="+", choices=TASKS, default=list(TASKS), help="tasks, in turn"
    )
    parser.add_argument(
        "--controllers",
        nargs="+",
        choices=(*CONTROLLER_WEIGHTS, "oracle"),
        default=list(CONTROLLER_WEIGHTS),
        help="controllers drawn per episode (default: expert, noisy_expert, random)",
    )
    parser.add_argument(
        "--linger-s", type=float, default=1.0, help="sim seconds recorded after success"
    )
    parser.add_argument("--camera-rate-hz", type=float, default=30.0, help="camera frame rate")
    parser.add_argument(
        "--state-rate-hz", type=float, default=100.0, help="joints, ee pose, wrench, tactile rate"
    )
    parser.add_argument(
        "--table-height-m",
        type=float,
        nargs="+",
        default=[0.0],
        metavar=("LOW", "HIGH"),
        help="table top height above the arm's base (m): one value, or LOW HIGH to draw each "
        "episode's uniformly (default 0, the scene's table; at most 0.05)",
    )
    parser.add_argument(
        "--storage", choices=("mcap", "sqlite3"), default="mcap", help="bag storage format"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON summary at the end")


def episode_plan(index: int, seed: int, tasks, controllers) -> tuple[str, str, int]:
    """(task, controller, episode seed) of episode `index`: a function of (seed, index) only."""
    import numpy as np

    rng = np.random.default_rng([seed, index])
    weights = np.array([CONTROLLER_WEIGHTS.get(c, 0.1) for c in controllers])
    controller = str(rng.choice(list(controllers), p=weights / weights.sum()))
    episode_seed = int(rng.integers(0, 2**31 - 1))
    return tasks[index % len(tasks)], controller, episode_seed


def record_episode(world, controller, task: str, seed: int, bag_path: Path, args: Any) -> dict:
    """Run one episode and write its bag; returns the task status and counts."""
    from wmpc.training.dataset import EpisodeBagWriter

    goal = world.reset(task, seed)
    controller.reset()
    chunk = 512
    sampler = _Sampler(1.0 / args.camera_rate_hz, 1.0 / args.state_rate_hz)
    linger_until_s = None
    ticks = 0
    eps = 1e-9
    with EpisodeBagWriter(bag_path, storage=args.storage) as bag_writer:
        bag = _OrderedBag(bag_writer)
        bag.write(bag_writer.goal, world.time_s, goal)
        while True:
            status = world.task_status()
            if status["success"] and linger_until_s is None:
                linger_until_s = world.time_s + args.linger_s
            over_time = status["time_s"] >= status["time_limit_s"] - eps
            if over_time or (linger_until_s is not None and world.time_s >= linger_until_s - eps):
                break
            # A control tick: sensors at this instant, then the ground truth and the command.
            now_s = world.time_s
            sampler.sample(world, bag, now_s)
            bag.write(bag_writer.privileged, now_s, world.privileged())
            command = controller.act(world)
            bag.write(bag_writer.command, command)
            ticks += 1
            for i in range(world.steps_per_tick):
                world.step(command if i == 0 else None)
                while world.audio_available() >= chunk:
                    bag.write(bag_writer.audio, world.read_audio(chunk))
                if i < world.steps_per_tick - 1:  # the tick's last state is sampled next tick
                    sampler.sample(world, bag, world.time_s)
                bag.flush()
        bag.flush(wait=True)
        messages = bag_writer.bag.message_count
    status = world.task_status()
    return {"status": status, "ticks": ticks, "sim_s": world.time_s, "messages": messages}


class _OrderedBag:
    """Bag writes in the order the episode asks for them, camera frames drawn meanwhile.

    A camera frame is captured at its instant and rendered on the camera's thread while
    physics steps on; it is written once drawn, and the writes asked for after it wait in
    line behind it. The bag thus holds the same messages in the same order as if every frame
    had been rendered on the spot. Deferred writes keep their arguments: every sensor reader
    returns fresh arrays, so later steps cannot change them.
    """

    def __init__(self, bag) -> None:
        from collections import deque

        self.bag = bag
        self._waiting: deque = deque()  # (write function, args); images: (None, PendingImage)

    def write(self, write, *args) -> None:
        """Call `write(*args)` now, or after the frames still being drawn."""
        if self._waiting:
            self._waiting.append((write, args))
        else:
            write(*args)

    def image(self, pending) -> None:
        """Write the frame of `pending` (a PendingImage) once it is drawn."""
        self._waiting.append((None, pending))

    def flush(self, wait: bool = False) -> None:
        """Write what no longer waits for a frame (with `wait`: everything)."""
        while self._waiting:
            write, args = self._waiting[0]
            if write is None:
                if not (wait or args.done()):
                    return
                self.bag.image(args.result())
            else:
                write(*args)
            self._waiting.popleft()


class _Sampler:
    """Which sensors are due at an instant: the camera and the state streams at their rates."""

    def __init__(self, camera_period_s: float, state_period_s: float) -> None:
        self.camera_period_s = camera_period_s
        self.state_period_s = state_period_s
        self.next_camera_s = 0.0
        self.next_state_s = 0.0

    def sample(self, world, bag: _OrderedBag, now_s: float) -> None:
        """Write the sensors that are due at `now_s` (the camera frame as it is drawn)."""
        eps = 1e-9
        if now_s >= self.next_camera_s - eps:
            bag.image(world.request_camera())
            self.next_camera_s += self.camera_period_s * max(
                1, int((now_s - self.next_camera_s) / self.camera_period_s) + 1
            )
        if now_s >= self.next_state_s - eps:
            writer = bag.bag
            bag.write(writer.tactile, world.read_tactile())
            bag.write(writer.joints, world.read_joints())
            bag.write(writer.ee_pose, now_s, world.read_ee_pose())
            bag.write(writer.wrench, now_s, world.read_wrench())
            self.next_state_s += self.state_period_s * max(
                1, int((now_s - self.next_state_s) / self.state_period_s) + 1
            )


class _DirectoryLock:
    """OUT_DIR/.collect.lock holding our pid: two collects into one folder would each take the
    other's unfinished episode for a leftover and delete it."""

    def __init__(self, directory: Path):
        self.path = directory / LOCK_FILE

    def __enter__(self) -> _DirectoryLock:
        import os

        from wmpc.config import ConfigError

        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self.path.read_text().strip()
                if holder.isdigit() and _alive(int(holder)):
                    raise ConfigError(
                        f"another `wmpc collect` (pid {holder}) is writing to "
                        f"{self.path.parent}; wait for it or choose another OUT_DIR"
                    ) from None
                self.path.unlink(missing_ok=True)  # left behind by a collect that died
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            return self
        raise ConfigError(f"cannot take the lock {self.path}")

    def __exit__(self, *exc: object) -> None:
        self.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def table_height_range(values: list[float]) -> tuple[float, float]:
    """--table-height-m's one or two values as SimConfig.table_height_range_m, checked."""
    from wmpc.config import TABLE_HEIGHT_MAX_M, ConfigError

    if len(values) > 2:
        raise ConfigError(f"--table-height-m takes one height or LOW HIGH, got {values}")
    low_m, high_m = values[0], values[-1]
    if not 0.0 <= low_m <= high_m <= TABLE_HEIGHT_MAX_M:
        raise ConfigError(
            f"--table-height-m {' '.join(map(str, values))}: need 0 <= LOW <= HIGH <= "
            f"{TABLE_HEIGHT_MAX_M} (m above the arm's base)"
        )
    return (float(low_m), float(high_m))


def _check_table_range(out: Path, episodes: int, table_range_m: tuple[float, float]) -> None:
    """Resuming must draw tables as the finished episodes did (those of before the option: 0)."""
    from wmpc.config import ConfigError

    for index in range(episodes):
        info_path = out / f"episode_{index:04d}" / EPISODE_FILE
        if not info_path.is_file():
            continue
        recorded = tuple(json.loads(info_path.read_text()).get("table_height_range_m", (0, 0)))
        if recorded != table_range_m:
            raise ConfigError(
                f"{info_path.parent.name} in {out} was recorded with --table-height-m "
                f"{recorded[0]} {recorded[1]}, not {table_range_m[0]} {table_range_m[1]}; "
                "resume with the same heights or collect into another folder"
            )
        return


def run(args: Any) -> int:
    """Record the missing episodes of OUT_DIR, one bag each."""
    from wmpc.config import ConfigError

    if args.episodes < 1:
        raise ConfigError(f"--episodes must be >= 1, got {args.episodes}")
    for name, value in (
        ("--camera-rate-hz", args.camera_rate_hz),
        ("--state-rate-hz", args.state_rate_hz),
    ):
        if not value > 0:
            raise ConfigError(f"{name} must be > 0, got {value}")
    if args.linger_s < 0:
        raise ConfigError(f"--linger-s must be >= 0, got {args.linger_s}")
    table_height_range(args.table_height_m)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with _DirectoryLock(out):
        return _collect(args, out)


def _collect(args: Any, out: Path) -> int:
    """The body of `run`, under the folder's lock."""
    from wmpc.config import SimConfig
    from wmpc.sim.experts import make_controller
    from wmpc.sim.world import SimWorld
    from wmpc.training.dataset import jsonable

    table_range_m = table_height_range(args.table_height_m)
    _check_table_range(out, args.episodes, table_range_m)
    world = SimWorld(SimConfig(table_height_range_m=table_range_m), args.seed)
    started = time.perf_counter()
    recorded, skipped, successes, sim_total_s = 0, 0, 0, 0.0
    current: Path | None = None
    try:
        for index in range(args.episodes):
            name = f"episode_{index:04d}"
            bag_path = out / name
            if (bag_path / EPISODE_FILE).is_file():
                skipped += 1
                continue
            if bag_path.exists():  # left unfinished by an interrupted run
                shutil.rmtree(bag_path)
            task, controller_name, seed = episode_plan(
                index, args.seed, args.tasks, args.controllers
            )
            controller = make_controller(controller_name, task, seed)
            current = bag_path
            wall_start = time.perf_counter()
            result = record_episode(world, controller, task, seed, bag_path, args)
            wall_s = time.perf_counter() - wall_start
            info = {
                "index": index,
                "task": task,
                "controller": controller_name,
                "seed": seed,
                "base_seed": args.seed,
                "table_height_range_m": list(table_range_m),
                "table_height_m": world.layout.table_height_m,
                "wall_s": round(wall_s, 3),
                **result,
            }
            (bag_path / EPISODE_FILE).write_text(json.dumps(info, indent=1, default=jsonable))
            current = None
            recorded += 1
            success = bool(result["status"]["success"])
            successes += success
            sim_total_s += result["sim_s"]
            eta_s = (time.perf_counter() - started) / recorded * (args.episodes - index - 1)
            print(
                f"[{index + 1}/{args.episodes}] {name} {task} {controller_name} seed {seed}: "
                f"{'success' if success else 'no success'}, {result['ticks']} ticks, "
                f"{result['sim_s']:.1f} s sim in {wall_s:.1f} s; ETA {eta_s / 60:.0f} min",
                flush=True,
            )
    except KeyboardInterrupt:
        if current is not None and current.exists():
            shutil.rmtree(current)
        print(
            f"wmpc collect: interrupted after {recorded} new episodes; run the same command "
            "again to resume",
            file=sys.stderr,
        )
        return 130
    finally:
        world.close()
    wall_s = time.perf_counter() - started
    print(
        f"{recorded} episodes recorded ({successes} successes), {skipped} already there; "
        f"{sim_total_s:.0f} s sim in {wall_s:.0f} s wall -> {out}"
    )
    if args.json:
        print(
            json.dumps(
                {
                    "out_dir": str(out),
                    "recorded": recorded,
                    "skipped": skipped,
                    "successes": successes,
                    "sim_s": round(sim_total_s, 2),
                    "wall_s": round(wall_s, 2),
                }
            )
        )
    return 0
