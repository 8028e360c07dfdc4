"""The engine study (``cryptfs bench engine``): the measurement the seed series never showed.

1. *Native multi-DU on the engine vs one job per data unit*, as the seed measured it: fio
   sequential 4 KiB writes with ``end_fsync`` and 128 KiB writes and reads, through the mounted
   device at 512-byte sectors — engine with per-sector requests (one job and one completion
   per data unit) against engine with multi-DU requests (one job per bio) — with throughput and
   the host's CPU per GiB (daemon CPU minus the CPU that computed the engine's bytes).
2. *Where offload pays*: the native engine swept over throughput and setup latency, 128 KiB
   sequential reads, against the plain CPU path (``multidu``) measured in the same run.

Writes ``bench-results/engine-<date>.md``, ``.json`` and ``.png`` (matplotlib) and returns the
Markdown.
"""

import datetime
import os
import statistics
import tempfile

from cryptfs.tools.bench import fio, results
from cryptfs.tools.bench.targets import BenchImage, CryptfsTarget, cpu_seconds, read_status
from cryptfs.util.mdtable import markdown_table

#: the documented engine for part 1: a modest accelerator with a real per-job cost
ENGINE = {"setup_us": 20.0, "per_unit_us": 0.5, "throughput_mbps": 2000.0, "channels": 1,
          "queue_depth": 64}
COMPARE_JOBS = [fio.Job("seq-write-4k-fsync", "write", "4k", extra=("--end_fsync=1",)),
                fio.Job("seq-write-128k", "write", "128k"),
                fio.Job("seq-read-128k", "read", "128k")]
SWEEP_JOB = fio.Job("seq-read-128k", "read", "128k")
THROUGHPUTS = (250, 500, 1000, 2000, 4000, 8000)        # MB/s
SETUPS = (5, 20, 100)                                   # µs


def _measure(target: CryptfsTarget, job: fio.Job, image: BenchImage, workdir: str,
             runtime: float) -> tuple[float, float, float]:
    """(MiB/s, host CPU seconds per GiB, share of engine jobs that overran) for one run."""
    with target.mounted(image, workdir) as (device, pid):
        mnt = os.path.dirname(device)
        cpu0, engine0 = cpu_seconds(pid), _simulation_cpu(mnt)
        result = fio.run(job, device, runtime, "256M", workdir)
        cpu = cpu_seconds(pid) - cpu0 - (_simulation_cpu(mnt) - engine0)
        stats = read_status(mnt)["backend_stats"]
    overran = stats.get("overruns", 0) / max(stats.get("completed", 0), 1)
    return result.bw / 2**20, cpu / max(result.bytes, 1) * 2**30, overran


def _simulation_cpu(mountpoint: str) -> float:
    """CPU the daemon spent being the engine (computing its bytes, timing its jobs)."""
    stats = read_status(mountpoint)["backend_stats"]
    return stats.get("engine_compute_cpu_s", 0.0) + stats.get("engine_wait_cpu_s", 0.0)


def compare_targets() -> list[CryptfsTarget]:
    per_unit = dict(ENGINE, native_multi_du=False)
    return [CryptfsTarget("engine, per-unit jobs", "engine", "per_sector", extra=per_unit),
            CryptfsTarget("engine, native multi-DU", "engine", "multi_du",
                          extra=dict(ENGINE, native_multi_du=True)),
            CryptfsTarget("CPU (multidu)", "multidu", "multi_du")]


def sweep_targets() -> list[CryptfsTarget]:
    return [CryptfsTarget(f"engine {mbps} MB/s, {setup} µs", "engine", "multi_du",
                          extra=dict(ENGINE, throughput_mbps=float(mbps), setup_us=float(setup)))
            for setup in SETUPS for mbps in THROUGHPUTS] + \
        [CryptfsTarget("CPU (multidu)", "multidu", "multi_du")]


