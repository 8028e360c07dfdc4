"""``cryptfs bench nbd``: fio's ``nbd`` engine against NBD exports of one qemu-made LUKS1 image.

Beside cryptfs's export (``cryptfs serve``, nbdkit's embedded Python over the cryptfs stack) it
measures qemu-storage-daemon's NBD export of the same image (the peer), nbdkit's own ``luks``
filter (C, GnuTLS; LUKS1 only), and two no-crypto ceilings that split the cost: nbdkit's
``file`` plugin (C) and a Python nbdkit plugin that only preads and pwrites the payload (what
nbdkit's Python costs per request, before any cryptfs code runs).  cryptfs's FUSE device on the
same image runs the same jobs through the kernel (psync / libaio on the device file, as ``bench
peers`` does) for comparison.

The jobs are ``bench peers``'s: one request at a time (psync there, the nbd engine at iodepth 1
here), four jobs (four connections), and iodepth 16.  Each repetition runs every target in
turn; the report gives medians (min–max), ratios to qemu-storage-daemon, the serving process's
CPU seconds per GiB, and for the one-request-at-a-time jobs the microseconds a request takes on
each — from which the Python share is read off.  Results go to ``bench-results/nbd-<date>.md``,
``.json`` and ``.png``.
"""

import dataclasses
import datetime
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass

from cryptfs.tools.bench import fio, peers, results
from cryptfs.tools.bench.targets import BenchImage, CryptfsTarget, cpu_seconds
from cryptfs.util.mdtable import markdown_table

CRYPTFS = "cryptfs serve multidu/multi_du"
QEMU = "qemu-storage-daemon NBD"
NBDKIT_LUKS = "nbdkit luks filter (C)"
PYTHON_CEILING = "nbdkit Python plugin, no crypto"
C_CEILING = "nbdkit file plugin, no crypto"
FUSE = "cryptfs FUSE device (kernel, psync/libaio)"

#: a Python nbdkit plugin that only moves the payload's bytes: nbdkit's Python, and no more —
#: its worker threads' Python thread states pinned as cryptfs's plugin pins them (without,
#: each request costs some 50 µs more: see docs/nbd.md)
PASSTHROUGH = '''import ctypes
import os
import threading
import nbdkit
API_VERSION = 2
fd = offset = None
pinned = set()
def pin():
    if threading.get_native_id() not in pinned:
        ctypes.pythonapi.PyGILState_Ensure()
        pinned.add(threading.get_native_id())
def config(key, value):
    global fd, offset
    if key == "file":
        fd = os.open(value, os.O_RDWR)
    elif key == "offset":
        offset = int(value)
def thread_model():
    return nbdkit.THREAD_MODEL_PARALLEL
def open(readonly):
    return 1
def get_size(h):
    return os.fstat(fd).st_size - offset
def pread(h, buf, at, flags):
    pin()
    os.preadv(fd, [buf], at + offset)
def pwrite(h, buf, at, flags):
    pin()
    os.pwrite(fd, buf, at + offset)
'''


def _wait_listening(path: str, proc: subprocess.Popen, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while True:
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(path)
                return
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{' '.join(proc.args[:3])}... did not listen on {path}: "
                                       f"{proc.stderr.read().decode(errors='replace')[-500:]}")
        time.sleep(0.02)


