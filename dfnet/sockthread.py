"""A body received by a worker thread from a socket that an asyncio transport owns.

The event loop parses an answer's header; then, for a body of known length, one worker thread
takes the socket and receives it batch by batch with blocking `recv_into(..., MSG_WAITALL)`:
one system call per batch, and the thread that received a batch hashes and writes it while its
bytes are still in that core's cache. Through the event loop the same body cost a selector
wake-up and Python callbacks per `recv` (about 16 per MiB on loopback) plus a thread round
trip per batch for the hash and the write (py-spy and per-thread CPU, bench_live single).
Used by `dfnet.daemon.piecefetch` (pieces from parents) and `dfnet.source` (the seed's
origin body).

Rules kept here:
- The transport has stopped reading (`pause_reading`) before the thread takes the socket, and
  the loop does not use it until `run` returns. The thread reads a duplicate descriptor set
  blocking, with a receive timeout (`SO_RCVTIMEO`); the blocking flag is shared with the
  transport's socket, so it is non-blocking again, and the timeout cleared, before the thread
  ends, whatever way it ends.
- No byte for `timeout` seconds raises `Stalled` in the thread (a receive that got part of a
  batch and then stalled is noticed after one to two times `timeout`).
- `run` returns only once the thread has ended. Cancellation (a caller's timeout included) or
  `stop` shuts the socket down, which ends a blocking receive at once, and waits for the
  thread; the socket is then good only for closing. Nothing outlives the call.
"""
from __future__ import annotations

import asyncio
import os
import socket
import struct
from typing import Callable, TypeVar

T = TypeVar("T")


class Stalled(Exception):
    """No byte arrived for the receive timeout."""


class Stopped(Exception):
    """The receive was stopped from the event loop (cancellation, shutdown)."""


class SocketThread:
    """Runs `work(fill)` in a worker thread, `fill` receiving from the transport's socket."""

    def __init__(self, transport: asyncio.Transport, timeout: float):
        self._sock = transport.get_extra_info("socket")
        self.timeout = timeout
        self.stopping = False
        self.running = False

    async def run(self, work: Callable[[Callable[[memoryview], int]], T]) -> T:
        """`work` gets `fill(view) -> n`: receives until `view` is full, or fewer bytes when
        the peer closed the connection; raises `Stalled` or `Stopped`."""
        job = asyncio.get_running_loop().run_in_executor(None, self._thread, work)
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

    def _thread(self, work: Callable[[Callable[[memoryview], int]], T]) -> T:
        s = socket.socket(fileno=os.dup(self._sock.fileno()))    # closing it closes the dup only
        try:
            s.setblocking(True)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(self.timeout))

            def fill(view: memoryview) -> int:
                got, want = 0, len(view)
                while got < want:
                    try:
                        n = s.recv_into(view[got:], 0, socket.MSG_WAITALL)
                    except (BlockingIOError, TimeoutError):
                        n = -1
                    if self.stopping:
                        raise Stopped()
                    if n < 0:
                        raise Stalled()
                    if n == 0:
                        break
                    got += n
                return got

            return work(fill)
        finally:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(0))
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


def _timeval(seconds: float) -> bytes:
    return struct.pack("ll", int(seconds), int(seconds % 1 * 1e6))
