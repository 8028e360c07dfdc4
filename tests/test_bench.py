"""The benchmark harness cannot rot: a quick run against the real peers writes its report, a
quick engine study maps where offload wins, and an interrupted run leaves no mount and no daemon
behind."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import ROOT, needs, needs_fuse

pytestmark = [needs_fuse, needs("fio", "qemu-img", "qemu-storage-daemon")]


def leftovers() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split()[4] for line in f if "cryptfs-bench" in line]
    procs = subprocess.run(["pgrep", "-fa", "qemu-storage-daemon|cryptfs.bench.passthrough|"
                                            "cryptfs open /tmp/cryptfs-bench"],
                           capture_output=True, text=True).stdout.splitlines()
    return mounts + [p for p in procs if "pgrep" not in p]


def test_quick_bench_reports_every_target(tmp_path):
    result = subprocess.run([sys.executable, "-m", "cryptfs", "bench", "peers", "--quick"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    for target in ("cryptfs native multidu/multi_du", "cryptfs trio multidu/multi_du",
                   "qemu-storage-daemon", "pyfuse3 passthrough (no crypto)",
                   "cryptfs native plane, cipher_null (no crypto)"):
        assert f"| seq-read-128k | {target} |" in result.stdout
    runs = list((tmp_path / "bench-results").glob("*-quick.json"))
    assert len(runs) == 1 and runs[0].with_suffix(".png").stat().st_size > 1000
    data = json.loads(runs[0].read_text())
    rows = data["results"]["rand-read-4k"]["targets"]
    assert rows["qemu-storage-daemon"]["vs_qemu"] == 1.0
    assert rows["cryptfs native plane, cipher_null (no crypto)"]["vs_native_ceiling"] == 1.0
    assert all(r["median"] > 0 and r["cpu_per_gib"] > 0 for r in rows.values())
    assert leftovers() == []


def expected_verdict(engine: dict, cpu: dict) -> str:
    """The map's rule, restated: at least the CPU's throughput; less host CPU per GiB."""
    faster = engine["mib_s"] >= cpu["mib_s"]
    cheaper = engine["host_cpu_s_per_gib"] < cpu["host_cpu_s_per_gib"]
    return {(True, True): "both", (True, False): "throughput", (False, True): "host CPU",
            (False, False): "neither"}[faster, cheaper]


def test_quick_engine_study_maps_where_offload_wins(tmp_path):
    result = subprocess.run([sys.executable, "-m", "cryptfs", "bench", "engine", "--quick"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    report = result.stdout
    assert "Plane: native (as `cryptfs status` reported" in report and "part 4: trio)" in report
    runs = list((tmp_path / "bench-results").glob("engine-*.json"))
    assert len(runs) == 1 and runs[0].with_suffix(".png").stat().st_size > 1000
    data = json.loads(runs[0].read_text())
    assert {label: plane for label, plane in data["planes"].items()
            if plane != ("trio" if label.startswith("trio: ") else "native")} == {}
    medians = data["medians"]
    assert sorted(data["map"]) == sorted(["seq-read-4k", "seq-read-4k-libaio-qd16",
                                          "seq-read-128k", "seq-read-128k-4jobs"])
    for job, cells in data["map"].items():
        assert sorted(cells) == sorted(f"engine {mbps} MB/s, {setup} µs"
                                       for mbps in (250, 8000) for setup in (5, 100))
        table = report.split(f"`{job}` — CPU path:")[1].split("\n\n")[1]
        assert len(re.findall(r"· \*{0,2}(both|throughput|host CPU|neither)", table)) == 4
        for label, cell in cells.items():
            assert cell["verdict"] == expected_verdict(cell, medians[f"CPU (multidu) | {job}"])
    fidelity = re.search(r"\*\*Fidelity (holds|fails)\.\*\* Fast engine \(8000 MB/s, 5 µs\)"
                         r".*must win on both: (yes|no).*Slow engine \(250 MB/s, 100 µs\).*"
                         r"must lose on throughput: (yes|no)", report)
    assert fidelity, "no fidelity line"
    fast, slow = ([data["map"][job][f"engine {cell}"]["verdict"]
                   for job in ("seq-read-128k", "seq-read-128k-4jobs")]
                  for cell in ("8000 MB/s, 5 µs", "250 MB/s, 100 µs"))
    ok = (fast == ["both"] * 2, set(slow) <= {"host CPU", "neither"})
    assert fidelity.groups() == ("holds" if all(ok) else "fails",
                                 *("yes" if o else "no" for o in ok))
    assert "| seq-write-4k-fsync | engine, native multi-DU |" in report
    assert leftovers() == []


def test_interrupted_bench_cleans_up(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "cryptfs", "bench", "peers", "--runtime",
                             "2", "--reps", "1"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any("cryptfs-bench" in m for m in
                                                  Path("/proc/self/mountinfo").read_text()
                                                  .splitlines()):
        time.sleep(0.1)
    time.sleep(3)                          # in the middle of a fio run
    proc.send_signal(signal.SIGINT)
    proc.wait(60)
    assert proc.returncode != 0
    time.sleep(1)
    assert leftovers() == []
    assert not list(Path("/tmp").glob("cryptfs-bench-peers-*"))
