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
import struct

from .errors import BusyError, DeviceError, ImageError

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


class Image:
    def __init__(self, path: str, read_only: bool = False):
        self.path = path
        self.read_only = read_only
        flags = (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC
        try:
            self.fd = os.open(path, flags)
        except OSError as e:
            raise ImageError(f"cannot open image {path}: {e.strerror}") from None
        try:
            _lock_whole_file(self.fd, exclusive=not read_only)
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
        self.size = os.fstat(self.fd).st_size

    def read_into(self, buf: bytearray | memoryview, offset: int) -> None:
        """Fill ``buf`` from ``offset``; DeviceError(EIO) if the image ends first."""
        view = memoryview(buf)
        while view:
            n = os.preadv(self.fd, [view], offset)
            if n == 0:
                raise DeviceError(f"image {self.path} ends at {offset}, short read", errno.EIO)
            view, offset = view[n:], offset + n

    def write(self, buf: bytes | bytearray | memoryview, offset: int) -> None:
        view = memoryview(buf)
        while view:
            n = os.pwrite(self.fd, view, offset)
            view, offset = view[n:], offset + n

    def sync(self) -> None:
        os.fsync(self.fd)

    def punch(self, offset: int, length: int) -> None:
        """Deallocate a byte range so it reads back as zeros (zeros are written where the
        filesystem cannot punch holes)."""
        mode = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
        if _libc.fallocate(self.fd, mode, offset, length) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EOPNOTSUPP, errno.ENOSYS):
            raise DeviceError(f"punching {length} bytes at {offset}: {os.strerror(err)}", err)
        end = offset + length
        while offset < end:
            n = min(len(_ZERO_CHUNK), end - offset)
            self.write(memoryview(_ZERO_CHUNK)[:n], offset)
            offset += n

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
