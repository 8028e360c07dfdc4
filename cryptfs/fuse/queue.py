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

import time

import trio

from cryptfs.core.config import PipelineSection
from cryptfs.core.device import Device
from cryptfs.core.stats import Stats


class RequestQueue:
    def __init__(self, device: Device, pipeline: PipelineSection, stats: Stats):
        self.device = device
        self.stats = stats
        self.depth = pipeline.queue_depth
        self._pipeline = pipeline
        self._slots = trio.Semaphore(self.depth)
        self._threads = trio.CapacityLimiter(pipeline.threads)
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
        d = self.device
        data = await self._run(self.reads, d.read, d.read_async, offset, length)
        self.stats.count_read(len(data), time.perf_counter() - start)
        return data

    async def write(self, offset: int, data: bytes) -> int:
        """Write ``data`` at ``offset``; the number of bytes written (short at the end)."""
        start = time.perf_counter()
        d = self.device
        n = await self._run(self.writes, d.write, d.write_async, offset, data)
        self.stats.count_write(n, time.perf_counter() - start)
        return n

    async def flush(self) -> None:
        await trio.to_thread.run_sync(self.device.flush)

    async def discard(self, offset: int, length: int) -> None:
        d = self.device
        await self._run(self.writes, d.discard, d.discard_async, offset, length)

    async def _run(self, placement: str, work, work_async, *args):
        """One request where ``placement`` says: inline, on the backend's completions
        (async), or on a crypto worker."""
        if placement == "inline":
            return work(*args)
        if placement == "async":
            return await work_async(*args)
        return await self._offload(work, *args)

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
