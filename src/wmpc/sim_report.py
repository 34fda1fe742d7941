"""The report `wmpc sim` writes for the learned controller: what the arm did, from its bag.

runs/sim-<time>-<task>/
  bag/              every topic but the camera frames (MCAP, zstd per message); with
                    --record-camera the frames too (about 0.9 MB each before compression)
  results.json      the figures `wmpc sim --json` prints
  closed_loop.png   left, per task: reach, the end effector's distance to the goal; press,
                    the wrist's normal force against the 5 N +- 1 N band and the commanded
                    feed-forward force; push, the pad's path in the table plane and the goals.
                    Right: the runtime's plan latency (its /diagnostics, once a second).

Episodes start where a new goal arrives on /wmpc/goal. Everything is read from the bag by
header stamp (sim time), so the report is of what went over DDS, not of the simulator's
internals. No node here: the bag is read with wmpc.bag and decoded with wmpc.codecs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wmpc import codecs

PLOT_FILE = "closed_loop.png"
RESULTS_FILE = "results.json"
BAG_DIR = "bag"
POSE_TOPICS = ("/arm/ee_pose", "/arm/pose_command", "/wmpc/goal")
WRENCH_TOPICS = ("/arm/wrench", "/arm/wrench_command")
PRESS_FORCE_BAND_N = (4.0, 6.0)  # wmpc.sim.tasks: 5 N +- 1 N


def read_series(bag_dir: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """topic -> (stamps_s (N,), xyz (N, 3)): positions of the pose topics, forces of the
    wrench topics, and the plan latency of /diagnostics as (stamps_s, plan_ms (N, 1))."""
    wanted = set(POSE_TOPICS) | set(WRENCH_TOPICS) | {"/diagnostics"}
    from wmpc.bag.reader import open_bag

    rows: dict[str, list] = {topic: [] for topic in wanted}
    bag = open_bag(bag_dir)
    for topic, msgtype, _, raw in bag.messages(wanted):
        msg = bag.deserialize(raw, msgtype)
        if topic in POSE_TOPICS:
            stamp_s, pose = codecs.pose_from_msg(msg)
            rows[topic].append((stamp_s, *pose.position_m))
        elif topic in WRENCH_TOPICS:
            stamp_s, wrench = codecs.wrench_from_msg(msg)
            rows[topic].append((stamp_s, *wrench.force_n))
        else:
            for status in msg.status:
                values = {kv.key: kv.value for kv in status.values}
                if status.name == "wmpc: runtime" and "plan_ms" in values:
                    stamp_s = codecs.stamp_to_s(msg.header.stamp)
                    rows[topic].append((stamp_s, float(values["plan_ms"])))
    series = {}
    for topic, found in rows.items():
        table = np.array(found, dtype=np.float64).reshape(len(found), -1)
        series[topic] = (table[:, 0], table[:, 1:]) if found else (np.zeros(0), np.zeros((0, 3)))
    return series


def _goal_at(series: dict, stamps_s: np.ndarray) -> np.ndarray:
    """(N, 3) the goal position in force at each stamp (NaN before the first goal)."""
    goal_s, goal_m = series["/wmpc/goal"]
    index = np.searchsorted(goal_s, stamps_s, side="right") - 1
    out = np.full((stamps_s.size, 3), np.nan)
    known = index >= 0
    out[known] = goal_m[index[known]]
    return out


def write_plot(bag_dir: str | Path, task: str, out_png: str | Path) -> Path:
    """closed_loop.png for one `wmpc sim` run of `task` from its bag."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = read_series(bag_dir)
    ee_s, ee_m = series["/arm/ee_pose"]
    goal_s, goal_m = series["/wmpc/goal"]
    fig, (ax, ax_latency) = plt.subplots(
        1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [3, 1]}
    )
    if task == "press":
        wrist_s, wrist_n = series["/arm/wrench"]
        command_s, command_n = series["/arm/wrench_command"]
        ax.axhspan(*PRESS_FORCE_BAND_N, color="tab:green", alpha=0.15, label="5 N +- 1 N")
        ax.plot(wrist_s, wrist_n[:, 2], lw=0.6, label="wrist normal force (measured)")
        ax.plot(command_s, -command_n[:, 2], lw=0.9, label="feed-forward force (commanded)")
        # Touch-down impacts spike to tens of newtons for a few milliseconds; the band matters.
        ax.set_ylim(-2.0, 4.0 * PRESS_FORCE_BAND_N[1])
        ax.set_ylabel("force (N), clipped at 24 N")
    elif task == "push":
        starts = [*goal_s, np.inf]
        for k in range(len(goal_s)):
            inside = (ee_s >= starts[k]) & (ee_s < starts[k + 1])
            ax.plot(ee_m[inside, 0], ee_m[inside, 1], lw=0.8)
        ax.scatter(goal_m[:, 0], goal_m[:, 1], marker="x", color="k", label="push goals")
        ax.set_xlabel("x (m)")
        ax.set_ylabel("y (m)")
        ax.set_aspect("equal", adjustable="datalim")
    else:
        distance_m = np.linalg.norm(ee_m - _goal_at(series, ee_s), axis=1)
        ax.semilogy(ee_s, np.maximum(distance_m, 1e-4), lw=0.8, label="end effector to goal")
        ax.axhline(0.01, color="tab:green", ls="--", lw=0.8, label="1 cm (success)")
        ax.set_ylabel("distance (m)")
    if task != "push":
        for stamp_s in goal_s:
            ax.axvline(stamp_s, color="0.6", lw=0.6)
        ax.set_xlabel("sim time (s); grey lines: a new episode's goal")
    ax.set_title(f"{task}: {len(goal_s)} episode(s)")
    ax.legend(loc="upper right", fontsize=8)
    _, plan_ms = series["/diagnostics"]
    if plan_ms.size:
        ax_latency.hist(plan_ms[:, 0], bins=30, color="tab:gray")
    ax_latency.set_xlabel("plan latency (ms), once a second")
    ax_latency.set_ylabel("count")
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
