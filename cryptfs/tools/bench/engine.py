"""The engine study (``cryptfs bench engine``): when does offloading to an engine beat the CPU?

On the native plane — the host at C cost per request: libfuse workers submit to the C engine,
its threads complete the FUSE requests — through the mounted device at 512-byte sectors:

1. *The seed's headline*: the engine with one job per data unit (per-sector requests) against
   one job per bio (native multi-DU), fio sequential 4 KiB writes with ``end_fsync`` and
   128 KiB writes and reads, at the documented :data:`ENGINE`.
2. *The break-even map*: engines of :data:`THROUGHPUTS` × :data:`SETUPS` (:data:`SWEEP_ENGINE`)
   against the CPU path (``multidu``, native plane) at four read workloads; each cell says
   whether offload wins on throughput, on host CPU, on both, or neither.
3. *Fidelity*, read off the map: the :data:`FAST` engine must reach the CPU's throughput at
   lower host CPU at 128 KiB QD1 and 4 jobs, the :data:`SLOW` one must lose.
4. *The Python-priced host*: those engines and the CPU path on the trio plane (the engine's
   Python model), side by side with the native plane.

Host CPU is the daemon's CPU minus what simulating the engine cost (on the native plane all
its threads spend outside the completions: computing its bytes, timing its jobs, polling,
waking; on the trio plane its computing).  Each repetition mounts every target once and runs its jobs in
turn; medians.  Writes ``bench-results/engine-<date>.md``, ``.json`` and ``.png`` and returns the
Markdown.
"""

import datetime
import os
import statistics
import tempfile
from dataclasses import asdict, dataclass, fields

from cryptfs.tools.bench import fio, results
from cryptfs.tools.bench.peers import NATIVE, TRIO
from cryptfs.tools.bench.targets import BenchImage, CryptfsTarget, cpu_seconds, read_status
from cryptfs.util.mdtable import markdown_table

#: the documented engine of the seed's headline: a modest accelerator with a real per-job cost
ENGINE = {"setup_us": 20.0, "per_unit_us": 0.5, "throughput_mbps": 2000.0, "channels": 1,
          "queue_depth": 64}
#: the sweep's engines: no per-unit cost (the bytes cost the throughput term: 0.5 µs per unit
#: would add 128 µs to a 128 KiB job, more than the CPU takes for it) and 4 channels
SWEEP_ENGINE = dict(ENGINE, per_unit_us=0.0, channels=4)
SEED_JOBS = (fio.Job("seq-write-4k-fsync", "write", "4k", extra=("--end_fsync=1",)),
             fio.Job("seq-write-128k", "write", "128k"),
             fio.Job("seq-read-128k", "read", "128k"))
#: reads: writes on this libfuse are serialized by the kernel
SWEEP_JOBS = (fio.Job("seq-read-4k", "read", "4k"),
              fio.Job("seq-read-4k-libaio-qd16", "read", "4k", ioengine="libaio", iodepth=16),
              SEED_JOBS[2],
              fio.Job("seq-read-128k-4jobs", "read", "128k", numjobs=4))
FIDELITY_JOBS = SWEEP_JOBS[2:]
THROUGHPUTS, SETUPS = (250, 1000, 4000, 8000), (5, 20, 100)        # MB/s, µs
QUICK_THROUGHPUTS, QUICK_SETUPS = (250, 8000), (5, 100)
FAST, SLOW = (8000, 5), (250, 100)                                  # (MB/s, µs setup)
PER_UNIT, MULTI_DU, CPU = "engine, per-unit jobs", "engine, native multi-DU", "CPU (multidu)"
TRIO_PREFIX = "trio: "
#: (at least the CPU's throughput, less host CPU per GiB) → where offload wins
VERDICTS = {(True, True): "both", (True, False): "throughput", (False, True): "host CPU",
            (False, False): "neither"}
#: a cell where more of the jobs overran shows the simulation's limit, not the engine's
OVERRUN_LIMIT = 0.1


