"""make demo: a small encrypted device end to end.

In a temporary directory: formats a new 256 MiB LUKS2 image (aes-xts-plain64, argon2id) with a
random passphrase, opens it with cryptfs, runs fio against MOUNTPOINT/device — sequential
128 KiB and random 4 KiB, reads and writes, then a crc32c-verified random write pass with 4 jobs —
prints the results, closes the device, and shows that cryptsetup accepts the passphrase.
Nothing is left behind.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SIZE = "256M"
RUNTIME = os.environ.get("DEMO_RUNTIME", "5")
JOBS = [
    ("seq-read 128k", ["--rw=read", "--bs=128k"]),
    ("seq-write 128k", ["--rw=write", "--bs=128k"]),
    ("rand-read 4k", ["--rw=randread", "--bs=4k"]),
    ("rand-write 4k", ["--rw=randwrite", "--bs=4k"]),
]
EXAMPLES = Path(__file__).resolve().parent


def run(*cmd: str, **kw) -> subprocess.CompletedProcess:
    print("$", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=True, **kw)


def fio(device: Path, name: str, args: list[str]) -> dict:
    out = run("fio", f"--name={name.replace(' ', '-')}", f"--filename={device}",
              "--ioengine=psync", "--direct=1", "--time_based=1", f"--runtime={RUNTIME}",
              "--output-format=json", *args, capture_output=True, text=True).stdout
    job = json.loads(out[out.index("{"):])["jobs"][0]
    side = job["read"] if job["read"]["io_bytes"] else job["write"]
    return {"MiB/s": side["bw_bytes"] / 2**20, "IOPS": side["iops"],
            "lat p50 us": side["clat_ns"]["percentile"]["50.000000"] / 1000}


def main() -> int:
    cryptfs = str(Path(sys.executable).with_name("cryptfs"))
    with tempfile.TemporaryDirectory(prefix="cryptfs-demo-") as tmp:
        tmp = Path(tmp)
        image, passphrase, mnt = tmp / "image", tmp / "passphrase", tmp / "mnt"
        passphrase.write_text(os.urandom(16).hex())
        mnt.mkdir()
        run(cryptfs, "format", str(image), "--size", SIZE, "--key-file", str(passphrase),
            "--pbkdf", "argon2id", "--iter-time", "300", "--pbkdf-memory", "65536")
        run(cryptfs, "open", str(image), str(mnt), "--key-file", str(passphrase))
        try:
            results = [(name, fio(mnt / "device", name, args)) for name, args in JOBS]
            run("fio", f"--filename={mnt / 'device'}", str(EXAMPLES / "fio" / "verify-random.fio"),
                "--output-format=terse", capture_output=True, cwd=tmp)
            print("\nfio verify (crc32c, 4 jobs, random unaligned sizes): passed")
            status = json.loads((mnt / "stats").read_text())
        finally:
            run(cryptfs, "close", str(mnt))
        if shutil.which("cryptsetup"):
            run("cryptsetup", "open", "--test-passphrase", "--key-file", str(passphrase),
                str(image))
            print("cryptsetup accepts the image and its passphrase")
    print(f"\ncryptfs demo: {status['type'].upper()} {status['cipher']}, "
          f"{status['sector_size']}-byte sectors, backend {status['backend']} "
          f"({status['crypto_path']}) on the {status['plane']} plane, "
          f"fio psync direct=1, {RUNTIME} s per job")
    print(f"{'job':<16}{'MiB/s':>10}{'IOPS':>10}{'p50 lat us':>12}")
    for name, r in results:
        print(f"{name:<16}{r['MiB/s']:>10.1f}{r['IOPS']:>10.0f}{r['lat p50 us']:>12.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
