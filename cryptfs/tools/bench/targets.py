"""Things fio can be pointed at — cryptfs in a given configuration, qemu-storage-daemon's FUSE
export of the same LUKS image, and a no-crypto pyfuse3 passthrough — each yielding the device
file and the pid whose CPU time is charged to it, and each taken down whatever happens
(including Ctrl-C)."""

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from cryptfs.fuse.mounts import connection_id, mount_type

CLK_TCK = os.sysconf("SC_CLK_TCK")


def read_status(mountpoint: str) -> dict:
    with open(os.path.join(mountpoint, "stats")) as f:
        return json.load(f)


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@dataclass(frozen=True)
class BenchImage:
    """The image every target serves: plain (``key_file`` is the raw key) or LUKS
    (``key_file`` holds the passphrase, ``payload_offset`` where the data starts)."""
    path: str
    key_file: str
    luks: bool = False
    payload_offset: int = 0


#: every FUSE target is measured with this many background requests (the native plane sets it
#: in INIT; the others are set through the kernel's fusectl files)
MAX_BACKGROUND = 64
FUSECTL = "/sys/fs/fuse/connections"


def set_max_background(mountpoint: str, value: int = MAX_BACKGROUND) -> bool:
    """Set a mount's max_background (and congestion_threshold, 3/4 of it, as libfuse does)
    through fusectl, mounting fusectl if needed; False where that is not possible (not
    root)."""
    conn = connection_id(mountpoint)
    if conn is None or os.geteuid() != 0:
        return False
    if not os.path.isdir(os.path.join(FUSECTL, str(conn))):
        subprocess.run(["mount", "-t", "fusectl", "fusectl", FUSECTL], capture_output=True)
    try:
        for name, n in (("max_background", value), ("congestion_threshold", value * 3 // 4)):
            with open(os.path.join(FUSECTL, str(conn), name), "w") as f:
                f.write(str(n))
    except OSError:
        return False
    return True


def _wait_mounted(path: str, proc: subprocess.Popen | None = None, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while mount_type(path) is None:
        if (proc and proc.poll() is not None) or time.monotonic() > deadline:
            raise RuntimeError(f"nothing got mounted at {path}")
        time.sleep(0.02)


def _stop(proc: subprocess.Popen, mountpoint: str) -> None:
    """Ask a serving process to end, insist if it will not, and leave no mount behind."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if mount_type(mountpoint):
        subprocess.run(["umount", "-l", mountpoint], capture_output=True)


@contextmanager
def _serving(argv: list[str], mountpoint: str, device: str):
    """Run ``argv``, a process that mounts at ``mountpoint``; yields (``device``, its pid) once
    mounted, and stops it and unmounts afterwards."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_mounted(mountpoint, proc)
        set_max_background(mountpoint)
        yield device, proc.pid
    finally:
        _stop(proc, mountpoint)


@dataclass(frozen=True)
class CryptfsTarget:
    """cryptfs with the given backend, mode and offload."""
    label: str
    backend: str = "software"
    mode: str = "per_sector"
    offload: bool = False
    sector_size: int = 512
    cipher: str = "aes-xts-plain64"
    extra: dict = field(default_factory=dict)          # [backend.<name>] options
    pipeline: dict = field(default_factory=dict)       # further [pipeline] keys
    #: plain mode over a LUKS image's payload (with ``cipher``: the null cipher's ceiling)
    over_payload: bool = False

    def config(self, image: BenchImage) -> str:
        if self.over_payload:
            lines = ["[device]", 'type = "plain"', f"offset = {image.payload_offset // 512}",
                     "[crypto]", f'cipher = "{self.cipher}"', f'key_file = "{image.key_file}"']
        elif image.luks:
            lines = ["[device]", 'type = "luks"', "[crypto]", f'key_file = "{image.key_file}"']
        else:
            lines = ["[device]", 'type = "plain"', "[crypto]", f'cipher = "{self.cipher}"',
                     f'key_file = "{image.key_file}"', f"sector_size = {self.sector_size}"]
        lines += ["[pipeline]", f'mode = "{self.mode}"',
                  f"no_read_workqueue = {str(not self.offload).lower()}",
                  f"no_write_workqueue = {str(not self.offload).lower()}",
                  f"max_background = {MAX_BACKGROUND}",
                  *(f"{k} = {v}" for k, v in self.pipeline.items()),
                  "[backend]", f'name = "{self.backend}"']
        if self.extra:
            lines.append(f"[backend.{self.backend}]")
            lines += [f"{k} = {str(v).lower() if isinstance(v, bool) else v}"
                      for k, v in self.extra.items()]
        return "\n".join(lines) + "\n"

    @contextmanager
    def mounted(self, image: BenchImage, workdir: str):
        """Yield (device path, daemon pid) while mounted; always unmounts."""
        mnt = os.path.join(workdir, "mnt")
        os.makedirs(mnt, exist_ok=True)
        conf = os.path.join(workdir, "bench.toml")
        with open(conf, "w") as f:
            f.write(self.config(image))
        cli = [sys.executable, "-m", "cryptfs"]
        try:
            subprocess.run(cli + ["open", image.path, mnt, "--config", conf], check=True,
                           capture_output=True)
            status = read_status(mnt)
            if status["plane"] == "trio":
                set_max_background(mnt)
            yield os.path.join(mnt, "device"), status["pid"]
        finally:
            for _ in range(50):
                if not mount_type(mnt) or subprocess.run(cli + ["close", mnt],
                                                         capture_output=True).returncode == 0:
                    break
                time.sleep(0.1)         # fio may still hold the device for a moment
            else:
                subprocess.run(["umount", "-l", mnt], capture_output=True)


@dataclass(frozen=True)
class QemuTarget:
    """qemu-storage-daemon exporting the same LUKS image over FUSE (the performance peer)."""
    label: str = "qemu-storage-daemon"

    def mounted(self, image: BenchImage, workdir: str):
        export = os.path.join(workdir, "qemu-export")
        open(export, "a").close()                      # a FUSE export mounts over a file
        return _serving(
            ["qemu-storage-daemon", "--object", f"secret,id=s0,file={image.key_file}",
             "--blockdev", f"driver=file,node-name=f0,filename={image.path}",
             "--blockdev", "driver=luks,node-name=l0,file=f0,key-secret=s0",
             "--export", f"type=fuse,id=e0,node-name=l0,mountpoint={export},writable=on"],
            export, export)


@dataclass(frozen=True)
class PassthroughTarget:
    """The ceiling: pyfuse3 reading and writing the image's payload with no crypto at all."""
    label: str = "pyfuse3 passthrough (no crypto)"

    def mounted(self, image: BenchImage, workdir: str):
        mnt = os.path.join(workdir, "passthrough")
        os.makedirs(mnt, exist_ok=True)
        return _serving([sys.executable, "-m", "cryptfs.tools.bench.passthrough", image.path, mnt,
                         str(image.payload_offset)], mnt, os.path.join(mnt, "device"))
