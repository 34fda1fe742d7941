"""`wmpc replay`: scheduling (no ROS), then real playback over DDS, in-process and as a process.

Receive-side checks are of order and count only; spacing accuracy is measured by
`wmpc.bag.player.bench_replay()`, not asserted here.
"""

from __future__ import annotations

import contextlib
import os
import pty
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.msg import ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosbags.interfaces import QosDurability, QosReliability
from rosbags.typesys import Stores, get_typestore
from rosgraph_msgs.msg import Clock
from std_msgs.msg import String
from std_srvs.srv import Trigger

from wmpc import cli
from wmpc.bag.player import (
    DEFAULT_QOS,
    PlaybackClock,
    Player,
    load_qos_overrides,
    parse_remaps,
    playback_qos,
    select_topics,
)
from wmpc.bag.reader import BagError, TopicInfo, open_bag
from wmpc.bag.writer import BagWriter, InstalledDefinitions
from wmpc.config import ConfigError, ReplayConfig, build_config
from wmpc.nodes.replay import ReplayNode

VENV = Path(__file__).resolve().parents[1] / ".venv"
STORE = get_typestore(Stores.ROS2_KILTED)
RECEIVE_QOS = QoSProfile(history=HistoryPolicy.KEEP_ALL, reliability=ReliabilityPolicy.RELIABLE)
# Keep-all + transient-local on both ends: a burst is never overwritten, and a subscriber
# matched a moment late still gets every sample the replay process published.
LATE_JOINER_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_ALL,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)
T0 = 1_700_000_000_000_000_000


def _late_joiner_override(tmp_path: Path) -> str:
    """A --qos-profile-overrides-path file giving /replay/tick LATE_JOINER_QOS."""
    path = tmp_path / "late_joiner_qos.yaml"
    path.write_text("/replay/tick:\n  history: keep_all\n  durability: transient_local\n")
    return str(path)


def _string(text: str) -> bytes:
    msg = STORE.types["std_msgs/msg/String"](text)
    return bytes(STORE.serialize_cdr(msg, "std_msgs/msg/String"))


def _tick_bag(path: Path, n: int, period_ns: int = 1_000_000, **kwargs) -> None:
    """/replay/tick 'tick i' every period_ns, and /replay/slow every 10th tick."""
    with BagWriter(path, definitions=InstalledDefinitions([VENV]), **kwargs) as writer:
        writer.add_topic("/replay/tick", "std_msgs/msg/String")
        writer.add_topic("/replay/slow", "std_msgs/msg/String")
        for i in range(n):
            writer.write("/replay/tick", T0 + i * period_ns, _string(f"tick {i}"))
            if i % 10 == 0:
                writer.write("/replay/slow", T0 + i * period_ns, _string(f"slow {i}"))


def _config(**values) -> ReplayConfig:
    return build_config(ReplayConfig, values)


def _texts(messages: list) -> list[str]:
    return [m.data for m in messages]


# ---- scheduling and options, without ROS --------------------------------------------------


def test_topic_selection_and_remaps():
    topics = [TopicInfo(n, "std_msgs/msg/String", 1) for n in ("/a", "/b", "/cam/x", "/cam/y")]
    names = lambda cfg: [t.name for t in select_topics(topics, cfg)]  # noqa: E731
    assert names(_config()) == ["/a", "/b", "/cam/x", "/cam/y"]
    assert names(_config(topics=["/a"], regex="^/cam")) == ["/a", "/cam/x", "/cam/y"]
    assert names(_config(regex="^/cam", exclude_regex="y$")) == ["/cam/x"]
    assert names(_config(exclude_topics=["/b"])) == ["/a", "/cam/x", "/cam/y"]
    assert parse_remaps(["/a:=/z", "b:=c"]) == {"/a": "/z", "b": "c"}
    with pytest.raises(ConfigError, match="'remap'"):
        _config(remap=["/a=/z"])
    with pytest.raises(ConfigError, match="'regex'"):
        _config(regex="(")


