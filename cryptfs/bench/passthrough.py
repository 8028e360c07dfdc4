"""The ceiling: a pyfuse3 file system exposing one file, ``device``, that reads and writes a
backing file with no crypto and no pipeline — the most any pyfuse3 device can do here.

Run as ``python -m cryptfs.bench.passthrough IMAGE MOUNTPOINT``; it serves until unmounted.
"""

import errno
import os
import stat
import sys

import pyfuse3
import trio

DEVICE_INO = pyfuse3.ROOT_INODE + 1


class Passthrough(pyfuse3.Operations):
    def __init__(self, path: str):
        super().__init__()
        self.fd = os.open(path, os.O_RDWR)
        self.size = os.fstat(self.fd).st_size

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
        return os.pread(self.fd, size, off)

    async def write(self, fh, off, buf):
        return os.pwrite(self.fd, buf, off)


def main() -> None:
    image, mountpoint = sys.argv[1:3]
    pyfuse3.init(Passthrough(image), mountpoint, set(pyfuse3.default_options) | {
        "fsname=passthrough"})
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=False)


if __name__ == "__main__":
    main()
