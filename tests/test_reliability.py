"""Reliability and key hygiene: fio verification through every path (the reduced stress
matrix), no acknowledged write lost when the daemon is killed, ext4 on top surviving a
close/reopen with a clean fsck, graceful signals, and secrets kept out of argv, logs, stats and
error text."""

import hashlib
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from cryptfs.fuse.mounts import mount_type
from helpers import PASSPHRASE, ROOT, cryptfs, cryptsetup, mounted, needs, needs_fuse

pytestmark = needs_fuse
FAST = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]


@pytest.fixture
def luks(tmp_path):
    """A fresh 64 MiB LUKS2 image made by cryptfs, its passphrase file and a mountpoint."""
    image, secret, mnt = tmp_path / "image", tmp_path / "passphrase", tmp_path / "mnt"
    secret.write_text(PASSPHRASE)
    cryptfs("format", image, "--size", "64M", "--key-file", secret, *FAST, check=True)
    mnt.mkdir()
    return image, secret, mnt


def daemon_pid(mnt) -> int:
    import json
    return json.loads((mnt / "stats").read_text())["pid"]


@needs("fio")
def test_stress_matrix_quick():
    result = subprocess.run([sys.executable, "-m", "cryptfs", "stress", "--quick"],
                            capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "FAILED" not in result.stdout
    from cryptfs.tools.stress import PATHS, WORKLOADS
    runs = 2 * len(PATHS) * len(WORKLOADS)
    assert result.stdout.count("| ok |") == runs
    assert f"{runs} of {runs} fio runs verified without a mismatch" in result.stdout


WRITER = r"""
import hashlib, os, sys
device, log_path = sys.argv[1], sys.argv[2]
fd = os.open(device, os.O_RDWR)
with open(log_path, "a") as log:
    for i in range(100000):
        data = hashlib.sha256(str(i).encode()).digest() * 160          # 5120 bytes
        offset = 123 + i * 5200             # unaligned, records never overlap: RMW edges
        if offset + len(data) > os.fstat(fd).st_size:
            break
        os.pwrite(fd, data, offset)
        os.fsync(fd)                                                    # acknowledged as synced
        log.write(f"{i}\n")
        log.flush()
        os.fsync(log.fileno())
"""


def test_no_synced_write_is_lost_when_the_daemon_is_killed(luks, tmp_path, plane):
    image, secret, mnt = luks
    cryptfs("open", image, mnt, "--key-file", secret, check=True)
    pid = daemon_pid(mnt)
    log = tmp_path / "acknowledged"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(mnt / "device"), str(log)],
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not log.exists() or
                                           len(log.read_text().split()) < 200):
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)                 # mid-stream, writes in flight
    writer.wait(30)
    assert writer.returncode != 0                # the writer saw its device go away
    result = cryptfs("close", mnt)
    assert result.returncode == 0 and "its daemon had died" in result.stderr
    assert mount_type(str(mnt)) is None
    cryptsetup("open", "--test-passphrase", str(image))     # the header still opens
    acknowledged = [int(x) for x in log.read_text().split()]
    assert len(acknowledged) >= 200
    with mounted(image, mnt, "--key-file", secret):
        fd = os.open(mnt / "device", os.O_RDONLY)
        try:
            for i in acknowledged:
                expected = hashlib.sha256(str(i).encode()).digest() * 160
                assert os.pread(fd, len(expected), 123 + i * 5200) == expected, i
        finally:
            os.close(fd)