@dataclass(frozen=True)
class Sample:
    mib_s: float
    host_cpu_s_per_gib: float
    overran: float          # share of the engine's jobs whose bytes took longer than its time


def cell_label(mbps: int, setup: int, prefix: str = "") -> str:
    return f"{prefix}engine {mbps} MB/s, {setup} µs"


def _engine(label: str, mbps: int, setup: int, pipeline: dict) -> CryptfsTarget:
    return CryptfsTarget(label, "engine", "multi_du", pipeline=pipeline,
                         extra=dict(SWEEP_ENGINE, throughput_mbps=float(mbps),
                                    setup_us=float(setup)))


def grid(quick: bool = False) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(throughputs, setups) of the map."""
    return (QUICK_THROUGHPUTS, QUICK_SETUPS) if quick else (THROUGHPUTS, SETUPS)


def plan(quick: bool = False) -> list[tuple[CryptfsTarget, tuple[fio.Job, ...]]]:
    """One repetition: every target with the jobs it runs on one mount."""
    throughputs, setups = grid(quick)
    seed = [(CryptfsTarget(PER_UNIT, "engine", "per_sector", pipeline=NATIVE,
                           extra=dict(ENGINE, native_multi_du=False)), SEED_JOBS),
            (CryptfsTarget(MULTI_DU, "engine", "multi_du", pipeline=NATIVE,
                           extra=dict(ENGINE, native_multi_du=True)), SEED_JOBS),
            (CryptfsTarget(CPU, "multidu", "multi_du", pipeline=NATIVE),
             SEED_JOBS + tuple(j for j in SWEEP_JOBS if j not in SEED_JOBS))]
    sweep = [(_engine(cell_label(m, s), m, s, NATIVE), SWEEP_JOBS)
             for s in setups for m in throughputs]
    trio = [(_engine(cell_label(m, s, TRIO_PREFIX), m, s, TRIO), FIDELITY_JOBS)
            for m, s in (FAST, SLOW)]
    trio.append((CryptfsTarget(TRIO_PREFIX + CPU, "multidu", "multi_du", pipeline=TRIO),
                 FIDELITY_JOBS))
    return seed + sweep + trio


def runs(quick: bool = False) -> int:
    """fio runs in one repetition (the progress bar counts them)."""
    return sum(len(jobs) for _, jobs in plan(quick))


#: the engine's CPU counters set apart from the host's, per plane.  The C model counts every
#: CPU second its threads spend outside the completions (computing, timing, polling, waking:
#: engine_thread_cpu_s); the trio model spins out a job's end by yielding to the other tasks,
#: so its waiting holds their CPU too and stays in: only its computing is set apart.
SIMULATION_CPU = {"native": ("engine_thread_cpu_s",), "trio": ("engine_compute_cpu_s",)}


def _simulation(mountpoint: str) -> dict[str, float]:
    """The engine's counters (zero for the CPU path)."""
    stats = read_status(mountpoint)["backend_stats"]
    return {k: stats.get(k, 0) for k in ("engine_compute_cpu_s", "engine_thread_cpu_s",
                                          "overruns", "completed")}


def _run(job: fio.Job, device: str, pid: int, plane: str, workdir: str,
         runtime: float) -> Sample:
    mnt = os.path.dirname(device)
    cpu0, sim0 = cpu_seconds(pid), _simulation(mnt)
    result = fio.run(job, device, runtime, "256M", workdir)
    cpu, sim1 = cpu_seconds(pid) - cpu0, _simulation(mnt)
    sim = {k: sim1[k] - sim0[k] for k in sim0}
    host = cpu - sum(sim[k] for k in SIMULATION_CPU[plane])
    return Sample(result.bw / 2**20, host / max(result.bytes, 1) * 2**30,
                  sim["overruns"] / max(sim["completed"], 1))