def test_qos_rules_and_override_file(tmp_path):
    reliable_latched = DEFAULT_QOS._replace(durability=QosDurability.TRANSIENT_LOCAL)
    best_effort = DEFAULT_QOS._replace(reliability=QosReliability.BEST_EFFORT)
    assert playback_qos([]) == DEFAULT_QOS
    assert playback_qos([reliable_latched, reliable_latched]) == reliable_latched
    assert playback_qos([reliable_latched, best_effort]) == DEFAULT_QOS  # disagree: default
    path = tmp_path / "qos.yaml"
    path.write_text(
        "/camera/image_raw:\n  reliability: best_effort\n  depth: 5\n"
        "/wmpc/goal:\n  durability: transient_local\n  deadline: {sec: 1, nsec: 5}\n"
    )
    overrides = load_qos_overrides(path)
    assert overrides["/camera/image_raw"].reliability == QosReliability.BEST_EFFORT
    assert overrides["/camera/image_raw"].depth == 5
    assert overrides["/wmpc/goal"].deadline.sec == 1
    path.write_text("/x:\n  reliability: sometimes\n")
    with pytest.raises(ConfigError, match="'reliability' = 'sometimes'"):
        load_qos_overrides(path)
    path.write_text("/x:\n  colour: red\n")
    with pytest.raises(ConfigError, match="'colour': unknown QoS setting"):
        load_qos_overrides(path)


def test_playback_clock_pause_resume_rate():
    now = [0]
    clock = PlaybackClock(2.0, now_ns=lambda: now[0])
    clock.reset(1_000)
    now[0] = 100
    assert clock.bag_now_ns() == 1_200
    clock.pause()
    now[0] = 10_000
    assert clock.bag_now_ns() == 1_200  # frozen
    clock.resume()
    now[0] = 10_050
    assert clock.bag_now_ns() == 1_300
    clock.set_rate(0.5)
    assert clock.wall_due_ns(1_400) == 10_250
    clock.set_rate(0.0)
    assert clock.bag_now_ns() == 1_300


def test_player_window_delay_loop_and_stop(tmp_path):
    _tick_bag(tmp_path / "bag", 200)
    with open_bag(tmp_path / "bag") as source:
        key = ("/replay/tick", "std_msgs/msg/String")
        got: list[bytes] = []
        cfg = _config(rate=0.0, start_offset_s=0.050, playback_duration_s=0.100, delay_s=0.05)
        stats = Player(source, {key: got.append}, cfg).run()
        assert stats.messages == 100 and got[0] == _string("tick 50")
        assert got[-1] == _string("tick 149")

        looped: list[bytes] = []
        player = Player(source, {key: looped.append}, _config(rate=0.0, loop=True))
        thread = threading.Thread(target=player.run)
        thread.start()
        deadline = time.monotonic() + 10
        while len(looped) < 450 and time.monotonic() < deadline:
            time.sleep(0.001)
        player.stop()
        thread.join(timeout=5)
    assert not thread.is_alive() and player.stats.loops >= 2
    assert looped[200:400] == looped[:200]


def test_player_plays_readable_messages_then_raises(tmp_path):
    _tick_bag(tmp_path / "bag", 3000)
    (storage,) = [p for p in (tmp_path / "bag").iterdir() if p.suffix == ".mcap"]
    os.truncate(storage, storage.stat().st_size // 2)
    with open_bag(tmp_path / "bag") as source:
        got: list[bytes] = []
        key = ("/replay/tick", "std_msgs/msg/String")
        player = Player(source, {key: got.append}, _config(rate=0.0))
        with pytest.raises(BagError, match="truncated"):
            player.run()
    assert got and got == [_string(f"tick {i}") for i in range(len(got))]


# ---- real playback over DDS, in-process ---------------------------------------------------


def _call(ros, client, request, what: str):
    ros.wait_until(lambda: client.wait_for_service(timeout_sec=0.05), 10, f"service {what}")
    future = client.call_async(request)
    ros.wait_until(future.done, 10, f"reply of {what}")
    return future.result()


def _set_rate(ros, client, value: float) -> bool:
    param = ParameterMsg(
        name="rate", value=ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=value)
    )
    result = _call(ros, client, SetParameters.Request(parameters=[param]), "set_parameters")
    return result.results[0].successful


