"""The request queue: admission of bios and where their crypto runs.

At most ``queue_depth`` bios are in flight; further submitters wait (backpressure).  A bio's
work — ``pread`` + decrypt for a read, encrypt + ``pwrite`` for a write — runs either *inline*
in the submitting trio task, or *offloaded* to a crypto worker thread (dm-crypt's kcryptd
workqueue; ``no_read_workqueue`` / ``no_write_workqueue`` choose inline per direction).
Offloading applies to synchronous backends only: an asynchronous backend is already its own
offload, and its completions arrive on the trio thread.

Reads decrypt out of place (ciphertext buffer → fresh plaintext buffer) and writes encrypt into
a fresh ciphertext buffer, so plaintext never reaches the image and a failed request can be
redone from untouched input.
"""

import os
import time

import trio

from backends.base import Op

from .config import PipelineSection
from .convert import Converter
from .geometry import Geometry
from .image import Image
from .stats import Stats


class RequestQueue:
    def __init__(self, image: Image, converter: Converter, geometry: Geometry,
                 pipeline: PipelineSection, stats: Stats):
        self.image = image
        self.converter = converter
        self.geometry = geometry
        self.stats = stats
        self.depth = pipeline.queue_depth
        self._slots = trio.Semaphore(self.depth)
        self._offload = {Op.DECRYPT: not pipeline.no_read_workqueue,
                         Op.ENCRYPT: not pipeline.no_write_workqueue}
        self._threads = trio.CapacityLimiter(pipeline.crypto_threads or os.cpu_count() or 1)

    @property
    def offload_reads(self) -> bool:
        return self._offload[Op.DECRYPT] and not self.converter.asynchronous

    @property
    def offload_writes(self) -> bool:
        return self._offload[Op.ENCRYPT] and not self.converter.asynchronous

    def _offset(self, unit: int) -> int:
        return self.geometry.payload_offset + unit * self.geometry.sector_size

    async def read(self, unit: int, count: int) -> bytearray:
        """Plaintext of ``count`` data units from ``unit``."""
        async with _Slot(self):
            if self.offload_reads:
                return await trio.to_thread.run_sync(self._read_sync, unit, count,
                                                     limiter=self._threads)
            ciphertext, plaintext = self._buffers(count)
            self.image.read_into(ciphertext, self._offset(unit))
            await self.converter.convert(Op.DECRYPT, unit, memoryview(ciphertext),
                                         memoryview(plaintext))
            return plaintext

    async def write(self, unit: int, plaintext: memoryview) -> None:
        """Encrypt ``plaintext`` (whole data units) and write it at ``unit``."""
        async with _Slot(self):
            if self.offload_writes:
                await trio.to_thread.run_sync(self._write_sync, unit, plaintext,
                                              limiter=self._threads)
                return
            ciphertext = bytearray(len(plaintext))
            await self.converter.convert(Op.ENCRYPT, unit, plaintext, memoryview(ciphertext))
            self.image.write(ciphertext, self._offset(unit))

    def _buffers(self, count: int) -> tuple[bytearray, bytearray]:
        size = count * self.geometry.sector_size
        return bytearray(size), bytearray(size)

    def _read_sync(self, unit: int, count: int) -> bytearray:
        ciphertext, plaintext = self._buffers(count)
        self.image.read_into(ciphertext, self._offset(unit))
        self.converter.convert_sync(Op.DECRYPT, unit, memoryview(ciphertext),
                                    memoryview(plaintext))
        return plaintext

    def _write_sync(self, unit: int, plaintext: memoryview) -> None:
        ciphertext = bytearray(len(plaintext))
        self.converter.convert_sync(Op.ENCRYPT, unit, plaintext, memoryview(ciphertext))
        self.image.write(ciphertext, self._offset(unit))


class _Slot:
    """One queue slot for the duration of a bio; counts in-flight bios and waits."""

    __slots__ = ("_queue", "_start")

    def __init__(self, queue: RequestQueue):
        self._queue = queue

    async def __aenter__(self) -> None:
        self._start = time.perf_counter()
        q = self._queue
        try:
            q._slots.acquire_nowait()       # the common case, without a scheduling point
        except trio.WouldBlock:
            q.stats.add("queue_full")
            await q._slots.acquire()
        q.stats.peak("queue_high_water", q.depth - q._slots.value)

    async def __aexit__(self, *exc) -> None:
        self._queue._slots.release()
        self._queue.stats.bio_latency.add(time.perf_counter() - self._start)
