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


def mount_type(path: str) -> str | None:
    """The file system type mounted at ``path`` (e.g. ``fuse.cryptfs``), or None."""
    target = os.path.abspath(path)
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            if _unescape(fields[4]) == target:
                found = fields[sep + 1]      # the last mount on a path is the visible one
    return found
