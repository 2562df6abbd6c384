"""A small chunked MCAP writer tuned for recording: bounded loss on a crash, cheap per message.

Why not `mcap.writer.Writer`: it compresses with a fixed zstd level 3 and copies each message
three times through BytesIO; at 83 MB/s of raw camera images that alone costs ~20 % of a core
here. This writer keeps the same file layout and reuses `mcap.records` for every record except
Message and Chunk, which are packed straight into one bytearray.

Layout (readers: rosbags, mcap, ros2 bag): magic, Header, then in the data section Metadata,
Schema and Channel records written as soon as they are known (so a recovery never misses a
channel), Chunks each followed by their MessageIndex records, and on `finish()` DataEnd, the
summary (schemas, channels, statistics, chunk and metadata indexes), summary offsets, Footer,
magic. Every record reaches the kernel when its chunk closes (unbuffered file): a kill -9 loses
only the open chunk and the sealed chunks still queued for the writer thread.

Threads: `close_chunk()` only seals the chunk (an O(1) hand-over); one writer thread per file
computes its CRC, compresses it and writes it, in order with every other record. zlib.crc32,
zstd and file writes release the GIL, so the caller (the recorder's executor thread) keeps
taking messages meanwhile instead of stalling ~15 ms per chunk. At most `max_pending` sealed
chunks wait; past that the caller blocks (back-pressure, bounded memory).
"""

from __future__ import annotations

import os
import struct
import threading
import zlib
from collections import defaultdict, deque
from collections.abc import Callable
from pathlib import Path

import zstandard
from mcap.data_stream import RecordBuilder
from mcap.opcode import Opcode
from mcap.records import (
    Channel,
    ChunkIndex,
    DataEnd,
    Footer,
    Header,
    MessageIndex,
    Metadata,
    MetadataIndex,
    Schema,
    Statistics,
    SummaryOffset,
)

MAGIC = b"\x89MCAP0\r\n"
# opcode, record length, channel id, sequence, log time (ns), publish time (ns)
_MESSAGE_HEAD = struct.Struct("<BQHIQQ")
# opcode, record length, start time, end time (ns), uncompressed size, uncompressed crc32
_CHUNK_HEAD = struct.Struct("<BQQQQI")
# Adaptive compression: after this many uncompressed chunk bytes, a file whose chunks shrank
# less than MIN_ZSTD_RATIO writes the rest uncompressed (noisy raw camera frames: zstd -3 spent
# ~3 % of a core for a 1.00x ratio). Small chunks (joint states only) do not count: their ratio
# says nothing about images.
ZSTD_PROBE_BYTES = 8 * 1024 * 1024
ZSTD_PROBE_MIN_CHUNK = 256 * 1024
MIN_ZSTD_RATIO = 1.05
# Page cache: the writer thread tells the kernel to drop what lies more than this far behind
# the end of the file (POSIX_FADV_DONTNEED: dirty pages start writeback, clean ones are freed;
# no data is lost and a kill -9 still finds everything written). At 83 MB/s a bag that fills the
# page cache cost 23 % of a core in write() (page allocation and reclaim); with this, 6 %.
CACHE_WINDOW = 32 * 1024 * 1024


class _Sealed:
    """A closed chunk waiting for the writer thread."""

    __slots__ = ("buf", "index", "start_ns", "end_ns")

    def __init__(
        self, buf: bytearray, index: dict[int, list[tuple[int, int]]], start_ns: int, end_ns: int
    ) -> None:
        self.buf, self.index, self.start_ns, self.end_ns = buf, index, start_ns, end_ns