def test_paused_step_rate_resume_clock_and_qos_override(ros, tmp_path):
    bag = tmp_path / "bag"
    _tick_bag(bag, 500, compression="message", max_file_bytes=20_000)  # 1 kHz, split, zstd
    qos_file = tmp_path / "qos.yaml"
    qos_file.write_text("/replay/slow:\n  durability: transient_local\n  depth: 3\n")
    node = ros.add(
        ReplayNode(
            bag,
            {
                "start_paused": True,
                "clock_hz": 100.0,
                "qos_profile_overrides_path": str(qos_file),
                "progress_period_s": 0.0,
            },
            context=ros.context,
        )
    )
    ticks = ros.collect(String, "/replay/tick", RECEIVE_QOS)
    slow = ros.collect(String, "/replay/slow", RECEIVE_QOS)
    clocks = ros.collect(Clock, "/clock")
    ctl = ros.node("replay_ctl")
    ros.wait_until(
        lambda: all(p.get_subscription_count() for p in node.publishers_by_key.values()),
        10,
        "DDS matching",
    )
    node.start()

    play_next = ctl.create_client(Trigger, "/replay_node/play_next")
    for _ in range(3):
        assert _call(ros, play_next, Trigger.Request(), "play_next").success
    # A step is the next message in bag time, on any topic: /replay/slow shares tick 0's stamp.
    ros.wait_until(lambda: len(ticks) + len(slow) == 3, 10, "three stepped messages")
    time.sleep(0.2)
    assert _texts(ticks) == ["tick 0", "tick 1"] and _texts(slow) == ["slow 0"]  # still paused
    assert _call(
        ros, ctl.create_client(Trigger, "/replay_node/is_paused"), Trigger.Request(), "is_paused"
    ).success

    params = ctl.create_client(SetParameters, "/replay_node/set_parameters")
    assert _set_rate(ros, params, 2.0) and node.player.rate == 2.0
    assert not _set_rate(ros, params, -1.0) and node.player.rate == 2.0

    info = ctl.get_publishers_info_by_topic("/replay/slow")
    assert info[0].qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL

    assert _call(
        ros, ctl.create_client(Trigger, "/replay_node/resume"), Trigger.Request(), "resume"
    ).success
    ros.wait_until(lambda: len(ticks) == 500, 20, "all 500 ticks")
    ros.wait_until(lambda: node.finished, 10, "the end of playback")
    assert _texts(ticks) == [f"tick {i}" for i in range(500)]
    assert _texts(slow) == [f"slow {i}" for i in range(0, 500, 10)]
    stamps = [c.clock.sec * 1_000_000_000 + c.clock.nanosec for c in clocks]
    assert stamps and stamps == sorted(stamps)
    # /clock is wall-driven: it may run ahead of a lagging publisher, but never backwards.
    assert stamps[0] >= T0 and stamps[-1] >= T0 + 400_000_000
    assert node.error is None


def test_upstream_split_bag_with_filters_and_remap(ros, external_data):
    bag = external_data / "rosbag2" / "sqlite3" / "wbag"
    node = ros.add(
        ReplayNode(
            bag,
            {
                "topics": ["AAA", "BBB", "CCC"],
                "exclude_topics": ["BBB"],
                "remap": ["AAA:=/renamed"],
                "rate": 0.0,
                "start_paused": True,
                "progress_period_s": 0.0,
            },
            context=ros.context,
        )
    )
    assert sorted(p.topic_name for p in node.publishers_by_key.values()) == ["/CCC", "/renamed"]
    renamed = ros.collect(String, "/renamed", RECEIVE_QOS)
    ccc = ros.collect(String, "/CCC", RECEIVE_QOS)
    ros.wait_until(
        lambda: all(p.get_subscription_count() for p in node.publishers_by_key.values()),
        10,
        "DDS matching",
    )
    node.start()
    node.player.resume()
    counts = {t.name: t.count for t in node.source.topics()}
    ros.wait_until(
        lambda: len(renamed) == counts["AAA"] and len(ccc) == counts["CCC"], 20, "all of AAA, CCC"
    )
    ros.wait_until(lambda: node.finished, 10, "the end of playback")
    assert node.error is None and node.player.stats.per_topic == {
        "AAA": counts["AAA"],
        "CCC": counts["CCC"],
    }


# ---- as a process -------------------------------------------------------------------------


def _replay_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "wmpc.cli", "replay", *args]


