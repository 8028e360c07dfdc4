"""Whether this user may mount a FUSE file system here — found before any passphrase is
asked for or derived, and told in one line naming the cause and the fix.

Root mounts directly.  Anyone else needs what a standard install gives: ``/dev/fuse`` open to
them (mode 0666), the setuid ``fusermount3`` helper, write access to the mountpoint, and for
``allow_other`` the ``user_allow_other`` line in /etc/fuse.conf.
"""

import os
import shutil
import stat

from cryptfs.errors import MountError

FUSE_DEVICE = "/dev/fuse"
FUSE_CONF = "/etc/fuse.conf"


def check_can_mount(mountpoint: str, allow_other: bool) -> None:
    """MountError if this process cannot mount at ``mountpoint``."""
    if not os.path.exists(FUSE_DEVICE):
        raise MountError(f"{FUSE_DEVICE} is missing: the kernel has no FUSE here (modprobe "
                         "fuse, or give the container the device)")
    if os.geteuid() == 0:
        return
    if not os.access(FUSE_DEVICE, os.R_OK | os.W_OK):
        raise MountError(f"no access to {FUSE_DEVICE}: FUSE is not allowed for this user "
                         f"(a standard install makes it mode 0666: chmod 0666 {FUSE_DEVICE})")
    helper = shutil.which("fusermount3")
    if helper is None or not os.stat(helper).st_mode & stat.S_ISUID:
        raise MountError("fusermount3 is missing or not setuid root: non-root mounts need it "
                         "(install the fuse3 package)")
    if not os.access(mountpoint, os.W_OK):
        raise MountError(f"no write access to the mountpoint {mountpoint}: FUSE lets a user "
                         "mount only on a directory they may write")
    if allow_other and not _user_allow_other():
        raise MountError(f"--allow-other needs 'user_allow_other' in {FUSE_CONF} for "
                         "non-root users (add that line as root)")


def _user_allow_other() -> bool:
    try:
        with open(FUSE_CONF) as f:
            return any(line.split("#")[0].strip() == "user_allow_other" for line in f)
    except OSError:
        return False
