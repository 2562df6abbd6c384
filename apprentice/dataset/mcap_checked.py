"""The MCAP layer of the checked bag reader (`apprentice.dataset.bag.EpisodeBag`): metadata.yaml,
the summary and its CRC, and every chunk read where the chunk index says, its header checked
against the index, decompressed and CRC-checked. Anything that does not hold raises
`CorruptBagError` with the file and what differs.
"""

from __future__ import annotations

import heapq
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import yaml
from mcap.opcode import Opcode
from mcap.reader import NonSeekingReader, SeekingReader
from mcap.records import Chunk, ChunkIndex, Message
from mcap.stream_reader import get_chunk_data_stream
from mcap.summary import Summary

from apprentice.errors import UserValueError

# MCAP record layouts (little-endian), https://mcap.dev/spec
_RECORD = struct.Struct("<BQ")  # opcode, length of what follows
_CHUNK = struct.Struct("<QQQII")  # start, end time (ns), uncompressed size, crc32, len(compression)
_MESSAGE = struct.Struct("<HIQQ")  # channel id, sequence, log time, publish time (ns)
_FOOTER = struct.Struct("<BQQQI")  # opcode, length, summary start, summary offsets start, crc
_MAGIC_SIZE = 8


class DatasetError(UserValueError):
    """A bag or dataset that cannot be used, with the file and topic that are at fault."""


class CorruptBagError(DatasetError):
    """A bag that does not hold what it says it holds: metadata.yaml unreadable, the MCAP cut
    or damaged, or a topic read with another number of messages than the bag counts."""


class CheckedMcap:
    """One MCAP file and its (checked) summary: messages of some channels, every record checked."""

    def __init__(self, path: Path, summary: Summary):
        self.path, self.summary = path, summary

    def messages(self, wanted: set[int], read: dict[int, int]) -> Iterator[Message]:
        """Messages of the `wanted` channel ids in log-time order; `read` counts each channel's."""
        with open(self.path, "rb") as f:
            if self.summary.chunk_indexes:
                yield from self._indexed(f, wanted, read)
            else:  # no chunk index (an unchunked MCAP, e.g. ros2 bag's fastwrite preset)
                yield from self._unindexed(f, wanted, read)

    def _indexed(self, f: BinaryIO, wanted: set[int], read: dict[int, int]) -> Iterator[Message]:
        """Chunks by the chunk index, messages merged into log-time order (mcap's own order:
        log time, then chunk offset, then place in the chunk)."""
        size = os.fstat(f.fileno()).st_size
        offsets = [ci.chunk_start_offset for ci in self.summary.chunk_indexes]
        if len(set(offsets)) != len(offsets):
            twice = sorted({o for o in offsets if offsets.count(o) > 1})
            raise CorruptBagError(f"{self.path}: the chunk index lists chunk(s) {twice} twice")
        queue: list[tuple[int, int, int, ChunkIndex | Message]] = [
            (ci.message_start_time, ci.chunk_start_offset, -1, ci)
            for ci in self.summary.chunk_indexes
            # a chunk index lists the channels its chunk holds (when it has message indexes)
            if not ci.message_index_offsets or not wanted.isdisjoint(ci.message_index_offsets)
        ]
        heapq.heapify(queue)
        while queue:
            _, offset, _, item = heapq.heappop(queue)
            if isinstance(item, Message):
                yield item
                continue
            for i, message in enumerate(self._chunk_messages(f, item, size, wanted)):
                read[message.channel_id] += 1
                heapq.heappush(queue, (message.log_time, offset, i, message))

    def _chunk_messages(
        self, f: BinaryIO, ci: ChunkIndex, size: int, wanted: set[int]
    ) -> list[Message]:
        """The messages of `wanted` channels in one chunk, in file order, every record checked."""
        where = f"{self.path}: chunk at byte {ci.chunk_start_offset}"
        end = ci.chunk_start_offset + ci.chunk_length
        if end > size or ci.chunk_length < _RECORD.size + _CHUNK.size + 8:
            raise CorruptBagError(
                f"{where}: the chunk index gives it {ci.chunk_length} bytes, the file has "
                f"{size - ci.chunk_start_offset} from there (cut or damaged)"
            )
        f.seek(ci.chunk_start_offset)
        body = f.read(ci.chunk_length)
        opcode, length = _RECORD.unpack_from(body)
        if opcode != Opcode.CHUNK or _RECORD.size + length != ci.chunk_length:
            raise CorruptBagError(
                f"{where}: the file holds a record of opcode 0x{opcode:02x} and {length} bytes "
                f"there, the chunk index a chunk of {ci.chunk_length - _RECORD.size} bytes"
            )
        start, stop, usize, crc, clen = _CHUNK.unpack_from(body, _RECORD.size)
        pos = _RECORD.size + _CHUNK.size + clen
        compression = body[pos - clen : pos].decode("utf-8", "replace")
        dlen = struct.unpack_from("<Q", body, pos)[0] if pos + 8 <= len(body) else -1
        header = {
            "message_start_time": start,
            "message_end_time": stop,
            "uncompressed_size": usize,
            "compression": compression,
            "compressed_size": dlen,
        }
        differ = [
            f"{k} {v!r} (index {getattr(ci, k)!r})"
            for k, v in header.items()
            if v != getattr(ci, k)
        ]
        if not differ and pos + 8 + dlen != len(body):
            differ.append(f"{pos + 8 + dlen} bytes (index {len(body)})")
        if differ:
            raise CorruptBagError(
                f"{where}: its header disagrees with the chunk index: {', '.join(differ)}"
            )
        chunk = Chunk(
            compression=compression,
            data=body[pos + 8 :],
            message_start_time=start,
            message_end_time=stop,
            uncompressed_crc=crc,
            uncompressed_size=usize,
        )
        try:
            stream, n = get_chunk_data_stream(chunk, validate_crc=True)
            raw = stream.read(n)
        except Exception as e:  # CRCValidationError, a zstd or lz4 error
            raise CorruptBagError(f"{where}: {type(e).__name__}: {one_line(e)}") from e
        if n != usize:
            raise CorruptBagError(f"{where}: decompresses to {n} bytes, its header says {usize}")
        out: list[Message] = []
        p = 0
        while p < n:
            if p + _RECORD.size > n:
                raise CorruptBagError(f"{where}: a record is cut at byte {p} of {n}")
            op, length = _RECORD.unpack_from(raw, p)
            body_start, next_p = p + _RECORD.size, p + _RECORD.size + length
            if next_p > n or (op == Opcode.MESSAGE and length < _MESSAGE.size):
                raise CorruptBagError(
                    f"{where}: a record of opcode 0x{op:02x} and {length} bytes at byte {p} does "
                    f"not fit the chunk's {n} bytes"
                )
            if op == Opcode.MESSAGE:
                cid, seq, log_time, publish_time = _MESSAGE.unpack_from(raw, body_start)
                if cid not in self.summary.channels:
                    raise CorruptBagError(
                        f"{where}: a message on channel {cid}, which the summary does not list"
                    )
                if cid in wanted:
                    data = raw[body_start + _MESSAGE.size : next_p]
                    out.append(
                        Message(
                            channel_id=cid,
                            sequence=seq,
                            log_time=log_time,
                            publish_time=publish_time,
                            data=data,
                        )
                    )
            p = next_p  # schema and channel records in a chunk: the summary has them too
        return out

    def _unindexed(self, f: BinaryIO, wanted: set[int], read: dict[int, int]) -> Iterator[Message]:
        """Front to back with mcap's reader (chunk and data section CRCs checked); messages
        sorted by log time in memory."""
        try:
            for _, channel, message in NonSeekingReader(f, validate_crcs=True).iter_messages():
                if channel.id in wanted:
                    read[channel.id] += 1
                    yield message
        except Exception as e:  # CRC mismatch, torn record
            raise CorruptBagError(f"{self.path}: {type(e).__name__}: {one_line(e)}") from e


