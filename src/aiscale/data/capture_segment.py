"""The on-disk form of a capture log: a folder of append-only segment files of framed records.

A frame is ``<u32 length><u32 crc32(payload)><payload>`` (little endian). A segment being
written is ``seg-<n>.open``; once full (or when its writer stops) it is sealed by renaming it
to ``seg-<n>.log`` and never changes again. ``<n>`` grows strictly, so names sort in write
order. A writer holds an exclusive ``flock`` on ``.lock`` for as long as it runs; a
``.open`` segment without a live writer (left by a crash) is sealed by whoever next takes
the lock.

Reading stops a segment at its first frame that is incomplete or fails its CRC (a torn
write at a crash) and skips only the rest of that segment: a writer never appends to a
segment after a failed write or a crash, so nothing valid can follow a torn frame.

This module does blocking file I/O and must only be called off the event loop (or from
offline tools such as compaction and query). It never deletes a segment; compaction does.
Captured requests are personal data: folders it creates are 0700, segments and locks 0600.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

_HEADER = struct.Struct("<II")
HEADER_BYTES = _HEADER.size
#: A frame longer than this is treated as garbage (a torn or corrupt header), never allocated.
MAX_PAYLOAD_BYTES = 1 << 30
OPEN_SUFFIX = ".open"
SEALED_SUFFIX = ".log"
LOCK_NAME = ".lock"
_NAME_RE = re.compile(r"^seg-(\d{20})\.(open|log)$")


#: Modes of what the capture log creates: only its owner may read captured data.
FILE_MODE = 0o600
DIR_MODE = 0o700


def make_private_dirs(directory: Path) -> None:
    """Create ``directory`` and its missing parents with mode 0700 (whatever the umask)."""
    missing = []
    folder = directory
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=DIR_MODE)
        except FileExistsError:  # another process made it meanwhile
            continue
        os.chmod(folder, DIR_MODE)


def frame(payload: bytes) -> bytes:
    """``payload`` with its length and CRC32 header, ready to append to a segment."""
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


@dataclass(frozen=True, slots=True)
class SegmentScan:
    """The valid payloads of one segment; ``torn_bytes`` counts bytes skipped after the first
    bad frame (0 for a clean segment)."""

    path: Path
    payloads: list[bytes]
    torn_bytes: int


def scan_segment(path: Path) -> SegmentScan:
    """Every valid payload of the segment at ``path``, in write order, up to the first torn
    or corrupt frame. Raises ``FileNotFoundError`` if the segment is gone."""
    data = path.read_bytes()
    payloads: list[bytes] = []
    offset, end = 0, len(data)
    while offset < end:
        if end - offset < HEADER_BYTES:
            break
        length, crc = _HEADER.unpack_from(data, offset)
        start = offset + HEADER_BYTES
        # A zero length is rejected: a file extended by the file system but never written
        # reads as zeros, and crc32(b"") == 0 would otherwise accept it.
        if length == 0 or length > MAX_PAYLOAD_BYTES or start + length > end:
            break
        payload = data[start : start + length]
        if zlib.crc32(payload) != crc:
            break
        payloads.append(payload)
        offset = start + length
    torn = end - offset
    if torn:
        # In a segment still open a partial last frame is normal (a write in progress).
        level = logging.DEBUG if path.suffix == OPEN_SUFFIX else logging.WARNING
        logger.log(level, "capture segment %s: skipped a torn tail of %d bytes", path, torn)
    return SegmentScan(path=path, payloads=payloads, torn_bytes=torn)


def list_segments(directory: Path, *, is_sealed_only: bool = False) -> list[Path]:
    """The segments in ``directory`` in write order (sealed ones only if asked)."""
    if not directory.is_dir():
        return []
    found: list[tuple[int, Path]] = []
    for entry in directory.iterdir():
        match = _NAME_RE.match(entry.name)
        if match is None or (is_sealed_only and match.group(2) != "log"):
            continue
        found.append((int(match.group(1)), entry))
    return [path for _, path in sorted(found)]


def iter_payloads(directory: Path) -> Iterator[bytes]:
    """Every valid payload of every segment (sealed or open) in ``directory``, in write order.
    A segment removed while iterating (compacted meanwhile) is skipped."""
    for path in list_segments(directory):
        try:
            scan = scan_segment(path)
        except FileNotFoundError:
            continue
        yield from scan.payloads


def fsync_dir(directory: Path) -> None:
    """Make a creation, rename or removal in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def try_lock(directory: Path, name: str = LOCK_NAME) -> int | None:
    """An fd holding the exclusive lock ``name`` (default: the writer lock) of ``directory``,
    or None if someone else holds it."""
    make_private_dirs(directory)
    fd = os.open(directory / name, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def unlock(fd: int) -> None:
    """Release a lock taken by :func:`try_lock`."""
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def seal_orphans(directory: Path) -> int:
    """Seal the ``.open`` segments left by a dead writer; the caller must hold the lock.
    The zeros the writer had prefilled after its records are cut first (a torn frame stays,
    to be skipped and counted on read). Returns how many were sealed."""
    orphans = [p for p in list_segments(directory) if p.suffix == OPEN_SUFFIX]
    for path in orphans:
        _cut_prefill(path)
        path.rename(path.with_suffix(SEALED_SUFFIX))
    if orphans:
        fsync_dir(directory)
    return len(orphans)


#: How far ahead of the records the open segment is zero-filled (and fsync'ed) at a time.
PREFILL_BYTES = 4 * 1024 * 1024
_ZEROS = bytes(256 * 1024)


def _cut_prefill(path: Path) -> None:
    """Truncate the trailing zeros after the last valid frame of the segment at ``path``."""
    scan = scan_segment(path)
    if not scan.torn_bytes:
        return
    data = path.read_bytes()
    valid_end = len(data) - scan.torn_bytes
    # Never below the valid frames, whatever their last bytes are.
    size = max(valid_end, len(data.rstrip(b"\0")))
    if size == len(data):
        return
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


class SegmentWriter:
    """Appends chunks of frames to the open segment of a log folder and seals it when full.

    Used by exactly one thread at a time (the capture log's writer thread); the caller holds
    the folder's lock. After any failed write the segment is sealed as it is (its torn tail is
    skipped on read) and the next chunk starts a new segment.

    The segment is zero-filled ahead of the records, :data:`PREFILL_BYTES` at a time, and
    that space made durable once; records then overwrite it, so each group commit's
    fdatasync flushes data only, with no change of size or extents to journal (about 4x
    faster on ext4). A reader stops at the first zero header (a frame never has length 0),
    and sealing cuts the file to its records."""

    def __init__(self, directory: Path, segment_bytes: int) -> None:
        self._directory = directory
        self._segment_bytes = segment_bytes
        self._fd: int | None = None
        self._path: Path | None = None
        self._size_bytes = 0
        self._zeroed_bytes = 0
        self._is_prefilling = True

    def append_durably(self, chunk: bytes) -> None:
        """Write ``chunk`` and fdatasync it; returns only once it is on stable storage."""
        if self._fd is None:
            self._open_next()
        assert self._fd is not None
        try:
            end = self._size_bytes + len(chunk)
            if end > self._zeroed_bytes and self._is_prefilling:
                ahead = min(self._zeroed_bytes + PREFILL_BYTES, self._segment_bytes)
                try:
                    self._prefill(max(end, ahead))
                except OSError as exc:
                    # Out of space or over a file size limit: this segment carries on without
                    # prefill (each fdatasync then also journals the growth), and the write
                    # below fails on its own if the records do not fit either.
                    logger.warning("capture segment %s: no prefill: %s", self._path, exc)
                    self._is_prefilling = False
            view = memoryview(chunk)
            offset = self._size_bytes
            while view:
                written = os.pwrite(self._fd, view, offset)
                view, offset = view[written:], offset + written
            # Inside the prefilled space: a pure data flush, no metadata to journal.
            os.fdatasync(self._fd)
        except OSError:
            self.seal()
            raise
        self._size_bytes += len(chunk)
        if self._size_bytes >= self._segment_bytes:
            self.seal()

    def seal(self) -> None:
        """Close the open segment (if any) and rename it to its sealed name."""
        if self._fd is None or self._path is None:
            return
        fd, path, size = self._fd, self._path, self._size_bytes
        self._fd, self._path, self._size_bytes, self._zeroed_bytes = None, None, 0, 0
        try:
            os.ftruncate(fd, size)  # drop the unused prefilled zeros
            os.fsync(fd)
        finally:
            os.close(fd)
        path.rename(path.with_suffix(SEALED_SUFFIX))
        fsync_dir(self._directory)

    def _prefill(self, target_bytes: int) -> None:
        """Zero-fill the segment up to ``target_bytes`` and make that durable (size included)."""
        assert self._fd is not None
        while self._zeroed_bytes < target_bytes:
            size = min(len(_ZEROS), target_bytes - self._zeroed_bytes)
            self._zeroed_bytes += os.pwrite(
                self._fd, memoryview(_ZEROS)[:size], self._zeroed_bytes
            )
        os.fsync(self._fd)

    def _open_next(self) -> None:
        existing = list_segments(self._directory)
        last = int(existing[-1].name[4:24]) if existing else 0
        # Names must never repeat even after compaction emptied the folder, so the sequence
        # also moves past the wall clock in ns (a name, never used as a time).
        number = max(last + 1, time.time_ns())
        path = self._directory / f"seg-{number:020d}{OPEN_SUFFIX}"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        self._path = path
        self._size_bytes = 0
        self._zeroed_bytes = 0
        self._is_prefilling = True
        fsync_dir(self._directory)
