"""The multi data unit study (``cryptfs bench multidu``): fio through a mounted device with
the crypto path as the only variable — per_sector vs multi_du on the same native backend
(``multidu``: the ratio is the per-request overhead alone) on both data planes (the native
plane pays C's cost per request, the trio plane Python's), the same on ``software`` (one
cipher call per unit either way: multi_du there is the generic auto-splitter), and inline vs
offload for the native core on the trio plane — for 128 KiB sequential reads and writes,
4 KiB random reads (QD1), and 128 KiB random reads with 4 jobs (where offloading to threads
could overlap work), at 512- and 4096-byte sectors.

Runs are interleaved (every target once per repetition, in turn) so drift on a shared machine
hits them alike; the report gives medians, each path's ratio to per_sector on the same backend,
and the daemon's CPU seconds per GiB moved (utime+stime from /proc).  Writes
``bench-results/multidu-<date>.md``, ``.json`` and ``.png``.
"""

import datetime
import os
import statistics
import tempfile
from dataclasses import dataclass

from cryptfs.tools.bench import fio, results
from cryptfs.tools.bench.targets import BenchImage, CryptfsTarget, cpu_seconds
from cryptfs.util.mdtable import markdown_table

JOBS = [fio.Job("seq-read-128k", "read", "128k"), fio.Job("seq-write-128k", "write", "128k"),
        fio.Job("rand-read-4k", "randread", "4k"),
        # offload can only pay off with requests in flight at once
        fio.Job("rand-read-128k-4jobs", "randread", "128k", numjobs=4)]


def targets(sector_size: int) -> list[CryptfsTarget]:
    """Labels are mode/backend/plane; each is compared with per_sector on the same backend
    and plane — on the native plane the per-request cost is C's, on the trio plane Python's."""
    made = []
    for plane, backends in (("trio", ("software", "multidu")), ("native", ("multidu",))):
        for backend in backends:
            for mode in ("per_sector", "multi_du"):
                made.append(CryptfsTarget(f"{mode}/{backend}/{plane}", backend, mode, False,
                                          sector_size, pipeline={"plane": f'"{plane}"'}))
    made.append(CryptfsTarget("multi_du/multidu/trio offload", "multidu", "multi_du", True,
                              sector_size, pipeline={"plane": '"trio"'}))
    return made


def baseline(label: str) -> str:
    """The per_sector path on the same backend and plane as ``label``."""
    _, backend, plane = label.split("/")
    return f"per_sector/{backend}/{plane.split()[0]}"


@dataclass
class Sample:
    bw: float
    iops: float
    cpu_per_gib: float


def measure(target: CryptfsTarget, job: fio.Job, image: BenchImage, workdir: str,
            runtime: float, size: str) -> Sample:
    with target.mounted(image, workdir) as (device, pid):
        before = cpu_seconds(pid)
        result = fio.run(job, device, runtime, size, workdir)
        cpu = cpu_seconds(pid) - before
    return Sample(result.bw, result.iops, cpu / max(result.bytes, 1) * 2**30)


def study(runtime: float = 5, reps: int = 3, image_size: int = 256 << 20,
          sector_sizes=(512, 4096), progress=None) -> list[dict]:
    """Every (sector size, job, target), ``reps`` times interleaved; rows of medians."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="cryptfs-bench-") as workdir:
        image = BenchImage(os.path.join(workdir, "image"), os.path.join(workdir, "key"))
        with open(image.path, "wb") as f:
            f.truncate(image_size)
        with open(image.key_file, "wb") as f:
            f.write(os.urandom(64))
        size = f"{image_size // 2**20}M"
        for sector_size in sector_sizes:
            for job in JOBS:
                samples: dict[str, list[Sample]] = {}
                for _ in range(reps):
                    for target in targets(sector_size):
                        s = measure(target, job, image, workdir, runtime, size)
                        samples.setdefault(target.label, []).append(s)
                        if progress:
                            progress()
                for label, ss in samples.items():
                    base = statistics.median(s.bw for s in samples[baseline(label)])
                    bw = statistics.median(s.bw for s in ss)
                    rows.append({"sector": sector_size, "job": job.name, "target": label,
                                 "MiB/s": bw / 2**20,
                                 "min": min(s.bw for s in ss) / 2**20,
                                 "max": max(s.bw for s in ss) / 2**20,
                                 "IOPS": statistics.median(s.iops for s in ss),
                                 "CPU s/GiB": statistics.median(s.cpu_per_gib for s in ss),
                                 "vs baseline": bw / base if base else 0.0})
    return rows


def save(rows: list[dict], header: str, out_dir: str = "bench-results") -> str:
    """Write the report, its rows and its plot; the report's Markdown."""
    report = header + markdown(rows)
    stem = results.fresh_stem(out_dir, f"multidu-{datetime.date.today().isoformat()}")
    results.save(stem, report, {"rows": rows}, lambda path: _plot(rows, path))
    return report


def _plot(rows: list[dict], path: str) -> None:
    """× per_sector on the same backend, per job, one panel per sector size."""
    plt = results.pyplot()

    sectors = sorted({r["sector"] for r in rows})
    jobs = list(dict.fromkeys(r["job"] for r in rows))
    labels = [t.label for t in targets(512) if t.label != baseline(t.label)]
    width = 0.8 / len(labels)
    fig, axes = plt.subplots(1, len(sectors), figsize=(6 * len(sectors), 4.5), squeeze=False)
    for ax, sector in zip(axes[0], sectors):
        cell = {(r["job"], r["target"]): r["vs baseline"] for r in rows if r["sector"] == sector}
        for i, label in enumerate(labels):
            ax.bar([j + i * width for j in range(len(jobs))],
                   [cell.get((job, label), 0) for job in jobs], width, label=label)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks([j + width * (len(labels) - 1) / 2 for j in range(len(jobs))], jobs,
                      rotation=20, ha="right")
        ax.set_title(f"{sector}-byte sectors")
        ax.set_ylabel("× per_sector on the same backend (median)")
        ax.grid(True, axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Multi data unit requests: throughput relative to one request per sector")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(rows: list[dict]) -> str:
    return markdown_table(
        ["sector", "job", "path", "MiB/s (min–max)", "IOPS", "CPU s/GiB",
         "× per_sector (same backend)"],
        ([r["sector"], r["job"], r["target"],
          f"{r['MiB/s']:.1f} ({r['min']:.0f}–{r['max']:.0f})", f"{r['IOPS']:.0f}",
          f"{r['CPU s/GiB']:.2f}", f"{r['vs baseline']:.2f}"] for r in rows),
        "rllrrrr")
