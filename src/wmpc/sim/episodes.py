"""Headless episodes: a reference controller drives SimWorld, and success is tallied.

`run_episodes` is what `wmpc sim` calls without ROS: per-episode metrics and a summary
(success rate, time to success, press force error, real-time factor).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

from wmpc.config import SimConfig
from wmpc.sim.experts import CONTROLLER_NAMES, make_controller
from wmpc.sim.tasks import SimError, check_task
from wmpc.sim.world import SimWorld

log = logging.getLogger(__name__)


def run_episode(world: SimWorld, controller, task: str, seed: int) -> dict:
    """Reset `world` to (task, seed), run `controller` until success or the time limit."""
    world.reset(task, seed)
    controller.reset()
    start_s = time.perf_counter()
    ticks = 0
    while not world.task_status()["done"]:
        world.step_tick(controller.act(world))
        ticks += 1
    wall_s = time.perf_counter() - start_s
    status = world.task_status()
    status.update(seed=seed, ticks=ticks, sim_s=world.time_s, wall_s=wall_s)
    return status


def _mean(values: list) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def summarise(task: str, results: list[dict]) -> dict:
    """Summary over episodes: success rate, means of time to success and task metrics."""
    n = len(results)
    sim_s = sum(r["sim_s"] for r in results)
    wall_s = sum(r["wall_s"] for r in results)
    summary = {
        "episodes": n,
        "successes": sum(r["success"] for r in results),
        "success_rate": sum(r["success"] for r in results) / n if n else 0.0,
        "time_to_success_s_mean": _mean([r["time_to_success_s"] for r in results]),
        "sim_s": sim_s,
        "wall_s": wall_s,
        "real_time_factor": sim_s / wall_s if wall_s > 0 else None,
    }
    if task == "reach":
        summary["final_position_error_m_mean"] = _mean([r["position_error_m"] for r in results])
    elif task == "press":
        summary["press_force_error_n_mean"] = _mean(
            [r["press_force_error_n_mean"] for r in results]
        )
        summary["min_contact_marker_distance_m_mean"] = _mean(
            [r["min_contact_marker_distance_m"] for r in results]
        )
    else:
        summary["final_block_goal_distance_m_mean"] = _mean(
            [r["block_goal_distance_m"] for r in results]
        )
    return summary


def run_episodes(
    task: str,
    controller_name: str,
    episodes: int,
    seed: int,
    *,
    config: SimConfig | None = None,
    controller_options: dict | None = None,
    progress: Callable[[int, dict], None] | None = None,
) -> dict:
    """Run `episodes` seeded episodes (seeds seed, seed+1, ...) with one reference controller.

    Returns {"task", "controller", "seed", "controller_options", "summary", "per_episode"};
    `progress(index, episode_result)` is called after each episode.
    """
    check_task(task)
    if controller_name not in CONTROLLER_NAMES:
        raise SimError(
            f"unknown controller '{controller_name}'; choose one of {list(CONTROLLER_NAMES)}"
        )
    if episodes < 1:
        raise SimError(f"episodes must be >= 1, got {episodes}")
    options = dict(controller_options or {})
    world = SimWorld(config, seed, sensors_enabled=False)
    results = []
    try:
        for index in range(episodes):
            episode_seed = seed + index
            controller = make_controller(controller_name, task, episode_seed, **options)
            result = run_episode(world, controller, task, episode_seed)
            results.append(result)
            log.info(
                "%s %s seed %d: success=%s t=%.2fs",
                task,
                controller_name,
                episode_seed,
                result["success"],
                result["sim_s"],
            )
            if progress is not None:
                progress(index, result)
    finally:
        world.close()
    return {
        "task": task,
        "controller": controller_name,
        "seed": seed,
        "controller_options": options,
        "summary": summarise(task, results),
        "per_episode": results,
    }
