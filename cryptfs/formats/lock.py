"""cryptsetup's metadata lock, so cryptfs and cryptsetup never see each other's half-written
header (cryptsetup's lib/utils_device_locking.c).

cryptsetup takes ``flock`` before it reads (shared) or changes (exclusive) LUKS2 metadata:

* on a regular file, the file itself (opened read-write where it may be, else read-only);
* on a block device, ``/run/cryptsetup/L_<major>:<minor>``, a file it creates (directory mode
  0700) and removes again when it can take it exclusively on release — so after taking it,
  the lock file must still be the one at that path, or the taker retries.

cryptfs takes the same locks.  Where cryptsetup waits for a lock forever, cryptfs waits a
bounded time, and gives up at once when an open cryptfs device holds it (a daemon holds its
image's lock shared until it is closed).
"""

import errno
import fcntl
import os
import stat
import time
from typing import Callable

from cryptfs.errors import BusyError, ImageError

LOCK_DIR = "/run/cryptsetup"
#: who has a path open in cryptfs ("MOUNTPOINT (pid N)"), or None
Holder = Callable[[str], str | None]
WAIT_SECONDS = 60.0


class MetadataLock:
    """A held lock; ``release()`` (or leaving the with-block) lets it go."""

    def __init__(self, path: str, exclusive: bool, holder: Holder | None = None,
                 wait: float = WAIT_SECONDS):
        self.path = path
        self.exclusive = exclusive
        self.fd, self.resource = -1, None
        deadline = time.monotonic() + wait
        while not self._try():
            where = holder(path) if holder else None
            if where:
                raise BusyError(f"{path} is open in cryptfs at {where}; close it first "
                                f"('cryptfs close')")
            if time.monotonic() > deadline:
                raise BusyError(f"{path} is locked by another program (cryptsetup?); gave up "
                                f"after {wait:g} s")
            time.sleep(0.1)

    def _try(self) -> bool:
        """Take the lock without waiting; False if someone holds a conflicting one."""
        self.fd, self.resource = _lock_handle(self.path)
        try:
            fcntl.flock(self.fd, (fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH) |
                        fcntl.LOCK_NB)
        except BlockingIOError:
            self._close()
            return False
        if self.resource and not _same_file(self.fd, self.resource):
            self._close()                   # removed by its last holder meanwhile: take anew
            return self._try()
        return True

    def release(self) -> None:
        if self.fd < 0:
            return
        if self.resource:                   # the last holder removes a block device's file
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if _same_file(self.fd, self.resource):
                    os.unlink(self.resource)
            except OSError:
                pass
        self._close()

    def _close(self) -> None:
        os.close(self.fd)
        self.fd = -1

    def __enter__(self) -> "MetadataLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _lock_handle(path: str) -> tuple[int, str | None]:
    """(fd to flock, lock file path for a block device or None)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise ImageError(f"cannot open {path}: {e.strerror}") from None
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode):
        try:
            rw = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return fd, None
        os.close(fd)
        return rw, None
    os.close(fd)
    if not stat.S_ISBLK(st.st_mode):
        raise ImageError(f"{path} is neither a regular file nor a block device")
    resource = f"{LOCK_DIR}/L_{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    try:
        os.mkdir(LOCK_DIR, 0o700)
    except FileExistsError:
        pass
    try:
        return os.open(resource, os.O_CREAT | os.O_NOFOLLOW | os.O_RDWR | os.O_CLOEXEC,
                       0o644), resource
    except OSError as e:
        raise ImageError(f"cannot open the lock file {resource}: {e.strerror}") from None


def _same_file(fd: int, path: str) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
