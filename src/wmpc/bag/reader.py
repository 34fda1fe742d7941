"""Read rosbag2 bags (MCAP or sqlite3, split, zstd-compressed) through `rosbags`, without ROS.

`open_bag(path)` returns a BagSource. Its `messages()` yields raw CDR in bag-time order across
split files; replay publishes those bytes as they are, and evaluation and training decode them
with `deserialize()`.

Real bags are often imperfect, so damage never hides data. A storage file that cannot be
opened is scanned record by record; a missing metadata.yaml is rebuilt from the storage files;
metadata that disagrees with the storage is reported. Every readable message is yielded first,
and the BagError that describes the damage is raised only after the last one.
"""

from __future__ import annotations

import heapq
import logging
import os
import re
import shutil
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path, PurePath
from typing import Any

import yaml
from backports import zstd
from rosbags.interfaces import Qos
from rosbags.rosbag2 import Reader
from rosbags.rosbag2.metadata import parse_qos
from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore

from wmpc.errors import WmpcError

log = logging.getLogger(__name__)

# The ROS 2 distro of the wheels this project runs on (common_interfaces 5.5 = Kilted, whose
# message definitions match Jazzy's): decoding falls back to its standard types.
DISTRO = "kilted"
DISTRO_STORE = Stores.ROS2_KILTED

STORAGE_SUFFIXES = {".mcap": "mcap", ".db3": "sqlite3"}
# Every zstd frame starts with these bytes, and CDR never does (it starts with 0x00 0x0?).
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
MCAP_MAGIC = b"\x89MCAP0\r\n"
MAX_VERSION = 9

Key = tuple[str, str]  # (topic name, message type)


class BagError(WmpcError):
    """A bag cannot be read, or is damaged; the message names the file and the problem."""


class _DamagedError(Exception):
    """Raised by the salvage scanners where a storage file stops making sense."""


@dataclass(frozen=True)
class TopicInfo:
    """One topic of a bag: name, type, message count, offered QoS and embedded definition."""

    name: str
    msgtype: str
    count: int
    qos: tuple[Qos, ...] = ()
    msgdef: str = ""
    msgdef_encoding: str = ""  # "ros2msg", "ros2idl", or "" when the bag has none

    @property
    def key(self) -> Key:
        """(name, type): topics are matched on both, never on QoS."""
        return (self.name, self.msgtype)


@dataclass
class _Conn:
    """A topic as one storage file declares it."""

    topic: str
    msgtype: str
    qos: tuple[Qos, ...]
    msgdef: str
    msgdef_encoding: str
    count: int = 0


def _describe(exc: BaseException) -> str:
    """A one-line description of an exception raised by a parser."""
    text = str(exc).strip().rstrip(".") or type(exc).__name__
    return text.splitlines()[0]