def study(runtime: float = 5, reps: int = 3, sweep_runtime: float = 3, progress=None,
          out_dir: str = "bench-results") -> str:
    with tempfile.TemporaryDirectory(prefix="cryptfs-bench-engine-") as workdir:
        image = BenchImage(os.path.join(workdir, "image"), os.path.join(workdir, "key"))
        with open(image.path, "wb") as f:
            f.truncate(256 << 20)
        with open(image.key_file, "wb") as f:
            f.write(os.urandom(64))

        compare: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for _ in range(reps):
            for job in COMPARE_JOBS:
                for target in compare_targets():
                    compare.setdefault((job.name, target.label), []).append(
                        _measure(target, job, image, workdir, runtime))
                    if progress:
                        progress()
        sweep, overran = {}, {}
        for target in sweep_targets():
            bw, _, late = _measure(target, SWEEP_JOB, image, workdir, sweep_runtime)
            sweep[target.label], overran[target.label] = bw, late
            if progress:
                progress()
    report = _markdown(compare, sweep, overran, runtime, reps, sweep_runtime)
    stem = results.fresh_stem(out_dir, f"engine-{datetime.date.today().isoformat()}")
    results.save(stem, report,
                 {"engine": ENGINE, "runtime": runtime, "reps": reps,
                  "compare": {f"{job} | {label}": samples
                              for (job, label), samples in compare.items()},
                  "sweep_mib_s": sweep, "sweep_overrun_share": overran},
                 lambda path: _plot(sweep, path))
    return report


def _markdown(compare, sweep, overran, runtime, reps, sweep_runtime) -> str:
    e = ENGINE
    lines = [f"Engine (this study's settings): {e['throughput_mbps']:.0f} MB/s, "
             f"{e['setup_us']:.0f} µs setup per job, "
             f"{e['per_unit_us']} µs per data unit, {e['channels']} channel, "
             f"{e['queue_depth']} ring slots; 512-byte sectors; fio psync QD1 direct=1, "
             f"{runtime:g} s × {reps} runs interleaved, medians.  Host CPU = daemon CPU minus the "
             "CPU that simulated the engine (computing its bytes, timing its jobs).", ""]
    compared = []
    for job in COMPARE_JOBS:
        rows = {label: (statistics.median(s[0] for s in v), statistics.median(s[1] for s in v))
                for (name, label), v in compare.items() if name == job.name}
        base_bw, base_cpu = rows["engine, per-unit jobs"]
        for label, (bw, cpu) in rows.items():
            versus = "" if label.startswith("CPU") or label == "engine, per-unit jobs" else (
                f"{(bw / base_bw - 1) * 100:+.0f} % throughput, "
                f"{(cpu / base_cpu - 1) * 100:+.0f} % CPU")
            compared.append([job.name, label, f"{bw:.1f}", f"{cpu:.2f}", versus])
    lines.append(markdown_table(["job", "path", "MiB/s", "host CPU s/GiB", "vs per-unit"],
                                compared, "llrrl"))
    cpu_bw = sweep["CPU (multidu)"]
    bold = "**Bold**: the engine beats the CPU." if any(
        bw > cpu_bw for label, bw in sweep.items() if label.startswith("engine")) else \
        "No engine in the sweep beats the CPU."
    lines += ["", f"Sweep (native multi-DU, {SWEEP_JOB.name}, {sweep_runtime:g} s each): MiB/s "
              f"through the device; the CPU path (multidu) did {cpu_bw:.1f} MiB/s.  {bold}  "
              "†: over 10 % of the jobs overran — computing the bytes "
              "on the host took longer than the simulated engine would, so the cell shows the "
              "simulation's limit, not the engine's.", ""]

    def cell(label: str) -> str:
        bw, late = sweep[label], "†" if overran[label] > 0.1 else ""
        return f"**{bw:.0f}**{late}" if bw > cpu_bw else f"{bw:.0f}{late}"

    lines.append(markdown_table(
        ["setup \\ engine MB/s", *map(str, THROUGHPUTS)],
        ([f"{setup} µs", *(cell(f"engine {mbps} MB/s, {setup} µs") for mbps in THROUGHPUTS)]
         for setup in SETUPS),
        "l" + "r" * len(THROUGHPUTS)))
    return "\n".join(lines)


def _plot(sweep: dict, path: str) -> None:
    plt = results.pyplot()

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for setup in SETUPS:
        ax.plot(THROUGHPUTS, [sweep[f"engine {m} MB/s, {setup} µs"] for m in THROUGHPUTS],
                marker="o", label=f"engine, {setup} µs setup")
    ax.axhline(sweep["CPU (multidu)"], color="black", linestyle="--", label="CPU (multidu)")
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(THROUGHPUTS, [str(t) for t in THROUGHPUTS])
    ax.set_xlabel("engine throughput (MB/s)")
    ax.set_ylabel("fio 128 KiB sequential read through the device (MiB/s)")
    ax.set_title("When does offloading to an engine beat the CPU?")
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
