"""bag/reader.py and bag/writer.py on real rosbag2 files: upstream bags, damaged copies, ours.

Damaged bags are copies of the third-party bags (or of bags written here) in tmp dirs; the
external folder is read-only.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore

from wmpc.bag.reader import BagError, open_bag
from wmpc.bag.writer import BagWriter, InstalledDefinitions

VENV = Path(__file__).resolve().parents[1] / ".venv"
STORE = get_typestore(Stores.ROS2_KILTED)


def _string(text: str) -> bytes:
    msg = STORE.types["std_msgs/msg/String"](text)
    return bytes(STORE.serialize_cdr(msg, "std_msgs/msg/String"))


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for p in [dst, *dst.iterdir()]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dst


def _read_all(source) -> tuple[list, BagError | None]:
    """Every message the bag yields, and the BagError raised after them (if any)."""
    out = []
    try:
        for item in source.messages():
            out.append(item)
    except BagError as exc:
        return out, exc
    return out, None


def _write_bag(path: Path, n: int, *, storage="mcap", payload=0, **kwargs) -> list[bytes]:
    """A bag of n std_msgs/String on /chatter at 1 ms spacing; returns the payloads."""
    sent = [_string(f"{i:06d}" + "x" * payload) for i in range(n)]
    definitions = InstalledDefinitions([VENV])
    with BagWriter(path, storage=storage, definitions=definitions, **kwargs) as writer:
        writer.add_topic("/chatter", "std_msgs/msg/String")
        for i, raw in enumerate(sent):
            writer.write("/chatter", 1_000_000_000 + i * 1_000_000, raw)
    return sent


# ---- upstream bags ------------------------------------------------------------------------


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_split_upstream_bag_reads_in_time_order(external_data, storage):
    path = external_data / "rosbag2" / storage / "wbag"
    meta = yaml.safe_load((path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    expected = {
        t["topic_metadata"]["name"]: t["message_count"] for t in meta["topics_with_message_count"]
    }
    with open_bag(path) as source:
        assert len(source.files) == 5
        assert {t.name: t.count for t in source.topics()} == expected
        messages, error = _read_all(source)
    assert error is None
    assert len(messages) == meta["message_count"] == 6074
    stamps = [m[2] for m in messages]
    # The split files overlap in time (wbag_1 ends after wbag_2 starts): merged, not chained.
    assert stamps == sorted(stamps)
    counts: dict[str, int] = {}
    for topic, msgtype, _, _ in messages:
        assert msgtype == "std_msgs/msg/String"
        counts[topic] = counts.get(topic, 0) + 1
    assert counts == expected


def test_empty_upstream_bag(external_data):
    with open_bag(external_data / "rosbag2" / "empty_bag") as source:
        assert [(t.name, t.count) for t in source.topics()] == [
            ("/parameter_events", 0),
            ("/rosout", 0),
        ]
        assert source.start_ns is None and source.message_count == 0
        assert source.topics()[1].qos[0].lifespan.sec == 10  # QoS parsed from metadata
        assert _read_all(source) == ([], None)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_types_not_installed_decode_from_embedded_definitions(external_data, storage):
    with open_bag(external_data / "rosbag2" / storage / "cdr_test") as source:
        topics = {t.name: t for t in source.topics()}
        assert topics["/test_topic"].msgtype == "test_msgs/msg/BasicTypes"
        assert "int32 int32_value" in topics["/test_topic"].msgdef
        messages, error = _read_all(source)
        assert error is None and len(messages) == 7
        basic = [source.deserialize(raw, t) for _, t, _, raw in messages if t.endswith("Types")]
        arrays = [source.deserialize(raw, t) for _, t, _, raw in messages if t.endswith("Arrays")]
    assert len(basic) == 3 and len(arrays) == 4
    assert basic[0].int32_value == 123
    assert len(arrays[0].bool_values) == 3


@pytest.mark.parametrize("name", ["test_bag_mcap", "test_bag_sqlite3"])
def test_rosbags_rs_bag_reads_and_keeps_bad_images_raw(external_data, name):
    with open_bag(external_data / "rosbags_rs" / name) as source:
        assert len(source.topics()) == 94
        messages, error = _read_all(source)
        assert error is None and len(messages) == 188
        images = [
            source.deserialize(raw, t) for _, t, _, raw in messages if t == "sensor_msgs/msg/Image"
        ]
    # The reader hands the inconsistent image over as it is; rejecting it is the codec's job.
    assert images and images[0].height * images[0].step > len(images[0].data)


def test_filters_by_topic_and_time(external_data):
    with open_bag(external_data / "rosbag2" / "mcap" / "wbag") as source:
        only = list(source.messages(topics=["AAA", ("BBB", "std_msgs/msg/String")]))
        assert {m[0] for m in only} == {"AAA", "BBB"}
        window = list(source.messages(start_ns=1500, stop_ns=2000))
    assert window and all(1500 <= m[2] < 2000 for m in window)
    # One storage file, or the metadata.yaml, also names a bag.
    with open_bag(external_data / "rosbag2" / "mcap" / "wbag" / "wbag_0.mcap") as one:
        assert one.files == ["wbag_0.mcap"] and one.message_count == 1246
    with open_bag(external_data / "rosbag2" / "sqlite3" / "wbag" / "metadata.yaml") as meta:
        assert len(meta.files) == 5 and meta.storage_id == "sqlite3"


# ---- our writer ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "storage, compression",
    [("mcap", "none"), ("mcap", "file"), ("mcap", "message"), ("sqlite3", "message")],
)
def test_writer_round_trip_split_and_compressed(tmp_path, storage, compression):
    path = tmp_path / "bag"
    sent = _write_bag(
        path, 300, storage=storage, payload=100, compression=compression, max_file_bytes=12_000
    )
    meta = yaml.safe_load((path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["version"] == 9 and meta["storage_identifier"] == storage
    assert meta["message_count"] == 300 and len(meta["relative_file_paths"]) >= 3
    assert meta["compression_mode"] == ("" if compression == "none" else compression)
    assert sum(f["message_count"] for f in meta["files"]) == 300
    assert all((path / f).is_file() for f in meta["relative_file_paths"])
    # rosbags (an independent reader) agrees with ours, message for message.
    with Reader(path) as reader:
        theirs = [raw for _, _, raw in reader.messages()]
        (connection,) = {c.msgtype: c for c in reader.connections}.values()
    with open_bag(path) as source:
        ours, error = _read_all(source)
    assert error is None
    assert [m[3] for m in ours] == theirs == sent
    assert connection.msgdef.data.startswith("string data")


def test_writer_embeds_the_installed_definitions(tmp_path):
    path = tmp_path / "bag"
    with BagWriter(path, definitions=InstalledDefinitions([VENV])) as writer:
        writer.add_topic("/camera/image_raw", "sensor_msgs/msg/Image")
        writer.add_topic("/arm/wrench", "geometry_msgs/msg/WrenchStamped")
    meta = yaml.safe_load((path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["message_count"] == 0 and len(meta["relative_file_paths"]) == 1
    for entry in meta["topics_with_message_count"]:
        msgtype = entry["topic_metadata"]["type"]
        package, _, name = msgtype.split("/")
        installed = json.loads((VENV / "share" / package / "msg" / f"{name}.json").read_text())
        assert (
            entry["topic_metadata"]["type_description_hash"]
            == (installed["type_hashes"][0]["hash_string"])
        )
    with open_bag(path) as source:
        image = {t.name: t for t in source.topics()}["/camera/image_raw"]
    assert "MSG: std_msgs/Header" in image.msgdef and image.msgdef_encoding == "ros2msg"


def test_writer_splits_by_duration_and_refuses_existing_path(tmp_path):
    path = tmp_path / "bag"
    _write_bag(path, 100, max_file_duration_ns=25_000_000)  # 1 ms spacing -> 25 per file
    meta = yaml.safe_load((path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert [f["message_count"] for f in meta["files"]] == [25, 25, 25, 25]
    with pytest.raises(BagError, match="exists already"):
        BagWriter(path)
    with pytest.raises(BagError, match="no definition of nonexistent_msgs/msg/Thing"):
        BagWriter(tmp_path / "other", definitions=InstalledDefinitions([VENV])).add_topic(
            "/x", "nonexistent_msgs/msg/Thing"
        )


# ---- missing and wrong metadata -----------------------------------------------------------


def test_missing_metadata_is_rebuilt_from_storage(external_data, tmp_path):
    bag = _copy(external_data / "rosbag2" / "mcap" / "wbag", tmp_path / "wbag")
    (bag / "metadata.yaml").unlink()
    with open_bag(bag) as source:
        assert source.metadata_rebuilt and source.files == [f"wbag_{i}.mcap" for i in range(5)]
        messages, error = _read_all(source)
    assert error is None and len(messages) == 6074


def test_missing_metadata_of_message_compressed_bag(tmp_path):
    sent = _write_bag(tmp_path / "bag", 50, compression="message", max_file_bytes=2_000)
    (tmp_path / "bag" / "metadata.yaml").unlink()
    with open_bag(tmp_path / "bag") as source:
        messages, error = _read_all(source)
    assert error is None and [m[3] for m in messages] == sent  # zstd frames recognised


def test_garbage_metadata_plays_everything_then_errors(external_data, tmp_path):
    bag = _copy(external_data / "rosbag2" / "sqlite3" / "wbag", tmp_path / "wbag")
    (bag / "metadata.yaml").write_text("rosbag2_bagfile_information: [not, a, mapping")
    with open_bag(bag) as source:
        messages, error = _read_all(source)
    assert len(messages) == 6074
    assert error is not None and "metadata.yaml is not readable YAML" in str(error)


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (lambda m: m["relative_file_paths"].append("wbag_9.mcap"), "lists wbag_9.mcap"),
        (
            lambda m: m["topics_with_message_count"][0]["topic_metadata"].update(
                type="std_msgs/msg/Int32"
            ),
            "gives HHH type std_msgs/msg/Int32 but the storage has std_msgs/msg/String",
        ),
        (
            lambda m: m["topics_with_message_count"][0].update(message_count=9999),
            "counts 9999 messages on HHH but the storage holds 726",
        ),
        (lambda m: m.pop("relative_file_paths"), "malformed key 'relative_file_paths'"),
    ],
)
def test_wrong_metadata_is_reported_after_all_messages(external_data, tmp_path, edit, fragment):
    bag = _copy(external_data / "rosbag2" / "mcap" / "wbag", tmp_path / "wbag")
    doc = yaml.safe_load((bag / "metadata.yaml").read_text())
    edit(doc["rosbag2_bagfile_information"])
    (bag / "metadata.yaml").write_text(yaml.safe_dump(doc))
    with open_bag(bag) as source:
        messages, error = _read_all(source)
    assert len(messages) == 6074
    assert error is not None and fragment in str(error)


# ---- damaged storage ----------------------------------------------------------------------


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_truncated_file_yields_the_messages_before_the_damage(tmp_path, storage):
    path = tmp_path / "bag"
    sent = _write_bag(path, 3000, storage=storage, payload=1000)  # 3 MB: several MCAP chunks
    (storage_file,) = [p for p in path.iterdir() if p.name != "metadata.yaml"]
    os.truncate(storage_file, int(storage_file.stat().st_size * 0.7))
    with open_bag(path) as source:
        messages, error = _read_all(source)
    assert error is not None and storage_file.name in str(error)
    got = [m[3] for m in messages]
    assert 0 < len(got) < len(sent)
    assert got == sent[: len(got)]  # a clean prefix: nothing reordered, nothing invented


def test_truncated_split_file_of_upstream_bag(external_data, tmp_path):
    bag = _copy(external_data / "rosbag2" / "mcap" / "wbag", tmp_path / "wbag")
    with open_bag(bag) as source:
        intact = [m for m in source.messages() if m[2] < 2233]  # before wbag_3 starts
    os.truncate(bag / "wbag_3.mcap", 4_000)  # inside its one zstd chunk
    with open_bag(bag) as source:
        messages, error = _read_all(source)
    assert error is not None and "wbag_3.mcap" in str(error) and "truncated" in str(error)
    assert len(intact) < len(messages) < 6074
    assert messages[: len(intact)] == intact


def test_corrupt_only_file_is_an_error_at_open(tmp_path):
    (tmp_path / "bag").mkdir()
    (tmp_path / "bag" / "bag_0.mcap").write_bytes(b"this is not an mcap file at all")
    with pytest.raises(BagError, match=r"unreadable.*bag_0\.mcap.*magic"):
        open_bag(tmp_path / "bag")
    with pytest.raises(BagError, match="bag not found"):
        open_bag(tmp_path / "nothing_here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BagError, match=r"no \.mcap or \.db3 files"):
        open_bag(tmp_path / "empty")


def test_corrupt_chunk_of_upstream_bag_loses_only_that_chunk(external_data, tmp_path):
    bag = _copy(external_data / "rosbag2" / "mcap" / "wbag", tmp_path / "wbag")
    with open_bag(bag) as source:
        expected = list(source.messages())
    data = bytearray((bag / "wbag_2.mcap").read_bytes())
    data[3000:3400] = bytes(400)  # zeros inside its zstd chunk, as a bad sector leaves
    (bag / "wbag_2.mcap").write_bytes(bytes(data))
    with open_bag(bag) as source:
        messages, error = _read_all(source)
    assert error is not None and "wbag_2.mcap" in str(error)
    assert len(messages) == 6074 - 1240  # wbag_2 holds 1240 messages in that one chunk
    assert set(messages) <= set(expected)


def test_qos_differences_between_metadata_and_storage_are_ignored(tmp_path):
    path = tmp_path / "bag"
    sent = _write_bag(path, 20)
    doc = yaml.safe_load((path / "metadata.yaml").read_text())
    topic = doc["rosbag2_bagfile_information"]["topics_with_message_count"][0]["topic_metadata"]
    topic["offered_qos_profiles"] = [
        {
            "history": "keep_last",
            "depth": 7,
            "reliability": "best_effort",
            "durability": "volatile",
            "deadline": {"sec": 0, "nsec": 0},
            "lifespan": {"sec": 0, "nsec": 0},
            "liveliness": "automatic",
            "liveliness_lease_duration": {"sec": 0, "nsec": 0},
            "avoid_ros_namespace_conventions": False,
        }
    ]
    (path / "metadata.yaml").write_text(yaml.safe_dump(doc))
    with open_bag(path) as source:
        (info,) = source.topics()
        messages, error = _read_all(source)
    assert error is None and [m[3] for m in messages] == sent  # matched by name and type
    assert info.qos[0].depth == 7  # the metadata's QoS is the one offered on replay
