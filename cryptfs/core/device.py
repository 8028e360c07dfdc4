"""The block layer: byte-addressed reads and writes on the decrypted device.

Requests at any offset and length become sector-aligned bios: a read ``pread``s the ciphertext
and decrypts it, a write encrypts into a separate buffer and ``pwrite``s it, so plaintext never
reaches the image and a failed request can be redone from untouched input.  A write that starts
or ends inside a data unit reads the edge units, patches them and writes whole units
(read-modify-write), holding its aligned range in a :class:`RangeLock` so overlapping writes
never interleave.  Reads at or past the end return nothing (EOF); writes past the end are cut
at the end, and a write starting at or past it fails with ENOSPC, as on a block device.

Synchronous and thread-safe — the FUSE front (:mod:`cryptfs.fuse.queue`) calls it inline on the trio
thread or from crypto worker threads, the Python API from any thread — and, for asynchronous
backends, the same requests as coroutines that await the backend's completions on the trio
thread (``read_async``, ``write_async``, ``discard_async``).  Ciphertext buffers are
reused per thread for synchronous backends; an asynchronous backend gets fresh ones, since a
request it completes late may still write into them.  They start on a page boundary: the
kernel's copy into user memory (``pread``) measured up to 10× slower here into a buffer 16 bytes
into a page — exactly where malloc's large blocks, and so ``bytearray``'s, start.
"""

import errno
import mmap
import os
import threading

from cryptfs.backends.base import Op
from cryptfs.core.convert import Converter
from cryptfs.core.geometry import Geometry
from cryptfs.core.image import Image
from cryptfs.core.rangelock import RangeLock
from cryptfs.core.stats import Stats
from cryptfs.errors import DeviceError


def _page_aligned(size: int) -> memoryview:
    """``size`` bytes of private memory starting on a page boundary (see the module doc)."""
    return memoryview(mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS))


