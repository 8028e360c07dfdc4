"""The block layer: byte-addressed reads and writes on the decrypted device.

Requests at any offset and length become sector-aligned bios for the request queue.  A write
that starts or ends inside a data unit reads the edge units, patches them and writes whole
units (read-modify-write), holding its aligned range in a :class:`RangeLock` so overlapping
writes never interleave.  Reads at or past the end return nothing (EOF); writes past the end are
cut at the end, and a write starting at or past it fails with ENOSPC, as on a block device.
"""

import errno

import trio

from .errors import DeviceError
from .geometry import Geometry
from .image import Image
from .queue import RequestQueue
from .rangelock import RangeLock
from .stats import Stats


class Device:
    def __init__(self, geometry: Geometry, queue: RequestQueue, image: Image, stats: Stats, *,
                 read_only: bool = False, allow_discards: bool = False):
        self.geometry = geometry
        self.size = geometry.size
        self.queue = queue
        self.image = image
        self.stats = stats
        self.read_only = read_only
        self.allow_discards = allow_discards
        self._locks = RangeLock()

    def _span(self, start: int, end: int) -> tuple[int, int]:
        """The aligned byte range [a, b) covering [start, end)."""
        ss = self.geometry.sector_size
        return start // ss * ss, -(-end // ss) * ss

    async def read(self, offset: int, length: int) -> memoryview:
        if offset < 0 or length < 0:
            raise DeviceError("negative offset or length", errno.EINVAL)
        end = min(offset + length, self.size)
        if offset >= end:
            return memoryview(b"")
        a, b = self._span(offset, end)
        ss = self.geometry.sector_size
        plaintext = await self.queue.read(a // ss, (b - a) // ss)
        self.stats.add("reads")
        self.stats.add("bytes_read", end - offset)
        return memoryview(plaintext)[offset - a:end - a]

    async def write(self, offset: int, data: bytes | memoryview) -> int:
        """Write ``data`` at ``offset``; returns the bytes written (short at the end)."""
        if self.read_only:
            raise DeviceError("device is read-only", errno.EROFS)
        if offset < 0:
            raise DeviceError("negative offset", errno.EINVAL)
        if offset >= self.size:
            raise DeviceError(f"write at {offset} is past the end of the device ({self.size})",
                              errno.ENOSPC)
        data = memoryview(data)[:self.size - offset]
        end = offset + len(data)
        if not data:
            return 0
        a, b = self._span(offset, end)
        ss = self.geometry.sector_size
        async with self._locks.hold(a, b):
            if a == offset and b == end:
                plaintext = data
            else:
                plaintext = await self._merge_edges(offset, data, a, b)
            await self.queue.write(a // ss, plaintext)
        self.stats.add("writes")
        self.stats.add("bytes_written", len(data))
        return len(data)

    async def _merge_edges(self, offset: int, data: memoryview, a: int, b: int) -> memoryview:
        """Read-modify-write: the aligned plaintext for [a, b) with ``data`` laid in at
        ``offset`` and the rest of the edge units as they are now."""
        ss = self.geometry.sector_size
        merged = bytearray(b - a)
        end = offset + len(data)
        head_unit, tail_unit = a // ss, (b - ss) // ss
        if offset != a:
            merged[:ss] = await self.queue.read(head_unit, 1)
        if end != b and (tail_unit != head_unit or offset == a):
            merged[-ss:] = await self.queue.read(tail_unit, 1)
        merged[offset - a:end - a] = data
        self.stats.add("rmw")
        return memoryview(merged)

    async def flush(self) -> None:
        """Make every acknowledged write durable in the image."""
        if self.read_only:
            return
        await trio.to_thread.run_sync(self.image.sync)
        self.stats.add("flushes")

    async def discard(self, offset: int, length: int) -> None:
        """Deallocate the whole data units inside [offset, offset+length): their ciphertext
        becomes zeros, which reads back as dm-crypt returns it (the decryption of zeros).
        Partial units at the edges are left as they are."""
        if not self.allow_discards:
            raise DeviceError("discards are not enabled (allow_discards)", errno.EOPNOTSUPP)
        if self.read_only:
            raise DeviceError("device is read-only", errno.EROFS)
        self._check_range(offset, length)
        ss = self.geometry.sector_size
        a, b = -(-offset // ss) * ss, min(offset + length, self.size) // ss * ss
        if a >= b:
            return
        async with self._locks.hold(a, b):
            self.image.punch(self.geometry.payload_offset + a, b - a)
        self.stats.add("discards")
        self.stats.add("bytes_discarded", b - a)

    def check_allocate(self, offset: int, length: int, keep_size: bool) -> None:
        """fallocate without punching: a device is fully allocated already; it cannot grow."""
        self._check_range(offset, length)
        if not keep_size and offset + length > self.size:
            raise DeviceError(f"range end {offset + length} is past the end of the device "
                              f"({self.size})", errno.ENOSPC)

    @staticmethod
    def _check_range(offset: int, length: int) -> None:
        if offset < 0 or length <= 0:
            raise DeviceError("invalid range", errno.EINVAL)