def test_damaged_bag_replays_readable_messages_then_exits_2(ros, tmp_path):
    bag = tmp_path / "bag"
    _tick_bag(bag, 3000)
    (storage,) = [p for p in bag.iterdir() if p.suffix == ".mcap"]
    os.truncate(storage, storage.stat().st_size * 6 // 10)
    with open_bag(bag) as source:
        readable = [m for m in _drain(source) if m[0] == "/replay/tick"]
    assert 0 < len(readable) < 3000
    ticks = ros.collect(String, "/replay/tick", LATE_JOINER_QOS)
    proc = subprocess.Popen(
        _replay_cmd(
            str(bag),
            "--rate",
            "0",
            "--start-paused",
            "--qos-profile-overrides-path",
            _late_joiner_override(tmp_path),
            "--topics",
            "/replay/tick",
            "--ack-timeout",
            "20",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ctl = ros.node("replay_damaged_ctl")
        ros.wait_until(lambda: ctl.count_publishers("/replay/tick") > 0, 20, "the publisher")
        resume = ctl.create_client(Trigger, "/replay_node/resume")
        assert _call(ros, resume, Trigger.Request(), "resume").success
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, err
    error_lines = [line for line in err.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and "truncated" in error_lines[0] and "Traceback" not in err
    assert f"played {len(readable)} messages" in out
    ros.wait_until(lambda: len(ticks) == len(readable), 10, "every readable message")
    assert _texts(ticks) == [f"tick {i}" for i in range(len(readable))]


def _drain(source) -> list:
    out: list = []
    with contextlib.suppress(BagError):
        out.extend(source.messages())
    return out


def test_unknown_types_warn_once_per_topic(external_data):
    result = subprocess.run(
        _replay_cmd(str(external_data / "rosbag2" / "mcap" / "cdr_test"), "--rate", "0"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "not installed" in line]
    assert len(warnings) == 2
    assert any("/array_topic" in w for w in warnings) and any("/test_topic" in w for w in warnings)
    assert "played 0 messages" in result.stdout


def test_keyboard_step_rate_and_resume_on_a_real_terminal(ros, tmp_path):
    bag = tmp_path / "bag"
    _tick_bag(bag, 50, period_ns=10_000_000, storage="sqlite3", compression="file")
    ticks = ros.collect(String, "/replay/tick", LATE_JOINER_QOS)
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        _replay_cmd(
            str(bag),
            "--start-paused",
            "--progress-period",
            "0",
            "--qos-profile-overrides-path",
            _late_joiner_override(tmp_path),
        ),
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(slave)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        ros.wait_until(lambda: any("keyboard:" in line for line in lines), 20, "keyboard help")
        sub_node = ros.node("replay_kb_probe")
        ros.wait_until(
            lambda: sub_node.count_publishers("/replay/tick") > 0, 10, "the replay publisher"
        )
        os.write(master, b"s")
        ros.wait_until(lambda: len(ticks) == 1, 10, "one stepped message")
        os.write(master, b"\x1b[A")
        ros.wait_until(lambda: any("rate 1.1" in line for line in lines), 10, "the rate echo")
        os.write(master, b" ")
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=10)
        os.close(master)
    ros.wait_until(lambda: len(ticks) == 50, 10, "all 50 ticks")
    assert _texts(ticks) == [f"tick {i}" for i in range(50)]


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["/nonexistent/bag"], "bag not found"),
        (["{bag}", "--remap", "/a"], "'remap'"),
        (["{bag}", "--rate", "-1"], "'rate'"),
        (["{bag}", "--qos-profile-overrides-path", "{bad_qos}"], "unknown QoS setting"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, args, fragment):
    bag = tmp_path / "bag"
    _tick_bag(bag, 5)
    bad_qos = tmp_path / "qos.yaml"
    bad_qos.write_text("/replay/tick:\n  colour: red\n")
    argv = [a.format(bag=bag, bad_qos=bad_qos) for a in args]
    code = cli.main(["replay", *argv, "--disable-keyboard-controls"])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err
    assert "Traceback" not in err and len([x for x in err.splitlines() if "error" in x]) == 1


def test_missing_metadata_and_rosbags_rs_bag_play(external_data, tmp_path, capsys):
    bag = tmp_path / "wbag"
    shutil.copytree(external_data / "rosbag2" / "mcap" / "wbag", bag)
    bag.chmod(0o755)
    (bag / "metadata.yaml").chmod(0o644)
    (bag / "metadata.yaml").unlink()
    assert cli.main(["replay", str(bag), "--rate", "0", "--progress-period", "0"]) == 0
    assert "played 6074 messages" in capsys.readouterr().out
    rs = external_data / "rosbags_rs" / "test_bag_sqlite3"
    assert cli.main(["replay", str(rs), "--rate", "0", "--progress-period", "0"]) == 0
    assert "played 182 messages" in capsys.readouterr().out  # 3 topics of 2 skipped
