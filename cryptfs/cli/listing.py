"""The open cryptfs devices: every ``fuse.cryptfs`` mount and what its daemon reports, and
every NBD export (``cryptfs serve``) — for ``status`` without an argument, ``close --all``, and
errors that name who holds an image."""

import errno
import json
import os
import threading
from dataclasses import dataclass

from cryptfs.errors import MountError
from cryptfs.fuse.mounts import mount_type, mountpoints

FSTYPE = "fuse.cryptfs"
#: a daemon that does not answer within this time is reported as not answering
ANSWER_SECONDS = 2.0


@dataclass
class OpenDevice:
    mountpoint: str
    status: dict | None          # None: no daemon (a dead mount) or it did not answer
    problem: str = ""            # why there is no status

    def describe(self) -> str:
        pid = f" (pid {self.status['pid']})" if self.status else ""
        return f"{self.mountpoint}{pid}"


def read_status(mountpoint: str) -> dict | None:
    """The daemon's status (``MOUNTPOINT/stats``), or None if the daemon is gone."""
    try:
        with open(os.path.join(mountpoint, "stats"), "rb") as f:
            return json.load(f)
    except OSError as e:
        if e.errno in (errno.ENOTCONN, errno.ECONNABORTED, errno.ENODEV):
            return None
        raise MountError(f"cannot read {mountpoint}/stats: {e.strerror}") from None


def _status_in_time(mountpoint: str) -> OpenDevice:
    """Read the status on a thread, so a stopped daemon cannot hang the listing."""
    result: list = []

    def read():
        try:
            result.append(OpenDevice(mountpoint, read_status(mountpoint)))
        except MountError as e:
            result.append(OpenDevice(mountpoint, None, str(e)))
    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(ANSWER_SECONDS)
    if not result:
        return OpenDevice(mountpoint, None, f"the daemon did not answer within "
                                            f"{ANSWER_SECONDS:g} s")
    device = result[0]
    if device.status is None and not device.problem:
        device.problem = "the daemon is gone (dead mount)"
    return device


def open_devices() -> list[OpenDevice]:
    """The devices this user may see: every one for root, a user's own otherwise (others'
    stats cannot be read without allow_other)."""
    owner = None if os.geteuid() == 0 else os.geteuid()
    return [_status_in_time(m) for m in mountpoints(FSTYPE, owner)]


def holder(path: str) -> str | None:
    """``MOUNTPOINT (pid N)`` of the open device — or ``export ADDRESS (pid N)`` of the NBD
    export — whose image or detached header is ``path``."""
    try:
        target = os.stat(path)
    except OSError:
        return None
    users = [(d.status, d.describe()) for d in open_devices() if d.status]
    users += [(e, f"export {e['address']} (pid {e['pid']})") for e in open_exports()]
    for status, where in users:
        for used in (status.get("image"), status.get("header")):
            try:
                st = os.stat(used) if used else None
            except OSError:
                continue
            if st and (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
                return where
    return None


def mounted(path: str) -> str:
    """The cryptfs mountpoint ``path`` names: the mountpoint itself or its ``device`` file."""
    path = os.path.abspath(path)
    kind = mount_type(path)
    if kind is None and os.path.basename(path) == "device":
        parent = os.path.dirname(path)
        if mount_type(parent) == FSTYPE:
            return parent
    if kind is None:
        raise MountError(f"{path} is not mounted")
    if kind != FSTYPE:
        raise MountError(f"{path} is not a cryptfs mount (it is {kind})")
    return path


def open_exports() -> list[dict]:
    """Every running NBD export (``cryptfs serve``), as its plugin last described it."""
    from cryptfs.tools import nbd
    return nbd.exports()


def find_export(name: str) -> dict | None:
    """The running export ``name`` (socket path, ADDR:PORT or URI) designates, if any."""
    from cryptfs.tools import nbd
    return nbd.find(name)


def stop_export(export: dict, timeout: float) -> None:
    """Stop an export, flushing; BusyError if nbdkit does not exit within ``timeout`` s."""
    from cryptfs.tools import nbd
    nbd.stop(export, timeout)


def export_table(exports: list[dict]) -> str:
    """One line per export: where it listens, image, type, pid, backend, log."""
    return _columns([("EXPORT", "IMAGE", "TYPE", "PID", "BACKEND", "LOG")] + [
        (e["address"] + (f" (tls {e['tls']})" if e["tls"] else ""), e["image"],
         e["type"] + (",ro" if e["read_only"] else ""), str(e["pid"]),
         f"{e['backend']}/{e['crypto_path']}", e.get("log_file") or "-") for e in exports])


def table(devices: list[OpenDevice]) -> str:
    """One line per device: mountpoint, image, type, pid, backend, log."""
    rows = [("MOUNTPOINT", "IMAGE", "TYPE", "PID", "BACKEND", "PLANE", "LOG")]
    for d in devices:
        s = d.status
        if s is None:
            rows.append((d.mountpoint, "?", "?", "?", "?", "?", d.problem))
            continue
        ro = ",ro" if s.get("read_only") else ""
        rows.append((d.mountpoint, s["image"], s["type"] + ro, str(s["pid"]),
                     f"{s['backend']}/{s['crypto_path']}", s.get("plane", "trio"),
                     s.get("log_file") or "-"))
    return _columns(rows)


def _columns(rows: list[tuple[str, ...]]) -> str:
    """Rows as aligned columns (the last one as it is)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1]
                     for r in rows)
