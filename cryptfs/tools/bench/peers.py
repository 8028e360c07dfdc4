"""``make bench`` / ``cryptfs bench peers``: the same fio jobs on the same LUKS1 image, against
cryptfs in each backend and mode, against qemu-storage-daemon's FUSE export (what a user would
otherwise pick), and against two ceilings: a no-crypto pyfuse3 passthrough (of any pyfuse3
device here) and the native plane with the null cipher (of the native plane itself).  Every
FUSE target runs with the same max_background (:data:`targets.MAX_BACKGROUND`).

The image is made by qemu-img (LUKS1, aes-xts-plain64, 512-byte sectors).  Each repetition
mounts every target in turn and runs every job on it, so drift on a shared machine spreads over
all of them; the report gives medians and min–max, each cryptfs path's ratio to qemu and to the
ceiling, and each daemon's CPU seconds per GiB.  Results go to ``bench-results/<date>.md``,
``.json`` and ``.png`` (``<date>-2`` for a second run that day).
"""

import datetime
import os
import platform
import statistics
import subprocess
import tempfile

from cryptfs.tools.bench import fio, results
from cryptfs.tools.bench.targets import (
    BenchImage,
    CryptfsTarget,
    PassthroughTarget,
    QemuTarget,
    cpu_seconds,
)
from cryptfs.util.mdtable import markdown_table

PASSPHRASE_BYTES = 24
IMAGE_SIZE = 256 << 20
JOBS = [fio.Job("seq-read-128k", "read", "128k"), fio.Job("seq-write-128k", "write", "128k"),
        fio.Job("seq-read-1M", "read", "1M"), fio.Job("seq-write-1M", "write", "1M"),
        fio.Job("rand-read-4k", "randread", "4k"), fio.Job("rand-write-4k", "randwrite", "4k"),
        fio.Job("rand-read-4k-4jobs", "randread", "4k", numjobs=4),
        fio.Job("rand-read-4k-libaio-qd16", "randread", "4k", ioengine="libaio", iodepth=16)]
QUICK_JOBS = [JOBS[0], JOBS[4]]
QEMU, CEILING = "qemu-storage-daemon", "pyfuse3 passthrough (no crypto)"
NATIVE_CEILING = "cryptfs native plane, cipher_null (no crypto)"
NATIVE, TRIO = {"plane": '"native"'}, {"plane": '"trio"'}
#: markers on the plot, not bars: the ceilings and the peer
REFERENCES = (QEMU, CEILING, NATIVE_CEILING)


def targets(quick: bool = False) -> list:
    """The default (native plane), the same on the trio plane, dm-crypt's per-sector path on
    each plane, the engine; the peer; and the two ceilings: any pyfuse3 device, and the
    native plane itself with the null cipher."""
    cryptfs = [CryptfsTarget("cryptfs native multidu/multi_du", "multidu", "multi_du",
                             pipeline=NATIVE),
               CryptfsTarget("cryptfs trio multidu/multi_du", "multidu", "multi_du",
                             pipeline=TRIO)]
    if not quick:
        cryptfs += [CryptfsTarget("cryptfs native multidu/per_sector", "multidu", "per_sector",
                                  pipeline=NATIVE),
                    CryptfsTarget("cryptfs trio software/per_sector", "software", "per_sector",
                                  pipeline=TRIO),
                    CryptfsTarget("cryptfs trio engine/multi_du", "engine", "multi_du")]
    return cryptfs + [QemuTarget(QEMU), PassthroughTarget(CEILING),
                      CryptfsTarget(NATIVE_CEILING, "multidu", "multi_du", pipeline=NATIVE,
                                    cipher="cipher_null-ecb", over_payload=True)]


def make_image(workdir: str) -> BenchImage:
    """A LUKS1 image made by qemu-img; its payload offset read from the header."""
    path, secret = os.path.join(workdir, "image.luks"), os.path.join(workdir, "passphrase")
    with open(secret, "w") as f:
        f.write(os.urandom(PASSPHRASE_BYTES).hex())
    for _ in range(5):      # qemu-img's PBKDF timing sometimes fails on a busy machine
        done = subprocess.run(
            ["qemu-img", "create", "-f", "luks", "--object", f"secret,id=s0,file={secret}",
             "-o", "key-secret=s0,iter-time=10,cipher-alg=aes-256,cipher-mode=xts,"
                   "ivgen-alg=plain64", path, str(IMAGE_SIZE)], capture_output=True, text=True)
        if done.returncode == 0:
            break
    else:
        raise RuntimeError(f"qemu-img create failed: {done.stderr.strip()}")
    with open(path, "rb") as f:
        payload = int.from_bytes(f.read(108)[104:108], "big") * 512   # LUKS1 payload-offset
    return BenchImage(path, secret, luks=True, payload_offset=payload)


