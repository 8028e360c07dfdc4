"""What the kernel has mounted, read from /proc/self/mountinfo — never by stat'ing the mount,
which would hang on a FUSE mount whose daemon is not answering."""

import os


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \\ooo octal
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _mounts() -> dict[str, tuple[str, int | None]]:
    """mount point → (file system type, owner uid for a FUSE mount); the last mount on a
    path is the visible one."""
    found = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            dash = fields.index("-")
            options = dict(o.partition("=")[::2] for o in fields[dash + 3].split(","))
            owner = int(options["user_id"]) if options.get("user_id", "").isdigit() else None
            found[_unescape(fields[4])] = (fields[dash + 1], owner)
    return found


def mount_type(path: str) -> str | None:
    """The file system type mounted at ``path`` (e.g. ``fuse.cryptfs``), or None."""
    return _mounts().get(os.path.abspath(path), (None, None))[0]


def mountpoints(fstype: str, owner: int | None = None) -> list[str]:
    """Every mount point where ``fstype`` is the visible mount, in mount order (``owner``:
    only the FUSE mounts that user made)."""
    return [path for path, (kind, uid) in _mounts().items()
            if kind == fstype and (owner is None or uid == owner)]


def connection_id(path: str) -> int | None:
    """The FUSE connection of the mount at ``path`` — its directory under
    /sys/fs/fuse/connections is named by the mount's device number — or None."""
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if _unescape(fields[4]) == os.path.abspath(path):
                found = fields[2]                  # major:minor; the last mount is visible
    if found is None:
        return None
    major, minor = map(int, found.split(":"))
    return os.makedev(major, minor)
