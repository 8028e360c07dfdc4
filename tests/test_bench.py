"""The benchmark harness cannot rot: a quick run against the real peers writes its report, and
an interrupted run leaves no mount and no daemon behind."""

import json
import os
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
