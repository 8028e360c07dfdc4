"""The FUSE file system: a root directory with ``device`` and ``stats``.

``device`` is the decrypted device (mode 0600, 0400 when read-only; owned by whoever opened
it; the image's mtime; direct I/O so the kernel caches nothing); ``stats`` is a read-only JSON
snapshot of the counters, taken when it is opened.  This is the only module that turns errors
into errno values for the kernel: a DeviceError carries its own errno; anything unexpected is
logged and becomes EIO, so no exception ever reaches pyfuse3's main loop.
"""

import errno
import functools
import json
import logging
import os
import stat
from typing import Callable

import pyfuse3
from pyfuse3 import FUSEError

from cryptfs.errors import DeviceError
from cryptfs.fuse.queue import RequestQueue

log = logging.getLogger(__name__)

ROOT_INO = pyfuse3.ROOT_INODE
DEVICE_INO = ROOT_INO + 1
STATS_INO = ROOT_INO + 2
NAMES = {b"device": DEVICE_INO, b"stats": STATS_INO}
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
#: the device's size never changes while mounted; let the kernel cache its attributes
_ATTR_TIMEOUT = 3600.0


def _fuse_error(handler: str, failure: Exception) -> FUSEError:
    """The FUSEError a handler's failure becomes: a DeviceError's own errno, else EIO (and
    the traceback in the log)."""
    if isinstance(failure, FUSEError):
        return failure
    if isinstance(failure, DeviceError):
        log.debug("%s: %s", handler, failure)
        return FUSEError(failure.errno)
    log.error("%s failed", handler, exc_info=failure)
    return FUSEError(errno.EIO)


def _translated(fn):
    """Run a FUSE handler, turning every failure into a FUSEError.  (``read`` and ``write``,
    the hot path, translate inline: one coroutine less per request.)"""
    @functools.wraps(fn)
    async def handler(*args):
        try:
            return await fn(*args)
        except Exception as e:
            raise _fuse_error(fn.__name__, e) from None
    return handler


class DeviceOperations(pyfuse3.Operations):
    enable_writeback_cache = False

    def __init__(self, queue: RequestQueue, snapshot: Callable[[], dict],
                 uid: int | None = None, gid: int | None = None):
        super().__init__()
        self.queue = queue
        self.device = queue.device
        self.snapshot = snapshot
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        self._stats_files: dict[int, bytes] = {}
        self._next_fh = 1

    def _attr(self, inode: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode
        a.st_uid, a.st_gid = self.uid, self.gid
        a.entry_timeout = a.attr_timeout = _ATTR_TIMEOUT
        a.st_blksize = self.device.geometry.sector_size
        if inode == ROOT_INO:
            a.st_mode, a.st_nlink = stat.S_IFDIR | 0o755, 2
        elif inode == DEVICE_INO:
            mode = 0o400 if self.device.read_only else 0o600
            a.st_mode, a.st_nlink = stat.S_IFREG | mode, 1
            a.st_mtime_ns = os.fstat(self.device.image.fd).st_mtime_ns
            a.st_size = self.device.size
            a.st_blocks = self.device.size // 512
        elif inode == STATS_INO:
            a.st_mode, a.st_nlink = stat.S_IFREG | 0o444, 1
            a.entry_timeout = a.attr_timeout = 0
        else:
            raise FUSEError(errno.ENOENT)
        return a

    @_translated
    async def getattr(self, inode, ctx=None):
        return self._attr(inode)

    @_translated
    async def lookup(self, parent_inode, name, ctx=None):
        if parent_inode != ROOT_INO or name not in NAMES:
            raise FUSEError(errno.ENOENT)
        return self._attr(NAMES[name])

    @_translated
    async def setattr(self, inode, attr, fields, fh, ctx):
        if fields.update_mode or fields.update_uid or fields.update_gid:
            raise FUSEError(errno.EPERM)
        if fields.update_size and (inode != DEVICE_INO or attr.st_size != self.device.size):
            raise FUSEError(errno.EINVAL)   # a device has the size it has
        return self._attr(inode)            # times: accepted and not kept, as on a device node

    @_translated
    async def opendir(self, inode, ctx):
        if inode != ROOT_INO:
            raise FUSEError(errno.ENOTDIR)
        return inode

    @_translated
    async def readdir(self, fh, start_id, token):
        for i, (name, inode) in enumerate(NAMES.items()):
            if i >= start_id and not pyfuse3.readdir_reply(token, name, self._attr(inode), i + 1):
                break

    @_translated
    async def open(self, inode, flags, ctx):
        writing = flags & os.O_ACCMODE != os.O_RDONLY
        if inode == STATS_INO:
            if writing:
                raise FUSEError(errno.EACCES)
            fh = self._new_fh()
            self._stats_files[fh] = json.dumps(self.snapshot(), indent=2).encode() + b"\n"
            return pyfuse3.FileInfo(fh=fh, direct_io=True)
        if inode != DEVICE_INO:
            raise FUSEError(errno.EISDIR if inode == ROOT_INO else errno.ENOENT)
        if writing and self.device.read_only:
            raise FUSEError(errno.EROFS)
        # O_TRUNC is ignored, as a block device ignores it.
        return pyfuse3.FileInfo(fh=self._new_fh(), direct_io=True)

    def _new_fh(self) -> int:
        self._next_fh += 1
        return self._next_fh

    async def read(self, fh, off, size):
        try:
            if fh in self._stats_files:
                return self._stats_files[fh][off:off + size]
            return await self.queue.read(off, size)
        except Exception as e:
            raise _fuse_error("read", e) from None

    async def write(self, fh, off, buf):
        try:
            return await self.queue.write(off, buf)
        except Exception as e:
            raise _fuse_error("write", e) from None

    @_translated
    async def flush(self, fh):
        if fh not in self._stats_files:
            await self.queue.flush()

    @_translated
    async def fsync(self, fh, datasync):
        if fh not in self._stats_files:
            await self.queue.flush()

    @_translated
    async def release(self, fh):
        self._stats_files.pop(fh, None)

    @_translated
    async def statfs(self, ctx):
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = self.device.geometry.sector_size
        s.f_blocks = self.device.size // s.f_frsize
        s.f_files = len(NAMES) + 1
        s.f_namemax = 255
        return s

    @_translated
    async def fallocate(self, inode, mode, offset, length):
        """Reached through :mod:`cryptfs.fuse_fallocate` (pyfuse3 has no such handler)."""
        if inode != DEVICE_INO:
            raise FUSEError(errno.EOPNOTSUPP)
        if mode == _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE:
            await self.queue.discard(offset, length)
        elif mode in (0, _FALLOC_FL_KEEP_SIZE):
            self.device.check_allocate(offset, length, keep_size=bool(mode))
        else:
            raise FUSEError(errno.EOPNOTSUPP)