class McapFileWriter:
    """Writes one MCAP file. Not thread-safe: the caller serialises calls (the writer thread
    it starts is internal). A failure on the writer thread is raised by the next call."""

    def __init__(
        self,
        path: Path,
        *,
        profile: str,
        library: str,
        zstd_level: int | None,
        max_pending: int = 4,
    ) -> None:
        # Unbuffered: a written chunk is in the page cache at once and survives a kill -9.
        self._file = open(path, "xb", buffering=0)  # closed in finish()
        self._pos = 0
        self._compressor = (
            zstandard.ZstdCompressor(level=zstd_level, write_checksum=False)
            if zstd_level is not None
            else None
        )
        self._schemas: list[Schema] = []
        self._channels: list[Channel] = []
        self._chunk_indexes: list[ChunkIndex] = []
        self._metadata_indexes: list[MetadataIndex] = []
        self._channel_counts: dict[int, int] = defaultdict(int)
        self._message_count = 0
        self._start_ns = 0
        self._end_ns = 0
        # the open chunk
        self._buf = bytearray()
        self._index: dict[int, list[tuple[int, int]]] = defaultdict(list)
        self._chunk_start_ns = 0
        self._chunk_end_ns = 0
        # compression probe (writer thread): raw / compressed bytes of the large chunks so far
        self._probe_raw = 0
        self._probe_packed = 0
        self._uncached_to = 0  # file offset below which the page cache was told to let go
        self._raw(MAGIC)
        self._record(Header(profile=profile, library=library))
        # jobs for the writer thread, in file order; a job leaves the deque once done
        self._max_pending = max_pending
        self._jobs: deque[Callable[[], None]] = deque()
        self._cond = threading.Condition()
        self._error: BaseException | None = None
        self._stopping = False
        # daemon: a process exiting without finish() (already a crash) must not hang on it
        self._thread = threading.Thread(target=self._work, name="mcap-writer", daemon=True)
        self._thread.start()

    @property
    def open_chunk_bytes(self) -> int:
        return len(self._buf)

    @property
    def message_count(self) -> int:
        return self._message_count

    @property
    def time_range_ns(self) -> tuple[int, int]:
        """(first, last) log time written so far; (0, 0) before any message."""
        return self._start_ns, self._end_ns

    def add_schema(self, name: str, encoding: str, data: bytes) -> int:
        schema = Schema(id=len(self._schemas) + 1, name=name, encoding=encoding, data=data)
        self._schemas.append(schema)
        self._submit(lambda: self._record(schema))
        return schema.id

    def add_channel(
        self, topic: str, message_encoding: str, schema_id: int, metadata: dict[str, str]
    ) -> int:
        channel = Channel(
            id=len(self._channels) + 1,
            topic=topic,
            message_encoding=message_encoding,
            schema_id=schema_id,
            metadata=metadata,
        )
        self._channels.append(channel)
        self._submit(lambda: self._record(channel))
        return channel.id

    def add_metadata(self, name: str, data: dict[str, str]) -> None:
        record = Metadata(name=name, metadata=data)

        def write() -> None:  # on the writer thread, where the file offset is known
            offset = self._pos
            length = self._record(record)
            self._metadata_indexes.append(MetadataIndex(offset=offset, length=length, name=name))

        self._submit(write)

    def add_message(
        self,
        channel_id: int,
        sequence: int,
        log_time_ns: int,
        publish_time_ns: int,
        data: bytes | bytearray | memoryview,
    ) -> None:
        # Packed first: bad times raise here, before any state changes.
        head = _MESSAGE_HEAD.pack(
            Opcode.MESSAGE,
            22 + len(data),
            channel_id,
            sequence & 0xFFFFFFFF,
            log_time_ns,
            publish_time_ns,
        )
        if not self._index:
            self._chunk_start_ns = self._chunk_end_ns = log_time_ns
        else:
            self._chunk_start_ns = min(self._chunk_start_ns, log_time_ns)
            self._chunk_end_ns = max(self._chunk_end_ns, log_time_ns)
        offset = len(self._buf)
        try:
            self._buf += head
            self._buf += data
        except BaseException:  # e.g. KeyboardInterrupt between the two: no torn record
            del self._buf[offset:]
            raise
        self._index[channel_id].append((log_time_ns, offset))
        if self._message_count == 0:
            self._start_ns = self._end_ns = log_time_ns
        else:
            self._start_ns = min(self._start_ns, log_time_ns)
            self._end_ns = max(self._end_ns, log_time_ns)
        self._message_count += 1
        self._channel_counts[channel_id] += 1

    def close_chunk(self) -> None:
        """Seals the open chunk and queues it for the writer thread (no-op when empty)."""
        self._check_error()
        if not self._index:
            return
        sealed = _Sealed(self._buf, self._index, self._chunk_start_ns, self._chunk_end_ns)
        self._buf = bytearray()
        self._index = defaultdict(list)
        self._submit(lambda: self._write_chunk(sealed))

    def _write_chunk(self, c: _Sealed) -> None:
        """Writer thread: CRC, compress and write one chunk and its message indexes."""
        raw = c.buf
        crc = zlib.crc32(raw)
        compression, payload = "", raw
        if self._compressor is not None:
            compression, payload = "zstd", self._compressor.compress(raw)
            if len(raw) >= ZSTD_PROBE_MIN_CHUNK:
                self._probe_raw += len(raw)
                self._probe_packed += len(payload)
                if (
                    self._probe_raw >= ZSTD_PROBE_BYTES
                    and self._probe_raw < MIN_ZSTD_RATIO * self._probe_packed
                ):
                    self._compressor = None  # the rest of the file is stored as is
        comp = compression.encode()
        length = 8 + 8 + 8 + 4 + 4 + len(comp) + 8 + len(payload)
        chunk_offset = self._pos
        head = _CHUNK_HEAD.pack(Opcode.CHUNK, length, c.start_ns, c.end_ns, len(raw), crc)
        self._raw(head + struct.pack("<I", len(comp)) + comp + struct.pack("<Q", len(payload)))
        self._raw(payload)
        chunk_length = self._pos - chunk_offset

        indexes = RecordBuilder()
        index_offsets: dict[int, int] = {}
        index_start = self._pos
        for channel_id, records in c.index.items():
            index_offsets[channel_id] = index_start + indexes.count
            # MCAP readers expect each index sorted by log time; callbacks on several executor
            # threads can hand messages over slightly out of order.
            records.sort()
            MessageIndex(channel_id=channel_id, records=records).write(indexes)
        index_bytes = indexes.end()
        self._raw(index_bytes)
        self._chunk_indexes.append(
            ChunkIndex(
                message_start_time=c.start_ns,
                message_end_time=c.end_ns,
                chunk_start_offset=chunk_offset,
                chunk_length=chunk_length,
                message_index_offsets=index_offsets,
                message_index_length=len(index_bytes),
                compression=compression,
                compressed_size=len(payload),
                uncompressed_size=len(raw),
            )
        )
        self._release_cache()

    def _release_cache(self) -> None:
        behind = self._pos - CACHE_WINDOW
        if behind - self._uncached_to < CACHE_WINDOW or not hasattr(os, "posix_fadvise"):
            return
        # from one window before the last call: pages still dirty then are clean by now
        start = max(0, self._uncached_to - CACHE_WINDOW)
        try:
            os.posix_fadvise(self._file.fileno(), start, behind - start, os.POSIX_FADV_DONTNEED)
        except OSError:  # a file system without it: only the CPU saving is lost
            pass
        self._uncached_to = behind

    # --- the writer thread -------------------------------------------------------------------

    def _submit(self, job: Callable[[], None]) -> None:
        """Queues a job; blocks while max_pending jobs wait. The job is queued before any wait,
        so an exception (KeyboardInterrupt) raised while waiting loses nothing."""
        with self._cond:
            self._check_error()
            self._jobs.append(job)
            self._cond.notify_all()
            while len(self._jobs) > self._max_pending and self._error is None:
                self._cond.wait()
        self._check_error()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._stopping:
                    self._cond.wait()
                if not self._jobs:
                    return
                job = self._jobs[0]  # stays queued (counted) until written
            try:
                job()
            except BaseException as exc:  # reported to the caller by its next call
                with self._cond:
                    self._error = exc
                    self._jobs.clear()
                    self._cond.notify_all()
                return
            with self._cond:
                self._jobs.popleft()
                self._cond.notify_all()

    def _drain(self) -> None:
        """Waits until the writer thread wrote every queued job, then stops it."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join()
        self._check_error()

    def _check_error(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"MCAP writer thread failed: {self._error!r}") from self._error

    def finish(self, *, fsync: bool = True) -> None:
        """Closes the open chunk, waits for the writer thread, writes the summary and footer,
        and closes the file. Call once."""
        try:
            self.close_chunk()
            self._drain()  # from here on this thread alone touches the file
        except RuntimeError:  # the writer thread failed: the file stays unfinished (recoverable)
            self._file.close()
            raise
        self._record(DataEnd(data_section_crc=0))
        summary_start = self._pos
        builder = RecordBuilder()
        offsets: list[SummaryOffset] = []

        def group(opcode: Opcode, records: list) -> None:
            if not records:
                return
            start = builder.count
            for record in records:
                record.write(builder)
            offsets.append(
                SummaryOffset(
                    group_opcode=opcode,
                    group_start=summary_start + start,
                    group_length=builder.count - start,
                )
            )

        group(Opcode.SCHEMA, self._schemas)
        group(Opcode.CHANNEL, self._channels)
        group(
            Opcode.STATISTICS,
            [
                Statistics(
                    message_count=self._message_count,
                    schema_count=len(self._schemas),
                    channel_count=len(self._channels),
                    attachment_count=0,
                    metadata_count=len(self._metadata_indexes),
                    chunk_count=len(self._chunk_indexes),
                    message_start_time=self._start_ns,
                    message_end_time=self._end_ns,
                    channel_message_counts=dict(self._channel_counts),
                )
            ],
        )
        group(Opcode.CHUNK_INDEX, self._chunk_indexes)
        group(Opcode.METADATA_INDEX, self._metadata_indexes)
        summary_offset_start = summary_start + builder.count
        for offset in offsets:
            offset.write(builder)
        summary = builder.end()
        # The summary CRC covers the summary section and the footer fields before the CRC.
        crc = zlib.crc32(summary)
        crc = zlib.crc32(
            struct.pack("<BQQQ", Opcode.FOOTER, 20, summary_start, summary_offset_start), crc
        )
        self._raw(summary)
        self._record(
            Footer(
                summary_start=summary_start,
                summary_offset_start=summary_offset_start,
                summary_crc=crc,
            )
        )
        self._raw(MAGIC)
        if fsync:
            os.fsync(self._file.fileno())
        self._file.close()

    def _record(self, record) -> int:
        builder = RecordBuilder()
        record.write(builder)
        data = builder.end()
        self._raw(data)
        return len(data)

    def _raw(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:  # a raw FileIO may write less than asked
            n = self._file.write(view)
            view = view[n:]
            self._pos += n
