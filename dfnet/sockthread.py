"""A body moved by a worker thread on a socket that an asyncio transport owns.

The event loop parses an answer's header; then, for a body of known length, one worker thread
takes the socket and moves the body itself. Receiving: through the event loop the same body cost a
selector wake-up and Python callbacks per `recv` (about 16 per MiB on loopback) plus a thread
round trip per batch for the hash and the write (py-spy and per-thread CPU, bench_live single).
Used by `dfnet.daemon.piecefetch` (pieces from parents) and `dfnet.source` (the seed's
origin body); the consumer is a `Receiver`'s caller in that thread:
- `splice(fd, offset, n)` moves bytes from the socket into a file with `splice(2)` through a
  pipe, never into user space: the kernel copies each byte once, from the socket's buffers
  into the page cache. Receiving into a buffer and then `pwrite`-ing it copied it twice: 1 GiB
  over loopback from a `sendfile`ing sender cost the receiver 1.33-1.92 s of system time
  that way against 0.67-0.77 spliced and hashed back through `mmap` (taskset -c 1, same run).
  A file system that cannot splice gets the bytes through the pipe and `pwrite`.
- `fill(view)` receives into memory (blocking `recv_into(..., MSG_WAITALL)`, one system call
  per batch), for consumers that want the bytes themselves.
Sending (`dfnet.upload`, a piece or a blob with no upload limit): `send_file(fd, offset, n)`
is one blocking `sendfile(2)` that returns when the kernel has taken the bytes. Through the
event loop (`loop.sendfile`) each full socket buffer cost a writer registration, a wake-up and
Python callbacks (12% of a supernode's event loop serving a 1 GiB download, py-spy), and the
child's receive waited whenever the loop was busy elsewhere (its thread blocked in `splice`
for data 9% of its samples); a sending thread refills the socket as soon as it has room.
Senders have their own threads (`SENDERS`), so slow children never delay a receive.

Rules kept here:
- The transport has stopped reading (`pause_reading`) before the thread takes the socket, and
  the loop does not use it until `run` returns. The thread reads a duplicate descriptor set
  blocking, with a receive timeout (`SO_RCVTIMEO`); the blocking flag is shared with the
  transport's socket, so it is non-blocking again, and the timeout cleared, before the thread
  ends, whatever way it ends.
- No byte for `timeout` seconds raises `Stalled` in the thread (a receive that got part of a
  batch and then stalled is noticed after one to two times `timeout`; a send, with
  `SO_SNDTIMEO`, after one to about four times `timeout`: the kernel waits per part of its
  `sendfile`).
- The thread's pipe is closed when it ends, whatever way it ends. Bodies have their own pool
  of threads (`MAX_BODIES`), so one blocked on its socket never delays another's start.
- `run` returns only once the thread has ended. Cancellation (a caller's timeout included) or
  `stop` shuts the socket down, which ends a blocking receive at once, and waits for the
  thread; the socket is then good only for closing. Nothing outlives the call.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import fcntl
import os
import socket
import struct
from typing import Callable, TypeVar

T = TypeVar("T")
# A batch in flight: the pipe holds one (the page cache then takes it in writes under 1 MiB,
# `dfnet.storage.PieceWriter.BATCH` says why; callers splice at most a batch at a time)
PIPE_SIZE = 1 << 20
COPY_CHUNK = 1 << 20
# A body's thread blocks on its socket for the whole body, so bodies get their own threads: in
# the event loop's default executor (2 cores + 4 threads here) a daemon's window of 16 pieces
# would queue, each queued one holding its parent's upload slot with the socket paused, and
# the short jobs that share that executor (per-batch writes, digests) would wait behind them.
MAX_BODIES = 64
_threads = concurrent.futures.ThreadPoolExecutor(MAX_BODIES, thread_name_prefix="dfly-body")
SENDERS = concurrent.futures.ThreadPoolExecutor(MAX_BODIES, thread_name_prefix="dfly-send")


class Stalled(Exception):
    """No byte arrived for the receive timeout."""


class Stopped(Exception):
    """The receive was stopped from the event loop (cancellation, shutdown)."""


class Receiver:
    """The socket as the worker thread sees it: blocking, with a receive timeout."""

    def __init__(self, owner: "SocketThread", sock: socket.socket):
        self._owner, self._sock = owner, sock
        self._pipe: tuple[int, int] | None = None
        self._can_splice = hasattr(os, "splice")

    def fill(self, view: memoryview) -> int:
        """Receive until `view` is full; fewer bytes when the peer closed the connection."""
        return self._until(len(view), lambda got: self._sock.recv_into(view[got:], 0, socket.MSG_WAITALL))

    def splice(self, fd: int, offset: int, n: int) -> int:
        """Move `n` bytes from the socket into file `fd` at `offset`; fewer when the peer
        closed the connection. The bytes are in the file's page cache when it returns."""
        if not self._can_splice:
            return self._copy(fd, offset, n)
        if self._pipe is None:
            self._pipe = os.pipe()
            try:
                fcntl.fcntl(self._pipe[1], fcntl.F_SETPIPE_SZ, PIPE_SIZE)
            except (OSError, AttributeError):
                pass                            # the default pipe (64 KiB): more calls, same bytes
        r, w = self._pipe
        moved = 0
        while moved < n:
            try:
                k = os.splice(self._sock.fileno(), w, n - moved)
            except (BlockingIOError, TimeoutError):
                k = -1
            except OSError as e:
                if e.errno not in (errno.EINVAL, errno.ENOSYS) or moved:
                    raise
                self._can_splice = False        # not a socket that splices: copy from here
                return self._copy(fd, offset, n)
            self._check(k)
            if k == 0:
                break
            self._drain(r, fd, offset + moved, k)
            moved += k
        return moved

    def send_file(self, fd: int, offset: int, n: int) -> int:
        """Send `n` bytes of file `fd` from `offset` (`sendfile(2)`: from the page cache, no
        copy into this process); fewer when the peer shut its end."""
        return self._until(n, lambda sent: os.sendfile(self._sock.fileno(), fd, offset + sent, n - sent))

    def _until(self, n: int, step: Callable[[int], int]) -> int:
        """Bytes moved by `step(done)` calls until `n` are, or a call moves none (the peer's
        end); a call that times out is a stall (`_check`)."""
        done = 0
        while done < n:
            try:
                k = step(done)
            except (BlockingIOError, TimeoutError):
                k = -1
            self._check(k)
            if k == 0:
                break
            done += k
        return done

    def _drain(self, r: int, fd: int, offset: int, k: int) -> None:
        """Pipe to file: `k` bytes, all of them, at `offset`."""
        done = 0
        while done < k:
            if self._can_splice:
                try:
                    done += os.splice(r, fd, k - done, offset_dst=offset + done)
                    continue
                except OSError as e:
                    if e.errno not in (errno.EINVAL, errno.ENOSYS):
                        raise
                    self._can_splice = False    # the file system cannot take a splice
            data = os.read(r, k - done)
            _pwrite_all(fd, data, offset + done)
            done += len(data)

    def _copy(self, fd: int, offset: int, n: int) -> int:
        buf = memoryview(bytearray(min(n, COPY_CHUNK)))
        moved = 0
        while moved < n:
            want = min(len(buf), n - moved)
            k = self.fill(buf[:want])
            _pwrite_all(fd, buf[:k], offset + moved)
            moved += k
            if k < want:
                break
        return moved

    def _check(self, n: int) -> None:
        if self._owner.stopping:
            raise Stopped()
        if n < 0:
            raise Stalled()

    def close(self) -> None:
        if self._pipe is not None:
            for end in self._pipe:
                os.close(end)
            self._pipe = None