@needs("losetup", "mkfs.ext4", "fsck.ext4")
def test_ext4_on_a_loop_device_survives_close_and_reopen(luks, tmp_path, plane):
    image, secret, mnt = luks
    fs = tmp_path / "fs"
    fs.mkdir()
    rng = random.Random(11)
    files = {f"dir{d}/file{f}.bin": rng.randbytes(rng.randrange(1, 300000))
             for d in range(5) for f in range(8)}

    def attach():
        return subprocess.run(["losetup", "--find", "--show", str(mnt / "device")],
                              capture_output=True, text=True, check=True).stdout.strip()

    with mounted(image, mnt, "--key-file", secret):
        loop = attach()
        try:
            subprocess.run(["mkfs.ext4", "-q", "-F", loop], check=True, capture_output=True)
            subprocess.run(["mount", loop, str(fs)], check=True)
            try:
                for name, data in files.items():
                    (fs / name).parent.mkdir(exist_ok=True)
                    (fs / name).write_bytes(data)
            finally:
                subprocess.run(["umount", str(fs)], check=True)
        finally:
            subprocess.run(["losetup", "-d", loop], check=True)
    with mounted(image, mnt, "--key-file", secret):
        loop = attach()
        try:
            fsck = subprocess.run(["fsck.ext4", "-fn", loop], capture_output=True, text=True)
            assert fsck.returncode == 0, fsck.stdout + fsck.stderr
            subprocess.run(["mount", "-o", "ro", loop, str(fs)], check=True)
            try:
                for name, data in files.items():
                    assert hashlib.sha256((fs / name).read_bytes()).digest() == \
                        hashlib.sha256(data).digest(), name
            finally:
                subprocess.run(["umount", str(fs)], check=True)
        finally:
            subprocess.run(["losetup", "-d", loop], check=True)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signals_flush_and_unmount(luks, signum, plane):
    image, secret, mnt = luks
    cryptfs("open", image, mnt, "--key-file", secret, check=True)
    with open(mnt / "device", "r+b", buffering=0) as f:
        f.write(b"before the signal" * 300)
    pid = daemon_pid(mnt)
    os.kill(pid, signum)
    deadline = time.monotonic() + 15
    while (mount_type(str(mnt)) or os.path.exists(f"/proc/{pid}")) and \
            time.monotonic() < deadline:
        time.sleep(0.05)
    assert mount_type(str(mnt)) is None and not os.path.exists(f"/proc/{pid}")
    with mounted(image, mnt, "--key-file", secret):
        assert (mnt / "device").read_bytes()[:5100] == b"before the signal" * 300


def test_secrets_stay_out_of_argv_logs_stats_and_errors(luks, tmp_path):
    image, secret, mnt = luks
    log = tmp_path / "daemon.log"
    cryptfs("open", image, mnt, "--key-file", secret, "--debug", "--log-file", log, check=True)
    try:
        pid = daemon_pid(mnt)
        with open(mnt / "device", "r+b", buffering=0) as f:
            f.write(os.urandom(300000))
        key_hex = cryptfs("dump", image, "--dump-volume-key", "--key-file", secret,
                          check=True).stdout.split("MK dump:")[1].split()
        key = bytes.fromhex("".join(key_hex))
        stats = (mnt / "stats").read_bytes()
        argv = open(f"/proc/{pid}/cmdline", "rb").read()
    finally:
        cryptfs("close", mnt, check=True)
    logged = log.read_bytes()
    assert b"serving" in logged                       # the log is real and at debug level
    for blob in (argv, logged, stats):
        assert PASSPHRASE.encode() not in blob
        assert key not in blob and key.hex().encode() not in blob
        assert key[:16].hex().encode() not in blob
    wrong = cryptfs("open", image, mnt, "--key-file", "-", "--debug",
                    input=b"guess " + PASSPHRASE.encode())
    assert wrong.returncode == 2
    assert PASSPHRASE not in wrong.stderr and key.hex() not in wrong.stderr


def test_allow_other_only_when_asked(luks):
    image, secret, mnt = luks
    for extra, expected in (([], False), (["--allow-other"], True)):
        with mounted(image, mnt, "--key-file", secret, *extra):
            with open("/proc/self/mountinfo") as f:
                line = next(line for line in f if f" {mnt} " in line)
            options = line.split(" - ")[1].split()[2].split(",")      # the super options
            assert ("allow_other" in options) is expected, line
            st = os.stat(mnt / "device")
            assert st.st_mode & 0o777 == 0o600 and st.st_uid == os.getuid()


def test_an_image_smaller_than_a_sector_is_refused(tmp_path):
    image, mnt = tmp_path / "tiny", tmp_path / "mnt"
    image.write_bytes(b"x" * 300)
    (tmp_path / "key").write_bytes(bytes(range(64)))
    mnt.mkdir()
    result = cryptfs("open", image, mnt, "--type", "plain", "--key-file", tmp_path / "key")
    assert result.returncode == 4
    assert result.stderr.strip() == ("cryptfs: the image holds 0 bytes after the offset, less "
                                     "than one 512-byte sector")
    assert image.read_bytes() == b"x" * 300
