"""Replay a rosbag2 bag onto live topics, with ros2 bag play options.

Reads MCAP and sqlite3 bags, split bags and zstd-compressed bags (per file or per message),
and publishes the raw messages without decoding them. Topics whose message type is not
installed are skipped with a warning. A damaged bag plays every readable message, then ends
with an error (exit code 2).

Controls while playing:
  keyboard (stdin is a terminal)   space = pause/resume, s or right = step, up/down = rate +-10 %
  services (std_srvs/srv/Trigger)  /replay_node/pause, resume, toggle_paused, play_next,
                                   is_paused (success = paused)
  rate                             ros2 param set /replay_node rate 2.0

examples:
  wmpc replay runs/bag --rate 2 --loop
  wmpc replay runs/bag --topics /camera/image_raw /joint_states --clock
  wmpc replay runs/bag --start-paused --remap /camera/image_raw:=/cam0/image_raw
  wmpc replay runs/bag --rate 0                 # as fast as possible
"""

from __future__ import annotations

import argparse
from typing import Any

HELP = "Replay a rosbag2 bag onto live topics, with ros2 bag play options."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """BAG and the ros2 bag play options."""
    parser.add_argument("bag", help="bag directory, its metadata.yaml, or one .mcap/.db3 file")
    parser.add_argument(
        "-r",
        "--rate",
        type=float,
        metavar="RATE",
        help="playback rate (default 1.0; 0 = as fast as possible)",
    )
    parser.add_argument("-l", "--loop", action="store_true", default=None, help="play in a loop")
    parser.add_argument(
        "--start-offset", type=float, metavar="S", help="skip this many seconds of the bag"
    )
    parser.add_argument(
        "-d", "--delay", type=float, metavar="S", help="wait this long before playing"
    )
    parser.add_argument(
        "--playback-duration",
        type=float,
        metavar="S",
        help="play this many seconds of bag time (<= 0: to the end)",
    )
    parser.add_argument("--topics", nargs="+", metavar="TOPIC", help="play only these topics")
    parser.add_argument(
        "--exclude-topics", nargs="+", metavar="TOPIC", help="do not play these topics"
    )
    parser.add_argument("-e", "--regex", metavar="REGEX", help="play topics matching REGEX")
    parser.add_argument(
        "-x", "--exclude-regex", metavar="REGEX", help="do not play topics matching REGEX"
    )
    parser.add_argument(
        "-m", "--remap", nargs="+", metavar="FROM:=TO", help="publish topic FROM as TO"
    )
    parser.add_argument(
        "--clock",
        nargs="?",
        type=float,
        const=40.0,
        metavar="HZ",
        help="publish bag time on /clock at HZ (40 if no value is given)",
    )
    parser.add_argument(
        "--qos-profile-overrides-path",
        metavar="FILE",
        help="YAML of per-topic publisher QoS, in ros2 bag's format",
    )
    parser.add_argument(
        "-p", "--start-paused", action="store_true", default=None, help="start paused"
    )
    parser.add_argument(
        "--disable-keyboard-controls",
        action="store_true",
        default=None,
        help="ignore the keyboard even when stdin is a terminal",
    )
    parser.add_argument(
        "--ack-timeout",
        type=float,
        metavar="S",
        help="at the end, wait up to S for reliable subscribers to acknowledge (default 2)",
    )
    parser.add_argument(
        "--progress-period",
        type=float,
        metavar="S",
        help="seconds between progress lines (default 1; 0 = none)",
    )


def overrides_from_args(args: Any) -> dict[str, Any]:
    """The ReplayConfig parameters the command line sets (unset options keep their defaults)."""
    pairs = {
        "rate": args.rate,
        "loop": args.loop,
        "start_offset_s": args.start_offset,
        "delay_s": args.delay,
        "playback_duration_s": (
            None if args.playback_duration is None else max(0.0, args.playback_duration)
        ),
        "topics": args.topics,
        "exclude_topics": args.exclude_topics,
        "regex": args.regex,
        "exclude_regex": args.exclude_regex,
        "remap": args.remap,
        "clock_hz": args.clock,
        "qos_profile_overrides_path": args.qos_profile_overrides_path,
        "start_paused": args.start_paused,
        "keyboard_controls": None if args.disable_keyboard_controls is None else False,
        "progress_period_s": args.progress_period,
        "wait_for_all_acked_s": args.ack_timeout,
    }
    return {k: v for k, v in pairs.items() if v is not None}


def run(args: Any) -> int:
    """Play the bag until its end (or Ctrl-C); exit code 2 on a damaged bag."""
    from wmpc.nodes.replay import run as run_replay

    return run_replay(args)
