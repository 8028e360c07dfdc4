"""The request queue: the trio side of the device — where each request's work runs.

A request's work (its bios' ``pread`` + decrypt, or encrypt + ``pwrite``) runs either *inline*,
in the FUSE request's own trio task — no hand-off at all, as dm-crypt's
``no_read_workqueue`` / ``no_write_workqueue`` — or *offloaded* to a crypto worker thread
(dm-crypt's kcryptd workqueue), so the event loop serves other requests meanwhile; the native
core releases the GIL, so offloaded crypto runs beside the loop.  At most ``queue_depth``
offloaded requests are in flight (further ones wait: backpressure) on at most ``crypto_threads``
threads.  An asynchronous backend is its own offload: its requests run as the FUSE request's
task, which awaits the completions the backend's task delivers (*async*).  Flushes always go to
a worker (fsync blocks).

The counters here are touched only on the trio thread: no locks.
"""

import os
import time

import trio

from .config import PipelineSection
from .device import Device
from .stats import Stats


class RequestQueue:
    def __init__(self, device: Device, pipeline: PipelineSection, stats: Stats):
        self.device = device
        self.stats = stats
        self.depth = pipeline.queue_depth
        self._pipeline = pipeline
        self._slots = trio.Semaphore(self.depth)
        self._threads = trio.CapacityLimiter(crypto_threads(pipeline))
        self.place()

    def place(self) -> None:
        """Decide where reads and writes run — ``inline``, ``offload`` or ``async`` — for the
        device's current backend (again after the backend was replaced)."""
        if self.device.converter.asynchronous:
            self.reads = self.writes = "async"
        else:
            p = self._pipeline
            self.reads = "inline" if p.no_read_workqueue else "offload"
            self.writes = "inline" if p.no_write_workqueue else "offload"

    async def read(self, offset: int, length: int) -> memoryview:
        """The device's plaintext of [offset, offset+length) (short at the end)."""
        start = time.perf_counter()
        if self.reads == "inline":
            data = self.device.read(offset, length)
        elif self.reads == "async":
            data = await self.device.read_async(offset, length)
        else:
            data = await self._offload(self.device.read, offset, length)
        s = self.stats
        s.reads += 1
        s.bytes_read += len(data)
        s.bio_latency.add(time.perf_counter() - start)
        return data

    async def write(self, offset: int, data: bytes) -> int:
        """Write ``data`` at ``offset``; the number of bytes written (short at the end)."""
        start = time.perf_counter()
        if self.writes == "inline":
            n = self.device.write(offset, data)
        elif self.writes == "async":
            n = await self.device.write_async(offset, data)
        else:
            n = await self._offload(self.device.write, offset, data)
        s = self.stats
        s.writes += 1
        s.bytes_written += n
        s.bio_latency.add(time.perf_counter() - start)
        return n

    async def flush(self) -> None:
        await trio.to_thread.run_sync(self.device.flush)

    async def discard(self, offset: int, length: int) -> None:
        if self.writes == "inline":
            self.device.discard(offset, length)
        elif self.writes == "async":
            await self.device.discard_async(offset, length)
        else:
            await self._offload(self.device.discard, offset, length)

    async def _offload(self, work, *args):
        """``work(*args)`` on a crypto worker thread, within the queue depth."""
        try:
            self._slots.acquire_nowait()        # the common case, without a scheduling point
        except trio.WouldBlock:
            self.stats.add("queue_full")
            await self._slots.acquire()
        try:
            self.stats.peak("queue_high_water", self.depth - self._slots.value)
            return await trio.to_thread.run_sync(work, *args, limiter=self._threads)
        finally:
            self._slots.release()


def crypto_threads(pipeline: PipelineSection) -> int:
    """Threads that may do crypto: ``crypto_threads``, 0 meaning one per CPU."""
    return pipeline.crypto_threads or os.cpu_count() or 1
