"""Things fio can be pointed at: a cryptfs mount in a given configuration (and, later, its
peers), each reporting the CPU time its daemon spent."""

import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

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
class CryptfsTarget:
    """cryptfs in plain mode over ``image`` with the given backend, mode and offload."""
    label: str
    backend: str = "software"
    mode: str = "per_sector"
    offload: bool = False
    sector_size: int = 512
    cipher: str = "aes-xts-plain64"
    extra: dict = field(default_factory=dict)

    def config(self, key_file: str) -> str:
        lines = ["[device]", 'type = "plain"', "[crypto]", f'cipher = "{self.cipher}"',
                 f'key_file = "{key_file}"', f"sector_size = {self.sector_size}",
                 "[pipeline]", f'mode = "{self.mode}"',
                 f"no_read_workqueue = {str(not self.offload).lower()}",
                 f"no_write_workqueue = {str(not self.offload).lower()}",
                 "[backend]", f'name = "{self.backend}"']
        if self.extra:
            lines.append(f"[backend.{self.backend}]")
            lines += [f"{k} = {str(v).lower() if isinstance(v, bool) else v}"
                      for k, v in self.extra.items()]
        return "\n".join(lines) + "\n"

    @contextmanager
    def mounted(self, image: str, key_file: str, workdir: str):
        """Yield (device path, daemon pid) while mounted; always unmounts."""
        mnt = os.path.join(workdir, "mnt")
        os.makedirs(mnt, exist_ok=True)
        conf = os.path.join(workdir, "bench.toml")
        with open(conf, "w") as f:
            f.write(self.config(key_file))
        cli = [sys.executable, "-m", "cryptfs"]
        subprocess.run(cli + ["open", image, mnt, "--config", conf], check=True,
                       capture_output=True)
        try:
            yield os.path.join(mnt, "device"), read_status(mnt)["pid"]
        finally:
            for _ in range(50):
                if subprocess.run(cli + ["close", mnt], capture_output=True).returncode == 0:
                    break
                time.sleep(0.1)         # fio may still hold the device for a moment
            else:
                subprocess.run(["umount", "-l", mnt], capture_output=True)