def _natural_key(path: Path) -> list:
    """Sort key that puts bag_2 before bag_10."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", path.name)]


def _storage_kind(path: Path) -> str | None:
    """'mcap' or 'sqlite3' from a file name (a trailing .zstd is file compression)."""
    name = path.name[: -len(".zstd")] if path.name.endswith(".zstd") else path.name
    return STORAGE_SUFFIXES.get(PurePath(name).suffix)


def _safe_qos(value: Any) -> tuple[Qos, ...]:
    """Offered QoS profiles from metadata or storage; unreadable ones count as none."""
    try:
        return tuple(parse_qos(value or []))
    except Exception as exc:  # rosbags raises KeyError/TypeError/ReaderError on odd YAML
        log.warning("ignoring unreadable offered_qos_profiles (%s)", _describe(exc))
        return ()


# ---- salvage: reading damaged storage files record by record ----------------------------------


def _u16(b: bytes, at: int) -> int:
    return int.from_bytes(b[at : at + 2], "little")


def _u32(b: bytes, at: int) -> int:
    return int.from_bytes(b[at : at + 4], "little")


def _u64(b: bytes, at: int) -> int:
    return int.from_bytes(b[at : at + 8], "little")


def _mcap_string(b: bytes, at: int) -> tuple[str, int]:
    """An MCAP string (u32 length + UTF-8) at `at`; returns (text, next offset)."""
    n = _u32(b, at)
    if at + 4 + n > len(b):
        raise _DamagedError("string runs past the end of its record")
    return b[at + 4 : at + 4 + n].decode("utf-8", "replace"), at + 4 + n


class _McapSalvage:
    """Reads the messages of an MCAP file that rosbags cannot open (truncated, no index).

    Records are read in file order until the first one that does not make sense; chunks are
    decompressed, and a truncated last chunk gives up what it can.
    """

    def __init__(self, path: Path):
        self.path = path
        self.schemas: dict[int, tuple[str, str, str]] = {}  # id -> (name, encoding, text)
        self.conns: dict[int, _Conn] = {}  # channel id -> topic

    def messages(self) -> Iterator[tuple[int, int, bytes]]:
        """(channel id, log time ns, data) per readable message; _DamagedError at the damage."""
        with self.path.open("rb") as stream:
            if stream.read(8) != MCAP_MAGIC:
                raise _DamagedError("it does not start with the MCAP magic bytes")
            offset = 8
            while True:
                head = stream.read(9)
                if not head:
                    raise _DamagedError(
                        f"it ends at byte {offset} without an MCAP footer (truncated)"
                    )
                if len(head) < 9:
                    raise _DamagedError(f"it is truncated inside a record header at byte {offset}")
                op, length = head[0], _u64(head, 1)
                body = stream.read(length)
                complete = len(body) == length
                if op in (0x02, 0x0F) and complete:
                    return  # footer or data end: every message record has been seen
                if op == 0x06:
                    yield from self._chunk(body, complete)
                elif complete:
                    yield from self._record(op, body)
                if not complete:
                    raise _DamagedError(f"it is truncated inside a record at byte {offset}")
                offset += 9 + length

    def _records(self, data: bytes, complete: bool) -> Iterator[tuple[int, int, bytes]]:
        """Messages of the records inside a (decompressed) chunk; a truncated chunk ends at
        its last whole record."""
        at = 0
        while at + 9 <= len(data):
            op, length = data[at], _u64(data, at + 1)
            if at + 9 + length > len(data):
                if not complete:
                    return
                raise _DamagedError("a chunk ends inside a record")
            yield from self._record(op, data[at + 9 : at + 9 + length])
            at += 9 + length

    def _chunk(self, body: bytes, complete: bool) -> Iterator[tuple[int, int, bytes]]:
        """Messages of one chunk record, or of what is left of a truncated one."""
        if len(body) < 28:
            return
        size, crc = _u64(body, 16), _u32(body, 24)
        compression, at = _mcap_string(body, 28)
        payload = body[at + 8 : at + 8 + _u64(body, at)] if complete else body[at + 8 :]
        if compression == "":
            data = payload
        elif compression == "zstd":
            # A decompressor object returns what a truncated frame holds instead of failing.
            data = zstd.ZstdDecompressor().decompress(payload)
        elif compression == "lz4" and complete:
            from lz4.frame import decompress as lz4_decompress

            data = lz4_decompress(payload)
        else:
            raise _DamagedError(f"a truncated chunk uses {compression!r} compression")
        if complete and len(data) != size:
            raise _DamagedError("a chunk decompresses to the wrong size")
        if complete and crc:
            from binascii import crc32

            if crc32(data) != crc:
                raise _DamagedError("a chunk fails its CRC check (corrupt bytes)")
        yield from self._records(data, complete)

    def _record(self, op: int, body: bytes) -> Iterator[tuple[int, int, bytes]]:
        """Schema and channel records are remembered; a message record is yielded."""
        if op == 0x03:
            sid = _u16(body, 0)
            name, at = _mcap_string(body, 2)
            encoding, at = _mcap_string(body, at)
            n = _u32(body, at)
            self.schemas[sid] = (name, encoding, body[at + 4 : at + 4 + n].decode("utf-8"))
        elif op == 0x04:
            cid, sid = _u16(body, 0), _u16(body, 2)
            topic, at = _mcap_string(body, 4)
            _, at = _mcap_string(body, at)
            end = at + 4 + _u32(body, at)
            qos: tuple[Qos, ...] = ()
            at += 4
            while at < end:
                key, at = _mcap_string(body, at)
                value, at = _mcap_string(body, at)
                if key == "offered_qos_profiles":
                    qos = _safe_qos(value)
            name, encoding, text = self.schemas.get(sid, ("", "", ""))
            if not name:
                raise _DamagedError(f"channel {topic!r} refers to an unknown schema")
            self.conns[cid] = _Conn(topic, name, qos, text, encoding)
        elif op == 0x05:
            if len(body) < 22:
                raise _DamagedError("a message record is too short")
            cid = _u16(body, 0)
            if cid not in self.conns:
                raise _DamagedError("a message refers to an unknown channel")
            yield cid, _u64(body, 6), body[22:]


class _SqliteSalvage:
    """Reads the rows of a sqlite3 bag file that rosbags cannot read (truncated, corrupt)."""

    def __init__(self, path: Path):
        self.path = path
        self.padded: Path | None = None
        self.conns: dict[int, _Conn] = {}
        self._pad_if_truncated()
        db = self._connect()
        try:
            defs: dict[str, tuple[str, str]] = {}
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
            if "message_definitions" in tables:
                for name, enc, text in db.execute(
                    "SELECT topic_type, encoding, encoded_message_definition "
                    "FROM message_definitions"
                ):
                    defs[name] = (text, enc)
            columns = {r[1] for r in db.execute("PRAGMA table_info(topics)")}
            qos_col = "offered_qos_profiles" if "offered_qos_profiles" in columns else "''"
            for tid, name, msgtype, qos in db.execute(
                f"SELECT id, name, type, {qos_col} FROM topics ORDER BY id"
            ):
                text, enc = defs.get(msgtype, ("", ""))
                self.conns[tid] = _Conn(name, msgtype, _safe_qos(qos), text, enc)
        except sqlite3.DatabaseError as exc:
            raise _DamagedError(f"its topics table is unreadable ({_describe(exc)})") from None
        finally:
            db.close()

    def _pad_if_truncated(self) -> None:
        """Read a truncated file through a copy padded to its declared size.

        SQLite refuses a file shorter than its header says, even to read the intact pages;
        with the missing pages present (as zeros) it reads up to the first of them.
        """
        with self.path.open("rb") as f:
            header = f.read(100)
        if len(header) < 100 or not header.startswith(b"SQLite format 3\x00"):
            raise _DamagedError("it has no SQLite header")
        page_size = int.from_bytes(header[16:18], "big")
        page_size = 65536 if page_size == 1 else page_size
        declared = page_size * int.from_bytes(header[28:32], "big")
        actual = self.path.stat().st_size
        if declared <= actual:
            return
        fd, name = tempfile.mkstemp(prefix="wmpc_salvage_", suffix=".db3")
        os.close(fd)
        self.padded = Path(name)
        shutil.copyfile(self.path, self.padded)
        with self.padded.open("ab") as f:
            f.truncate(declared)  # extends with zeros

    def cleanup(self) -> None:
        """Remove the padded copy, if one was made."""
        if self.padded is not None:
            self.padded.unlink(missing_ok=True)
            self.padded = None

    def _connect(self) -> sqlite3.Connection:
        # immutable=1: never write (the bag may be read-only) and ignore stale -wal/-shm files.
        uri = (self.padded or self.path).resolve().as_uri() + "?immutable=1"
        try:
            return sqlite3.connect(uri, uri=True)
        except sqlite3.DatabaseError as exc:
            raise _DamagedError(f"sqlite cannot open it ({_describe(exc)})") from None

    def messages(self) -> Iterator[tuple[int, int, bytes]]:
        """(topic id, timestamp ns, data) in insertion order, until the first bad page."""
        db = self._connect()
        try:
            for tid, stamp, data in db.execute(
                "SELECT topic_id, timestamp, data FROM messages ORDER BY id"
            ):
                if tid in self.conns:
                    yield tid, stamp, bytes(data)
        except sqlite3.DatabaseError as exc:
            raise _DamagedError(f"sqlite stops reading it: {_describe(exc)}") from None
        finally:
            db.close()


# ---- one storage file ---------------------------------------------------------------------


class _StorageFile:
    """One storage file of a bag, read by rosbags or, when damaged, by a salvage scanner."""

    def __init__(self, path: Path, display: str):
        self.path = path
        self.display = display
        self.reader: Reader | None = None
        self.salvage: _McapSalvage | _SqliteSalvage | None = None
        self.conns: dict[Key, _Conn] = {}
        self.damage: str | None = None
        self.start_ns: int | None = None
        self.end_ns: int | None = None

    def open(self) -> None:
        """Open with rosbags; on failure, count what a salvage scan can still read."""
        try:
            reader = Reader(self.path)
            reader.open()
        except Exception as exc:  # rosbags' parsers raise many types on corrupt input
            self.damage = f"{self.display}: {_describe(exc)}"
            self._open_salvage()
            return
        self.reader = reader
        for c in reader.connections:
            key = (c.topic, c.msgtype)
            enc = {"MSG": "ros2msg", "IDL": "ros2idl"}.get(c.msgdef.format.name, "")
            qos = tuple(getattr(c.ext, "offered_qos_profiles", ()) or ())
            conn = self.conns.setdefault(key, _Conn(c.topic, c.msgtype, qos, c.msgdef.data, enc))
            conn.count += c.msgcount
        if reader.message_count:
            self.start_ns, self.end_ns = reader.start_time, reader.end_time - 1

    def _open_salvage(self) -> None:
        kind = _storage_kind(self.path)
        try:
            self.salvage = _McapSalvage(self.path) if kind == "mcap" else _SqliteSalvage(self.path)
        except _DamagedError as exc:
            self.damage = f"{self.display}: {exc}"
            return
        readable = 0
        try:
            for cid, stamp, _ in self.salvage.messages():
                c = self.salvage.conns[cid]
                self.conns.setdefault((c.topic, c.msgtype), _Conn(**vars(c))).count += 1
                self.start_ns = stamp if self.start_ns is None else min(self.start_ns, stamp)
                self.end_ns = stamp if self.end_ns is None else max(self.end_ns, stamp)
                readable += 1
        except _DamagedError as exc:
            self.damage = f"{self.display}: {exc}"
        for c in self.salvage.conns.values():
            self.conns.setdefault((c.topic, c.msgtype), _Conn(**{**vars(c), "count": 0}))
        self.damage = f"{self.damage} ({readable} message(s) before the damage are readable)"
        if not self.conns:
            self.salvage = None  # not a single topic is readable: the file is lost

    def messages(
        self, keys: set[Key], start_ns: int | None, stop_ns: int | None
    ) -> Iterator[tuple[int, str, str, bytes]]:
        """(timestamp ns, topic, type, data) of the wanted topics; damage ends the stream."""
        if self.reader is not None:
            conns = [c for c in self.reader.connections if (c.topic, c.msgtype) in keys]
            if not conns:
                return  # rosbags reads every topic when given none
            count = 0
            try:
                for c, stamp, data in self.reader.messages(conns, start_ns, stop_ns):
                    count += 1
                    yield stamp, c.topic, c.msgtype, data
            except Exception as exc:  # rosbags' parsers raise many types on corrupt input
                self.damage = (
                    f"{self.display}: {_describe(exc)} (read {count} message(s) of the "
                    "selected topics before it)"
                )
        elif self.salvage is not None:
            try:
                for cid, stamp, data in self.salvage.messages():
                    c = self.salvage.conns[cid]
                    if (c.topic, c.msgtype) not in keys:
                        continue
                    if (start_ns is None or stamp >= start_ns) and (
                        stop_ns is None or stamp < stop_ns
                    ):
                        yield stamp, c.topic, c.msgtype, data
            except _DamagedError:
                pass  # already described when the file was opened

    def close(self) -> None:
        """Release the rosbags reader or the salvage copy."""
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        if isinstance(self.salvage, _SqliteSalvage):
            self.salvage.cleanup()


# ---- metadata -----------------------------------------------------------------------------


@dataclass
class _Metadata:
    """The parts of metadata.yaml this reader uses."""

    version: int
    storage_id: str
    files: list[str]
    compression_mode: str  # "", "file" or "message"
    topics: list[tuple[str, str, int, tuple[Qos, ...]]]  # name, type, count, offered QoS
    ros_distro: str = ""


def _parse_metadata(path: Path) -> _Metadata:
    """metadata.yaml -> _Metadata; any structural problem raises BagError naming the key."""
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise BagError(f"{path} is not readable YAML ({_describe(exc)})") from None
    info = doc.get("rosbag2_bagfile_information") if isinstance(doc, dict) else None
    if not isinstance(info, dict):
        raise BagError(f"{path} has no 'rosbag2_bagfile_information' mapping")
    try:
        version = int(info["version"])
        storage_id = str(info["storage_identifier"])
        files = [PurePath(str(p)).name for p in info["relative_file_paths"]]
        topics = []
        for entry in info.get("topics_with_message_count") or []:
            meta = entry["topic_metadata"]
            fmt = meta.get("serialization_format", "cdr")
            if fmt != "cdr":
                raise BagError(f"{path}: topic {meta['name']} uses {fmt!r}, only 'cdr' is read")
            qos = _safe_qos(meta.get("offered_qos_profiles"))
            topics.append((str(meta["name"]), str(meta["type"]), int(entry["message_count"]), qos))
    except (KeyError, TypeError, ValueError) as exc:
        raise BagError(f"{path} is missing or has a malformed key {_describe(exc)}") from None
    if version > MAX_VERSION:
        log.warning("%s: metadata version %d is newer than %d", path, version, MAX_VERSION)
    mode = str(info.get("compression_mode") or "").lower()
    mode = "" if mode == "none" else mode
    fmt = str(info.get("compression_format") or "")
    if mode not in ("", "file", "message"):
        raise BagError(f"{path}: unknown compression_mode {mode!r}")
    if mode and fmt != "zstd":
        raise BagError(f"{path}: compression_format {fmt!r} is not supported (only zstd)")
    return _Metadata(version, storage_id, files, mode, topics, str(info.get("ros_distro") or ""))


def _storage_files_in(directory: Path) -> list[Path]:
    """Storage files of a bag directory in split order (bag_0, bag_1, ..., bag_10)."""
    found = [p for p in directory.iterdir() if p.is_file() and _storage_kind(p)]
    return sorted(found, key=_natural_key)


# ---- the bag ------------------------------------------------------------------------------


@dataclass
class BagSource:
    """An open bag: topics, time range, and messages in bag-time order across split files."""

    path: Path
    storage_id: str
    compression_mode: str
    metadata_rebuilt: bool
    ros_distro: str
    problems: list[str]
    _files: list[_StorageFile]
    _topics: list[TopicInfo]
    _tmpdir: tempfile.TemporaryDirectory | None = None
    _embedded: Any = None
    _fallback: Any = None
    _messages_read: int = field(default=0)

    # -- summary ---------------------------------------------------------------------------

    def topics(self) -> list[TopicInfo]:
        """Every topic: name, type, message count in the storage, offered QoS, definition."""
        return list(self._topics)

    @property
    def message_count(self) -> int:
        """Messages readable from the storage files."""
        return sum(t.count for t in self._topics)

    @property
    def start_ns(self) -> int | None:
        """Timestamp of the earliest message (None for an empty bag)."""
        starts = [f.start_ns for f in self._files if f.start_ns is not None]
        return min(starts) if starts else None

    @property
    def end_ns(self) -> int | None:
        """Timestamp of the latest message (None for an empty bag)."""
        ends = [f.end_ns for f in self._files if f.end_ns is not None]
        return max(ends) if ends else None

    @property
    def files(self) -> list[str]:
        """Storage file names in split order."""
        return [f.display for f in self._files]

    # -- messages --------------------------------------------------------------------------

    def _keys(self, topics: Iterable[str | Key] | None) -> set[Key]:
        if topics is None:
            return {t.key for t in self._topics}
        wanted = list(topics)
        names = {t for t in wanted if isinstance(t, str)}
        pairs = {tuple(t) for t in wanted if not isinstance(t, str)}
        return {t.key for t in self._topics if t.name in names or t.key in pairs}

    def messages(
        self,
        topics: Iterable[str | Key] | None = None,
        start_ns: int | None = None,
        stop_ns: int | None = None,
    ) -> Iterator[tuple[str, str, int, bytes]]:
        """Yield (topic, type, timestamp ns, raw CDR) in time order, start <= t < stop.

        `topics` holds names or (name, type) pairs; None means all. After the last readable
        message, BagError is raised if the bag is damaged or its metadata is wrong.
        """
        keys = self._keys(topics)
        streams = [f.messages(keys, start_ns, stop_ns) for f in self._files]
        by_message = self.compression_mode == "message"
        sniff = self.metadata_rebuilt  # compression unknown: recognise zstd frames by magic
        bad_frames = 0
        for stamp, topic, msgtype, data in heapq.merge(*streams, key=itemgetter(0)):
            if by_message or (sniff and data[:4] == ZSTD_MAGIC):
                try:
                    data = zstd.decompress(data)
                except zstd.ZstdError:
                    bad_frames += 1
                    continue
            self._messages_read += 1
            yield topic, msgtype, stamp, data
        if bad_frames:
            self._add_problem(f"{bad_frames} message(s) are corrupt zstd frames (skipped)")
        problems = self.all_problems()
        if problems:
            raise BagError(f"bag {self.path} is damaged or inconsistent: " + "; ".join(problems))

    def _add_problem(self, text: str) -> None:
        if text not in self.problems:
            self.problems.append(text)

    def all_problems(self) -> list[str]:
        """Problems found so far: metadata at open, damage found while reading."""
        out = list(self.problems)
        for f in self._files:
            if f.damage and f.damage not in out:
                out.append(f.damage)
        return out

    # -- decoding --------------------------------------------------------------------------

    def deserialize(self, raw: bytes, msgtype: str) -> Any:
        """Decode raw CDR with the bag's embedded definition, else the distro's standard type."""
        if self._fallback is None:
            self._load_types()
        for store in (self._embedded, self._fallback):
            if msgtype in store.fielddefs:
                try:
                    return store.deserialize_cdr(raw, msgtype)
                except Exception as exc:  # rosbags raises struct/index errors on bad CDR
                    raise BagError(
                        f"cannot decode a {msgtype} message: {_describe(exc)}"
                    ) from None
        raise BagError(
            f"no definition of {msgtype}: it is not embedded in {self.path} and is not a "
            f"standard ROS 2 {DISTRO} type"
        )

    def _load_types(self) -> None:
        """Types from the bag's embedded definitions, and the distro's standard types."""
        self._embedded = get_typestore(Stores.EMPTY)
        self._fallback = get_typestore(DISTRO_STORE)
        for t in self._topics:
            if not t.msgdef or t.msgtype in self._embedded.fielddefs:
                continue
            try:
                if t.msgdef_encoding == "ros2idl":
                    types: dict = {}
                    sep = "=" * 80 + "\n"
                    for part in t.msgdef.split(sep):
                        body = part.split("\n", 1)[1] if part.startswith("IDL: ") else part
                        if body.strip():
                            types.update(get_types_from_idl(body))
                else:
                    types = get_types_from_msg(t.msgdef, t.msgtype)
                self._embedded.register(types)
            except Exception as exc:  # a definition rosbags cannot parse: use the standard one
                log.warning("ignoring the embedded definition of %s: %s", t.msgtype, exc)

    def close(self) -> None:
        """Close the storage files and remove decompressed copies."""
        for f in self._files:
            f.close()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def __enter__(self) -> BagSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _decompress_file(src: Path, dst: Path) -> str | None:
    """Decompress a file-compressed storage file; keep what a damaged one yields."""
    try:
        with src.open("rb") as raw, zstd.open(raw, "rb") as infile, dst.open("wb") as out:
            shutil.copyfileobj(infile, out)
    except (OSError, EOFError, zstd.ZstdError) as exc:
        return f"{src.name}: zstd decompression failed ({_describe(exc)})"
    return None


def open_bag(path: str | Path) -> BagSource:
    """Open a bag directory, its metadata.yaml, or one .mcap/.db3 file.

    Raises BagError when nothing is readable; smaller problems are in `.problems` and are
    raised by `messages()` after the last readable message.
    """
    path = Path(path)
    if path.name == "metadata.yaml" and path.is_file():
        path = path.parent
    if not path.exists():
        raise BagError(f"bag not found: {path}")
    problems: list[str] = []
    meta: _Metadata | None = None
    rebuilt = False
    if path.is_file():
        if not _storage_kind(path):
            raise BagError(f"{path} is not a bag: expected a directory, .mcap or .db3 file")
        storage_paths = [path]
    else:
        meta_path = path / "metadata.yaml"
        if meta_path.is_file():
            try:
                meta = _parse_metadata(meta_path)
            except BagError as exc:
                problems.append(f"{exc}; read the storage files instead")
        found = _storage_files_in(path)
        if meta is not None:
            storage_paths = []
            for name in meta.files:
                if (path / name).is_file():
                    storage_paths.append(path / name)
                else:
                    problems.append(f"metadata.yaml lists {name}, which does not exist")
            if not meta.files and found:
                problems.append("metadata.yaml lists no storage files")
                storage_paths = found
        else:
            rebuilt = True
            storage_paths = found
            if not meta_path.exists():
                log.warning(
                    "%s has no metadata.yaml: rebuilt it from %d storage file(s)",
                    path,
                    len(found),
                )
        if not storage_paths:
            detail = "; ".join(problems) or "no .mcap or .db3 files and no metadata.yaml"
            raise BagError(f"no readable storage files in {path}: {detail}")

    compression = meta.compression_mode if meta else ""
    if not meta and any(p.name.endswith(".zstd") for p in storage_paths):
        compression = "file"
    tmpdir = None
    files: list[_StorageFile] = []
    for p in storage_paths:
        readable = p
        if p.name.endswith(".zstd"):
            if tmpdir is None:
                tmpdir = tempfile.TemporaryDirectory(prefix="wmpc_bag_")
            readable = Path(tmpdir.name) / p.name[: -len(".zstd")]
            error = _decompress_file(p, readable)
            if error:
                problems.append(error)
        files.append(_StorageFile(readable, p.name))
    for f in files:
        f.open()
    kinds = {_storage_kind(Path(f.display)) for f in files}
    storage_id = meta.storage_id if meta else (kinds.pop() if len(kinds) == 1 else "mixed")
    if meta and kinds and meta.storage_id not in kinds:
        problems.append(
            f"metadata.yaml says storage {meta.storage_id!r} but the files are {sorted(kinds)}"
        )

    topics = _merge_topics(meta, files, problems)
    if all(f.reader is None and f.salvage is None for f in files):
        damage = "; ".join(problems + [f.damage for f in files if f.damage])
        if tmpdir is not None:
            tmpdir.cleanup()
        raise BagError(f"bag {path} is unreadable: {damage}")
    return BagSource(
        path=path,
        storage_id=storage_id,
        compression_mode=compression,
        metadata_rebuilt=rebuilt,
        ros_distro=meta.ros_distro if meta else "",
        problems=problems,
        _files=files,
        _topics=topics,
        _tmpdir=tmpdir,
    )


def _merge_topics(
    meta: _Metadata | None, files: list[_StorageFile], problems: list[str]
) -> list[TopicInfo]:
    """Topics from the storage (the truth for types, counts and definitions) and metadata
    (the source of offered QoS), matched by name and type; disagreements become problems."""
    storage: dict[Key, _Conn] = {}
    for f in files:
        for key, c in f.conns.items():
            have = storage.get(key)
            if have is None:
                storage[key] = _Conn(**vars(c))
            else:
                have.count += c.count
                have.qos = have.qos or c.qos
                if not have.msgdef:
                    have.msgdef, have.msgdef_encoding = c.msgdef, c.msgdef_encoding
    damaged = any(f.damage for f in files)
    out: list[TopicInfo] = []
    seen: set[Key] = set()
    for name, msgtype, count, qos in meta.topics if meta else []:
        key = (name, msgtype)
        c = storage.get(key)
        if c is None:
            others = [t for (n, t) in storage if n == name]
            if others:
                problems.append(
                    f"metadata.yaml gives {name} type {msgtype} but the storage has {others[0]}"
                )
                continue
            c = _Conn(name, msgtype, qos, "", "", 0)
        if c.count < count and not damaged:
            problems.append(
                f"metadata.yaml counts {count} messages on {name} but the storage holds {c.count}"
            )
        out.append(TopicInfo(name, msgtype, c.count, qos or c.qos, c.msgdef, c.msgdef_encoding))
        seen.add(key)
    for key, c in storage.items():
        if key not in seen:
            if meta is not None:
                problems.append(
                    f"topic {c.topic} [{c.msgtype}] is in the storage, not in metadata"
                )
            out.append(TopicInfo(c.topic, c.msgtype, c.count, c.qos, c.msgdef, c.msgdef_encoding))
    return out
