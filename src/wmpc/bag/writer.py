"""Write rosbag2 bags (MCAP or sqlite3) through `rosbags`, split by size or duration, without ROS.

Each split file is written by its own rosbags Writer in a staging folder inside the bag and
moved up when it is closed, so every file is a complete storage file with its message
definitions and offered QoS. The bag's metadata.yaml (version 9, as Jazzy and Kilted write it)
lists all of them. Message definitions come from the interface files of the installed ROS 2
packages, so the definitions and type hashes in the bag are exactly those of this install.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rosbags.interfaces import (
    Qos,
    QosDurability,
    QosHistory,
    QosLiveliness,
    QosReliability,
    QosTime,
)
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.rosbag2.enums import CompressionFormat, CompressionMode
from rosbags.rosbag2.metadata import dump_qos_v9
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.base import Nodetype

from wmpc.bag.reader import DISTRO, DISTRO_STORE, BagError

log = logging.getLogger(__name__)

METADATA_VERSION = 9
# Bytes a message adds to a file beyond its payload (record header, index entry): the size
# used for --max-size is counted as it is written, since MCAP chunks are buffered in memory.
MESSAGE_OVERHEAD_BYTES = 48
# Subscriptions keep a deep queue so a burst is not dropped while the writer is busy.
RECORD_DEPTH = 1000
INFINITE = QosTime(9223372036, 854775807)


def keep_last_qos(depth: int, reliability: QosReliability, durability: QosDurability) -> Qos:
    """A KEEP_LAST profile with automatic liveliness and no deadline, lifespan or lease."""
    zero = QosTime(0, 0)
    return Qos(
        QosHistory.KEEP_LAST,
        depth,
        reliability,
        durability,
        zero,
        zero,
        QosLiveliness.AUTOMATIC,
        zero,
        False,
    )


def subscription_qos(offered: Sequence[Qos]) -> Qos:
    """The QoS that receives every offered profile, as `ros2 bag record` chooses it.

    Reliable only when every publisher is reliable, transient-local only when every publisher
    is, so no publisher is incompatible.
    """
    reliable = bool(offered) and all(q.reliability == QosReliability.RELIABLE for q in offered)
    latched = bool(offered) and all(q.durability == QosDurability.TRANSIENT_LOCAL for q in offered)
    return keep_last_qos(
        RECORD_DEPTH,
        QosReliability.RELIABLE if reliable else QosReliability.BEST_EFFORT,
        QosDurability.TRANSIENT_LOCAL if latched else QosDurability.VOLATILE,
    )


# ---- message definitions of the installed packages --------------------------------------


def _referenced_types(fields: list) -> set[str]:
    """Message types a parsed definition refers to (fields, arrays and sequences of them)."""
    out = set()
    for _, (kind, detail) in fields:
        if kind == Nodetype.NAME:
            out.add(detail)
        elif kind in (Nodetype.ARRAY, Nodetype.SEQUENCE) and detail[0][0] == Nodetype.NAME:
            out.add(detail[0][1])
    return out


class InstalledDefinitions:
    """Message definitions read from share/<package>/msg/*.msg of the ament prefixes."""

    def __init__(self, prefixes: Sequence[str | Path] | None = None):
        if prefixes is None:
            prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
        self.prefixes = [Path(p) for p in prefixes]
        self.store = get_typestore(Stores.EMPTY)
        self._distro = get_typestore(DISTRO_STORE)

    def _find(self, msgtype: str, suffix: str) -> Path | None:
        package, kind, name = msgtype.split("/")
        for prefix in self.prefixes:
            candidate = prefix / "share" / package / kind / f"{name}{suffix}"
            if candidate.is_file():
                return candidate
        return None

    def ensure(self, msgtype: str) -> None:
        """Register `msgtype` and everything it refers to; BagError if no definition exists."""
        if msgtype in self.store.fielddefs:
            return
        if msgtype.count("/") != 2:
            raise BagError(f"message type {msgtype!r} is not of the form package/msg/Name")
        path = self._find(msgtype, ".msg")
        if path is not None:
            types = get_types_from_msg(path.read_text(), msgtype)
        elif msgtype in self._distro.fielddefs:
            log.warning("%s: no .msg file in AMENT_PREFIX_PATH; using %s's", msgtype, DISTRO)
            types = {msgtype: self._distro.fielddefs[msgtype]}
        else:
            raise BagError(
                f"no definition of {msgtype}: share/{msgtype.split('/')[0]}/msg is in no prefix "
                "of AMENT_PREFIX_PATH (source the workspace that builds it)"
            )
        for dependency in _referenced_types(types[msgtype][1]):
            self.ensure(dependency)
        self.store.register(types)
        self._check_hash(msgtype)

    def _check_hash(self, msgtype: str) -> None:
        """Warn when the definition's hash differs from the installed type support's."""
        path = self._find(msgtype, ".json")
        if path is None:
            return
        try:
            installed = json.loads(path.read_text())["type_hashes"][0]["hash_string"]
        except (OSError, ValueError, KeyError, IndexError):
            return
        ours = self.store.hash_rihs01(msgtype)
        if ours != installed:
            log.warning("%s: hash %s differs from the installed %s", msgtype, ours, installed)


# ---- the writer ---------------------------------------------------------------------------


@dataclass
class _Topic:
    name: str
    msgtype: str
    qos: tuple[Qos, ...]
    count: int = 0


@dataclass
class _FileInfo:
    path: str
    start_ns: int
    end_ns: int
    count: int


class BagWriter:
    """Writes a rosbag2 bag, starting a new split file past a size or duration limit."""

    def __init__(
        self,
        path: str | Path,
        *,
        storage: str = "mcap",
        max_file_bytes: int = 0,
        max_file_duration_ns: int = 0,
        compression: str = "none",
        definitions: InstalledDefinitions | None = None,
    ):
        self.path = Path(path)
        if self.path.exists():
            raise BagError(f"{self.path} exists already; give a new bag path")
        if storage not in ("mcap", "sqlite3"):
            raise BagError(f"storage {storage!r} is not one of ['mcap', 'sqlite3']")
        if compression not in ("none", "file", "message"):
            raise BagError(f"compression {compression!r} is not one of none, file, message")
        try:
            self.path.mkdir(parents=True)
        except OSError as exc:
            raise BagError(f"cannot create bag directory {self.path}: {exc.strerror}") from None
        self.storage = storage
        self.compression = compression
        self.max_file_bytes = max_file_bytes
        self.max_file_duration_ns = max_file_duration_ns
        self.definitions = definitions or InstalledDefinitions()
        self.topics: dict[str, _Topic] = {}
        self.files: list[_FileInfo] = []
        self.bytes_written = 0
        self._writer: Writer | None = None
        self._staging: Path | None = None
        self._conns: dict[str, Any] = {}
        self._file_bytes = 0
        self._file: _FileInfo | None = None
        self._closed = False

    @property
    def message_count(self) -> int:
        """Messages written so far."""
        return sum(t.count for t in self.topics.values())

    def add_topic(self, name: str, msgtype: str, offered_qos: Sequence[Qos] = ()) -> None:
        """Declare a topic before writing to it; BagError if its type has no definition."""
        if name in self.topics:
            return
        self.definitions.ensure(msgtype)
        self.topics[name] = _Topic(name, msgtype, tuple(offered_qos))
        if self._writer is not None:
            self._add_connection(self.topics[name])

    def _add_connection(self, topic: _Topic) -> None:
        assert self._writer is not None
        self._conns[topic.name] = self._writer.add_connection(
            topic.name,
            topic.msgtype,
            typestore=self.definitions.store,
            offered_qos_profiles=list(topic.qos),
        )

    def _open_file(self) -> None:
        index = len(self.files)
        self._staging = self.path / f"{self.path.name}_{index}"
        plugin = StoragePlugin.MCAP if self.storage == "mcap" else StoragePlugin.SQLITE3
        writer = Writer(self._staging, version=METADATA_VERSION, storage_plugin=plugin)
        if self.compression != "none":
            mode = CompressionMode.FILE if self.compression == "file" else CompressionMode.MESSAGE
            writer.set_compression(mode, CompressionFormat.ZSTD)
        writer.open()
        self._writer = writer
        self._conns = {}
        for topic in self.topics.values():
            self._add_connection(topic)
        self._file_bytes = 0
        self._file = None

    def _close_file(self) -> None:
        """Finish the current split file and move it from staging into the bag folder."""
        writer, staging, info = self._writer, self._staging, self._file
        self._writer, self._staging, self._file = None, None, None
        if writer is None or staging is None:
            return
        writer.close()
        produced = [p for p in staging.iterdir() if p.name != "metadata.yaml"]
        if info is None:
            if self.files:
                shutil.rmtree(staging)  # an empty file after a split is not kept
                return
            info = _FileInfo("", 0, 0, 0)  # an empty bag still gets one valid storage file
        for p in produced:
            target = self.path / p.name
            p.replace(target)
            info.path = target.name
        shutil.rmtree(staging)
        self.files.append(info)

    def write(self, topic: str, timestamp_ns: int, data: bytes) -> None:
        """Append one serialized message; starts a new split file when a limit is reached."""
        if self._closed:
            raise BagError(f"bag {self.path} is closed")
        t = self.topics.get(topic)
        if t is None:
            raise BagError(f"topic {topic} was not added to {self.path} before writing")
        if self._writer is not None and self._file is not None and self._past_limit(timestamp_ns):
            self._close_file()
        if self._writer is None:
            self._open_file()
        assert self._writer is not None
        self._writer.write(self._conns[topic], timestamp_ns, data)
        size = len(data) + MESSAGE_OVERHEAD_BYTES
        self._file_bytes += size
        self.bytes_written += size
        t.count += 1
        if self._file is None:
            self._file = _FileInfo("", timestamp_ns, timestamp_ns, 0)
        self._file.start_ns = min(self._file.start_ns, timestamp_ns)
        self._file.end_ns = max(self._file.end_ns, timestamp_ns)
        self._file.count += 1

    def _past_limit(self, timestamp_ns: int) -> bool:
        assert self._file is not None
        if self.max_file_bytes and self._file_bytes >= self.max_file_bytes:
            return True
        return bool(
            self.max_file_duration_ns
            and timestamp_ns - self._file.start_ns >= self.max_file_duration_ns
        )

    def close(self) -> None:
        """Finish the last file and write metadata.yaml; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._writer is None and not self.files:
            self._open_file()
        self._close_file()
        self._write_metadata()

    def _write_metadata(self) -> None:
        used = [f for f in self.files if f.count]
        # An empty bag starts at the largest time, as rosbag2 writes it.
        start = min((f.start_ns for f in used), default=2**63 - 1)
        end = max((f.end_ns for f in used), default=start)
        mode = "" if self.compression == "none" else self.compression
        info = {
            "version": METADATA_VERSION,
            "storage_identifier": self.storage,
            "duration": {"nanoseconds": end - start},
            "starting_time": {"nanoseconds_since_epoch": start},
            "message_count": self.message_count,
            "topics_with_message_count": [
                {
                    "topic_metadata": {
                        "name": t.name,
                        "type": t.msgtype,
                        "serialization_format": "cdr",
                        "offered_qos_profiles": dump_qos_v9(list(t.qos)),
                        "type_description_hash": self.definitions.store.hash_rihs01(t.msgtype),
                    },
                    "message_count": t.count,
                }
                for t in self.topics.values()
            ],
            "compression_format": "zstd" if mode else "",
            "compression_mode": mode,
            "relative_file_paths": [f.path for f in self.files],
            "files": [
                {
                    "path": f.path,
                    "starting_time": {"nanoseconds_since_epoch": f.start_ns},
                    "duration": {"nanoseconds": f.end_ns - f.start_ns},
                    "message_count": f.count,
                }
                for f in self.files
            ],
            "custom_data": None,
            "ros_distro": DISTRO,
        }
        text = yaml.safe_dump({"rosbag2_bagfile_information": info}, sort_keys=False)
        tmp = self.path / "metadata.yaml.tmp"
        tmp.write_text(text)
        tmp.replace(self.path / "metadata.yaml")  # atomic: a reader never sees half a file

    def __enter__(self) -> BagWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