def _measure(target: CryptfsTarget, jobs, image: BenchImage, workdir: str, runtime: float,
             progress) -> tuple[str, dict[str, Sample]]:
    """(the plane that served, a sample per job) from one mount of ``target``."""
    with target.mounted(image, workdir) as (device, pid):
        plane = read_status(os.path.dirname(device))["plane"]
        samples = {}
        for job in jobs:
            samples[job.name] = _run(job, device, pid, plane, workdir, runtime)
            if progress:
                progress()
    return plane, samples


def _image(workdir: str) -> BenchImage:
    image = BenchImage(os.path.join(workdir, "image"), os.path.join(workdir, "key"))
    with open(image.path, "wb") as f:
        f.truncate(256 << 20)
    with open(image.key_file, "wb") as f:
        f.write(os.urandom(64))
    return image


def study(runtime: float = 5, reps: int = 3, quick: bool = False, progress=None,
          out_dir: str = "bench-results") -> str:
    load = [os.getloadavg()[0]]
    planes: dict[str, str] = {}
    samples: dict[tuple[str, str], list[Sample]] = {}
    with tempfile.TemporaryDirectory(prefix="cryptfs-bench-engine-") as workdir:
        image = _image(workdir)
        for _ in range(reps):
            for target, jobs in plan(quick):
                planes[target.label], got = _measure(target, jobs, image, workdir, runtime,
                                                     progress)
                for job, sample in got.items():
                    samples.setdefault((target.label, job), []).append(sample)
    load.append(os.getloadavg()[0])
    medians = {key: _median(ss) for key, ss in samples.items()}
    cells = _cells(medians, quick)
    report = _markdown(medians, cells, planes, runtime, reps, load, quick)
    stem = results.fresh_stem(out_dir, f"engine-{datetime.date.today().isoformat()}")
    results.save(stem, report,
                 {"engine": ENGINE, "sweep_engine": SWEEP_ENGINE, "runtime": runtime,
                  "reps": reps, "load_average": load, "planes": planes,
                  "medians": {f"{label} | {job}": asdict(s)
                              for (label, job), s in medians.items()},
                  "map": cells,
                  "samples": {f"{label} | {job}": [asdict(s) for s in ss]
                              for (label, job), ss in samples.items()}},
                 lambda path: _plot(cells, {job.name: medians[CPU, job.name]
                                            for job in SWEEP_JOBS}, quick, path))
    return report


def _median(samples: list[Sample]) -> Sample:
    return Sample(*(statistics.median(getattr(s, f.name) for s in samples)
                    for f in fields(Sample)))


def verdict(engine: Sample, cpu: Sample) -> str:
    return VERDICTS[engine.mib_s >= cpu.mib_s,
                    engine.host_cpu_s_per_gib < cpu.host_cpu_s_per_gib]


def _cells(medians: dict, quick: bool) -> dict[str, dict[str, dict]]:
    """The map: job → cell label → the engine's medians and its verdict against the CPU."""
    throughputs, setups = grid(quick)
    cells: dict[str, dict[str, dict]] = {}
    for job in SWEEP_JOBS:
        for s in setups:
            for m in throughputs:
                engine = medians[cell_label(m, s), job.name]
                cells.setdefault(job.name, {})[cell_label(m, s)] = dict(
                    asdict(engine), verdict=verdict(engine, medians[CPU, job.name]))
    return cells


def _late(cell: dict) -> str:
    """† where the cell shows the simulation's limit."""
    return "†" if cell["overran"] > OVERRUN_LIMIT else ""


