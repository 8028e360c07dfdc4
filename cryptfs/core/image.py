"""The ciphertext image: a file opened once, locked, and read or written at byte offsets.

Two locks are held while it is open:

* an open-file-description lock over the whole file (``F_OFD_SETLK``; exclusive, or shared when
  read-only): no two cryptfs daemons open one image read-write, and QEMU — which takes OFD locks
  too — refuses it while it is in use;
* a shared ``flock``: cryptsetup takes ``flock`` (shared to read a header, exclusive to change
  one), so ``cryptsetup luksDump`` still works on an open image while changes wait.

Short reads mean the image shrank under us and fail with EIO rather than returning zeros that
would decrypt to garbage.
"""

import ctypes
import errno
import fcntl
import os
import stat
import struct

from cryptfs.errors import BusyError, DeviceError, ImageError

_BLKGETSIZE64 = 0x80081272          # linux/fs.h: _IOR(0x12, 114, size_t)
_BLKROGET = 0x125e                   # _IO(0x12, 94)
_BLKDISCARD = 0x1277                 # _IO(0x12, 119)
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
#: zeros written where the filesystem cannot punch holes
_ZERO_CHUNK = bytes(1 << 20)


# struct flock on Linux: short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid
_FLOCK = struct.Struct("hhxxxxqqi4x")


def _lock_whole_file(fd: int, exclusive: bool) -> None:
    """OFD lock of the whole file, or OSError (EAGAIN) if someone else holds a conflicting one."""
    kind = fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _FLOCK.pack(kind, os.SEEK_SET, 0, 0, 0))


def open_checked(path: str, flags: int) -> int:
    """Open an image file or block device; ImageError (one line) for anything else — a
    directory, FIFO, socket, character device or dangling symlink — without blocking on a
    FIFO and without following a swap between the check and the open."""
    try:
        fd = os.open(path, flags | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        raise ImageError(f"cannot open image {path}: {e.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
        os.close(fd)
        raise ImageError(f"{path} is {_KINDS.get(stat.S_IFMT(mode), 'not a regular file')}, "
                         "not an image file or block device")
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    return fd


_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket",
          stat.S_IFCHR: "a character device"}


def size_of(fd: int) -> int:
    """Bytes in an image file, or in a block device (BLKGETSIZE64: st_size is 0 there)."""
    st = os.fstat(fd)
    if stat.S_ISBLK(st.st_mode):
        return struct.unpack("Q", fcntl.ioctl(fd, _BLKGETSIZE64, bytes(8)))[0]
    return st.st_size


def is_read_only_device(path: str) -> bool:
    """True for a block device the kernel marks read-only (BLKROGET)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        if not stat.S_ISBLK(os.fstat(fd).st_mode):
            return False
        return struct.unpack("i", fcntl.ioctl(fd, _BLKROGET, bytes(4)))[0] != 0
    finally:
        os.close(fd)


class Image:
    """``path`` opened and locked; ``size`` in bytes; ``block_device`` when it is one.  A
    read-only block device opens read-only even when asked for read-write (``read_only``
    then says so)."""

    def __init__(self, path: str, read_only: bool = False):
        self.path = path
        self.read_only = read_only or is_read_only_device(path)
        self.fd = open_checked(path, os.O_RDONLY if self.read_only else os.O_RDWR)
        self.block_device = stat.S_ISBLK(os.fstat(self.fd).st_mode)
        try:
            _lock_whole_file(self.fd, exclusive=not self.read_only)
        except OSError:
            os.close(self.fd)
            raise BusyError(f"image {path} is in use by another cryptfs or QEMU (locked)") \
                from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise BusyError(f"image {path} is being changed by another program (cryptsetup?)") \
                from None
        self.size = size_of(self.fd)

    def read_into(self, buf: bytearray | memoryview, offset: int) -> None:
        """Fill ``buf`` from ``offset``; DeviceError(EIO) if the image ends first."""
        view = memoryview(buf)
        while view:
            try:
                n = os.preadv(self.fd, [view], offset)
            except OSError as e:
                raise DeviceError(f"reading image {self.path} at {offset}: {e.strerror}",
                                  e.errno) from None
            if n == 0:
                raise DeviceError(f"image {self.path} ends at {offset}, short read", errno.EIO)
            view, offset = view[n:], offset + n

    def write(self, buf: bytes | bytearray | memoryview, offset: int) -> None:
        """Write all of ``buf`` at ``offset``; DeviceError with the host's errno (ENOSPC on a
        full disk reaches the writer as ENOSPC)."""
        view = memoryview(buf)
        try:
            while view:
                n = os.pwrite(self.fd, view, offset)
                view, offset = view[n:], offset + n
        except OSError as e:
            raise DeviceError(f"writing image {self.path} at {offset}: {e.strerror}",
                              e.errno) from None

    def sync(self) -> None:
        """fsync; DeviceError with the host's errno."""
        try:
            os.fsync(self.fd)
        except OSError as e:
            raise DeviceError(f"syncing image {self.path}: {e.strerror}", e.errno) from None

    def punch(self, offset: int, length: int) -> None:
        """Deallocate a byte range so it reads back as zeros: BLKDISCARD on a block device,
        a punched hole in a file — or zeros written where neither is supported."""
        if not self._deallocate(offset, length):
            end = offset + length
            while offset < end:
                n = min(len(_ZERO_CHUNK), end - offset)
                self.write(memoryview(_ZERO_CHUNK)[:n], offset)
                offset += n

    def _deallocate(self, offset: int, length: int) -> bool:
        """BLKDISCARD or punch-hole; False where the device or filesystem has neither."""
        if self.block_device:
            try:
                fcntl.ioctl(self.fd, _BLKDISCARD, struct.pack("QQ", offset, length))
                return True
            except OSError as e:
                err = e.errno
        elif _libc.fallocate(self.fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset,
                             length) == 0:
            return True
        else:
            err = ctypes.get_errno()
        if err in (errno.EOPNOTSUPP, errno.ENOSYS, errno.ENOTTY):
            return False
        raise DeviceError(f"discarding {length} bytes at {offset}: {os.strerror(err)}", err)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
