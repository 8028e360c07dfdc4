"""Taking a FUSE mount down and waiting for its daemon, for ``cryptfs close``."""

import ctypes
import errno
import os
import subprocess
import time

from cryptfs.errors import BusyError, MountError

_MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def unmount(mountpoint: str, lazy: bool) -> None:
    """Unmount; BusyError if the device is still open (unless ``lazy``, which detaches).

    As root this is umount2(2); otherwise fusermount3, the setuid helper FUSE provides.
    """
    if os.geteuid() == 0:
        if _libc.umount2(os.fsencode(mountpoint), _MNT_DETACH if lazy else 0) == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EBUSY:
            raise BusyError(f"{mountpoint} is busy: close what has the device open first")
        raise MountError(f"cannot unmount {mountpoint}: {os.strerror(err)}")
    cmd = ["fusermount3", "-u"] + (["-z"] if lazy else []) + [mountpoint]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode:
        message = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"
        # fusermount3 reports only text and exit status 1: the errno is known by its strerror
        if os.strerror(errno.EBUSY) in message:
            raise BusyError(f"{mountpoint} is busy: close what has the device open first")
        raise MountError(f"cannot unmount {mountpoint}: {message}")


def wait_exit(pid: int, timeout: float) -> bool:
    """Wait until process ``pid`` has exited (or is a zombie); False on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rpartition(")")[2].split()[0]
        except FileNotFoundError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.02)
    return False