def _markdown(medians, cells, planes, runtime, reps, load, quick) -> str:
    native = sorted({p for label, p in planes.items() if not label.startswith(TRIO_PREFIX)})
    trio = sorted({p for label, p in planes.items() if label.startswith(TRIO_PREFIX)})
    e, s = ENGINE, SWEEP_ENGINE
    lines = [f"Plane: {', '.join(native)} (as `cryptfs status` reported for every target of "
             f"parts 1–3; part 4: {', '.join(trio)}).  512-byte sectors; fio direct=1, "
             f"{runtime:g} s per run, {reps} repetitions interleaved (every target mounted "
             "once per repetition, its jobs in turn), medians.  Host CPU = the daemon's CPU "
             "minus what simulating the engine cost (native: everything its threads do but "
             "the completions — computing its bytes, timing its jobs, polling, waking; trio: "
             f"computing its bytes).  Load average {load[0]:.1f} at the start, {load[1]:.1f} at the "
             f"end, on {os.cpu_count()} CPUs: a shared machine, numbers are noisy.", "",
             "### 1. The seed's headline: one job per bio against one per data unit", "",
             f"Engine: {e['throughput_mbps']:.0f} MB/s, {e['setup_us']:g} µs setup per job, "
             f"{e['per_unit_us']:g} µs per data unit, {e['channels']} channel, "
             f"{e['queue_depth']} ring slots; per-unit jobs: per-sector requests and "
             "`native_multi_du = false`; fio psync QD1.", "", _seed_table(medians), "",
             "### 2. The break-even map: engine throughput × setup against the CPU", "",
             f"Engines: {s['channels']} channels, {s['queue_depth']} ring slots, per_unit_us "
             "0 (the bytes cost the throughput term: the default 0.5 µs per data unit would add "
             "128 µs to a 128 KiB job, more than the CPU needs for it).  Sequential reads "
             "(writes on this libfuse 3.14 are serialized by the kernel).  Each cell: MiB/s · "
             "host CPU s/GiB · where offload wins (at least the CPU's throughput; less host "
             f"CPU); †: over {OVERRUN_LIMIT:.0%} of the jobs overran — computing the bytes on "
             "the host took longer than the engine's time, so the cell shows the simulation's "
             "limit, not the engine's.", ""]
    for job in SWEEP_JOBS:
        lines += [_map_table(job.name, cells[job.name], medians[CPU, job.name], quick), ""]
    lines += ["### 3. Fidelity", "", fidelity_line(cells, medians), "",
              "### 4. The Python-priced host: the same engines on the trio plane", "",
              "The trio plane runs the engine's Python model (a trio wake-up and a Python "
              "completion per request); same settings, same run.  Its host CPU keeps the "
              "model's spinning (which yields to the other tasks and so cannot be told apart "
              "from their work): for the trio engines an upper bound.", "",
              _planes_table(medians)]
    return "\n".join(lines)


def _seed_table(medians: dict) -> str:
    rows = []
    for job in SEED_JOBS:
        base = medians[PER_UNIT, job.name]
        for label in (PER_UNIT, MULTI_DU, CPU):
            m = medians[label, job.name]
            versus = "" if label != MULTI_DU else (
                f"{(m.mib_s / base.mib_s - 1) * 100:+.0f} % throughput, "
                f"{(m.host_cpu_s_per_gib / base.host_cpu_s_per_gib - 1) * 100:+.0f} % CPU")
            rows.append([job.name, label, f"{m.mib_s:.1f}", f"{m.host_cpu_s_per_gib:.2f}",
                         versus])
    return markdown_table(["job", "path", "MiB/s", "host CPU s/GiB", "vs per-unit"], rows,
                          "llrrl")


def _cell_text(cell: dict) -> str:
    word = f"**{cell['verdict']}**" if cell["verdict"] == "both" else cell["verdict"]
    return f"{cell['mib_s']:.0f} · {cell['host_cpu_s_per_gib']:.2f} · {word}{_late(cell)}"


def _map_table(job: str, cells: dict, cpu: Sample, quick: bool) -> str:
    throughputs, setups = grid(quick)
    head = f"`{job}` — CPU path: {cpu.mib_s:.0f} MiB/s · {cpu.host_cpu_s_per_gib:.2f} s/GiB"
    return head + "\n\n" + markdown_table(
        ["setup \\ engine MB/s", *map(str, throughputs)],
        ([f"{s} µs", *(_cell_text(cells[cell_label(m, s)]) for m in throughputs)]
         for s in setups),
        "l" + "r" * len(throughputs))


