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


def _mounts() -> dict[str, str]:
    """mount point → file system type; the last mount on a path is the visible one."""
    found = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            found[_unescape(fields[4])] = fields[fields.index("-") + 1]
    return found


def mount_type(path: str) -> str | None:
    """The file system type mounted at ``path`` (e.g. ``fuse.cryptfs``), or None."""
    return _mounts().get(os.path.abspath(path))


def mountpoints(fstype: str) -> list[str]:
    """Every mount point where ``fstype`` is the visible mount, in mount order."""
    return [path for path, kind in _mounts().items() if kind == fstype]
