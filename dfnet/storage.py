"""One task's bytes on disk and the durable record of its verified pieces.

Layout of a task folder, `ROOT/<task id>/`:
- `data`: the file itself, sized to its length up front, each piece written at its offset;
- `pieces`: an append-only record, one 36-byte entry (uint32 index, sha256) per verified piece;
- `meta.json`: what the task is (length, piece size, validators, ...), replaced atomically.

Rules kept here:
- A piece counts only once its bytes are written and its digest checked; only then is its
  entry appended. A process killed at any moment (SIGKILL) leaves every recorded piece's bytes
  in the page cache, and any piece in flight unrecorded, so it is fetched again, never trusted.
- On open, every recorded piece is hashed again (a power loss can keep the record and lose the
  bytes) and a torn last entry is ignored: a resumed download trusts nothing it cannot prove.
- A task folder is named by the task id alone, 64 lower-case hex digits, checked here: no
  name from the network ever becomes a path that leaves `ROOT`.
"""
from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import mmap
import os
import re
import shutil
import struct
import time
from pathlib import Path

_ENTRY = struct.Struct("<I32s")
_TASK_ID = re.compile(r"[0-9a-f]{64}")
HASH_CHUNK = 1 << 20
_IOV_MAX = 1024         # buffers per pwritev (POSIX minimum; Linux's limit)


class StorageError(Exception):
    """A task folder that cannot be used; the message is one line."""


def check_task_id(task_id: str) -> str:
    if not isinstance(task_id, str) or not _TASK_ID.fullmatch(task_id):
        raise StorageError(f"not a task id: {str(task_id)[:80]!r}")
    return task_id


