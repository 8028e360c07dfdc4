"""``cryptfs stress`` / ``make stress``: fio's crc32c verification through every crypto path
under concurrency — sequential, random with verification interleaved into the writes (a mixed
read/write load), 8 jobs, and 1536-byte blocks at an odd offset — at 512- and 4096-byte
sectors.  Any mismatch fails the run (``verify_fatal``).  ``--quick`` is the reduced matrix the
test suite runs.
"""

import os
import tempfile
import time
from dataclasses import dataclass

from cryptfs.tools.bench import fio
from cryptfs.tools.bench.targets import BenchImage, CryptfsTarget
from cryptfs.util.mdtable import markdown_table

FAULTY_ENGINE = {"error_rate": 0.01, "lost_rate": 0.002, "busy_storm_every": 50,
                 "busy_storm_length": 10, "queue_depth": 8, "seed": 7}
PATHS = [
    CryptfsTarget("software/per_sector", "software", "per_sector"),
    CryptfsTarget("software/multi_du", "software", "multi_du"),
    CryptfsTarget("multidu/per_sector", "multidu", "per_sector"),
    CryptfsTarget("multidu/multi_du", "multidu", "multi_du"),
    CryptfsTarget("multidu/multi_du offload", "multidu", "multi_du", offload=True),
    CryptfsTarget("software/multi_du offload", "software", "multi_du", offload=True),
    CryptfsTarget("engine/multi_du with faults", "engine", "multi_du", extra=FAULTY_ENGINE,
                  pipeline={"completion_timeout": 0.2}),
]
VERIFY = ("--verify=crc32c", "--verify_fatal=1", "--do_verify=1")


@dataclass(frozen=True)
class Workload:
    name: str
    rw: str
    bs: str
    numjobs: int
    extra: tuple[str, ...] = ()

    def job(self, per_job: int) -> fio.Job:
        return fio.Job(self.name, self.rw, self.bs, numjobs=self.numjobs,
                       extra=(*VERIFY, f"--offset_increment={per_job}", *self.extra))


WORKLOADS = [
    Workload("sequential-1M-4jobs", "write", "1M", 4),
    Workload("random-mixed-4jobs", "randwrite", "4k", 4,
             ("--bsrange=512-128k", "--bs_unaligned=1", "--verify_backlog=8")),
    Workload("random-4k-8jobs", "randwrite", "4k", 8),
    Workload("odd-1536-at-offset-7", "randwrite", "1536", 4, ("--offset=7",)),
]


@dataclass
class Outcome:
    path: str
    sector_size: int
    workload: str
    ok: bool
    verified_bytes: int
    seconds: float
    error: str = ""


def run(quick: bool = False, progress=None) -> list[Outcome]:
    per_job = (1 if quick else 16) << 20
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="cryptfs-stress-") as workdir:
        image = BenchImage(os.path.join(workdir, "image"), os.path.join(workdir, "key"))
        with open(image.key_file, "wb") as f:
            f.write(os.urandom(64))
        for sector_size in (512, 4096):
            for path in PATHS:
                with open(image.path, "wb") as f:
                    f.truncate(9 * per_job)         # 8 jobs' regions and the odd offset
                target = CryptfsTarget(path.label, path.backend, path.mode, path.offload,
                                       sector_size, extra=path.extra, pipeline=path.pipeline)
                with target.mounted(image, workdir) as (device, _pid):
                    for workload in WORKLOADS:
                        start = time.monotonic()
                        try:
                            result = fio.run(workload.job(per_job), device, 0,
                                             str(per_job), workdir)
                            outcome = Outcome(path.label, sector_size, workload.name, True,
                                              result.bytes, time.monotonic() - start)
                        except RuntimeError as e:
                            outcome = Outcome(path.label, sector_size, workload.name, False, 0,
                                              time.monotonic() - start, str(e)[:300])
                        outcomes.append(outcome)
                        if progress:
                            progress()
    return outcomes


def markdown(outcomes: list[Outcome]) -> str:
    return markdown_table(
        ["sector", "path", "workload", "result", "verified", "seconds"],
        ([o.sector_size, o.path, o.workload, "ok" if o.ok else "FAILED: " + o.error,
          f"{o.verified_bytes / 2**20:.1f} MiB", f"{o.seconds:.1f}"] for o in outcomes),
        "rlllrr")