class Device:
    def __init__(self, geometry: Geometry, image: Image, converter: Converter, stats: Stats, *,
                 read_only: bool = False, allow_discards: bool = False):
        self.geometry = geometry
        self.size = geometry.size
        self.image = image
        self.converter = converter
        self.stats = stats
        self.read_only = read_only
        self.allow_discards = allow_discards
        self._locks = RangeLock()
        self._scratch = threading.local()
        self._ss = geometry.sector_size
        self._base = geometry.payload_offset

    # --- bios ------------------------------------------------------------------------------

    def _ciphertext_buffer(self, size: int) -> memoryview:
        buf = self._scratch.__dict__.get("buf")
        if buf is None or len(buf) < size or self.converter.asynchronous:
            if self.converter.asynchronous:
                return _page_aligned(size)
            buf = self._scratch.buf = _page_aligned(max(size, 1 << 17))
        return buf[:size]

    def _read_ciphertext(self, unit: int, size: int) -> memoryview:
        at = self._base + unit * self._ss
        ciphertext = self._ciphertext_buffer(size)
        try:
            complete = os.preadv(self.image.fd, (ciphertext,), at) == size
        except OSError:
            complete = False
        if not complete:
            self.image.read_into(ciphertext, at)        # short: the rest, or why it fails
        return ciphertext

    def _read_units(self, unit: int, plaintext: memoryview) -> None:
        """Decrypt the data units from ``unit`` into ``plaintext`` (whole units)."""
        ciphertext = self._read_ciphertext(unit, len(plaintext))
        self.converter.convert(Op.DECRYPT, unit, ciphertext, plaintext)

    def _write_units(self, unit: int, plaintext: memoryview) -> None:
        """Encrypt ``plaintext`` (whole data units) and write it at ``unit``."""
        ciphertext = self._ciphertext_buffer(len(plaintext))
        self.converter.convert(Op.ENCRYPT, unit, plaintext, ciphertext)
        self.image.write(ciphertext, self._base + unit * self._ss)

    # --- byte ranges: what a request means, then its bios ---------------------------------

    def _read_span(self, offset: int, length: int) -> tuple[int, int, int] | None:
        """(a, b, end): the aligned range [a, b) covering [offset, end), end cut at the end
        of the device; None at or past it (EOF)."""
        if offset < 0 or length < 0:
            raise DeviceError("negative offset or length", errno.EINVAL)
        end = min(offset + length, self.size)
        if offset >= end:
            return None
        ss = self._ss
        return offset // ss * ss, -(-end // ss) * ss, end

    def _write_span(self, offset: int, data) -> tuple[int, int, memoryview]:
        """(a, b, data): the aligned range covering the write, and the data cut at the end of
        the device (empty: nothing to do).  DeviceError for a write the device refuses."""
        if self.read_only:
            raise DeviceError("device is read-only", errno.EROFS)
        if offset < 0:
            raise DeviceError("negative offset", errno.EINVAL)
        if offset >= self.size:
            raise DeviceError(f"write at {offset} is past the end of the device ({self.size})",
                              errno.ENOSPC)
        data = memoryview(data)[:self.size - offset]
        ss = self._ss
        return offset // ss * ss, -(-(offset + len(data)) // ss) * ss, data

    def _edges(self, offset: int, end: int, a: int, b: int) \
            -> tuple[memoryview, list[tuple[int, memoryview]]]:
        """Read-modify-write of a write covering [offset, end) inside [a, b): the aligned
        buffer, and the edge units to read into it before the data is laid in."""
        ss = self._ss
        merged = memoryview(bytearray(b - a))
        head_unit, tail_unit = a // ss, (b - ss) // ss
        edges = []
        if offset != a:
            edges.append((head_unit, merged[:ss]))
        if end != b and (tail_unit != head_unit or offset == a):
            edges.append((tail_unit, merged[-ss:]))
        self.stats.add("rmw")
        return merged, edges

    def _discard_span(self, offset: int, length: int) -> tuple[int, int]:
        """The whole data units inside [offset, offset+length) (empty when none)."""
        if not self.allow_discards:
            raise DeviceError("discards are not enabled (allow_discards)", errno.EOPNOTSUPP)
        if self.read_only:
            raise DeviceError("device is read-only", errno.EROFS)
        self._check_range(offset, length)
        ss = self._ss
        return -(-offset // ss) * ss, min(offset + length, self.size) // ss * ss

    def _punch(self, a: int, b: int) -> None:
        self.image.punch(self._base + a, b - a)
        self.stats.add("discards")
        self.stats.add("bytes_discarded", b - a)

    # --- synchronous: inline, on crypto workers and in the Python API ---------------------

    def read(self, offset: int, length: int) -> memoryview:
        """The plaintext of [offset, offset+length), cut at the end of the device."""
        span = self._read_span(offset, length)
        if span is None:
            return memoryview(b"")
        a, b, end = span
        plaintext = memoryview(bytearray(b - a))
        self._read_units(a // self._ss, plaintext)
        return plaintext[offset - a:end - a] if (a, b) != (offset, end) else plaintext

    def write(self, offset: int, data: bytes | memoryview) -> int:
        """Write ``data`` at ``offset``; returns the bytes written (short at the end)."""
        a, b, data = self._write_span(offset, data)
        end = offset + len(data)
        if not data:
            return 0
        with self._locks.hold(a, b):
            if (a, b) != (offset, end):
                merged, edges = self._edges(offset, end, a, b)
                for unit, view in edges:
                    self._read_units(unit, view)
                merged[offset - a:end - a] = data
                data = merged
            self._write_units(a // self._ss, data)
        return end - offset

    def discard(self, offset: int, length: int) -> None:
        """Deallocate the whole data units inside [offset, offset+length): their ciphertext
        becomes zeros, which reads back as dm-crypt returns it (the decryption of zeros).
        Partial units at the edges are left as they are."""
        a, b = self._discard_span(offset, length)
        if a < b:
            with self._locks.hold(a, b):
                self._punch(a, b)

    # --- asynchronous backends: the same requests as trio tasks on the trio thread --------
    # (Python cannot share one body between a function and a coroutine without a generator
    # driving both, which would cost the synchronous hot path; the meaning lives in the
    # helpers above, these only sequence the bios.)

    async def _read_units_async(self, unit: int, plaintext: memoryview) -> None:
        ciphertext = self._read_ciphertext(unit, len(plaintext))
        await self.converter.convert_async(Op.DECRYPT, unit, ciphertext, plaintext)

    async def read_async(self, offset: int, length: int) -> memoryview:
        span = self._read_span(offset, length)
        if span is None:
            return memoryview(b"")
        a, b, end = span
        plaintext = memoryview(bytearray(b - a))
        await self._read_units_async(a // self._ss, plaintext)
        return plaintext[offset - a:end - a]

    async def write_async(self, offset: int, data: bytes | memoryview) -> int:
        a, b, data = self._write_span(offset, data)
        end = offset + len(data)
        if not data:
            return 0
        async with self._locks.hold_async(a, b):
            if (a, b) != (offset, end):
                merged, edges = self._edges(offset, end, a, b)
                for unit, view in edges:
                    # into a buffer of its own: a timed-out request's late completion must
                    # not land in merged after the new data is laid over it
                    edge = memoryview(bytearray(len(view)))
                    await self._read_units_async(unit, edge)
                    view[:] = edge
                merged[offset - a:end - a] = data
                data = merged
            ciphertext = self._ciphertext_buffer(len(data))
            await self.converter.convert_async(Op.ENCRYPT, a // self._ss, data, ciphertext)
            self.image.write(ciphertext, self._base + a)
        return end - offset

    async def discard_async(self, offset: int, length: int) -> None:
        a, b = self._discard_span(offset, length)
        if a < b:
            async with self._locks.hold_async(a, b):
                self._punch(a, b)

    # --- both ----------------------------------------------------------------------------

    def flush(self) -> None:
        """Make every acknowledged write durable in the image."""
        if self.read_only:
            return
        self.image.sync()
        self.stats.add("flushes")

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
