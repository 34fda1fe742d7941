"""`wmpc record` as a real process over real DDS, stopped by real signals; bags read back."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message
from rosbags.rosbag2 import Reader
from std_msgs.msg import Bool, String

from wmpc import cli
from wmpc.bag.reader import open_bag
from wmpc.nodes.common import LATCHED_QOS

VENV = Path(__file__).resolve().parents[1] / ".venv"
# Deep enough that a burst is never overwritten before the recorder acknowledges it.
BURST_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=1000, reliability=ReliabilityPolicy.RELIABLE
)


class Recorder:
    """`wmpc record` in a subprocess, with its stdout lines collected as they come."""

    def __init__(self, out: Path, *args: str):
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "wmpc.cli",
                "record",
                str(out),
                "--progress-period",
                "0.1",
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.errors: list[str] = []
        # One reader per pipe, and only they read: communicate() beside them closed stdout
        # under the stdout reader (ValueError in its thread) and could take its lines.
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.lines), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.errors), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(pipe, into: list[str]) -> None:
        for line in pipe:
            into.append(line.rstrip())

    def subscribed(self, topic: str) -> bool:
        """True once the recorder said it subscribed to `topic`."""
        return any(line.startswith(f"record: subscribed to {topic} ") for line in self.lines)

    def received(self) -> int:
        """Messages the recorder reported in its latest progress line."""
        counts = [
            int(m.group(1)) for line in self.lines if (m := re.match(r"record: (\d+) m", line))
        ]
        return counts[-1] if counts else 0

    def stop(self, sig: int) -> tuple[int, str]:
        """Send `sig`, wait for the exit; (exit code, stderr)."""
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        for reader in self._readers:
            reader.join(timeout=5)
        return self.proc.returncode, "\n".join(self.errors)


def _metadata(bag: Path) -> dict:
    return yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]


def _installed_hash(msgtype: str) -> str:
    package, _, name = msgtype.split("/")
    doc = json.loads((VENV / "share" / package / "msg" / f"{name}.json").read_text())
    return doc["type_hashes"][0]["hash_string"]


def test_sigint_closes_a_valid_bag_with_every_received_message(ros, tmp_path):
    node = ros.node("record_test_pub")
    chatter = node.create_publisher(String, "/rec/chatter", BURST_QOS)
    estop = node.create_publisher(Bool, "/rec/estop", LATCHED_QOS)
    estop.publish(Bool(data=True))  # latched before the recorder exists
    bag = tmp_path / "bag"
    rec = Recorder(bag, "--topics", "/rec/chatter", "/rec/estop")
    try:
        ros.wait_until(
            lambda: rec.subscribed("/rec/chatter") and rec.subscribed("/rec/estop"),
            20,
            "the recorder to subscribe",
        )
        ros.wait_until(lambda: chatter.get_subscription_count() > 0, 10, "DDS matching")
        sent = [String(data=f"message {i}") for i in range(300)]
        for msg in sent:
            chatter.publish(msg)
        ros.wait_until(lambda: rec.received() >= 301, 20, "the recorder to receive 301")
    finally:
        code, err = rec.stop(signal.SIGINT)
    assert code == 0, err
    meta = _metadata(bag)
    assert meta["version"] == 9 and meta["storage_identifier"] == "mcap"
    assert meta["message_count"] == 301
    topics = {t["topic_metadata"]["name"]: t for t in meta["topics_with_message_count"]}
    assert topics["/rec/chatter"]["message_count"] == 300
    estop_meta = topics["/rec/estop"]["topic_metadata"]
    assert estop_meta["offered_qos_profiles"][0]["durability"] == "transient_local"
    assert estop_meta["type_description_hash"] == _installed_hash("std_msgs/msg/Bool")
    # rosbags, independently of our reader, sees every message in publish order.
    with Reader(bag) as reader:
        raw = [(c.topic, data) for c, _, data in reader.messages()]
        msgdefs = {c.topic: c.msgdef.data for c in reader.connections}
    # The wire format pads to 4 bytes, so compare decoded messages, not bytes.
    assert [deserialize_message(d, String) for t, d in raw if t == "/rec/chatter"] == sent
    assert [deserialize_message(d, Bool) for t, d in raw if t == "/rec/estop"] == [Bool(data=True)]
    assert msgdefs["/rec/chatter"].strip() == "string data"
    with open_bag(bag) as source:
        assert source.message_count == 301 and not source.all_problems()


def test_sigterm_with_all_topics_sqlite_and_size_splits(ros, tmp_path):
    bag = tmp_path / "bag"
    rec = Recorder(
        bag,
        "--all",
        "--exclude-regex",
        "rosout|parameter_events",
        "--storage",
        "sqlite3",
        "--max-size",
        "3000",
    )
    try:
        ros.wait_until(lambda: any("writing" in line for line in rec.lines), 20, "the recorder")
        # A topic that appears only after recording started is discovered and recorded.
        node = ros.node("record_test_late")
        late = node.create_publisher(String, "/rec/late", BURST_QOS)
        ros.wait_until(lambda: rec.subscribed("/rec/late"), 20, "discovery of /rec/late")
        ros.wait_until(lambda: late.get_subscription_count() > 0, 10, "DDS matching")
        sent = [String(data=f"late {i}") for i in range(200)]
        for msg in sent:
            late.publish(msg)
        ros.wait_until(lambda: rec.received() >= 200, 20, "the recorder to receive 200")
    finally:
        code, err = rec.stop(signal.SIGTERM)
    assert code == 0, err
    meta = _metadata(bag)
    assert meta["storage_identifier"] == "sqlite3" and meta["message_count"] == 200
    assert len(meta["relative_file_paths"]) > 3  # 200 x ~64 bytes over 3000-byte files
    assert all(name.endswith(".db3") for name in meta["relative_file_paths"])
    with open_bag(bag) as source:
        assert [t.name for t in source.topics()] == ["/rec/late"]
        got = [deserialize_message(raw, String) for _, _, _, raw in source.messages()]
    assert got == sent


@pytest.mark.parametrize(
    "args, fragment",
    [
        ([], "nothing to record"),
        (["--topics", "/a", "--all"], "either --topics or --all"),
        (["--all", "--regex", "(unclosed"], "'regex'"),
    ],
)
def test_bad_options_exit_2_with_one_line(tmp_path, capsys, args, fragment):
    code = cli.main(["record", str(tmp_path / "bag"), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert fragment in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_existing_output_is_refused(tmp_path, capsys):
    (tmp_path / "bag").mkdir()
    assert cli.main(["record", str(tmp_path / "bag"), "--all"]) == 2
    assert "exists already" in capsys.readouterr().err


def test_unsubscribable_qos_profile_is_adapted(ros, tmp_path):
    """Best-effort and reliable publishers on one topic: recorded best effort, both kept."""
    node = ros.node("record_test_mixed")
    best_effort = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT)
    node.create_publisher(String, "/rec/mixed", best_effort)
    node.create_publisher(String, "/rec/mixed", BURST_QOS)
    from wmpc.bag.writer import subscription_qos
    from wmpc.nodes.replay import qos_from_ros

    ros.wait_until(lambda: len(node.get_publishers_info_by_topic("/rec/mixed")) == 2, 10, "graph")
    offered = [
        qos_from_ros(i.qos_profile) for i in node.get_publishers_info_by_topic("/rec/mixed")
    ]
    chosen = subscription_qos(offered)
    assert chosen.reliability.name == "BEST_EFFORT" and chosen.durability.name == "VOLATILE"
    assert DurabilityPolicy.VOLATILE.name == chosen.durability.name