def run(runtime: float = 3, reps: int = 3, quick: bool = False, out_dir: str = "bench-results",
        progress=None) -> tuple[str, dict]:
    jobs = QUICK_JOBS if quick else JOBS
    chosen = targets(quick)
    samples: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="cryptfs-bench-peers-") as workdir:
        image = make_image(workdir)
        for _ in range(reps):
            for target in chosen:
                with target.mounted(image, workdir) as (device, pid):
                    for job in jobs:
                        cpu0 = cpu_seconds(pid)
                        result = fio.run(job, device, runtime, "200M", workdir)
                        cpu = cpu_seconds(pid) - cpu0
                        samples.setdefault((job.name, target.label), []).append(
                            {"bw": result.bw, "iops": result.iops,
                             "cpu_per_gib": cpu / max(result.bytes, 1) * 2**30})
                        if progress:
                            progress()
    summary = _summarise(samples, jobs, chosen)
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": f"{platform.node()}, {os.cpu_count()} CPUs, {platform.platform()}",
            "runtime_s": runtime, "reps": reps, "quick": quick,
            "command": "cryptfs bench peers" + (" --quick" if quick else "")}
    report = _markdown(summary, jobs, chosen, meta)
    stem = results.fresh_stem(out_dir, datetime.date.today().isoformat() +
                              ("-quick" if quick else ""))
    results.save(stem, report, {"meta": meta, "results": summary,
                                "samples": {f"{j} | {t}": s for (j, t), s in samples.items()}},
                 lambda path: _plot(summary, jobs, chosen, path))
    return report, summary


def _metric(job: fio.Job) -> str:
    return "iops" if job.bs == "4k" else "bw"


def _summarise(samples, jobs, chosen) -> dict:
    out = {}
    for job in jobs:
        metric = _metric(job)
        rows = {}
        for target in chosen:
            runs = samples[(job.name, target.label)]
            values = [r[metric] for r in runs]
            rows[target.label] = {"median": statistics.median(values), "min": min(values),
                                  "max": max(values),
                                  "cpu_per_gib": statistics.median(r["cpu_per_gib"] for r in runs)}
        for row in rows.values():
            row["vs_qemu"] = row["median"] / rows[QEMU]["median"]
            row["vs_ceiling"] = row["median"] / rows[CEILING]["median"]
            row["vs_native_ceiling"] = row["median"] / rows[NATIVE_CEILING]["median"]
        out[job.name] = {"metric": metric, "targets": rows}
    return out


def _fmt(value: float, metric: str) -> str:
    return f"{value / 2**20:.0f}" if metric == "bw" else f"{value / 1000:.1f}k"


def _markdown(summary, jobs, chosen, meta) -> str:
    lines = [f"`{meta['command']}` — {meta['date']}, {meta['machine']}; fio direct=1 on the device "
             f"file, {meta['runtime_s']:g} s per run, {meta['reps']} repetitions interleaved, "
             "medians (min–max).  Throughput in MiB/s, 4k jobs in IOPS; CPU = the serving "
             "process's utime+stime per GiB moved.", ""]
    rows = []
    for job in jobs:
        m = summary[job.name]["metric"]
        for target in chosen:
            r = summary[job.name]["targets"][target.label]
            rows.append([job.name, target.label,
                         f"{_fmt(r['median'], m)} ({_fmt(r['min'], m)}–{_fmt(r['max'], m)})",
                         f"{r['vs_qemu']:.2f}", f"{r['vs_ceiling']:.2f}",
                         f"{r['vs_native_ceiling']:.2f}", f"{r['cpu_per_gib']:.2f}"])
    lines.append(markdown_table(["job", "target", "median (min–max)", "× qemu",
                                 "× pyfuse3 ceiling", "× native ceiling", "CPU s/GiB"], rows,
                                "llrrrrr"))
    return "\n".join(lines)


def _plot(summary, jobs, chosen, path: str) -> None:
    """Each target's median relative to qemu, per job, on a log scale (1 = qemu); the no-crypto
    ceiling is a marker, not a bar, so its 5-15× does not squash the others."""
    plt = results.pyplot()

    bars = [t.label for t in chosen if t.label not in REFERENCES]
    width = 0.8 / len(bars)
    fig, ax = plt.subplots(figsize=(max(7, 1.4 * len(jobs)) + 2.5, 4.8))
    for i, label in enumerate(bars):
        ax.bar([j + i * width for j in range(len(jobs))],
               [summary[job.name]["targets"][label]["vs_qemu"] for job in jobs], width,
               label=label)
    centres = [j + width * (len(bars) - 1) / 2 for j in range(len(jobs))]
    for label, colour in ((CEILING, "black"), (NATIVE_CEILING, "firebrick")):
        ax.scatter(centres, [summary[job.name]["targets"][label]["vs_qemu"] for job in jobs],
                   marker="_", s=900, linewidths=2.5, color=colour, zorder=3, label=label)
    ax.axhline(1.0, color="dimgray", linewidth=1, linestyle="--", label=QEMU)
    ax.set_yscale("log")
    ax.set_xticks(centres, [job.name for job in jobs], rotation=25, ha="right")
    ax.set_ylabel("× qemu-storage-daemon (median, log scale)")
    ax.set_title("fio through each device, relative to qemu-storage-daemon")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(True, axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