def load_metadata(path: Path) -> dict:
    """metadata.yaml's rosbag2_bagfile_information, or a one-line CorruptBagError."""
    data = path.read_bytes()
    try:
        doc = yaml.safe_load(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise CorruptBagError(
            f"{path}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}): the file "
            "is damaged"
        ) from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(e, "problem", None) or e
        raise CorruptBagError(f"{path}: not valid YAML ({at}{one_line(problem)})") from e
    info = doc.get("rosbag2_bagfile_information") if isinstance(doc, dict) else None
    if not isinstance(info, dict):
        raise CorruptBagError(
            f"{path}: not a rosbag2 metadata file (no rosbag2_bagfile_information)"
        )
    return info


def metadata_counts(path: Path, info: dict) -> dict[str, int]:
    """Messages per topic, as metadata.yaml's topics_with_message_count lists them."""
    counts: dict[str, int] = {}
    try:
        for entry in info["topics_with_message_count"]:
            topic, n = entry["topic_metadata"]["name"], entry["message_count"]
            if not isinstance(topic, str) or not isinstance(n, int) or n < 0:
                raise TypeError(f"topic {topic!r} with message_count {n!r}")
            counts[topic] = counts.get(topic, 0) + n
    except (KeyError, TypeError) as e:
        raise CorruptBagError(
            f"{path}: topics_with_message_count missing or malformed ({type(e).__name__}: "
            f"{one_line(e)})"
        ) from e
    return counts


def read_summary(f: BinaryIO, path: Path) -> Summary | None:
    """The MCAP's summary section, checked against the footer's summary CRC when it has one."""
    try:
        summary = SeekingReader(f).get_summary()
        size = f.seek(0, os.SEEK_END)
        f.seek(size - _MAGIC_SIZE - _FOOTER.size)
        _, _, summary_start, _, crc = _FOOTER.unpack(f.read(_FOOTER.size))
    except Exception as e:  # mcap raises several types for a cut or damaged tail
        raise CorruptBagError(
            f"{path}: truncated or corrupt MCAP, no valid summary/footer "
            f"({type(e).__name__}: {one_line(e)})"
        ) from e
    if summary is not None and crc != 0:
        # the CRC covers the summary section and the footer up to the CRC field
        f.seek(summary_start)
        if zlib.crc32(f.read(size - _MAGIC_SIZE - 4 - summary_start)) != crc:
            raise CorruptBagError(
                f"{path}: the summary section fails its CRC (damaged): its chunk index and "
                "message counts cannot be trusted"
            )
    return summary


def summary_counts(path: Path, summary: Summary) -> dict[str, int]:
    """Messages per topic by the summary's Statistics, checked to add up."""
    stats = summary.statistics
    assert stats is not None
    counts = dict.fromkeys((ch.topic for ch in summary.channels.values()), 0)
    for cid, n in stats.channel_message_counts.items():
        if cid not in summary.channels:
            raise CorruptBagError(
                f"{path}: the MCAP summary counts messages of unknown channel {cid}"
            )
        counts[summary.channels[cid].topic] += n
    if sum(counts.values()) != stats.message_count:
        raise CorruptBagError(
            f"{path}: the MCAP summary counts {sum(counts.values())} messages by channel, "
            f"{stats.message_count} in all"
        )
    return counts


def one_line(e: object) -> str:
    return " ".join(str(e).split())