def fidelity_line(cells: dict, medians: dict) -> str:
    """Fast engine: at least the CPU's throughput at less host CPU at every fidelity job; slow
    engine: below the CPU's throughput at every one."""
    parts, holds = [], True
    for name, (mbps, setup), wanted, must in (
            ("Fast", FAST, ("both",), "must win on both"),
            ("Slow", SLOW, ("host CPU", "neither"), "must lose on throughput")):
        got = [(job.name, cells[job.name][cell_label(mbps, setup)], medians[CPU, job.name])
               for job in FIDELITY_JOBS]
        ok = all(c["verdict"] in wanted for _, c, _ in got)
        holds &= ok
        parts.append(f"{name} engine ({mbps} MB/s, {setup} µs) against the CPU: " + "; ".join(
            f"{job} {c['mib_s']:.0f} vs {cpu.mib_s:.0f} MiB/s, {c['host_cpu_s_per_gib']:.2f} "
            f"vs {cpu.host_cpu_s_per_gib:.2f} host CPU s/GiB ({c['verdict']})"
            for job, c, cpu in got) +
            f", up to {max(c['overran'] for _, c, _ in got):.0%} of its jobs overran — "
            f"{must}: {'yes' if ok else 'no'}")
    return f"**Fidelity {'holds' if holds else 'fails'}.** " + ".  ".join(parts) + "."


def _planes_table(medians: dict) -> str:
    rows = []
    for job in FIDELITY_JOBS:
        for label in (cell_label(*FAST), cell_label(*SLOW), CPU):
            n, t = medians[label, job.name], medians[TRIO_PREFIX + label, job.name]
            rows.append([job.name, label, f"{n.mib_s:.0f}", f"{n.host_cpu_s_per_gib:.2f}",
                         f"{t.mib_s:.0f}", f"{t.host_cpu_s_per_gib:.2f}"])
    return markdown_table(["job", "path", "native MiB/s", "native host CPU s/GiB",
                           "trio MiB/s", "trio host CPU s/GiB"], rows, "llrrrr")


COLOURS = {"both": "#4caf50", "throughput": "#64b5f6", "host CPU": "#ffd54f",
           "neither": "#e0e0e0"}


def _plot(cells: dict, cpu: dict[str, Sample], quick: bool, path: str) -> None:
    """The break-even map: one panel per workload, a coloured cell per engine."""
    plt = results.pyplot()
    from matplotlib.patches import Patch

    throughputs, setups = grid(quick)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for ax, job in zip(axes.flat, SWEEP_JOBS):
        for y, s in enumerate(setups):
            for x, m in enumerate(throughputs):
                cell = cells[job.name][cell_label(m, s)]
                ax.add_patch(plt.Rectangle((x - 0.5, y - 0.5), 1, 1, edgecolor="white",
                                           facecolor=COLOURS[cell["verdict"]]))
                ax.text(x, y, f"{cell['mib_s']:.0f} MiB/s{_late(cell)}\n"
                              f"{cell['host_cpu_s_per_gib']:.2f} s/GiB",
                        ha="center", va="center", fontsize=8)
        ax.set_xlim(-0.5, len(throughputs) - 0.5)
        ax.set_ylim(-0.5, len(setups) - 0.5)
        ax.set_xticks(range(len(throughputs)), [str(m) for m in throughputs])
        ax.set_yticks(range(len(setups)), [f"{s} µs" for s in setups])
        ax.set_xlabel("engine throughput (MB/s)")
        ax.set_ylabel("setup per job")
        ax.set_title(f"{job.name} (CPU path: {cpu[job.name].mib_s:.0f} MiB/s, "
                     f"{cpu[job.name].host_cpu_s_per_gib:.2f} s/GiB)", fontsize=10)
    fig.legend(handles=[Patch(color=c, label=f"offload wins: {v}") for v, c in COLOURS.items()],
               loc="lower center", ncol=4)
    fig.suptitle("Engine against the CPU path (multidu), native plane: where offload wins "
                 "(†: the simulation's limit)")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
