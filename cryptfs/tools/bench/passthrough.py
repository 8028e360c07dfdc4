"""The ceiling: a pyfuse3 file system exposing one file, ``device``, that reads and writes a
backing file with no crypto and no pipeline — the most any pyfuse3 device can do here.

Run as ``python -m cryptfs.bench.passthrough IMAGE MOUNTPOINT [OFFSET]``: ``device`` is the
image from byte OFFSET on (a LUKS payload, leaving the header alone).  It serves until
unmounted or sent SIGTERM/SIGINT.
"""

import errno
import os
import signal
import stat
import sys

import pyfuse3
import trio

DEVICE_INO = pyfuse3.ROOT_INODE + 1


class Passthrough(pyfuse3.Operations):
    def __init__(self, path: str, offset: int):
        super().__init__()
        self.fd = os.open(path, os.O_RDWR)
        self.offset = offset
        self.size = os.fstat(self.fd).st_size - offset

    async def getattr(self, inode, ctx=None):
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode
        a.entry_timeout = a.attr_timeout = 3600
        if inode == pyfuse3.ROOT_INODE:
            a.st_mode = stat.S_IFDIR | 0o755
        elif inode == DEVICE_INO:
            a.st_mode, a.st_size = stat.S_IFREG | 0o600, self.size
        else:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return a

    async def lookup(self, parent_inode, name, ctx=None):
        if name != b"device":
            raise pyfuse3.FUSEError(errno.ENOENT)
        return await self.getattr(DEVICE_INO)

    async def open(self, inode, flags, ctx):
        return pyfuse3.FileInfo(fh=inode, direct_io=True)

    async def read(self, fh, off, size):
        return os.pread(self.fd, max(0, min(size, self.size - off)), self.offset + off)

    async def write(self, fh, off, buf):
        if off >= self.size:
            raise pyfuse3.FUSEError(errno.ENOSPC)
        return os.pwrite(self.fd, buf[:self.size - off], self.offset + off)


async def _serve() -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signal)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


async def _stop_on_signal() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            pyfuse3.terminate()
            return


def main() -> None:
    image, mountpoint = sys.argv[1:3]
    offset = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    pyfuse3.init(Passthrough(image, offset), mountpoint, set(pyfuse3.default_options) | {
        "fsname=passthrough"})
    try:
        trio.run(_serve)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()