class TaskFiles:
    """The files of one task under a data root. Create with `create` or `open`."""

    def __init__(self, folder: Path, meta: dict):
        self.folder = folder
        self.meta = meta
        self.length = int(meta["length"])
        self.piece_size = int(meta["piece_size"])
        self.n_pieces = -(-self.length // self.piece_size) if self.length else 0
        self.have = bytearray(self.n_pieces)
        self.digests: list[str | None] = [None] * self.n_pieces
        self.finished = 0
        self.data_path = folder / "data"
        # readable like any downloaded file: a finished task's file becomes dfget's output
        self._fd = os.open(self.data_path, os.O_RDWR | os.O_CREAT, 0o644)
        self._record = open(folder / "pieces", "ab")
        self.last_used = time.time()

    # ---- lifecycle -----------------------------------------------------------------------
    @classmethod
    def create(cls, root: Path, task_id: str, meta: dict) -> "TaskFiles":
        """A fresh task folder (an old one with the same id is replaced)."""
        folder = Path(root) / check_task_id(task_id)
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        meta = dict(meta, task_id=task_id)
        _write_json(folder / "meta.json", meta)
        files = cls(folder, meta)
        files._reserve()
        return files

    def _reserve(self) -> None:
        """Allocate the data file's blocks up front: a disk too small for the task is found
        now, in one line, rather than as a write error halfway through the download (pieces
        arrive out of order, so a sparse file would also fragment)."""
        if not self.length:
            return
        try:
            os.posix_fallocate(self._fd, 0, self.length)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                os.close(self._fd)
                self._record.close()
                shutil.rmtree(self.folder, ignore_errors=True)
                raise StorageError(f"not enough disk space under {self.folder.parent} for a task "
                                   f"of {self.length} bytes") from None
            os.ftruncate(self._fd, self.length)    # a file system without fallocate: sparse

    @classmethod
    def open(cls, root: Path, task_id: str, verify: bool = True) -> "TaskFiles | None":
        """The task's folder as left by an earlier run, with its proven pieces; None if absent."""
        folder = Path(root) / check_task_id(task_id)
        try:
            meta = json.loads((folder / "meta.json").read_text())
            files = cls(folder, meta)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if os.fstat(files._fd).st_size != files.length:
            os.ftruncate(files._fd, files.length)
        files._load_record(verify)
        return files

    def _load_record(self, verify: bool) -> None:
        raw = (self.folder / "pieces").read_bytes()
        good: list[bytes] = []
        for off in range(0, len(raw) - len(raw) % _ENTRY.size, _ENTRY.size):
            piece, digest = _ENTRY.unpack_from(raw, off)
            if piece >= self.n_pieces or self.have[piece]:
                continue
            if verify and self.sha256(piece) != digest.hex():
                continue
            self._mark(piece, digest.hex())
            good.append(raw[off:off + _ENTRY.size])
        if len(good) * _ENTRY.size != len(raw):       # rewrite without torn or bad entries
            self._record.close()
            tmp = self.folder / "pieces.tmp"
            tmp.write_bytes(b"".join(good))
            os.replace(tmp, self.folder / "pieces")
            self._record = open(self.folder / "pieces", "ab")

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self._record.close()

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def remove(self) -> None:
        self.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def save_meta(self, **changes) -> None:
        self.meta.update(changes)
        _write_json(self.folder / "meta.json", self.meta)

    # ---- pieces --------------------------------------------------------------------------
    def piece_range(self, piece: int) -> tuple[int, int]:
        """(offset, length) of `piece`."""
        if not 0 <= piece < self.n_pieces:
            raise StorageError(f"piece {piece} out of range 0..{self.n_pieces - 1}")
        start = piece * self.piece_size
        return start, min(self.piece_size, self.length - start)

    def write(self, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(self._fd, view, offset)
            view, offset = view[n:], offset + n

    def writev(self, offset: int, chunks: list) -> None:
        """Write `chunks` one after the other from `offset`, in as few system calls as the
        kernel allows."""
        views = [memoryview(c).cast("B") for c in chunks if len(c)]
        while views:
            n = os.pwritev(self._fd, views[:_IOV_MAX], offset)
            offset += n
            while views and n >= len(views[0]):
                n -= len(views[0])
                views.pop(0)
            if n:
                views[0] = views[0][n:]

    def commit(self, piece: int, digest_hex: str) -> None:
        """`piece`'s bytes are written and match `digest_hex`: record it durably."""
        if self.have[piece]:
            return
        self._record.write(_ENTRY.pack(piece, bytes.fromhex(digest_hex)))
        self._record.flush()            # in the kernel now: survives the process being killed
        self._mark(piece, digest_hex)

    def _mark(self, piece: int, digest_hex: str) -> None:
        self.have[piece] = 1
        self.digests[piece] = digest_hex
        self.finished += 1

    @property
    def complete(self) -> bool:
        return self.finished == self.n_pieces

    def read(self, offset: int, n: int) -> bytes:
        return os.pread(self._fd, n, offset)

    @property
    def fd(self) -> int:
        """The data file's descriptor, for writers that move bytes into it themselves."""
        return self._fd

    def hash_range(self, h, offset: int, n: int) -> None:
        """Feed `n` bytes of the file from `offset` to hash `h`, read in place from the page
        cache through a short-lived mapping (no copy into a buffer; nothing stays mapped, so
        the process's resident memory does not grow with the file)."""
        if n <= 0:
            return
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        with mmap.mmap(self._fd, offset + n - start, offset=start, access=mmap.ACCESS_READ) as m:
            whole = memoryview(m)
            part = whole[offset - start:]
            try:
                h.update(part)
            finally:
                part.release()
                whole.release()

    def sha256(self, piece: int) -> str:
        start, n = self.piece_range(piece)
        h = hashlib.sha256()
        while n > 0:
            chunk = os.pread(self._fd, min(HASH_CHUNK, n), start)
            if not chunk:
                break
            h.update(chunk)
            start += len(chunk)
            n -= len(chunk)
        return h.hexdigest()

    def file_digest(self, algorithm: str) -> str:
        """The whole file's digest (`sha256` or `md5`), read back from disk."""
        h = hashlib.new(algorithm)
        offset = 0
        while offset < self.length:
            chunk = os.pread(self._fd, min(HASH_CHUNK * 4, self.length - offset), offset)
            if not chunk:
                break
            h.update(chunk)
            offset += len(chunk)
        return h.hexdigest()

    def disk_bytes(self) -> int:
        try:
            return os.fstat(self._fd).st_blocks * 512
        except OSError:
            return 0


class PieceWriter:
    """Streams one piece to its offset while hashing it, off the event loop.

    Chunks from the network are gathered by reference (never copied) up to `BATCH` bytes,
    then written with one `pwritev` and hashed in a worker thread (`os.pwritev` and `hashlib`
    release the GIL), so the event loop keeps reading sockets while another core hashes.
    Memory per piece in flight is at most `BATCH` plus the chunks' own buffers.
    A caller that fills its own batches (`dfnet.daemon.piecefetch` receives into them) hands
    each over with `feed_owned`: written and hashed as it is, never copied.
    """

    # Just under 1 MiB: a write of 1 MiB or more at an aligned offset makes the page cache take
    # large folios, which on this VM cost up to 7x the kernel time to fill (1 GiB in 4 MiB
    # pwrites: 1.89 s of system time against 0.26 in writes a page short of 1 MiB).
    BATCH = (1 << 20) - 4096

    def __init__(self, files: TaskFiles, offset: int):
        self.files = files
        self.offset = offset
        self.written = 0
        self._hash = hashlib.sha256()
        self._chunks: list[memoryview] = []
        self._gathered = 0

    async def feed(self, chunk: bytes | memoryview) -> None:
        """Take `chunk` by reference: the caller must not change its bytes afterwards."""
        view = memoryview(chunk).cast("B")
        while view:
            k = min(len(view), self.BATCH - self._gathered)
            self._chunks.append(view[:k])
            self._gathered += k
            view = view[k:]
            if self._gathered == self.BATCH:
                await self._flush()

    async def feed_owned(self, data: bytearray | memoryview) -> None:
        """Write and hash `data` itself, without copying it; the writer owns it from now on.

        Returns once it is written; bytes `feed` gathered before it go first."""
        await self._flush()
        if data:
            await asyncio.to_thread(self._write, [data], self.offset + self.written)
            self.written += len(data)

    def write_now(self, data: bytearray | memoryview) -> None:
        """Write and hash `data` in the calling thread (a worker thread that received it).
        Never while a `feed`/`feed_owned`/`take_now` of the same writer is running."""
        if data:
            self._write([data], self.offset + self.written)
            self.written += len(data)

    def take_now(self, rx, n: int) -> int:
        """Move `n` bytes from `rx` (a `dfnet.sockthread.Receiver`, in its worker thread)
        into the file at the writer's position, batch by batch, each hashed from the page
        cache right after it lands (still in this core's cache). Returns the bytes taken:
        fewer than `n` only when the peer closed the connection."""
        taken = 0
        while taken < n:
            want = min(self.BATCH, n - taken)
            k = rx.splice(self.files.fd, self.offset + self.written, want)
            if k:
                self.files.hash_range(self._hash, self.offset + self.written, k)
                self.written += k
                taken += k
            if k < want:
                break
        return taken

    def hexdigest(self) -> str:
        """The sha256 hex of everything written with `write_now` (in its thread)."""
        return self._hash.hexdigest()

    async def digest(self) -> str:
        """Flush what is left; the sha256 hex of everything fed."""
        await self._flush()
        return self._hash.hexdigest()

    async def _flush(self) -> None:
        if not self._chunks:
            return
        chunks, n = self._chunks, self._gathered
        self._chunks, self._gathered = [], 0
        await asyncio.to_thread(self._write, chunks, self.offset + self.written)
        self.written += n

    def _write(self, chunks: list, offset: int) -> None:
        self.files.writev(offset, chunks)
        for c in chunks:
            self._hash.update(c)


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, sort_keys=True))
    os.replace(tmp, path)


def task_ids(root: Path) -> list[str]:
    """Task folders under `root` (names that are not task ids are left alone)."""
    try:
        return sorted(p.name for p in Path(root).iterdir() if _TASK_ID.fullmatch(p.name))
    except FileNotFoundError:
        return []