@dataclass(frozen=True)
class Server:
    """An NBD server run as a child: ``argv(image, workdir, socket)`` says how."""
    label: str
    argv: object

    @contextmanager
    def mounted(self, image: BenchImage, workdir: str):
        """Yield (its NBD URI, its pid) while it listens on a Unix socket."""
        path = os.path.join(workdir, "nbd.sock")
        proc = subprocess.Popen(self.argv(image, workdir, path), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        try:
            _wait_listening(path, proc)
            yield f"nbd+unix:///?socket={path}", proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if os.path.exists(path):
                os.unlink(path)


@dataclass(frozen=True)
class CryptfsExport:
    """``cryptfs serve`` with a backend and mode, as a user runs it."""
    label: str
    backend: str = "multidu"
    mode: str = "multi_du"

    @contextmanager
    def mounted(self, image: BenchImage, workdir: str):
        path, conf = os.path.join(workdir, "nbd.sock"), os.path.join(workdir, "serve.toml")
        with open(conf, "w") as f:
            f.write(CryptfsTarget(self.label, self.backend, self.mode).config(image))
        cli = [sys.executable, "-m", "cryptfs"]
        # listed in the bench's own directory: no `close --all` elsewhere stops it mid-run
        env = {**os.environ, "CRYPTFS_RUNTIME_DIR": workdir}
        subprocess.run(cli + ["serve", image.path, "--socket", path, "--config", conf,
                              "--log-file", os.path.join(workdir, "serve.log")],
                       check=True, capture_output=True, env=env)
        try:
            status = subprocess.run(cli + ["status", path, "--json"], check=True,
                                    capture_output=True, text=True, env=env).stdout
            yield f"nbd+unix:///?socket={path}", json.loads(status)["pid"]
        finally:
            subprocess.run(cli + ["close", path], capture_output=True, env=env)


def _qemu(image: BenchImage, workdir: str, path: str) -> list[str]:
    return ["qemu-storage-daemon", "--object", f"secret,id=s0,file={image.key_file}",
            "--blockdev", f"driver=file,node-name=f0,filename={image.path}",
            "--blockdev", "driver=luks,node-name=l0,file=f0,key-secret=s0",
            "--nbd-server", f"addr.type=unix,addr.path={path}",
            "--export", "type=nbd,id=e0,node-name=l0,name=,writable=on"]


def _nbdkit_luks(image: BenchImage, workdir: str, path: str) -> list[str]:
    return ["nbdkit", "-f", "-U", path, "--filter=luks", "file", image.path,
            f"passphrase=+{image.key_file}"]


def _nbdkit_python(image: BenchImage, workdir: str, path: str) -> list[str]:
    script = os.path.join(workdir, "passthrough.py")
    with open(script, "w") as f:
        f.write(PASSTHROUGH)
    return ["nbdkit", "-f", "-U", path, "python", script, f"file={image.path}",
            f"offset={image.payload_offset}"]


def _nbdkit_file(image: BenchImage, workdir: str, path: str) -> list[str]:
    return ["nbdkit", "-f", "-U", path, "--filter=offset", "file", image.path,
            f"offset={image.payload_offset}"]


def targets(quick: bool = False) -> list:
    """cryptfs's export, the peer, nbdkit's C LUKS filter, the two ceilings and (where FUSE
    works) cryptfs's FUSE device; ``quick``: cryptfs's export and the peer."""
    chosen = [CryptfsExport(CRYPTFS), Server(QEMU, _qemu)]
    if quick:
        return chosen
    chosen += [Server(NBDKIT_LUKS, _nbdkit_luks), Server(PYTHON_CEILING, _nbdkit_python),
               Server(C_CEILING, _nbdkit_file)]
    return chosen + ([CryptfsTarget(FUSE, "multidu", "multi_du")]
                     if os.path.exists("/dev/fuse") else [])


def nbd_job(job: fio.Job, uri: str) -> fio.Job:
    """``job`` on fio's nbd engine: one connection per fio job, iodepth as it was."""
    return dataclasses.replace(job, ioengine="nbd", extra=job.extra + (f"--uri={uri}",))


def _one(job: fio.Job, where: str, pid: int, runtime: float, workdir: str) -> dict:
    """One fio run: its rate and the server's CPU per GiB."""
    if where.startswith("nbd"):
        job, where = nbd_job(job, where), "nbd"
    before = cpu_seconds(pid)
    result = fio.run(job, where, runtime, "200M", workdir)
    spent = cpu_seconds(pid) - before
    return {"bw": result.bw, "iops": result.iops,
            "cpu_per_gib": spent / max(result.bytes, 1) * 2**30}


def run(runtime: float = 3, reps: int = 3, quick: bool = False,
        out_dir: str = "bench-results", progress=None) -> tuple[str, dict]:
    jobs = peers.QUICK_JOBS if quick else peers.JOBS
    chosen = targets(quick)
    runs: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="cryptfs-bench-nbd-") as workdir:
        image = peers.make_image(workdir)
        for _ in range(reps):
            for target in chosen:
                with target.mounted(image, workdir) as (where, pid):
                    for job in jobs:
                        runs.setdefault((job.name, target.label), []).append(
                            _one(job, where, pid, runtime, workdir))
                        if progress:
                            progress()
    summary = {job.name: _medians(job, [t.label for t in chosen], runs) for job in jobs}
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": f"{platform.node()}, {os.cpu_count()} CPUs, {platform.platform()}",
            "runtime_s": runtime, "reps": reps, "quick": quick,
            "command": f"cryptfs bench nbd --runtime {runtime:g} --reps {reps}" +
                       (" --quick" if quick else "")}
    report = markdown(summary, jobs, chosen, meta)
    stem = results.fresh_stem(out_dir, "nbd-" + datetime.date.today().isoformat())
    results.save(stem, report, {"meta": meta, "results": summary,
                                "samples": {f"{j} | {t}": s for (j, t), s in runs.items()}},
                 lambda path: _plot(summary, jobs, chosen, path))
    return report, summary