class SocketThread:
    """Runs `work(receiver)` in a worker thread, the `Receiver` reading the transport's socket."""

    def __init__(self, transport: asyncio.Transport, timeout: float,
                 pool: concurrent.futures.Executor = _threads):
        self._sock = transport.get_extra_info("socket")
        self._pool = pool                       # `SENDERS` for a thread that sends
        self.timeout = timeout
        self.stopping = False
        self.running = False

    async def run(self, work: Callable[[Receiver], T]) -> T:
        """`work(receiver)` in a worker thread; the receiver's calls raise `Stalled` or
        `Stopped`, which `run` passes on."""
        job = asyncio.get_running_loop().run_in_executor(self._pool, self._thread, work)
        self.running = True
        try:
            return await asyncio.shield(job)
        except BaseException:
            if not job.done():                  # cancelled: stop the thread, then go
                self.stop()
                await _join(job)
            raise
        finally:
            self.running = False

    def stop(self) -> None:
        """End the thread's receive now (from the event loop's thread)."""
        self.stopping = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _thread(self, work: Callable[[Receiver], T]) -> T:
        s = socket.socket(fileno=os.dup(self._sock.fileno()))    # closing it closes the dup only
        rx = Receiver(self, s)
        try:
            s.setblocking(True)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(self.timeout))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(self.timeout))
            return work(rx)
        finally:
            rx.close()
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(0))
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(0))
                s.setblocking(False)
            except OSError:
                pass
            s.close()


async def _join(job: asyncio.Future) -> None:
    """Wait for a thread that was told to stop. Another cancellation does not cut the wait
    short (the caller re-raises what stopped it)."""
    while not job.done():
        try:
            await asyncio.shield(job)
        except BaseException:
            pass
    if not job.cancelled():
        job.exception()                         # retrieved: it is the stop's consequence


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        k = os.pwrite(fd, view, offset)
        view, offset = view[k:], offset + k


def _timeval(seconds: float) -> bytes:
    return struct.pack("ll", int(seconds), int(seconds % 1 * 1e6))
