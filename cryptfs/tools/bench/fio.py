"""Running one fio job against a file and reading what it measured."""

import json
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class Job:
    name: str
    rw: str                 # read, write, randread, randwrite
    bs: str                 # 4k, 128k, 1M
    ioengine: str = "psync"
    iodepth: int = 1
    numjobs: int = 1
    extra: tuple[str, ...] = ()         # further fio options, e.g. ("--end_fsync=1",)

    def args(self, filename: str, runtime: float, size: str) -> list[str]:
        timing = [f"--runtime={runtime}", "--time_based=1"] if runtime else []
        return ["fio", f"--name={self.name}", f"--filename={filename}", f"--rw={self.rw}",
                f"--bs={self.bs}", f"--ioengine={self.ioengine}", f"--iodepth={self.iodepth}",
                f"--numjobs={self.numjobs}", "--direct=1", *timing, f"--size={size}",
                "--group_reporting=1", "--output-format=json", "--verify_state_save=0",
                *self.extra]


@dataclass(frozen=True)
class Result:
    bytes: int              # moved during the run
    bw: float               # bytes per second
    iops: float
    p50_us: float


def run(job: Job, filename: str, runtime: float, size: str, cwd: str) -> Result:
    """Run ``job`` for ``runtime`` seconds (0: until ``size`` is done); RuntimeError with fio's
    words if it fails."""
    done = subprocess.run(job.args(filename, runtime, size), capture_output=True, text=True,
                          cwd=cwd, timeout=runtime * 4 + 120 if runtime else 1800)
    if done.returncode:
        raise RuntimeError(f"fio {job.name}: {done.stderr.strip() or done.stdout[-500:]}")
    report = json.loads(done.stdout[done.stdout.index("{"):])["jobs"][0]
    side = report["read"] if job.rw in ("read", "randread") else report["write"]
    percentiles = side["clat_ns"].get("percentile", {})
    return Result(side["io_bytes"], side["bw_bytes"], side["iops"],
                  percentiles.get("50.000000", 0) / 1000)