def _medians(job: fio.Job, labels: list[str], runs: dict) -> dict:
    metric = "iops" if job.bs == "4k" else "bw"
    one_at_a_time = job.numjobs == 1 and job.iodepth == 1
    rows = {}
    for label in labels:
        values = [r[metric] for r in runs[(job.name, label)]]
        iops = statistics.median(r["iops"] for r in runs[(job.name, label)])
        rows[label] = {"median": statistics.median(values), "min": min(values),
                       "max": max(values), "cpu_per_gib": statistics.median(
                           r["cpu_per_gib"] for r in runs[(job.name, label)]),
                       "us_per_request": 1e6 / iops if one_at_a_time and iops else None}
    for row in rows.values():
        row["vs_qemu"] = row["median"] / rows[QEMU]["median"]
    return {"metric": metric, "targets": rows}


def markdown(summary: dict, jobs: list[fio.Job], chosen: list, meta: dict) -> str:
    lines = [f"`{meta['command']}` — {meta['date']}, {meta['machine']}; fio's nbd engine over a "
             f"Unix socket (the FUSE row: the device file), {meta['runtime_s']:g} s per run, "
             f"{meta['reps']} repetitions interleaved, medians (min–max).  MiB/s, 4k jobs in "
             "IOPS; µs/req for one request at a time; CPU = the server's utime+stime per GiB.",
             ""]
    rows = []
    for job in jobs:
        m = summary[job.name]["metric"]
        for target in chosen:
            r = summary[job.name]["targets"][target.label]
            rows.append([job.name, target.label, f"{peers._fmt(r['median'], m)} "
                         f"({peers._fmt(r['min'], m)}–{peers._fmt(r['max'], m)})",
                         f"{r['vs_qemu']:.2f}",
                         f"{r['us_per_request']:.0f}" if r["us_per_request"] else "",
                         f"{r['cpu_per_gib']:.2f}"])
    lines.append(markdown_table(["job", "target", "median (min–max)", "× qemu NBD", "µs/req",
                                 "CPU s/GiB"], rows, "llrrrr"))
    lines += ["", python_share(summary)]
    return "\n".join(lines)


def python_share(summary: dict) -> str:
    """Where a request's time goes, one request at a time: nbdkit's C (file plugin), its
    Python (the passthrough plugin), and cryptfs's stack; against the C LUKS filter."""
    out = []
    for name, row in summary.items():
        t = {label: r["us_per_request"] for label, r in row["targets"].items()}
        if t.get(CRYPTFS) is None or t.get(C_CEILING) is None:
            continue
        out.append(f"* {name}: {t[CRYPTFS]:.0f} µs a request through cryptfs serve, "
                   f"{t[NBDKIT_LUKS]:.0f} through nbdkit's C LUKS filter, {t[QEMU]:.0f} through "
                   f"qemu-storage-daemon.  Without crypto: {t[C_CEILING]:.0f} µs in C, "
                   f"{t[PYTHON_CEILING]:.0f} in nbdkit's Python — its Python costs "
                   f"{_more(t[PYTHON_CEILING] - t[C_CEILING])} a request, cryptfs's stack "
                   f"(crypto included) {_more(t[CRYPTFS] - t[PYTHON_CEILING])} more, where C "
                   f"crypto adds {_more(t[NBDKIT_LUKS] - t[C_CEILING])}.")
    return "Where a request's time goes (one at a time):\n\n" + "\n".join(out) if out else ""


TICKS = (0.125, 0.25, 0.5, 1, 2, 4, 8, 16)


def _more(us: float) -> str:
    return f"{us:.0f} µs" if us >= 1 else "nothing measurable"


def _plot(summary: dict, jobs: list[fio.Job], chosen: list, path: str) -> None:
    """A dot per job on each target's line: its median as a multiple of qemu-storage-daemon's
    (log scale; the dashed line is qemu)."""
    plt = results.pyplot()
    labels = [t.label for t in chosen]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(labels) + 2.2))
    for j, job in enumerate(jobs):
        ratios = [summary[job.name]["targets"][label]["vs_qemu"] for label in labels]
        ax.scatter(ratios, range(len(labels)), marker="o^sDv<>p"[j % 8], label=job.name)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(True, axis="x", which="both", alpha=0.3)
    ax.axvline(1.0, color="dimgray", linewidth=1, linestyle="--")
    ax.set_xscale("log")
    ax.set_xticks(TICKS, [f"{t:g}×" for t in TICKS])
    ax.minorticks_off()
    ax.set_xlabel("median, as a multiple of qemu-storage-daemon's NBD export (log scale)")
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
