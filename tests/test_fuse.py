"""The mounted device through the kernel: the CLI, unaligned I/O, fio --verify, discard,
read-only, fsync, status, close (busy and dead mounts), and qemu-img on the other side."""

import ctypes
import errno
import json
import os
import random
import signal
import stat
import subprocess
import time

import pytest

from cryptfs.fuse.mounts import mount_type
from helpers import (
    VOLUME_KEY,
    cryptfs,
    luks_volume_key,
    mounted,
    needs,
    needs_fuse,
    open_plain,
    qemu_luks_decrypt,
    qemu_luks_encrypt,
    sha256,
)

pytestmark = needs_fuse
KEY = VOLUME_KEY            # the volume fixture's (conftest)


@pytest.fixture
def planes_volume(volume, plane):
    """``volume``, for a test that runs over both data planes."""
    return volume


def status(mnt) -> dict:
    with open(mnt / "stats") as f:
        return json.load(f)


def test_unaligned_io_survives_close_and_reopen(planes_volume):
    image, key, mnt = planes_volume
    rng = random.Random(5)
    model = {}
    with mounted(image, mnt, "--type", "plain", "--key-file", key):
        dev = mnt / "device"
        st = os.stat(dev)
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.getuid()
        assert st.st_size == 32 << 20
        fd = os.open(dev, os.O_RDWR)
        try:
            for off, length in [(100, 1536), (2047, 2), (4095, 8193), (1 << 20, 512),
                                ((32 << 20) - 10, 10)]:
                data = rng.randbytes(length)
                assert os.pwrite(fd, data, off) == length
                model[off] = data
            for off, data in model.items():
                assert os.pread(fd, len(data), off) == data
            assert os.pread(fd, 100, 32 << 20) == b""          # end of device
        finally:
            os.close(fd)
    with mounted(image, mnt, "--type", "plain", "--key-file", key):
        fd = os.open(mnt / "device", os.O_RDONLY)
        try:
            for off, data in model.items():
                assert os.pread(fd, len(data), off) == data
        finally:
            os.close(fd)


OFFLOAD = "no_read_workqueue = false\nno_write_workqueue = false\n"
#: every backend, inline and offloaded, on both data planes; the engine, asynchronous,
#: always runs its bios on crypto worker threads
PATHS = {
    "software-per_sector-inline": "[pipeline]\nmode = 'per_sector'\n",
    "software-multi_du-offload": f"[pipeline]\nmode = 'multi_du'\n{OFFLOAD}",
    "multidu-multi_du-inline": "[pipeline]\nmode = 'multi_du'\nplane = 'trio'\n"
                               "[backend]\nname = 'multidu'\n",
    "multidu-multi_du-native": "[pipeline]\nmode = 'multi_du'\nplane = 'native'\n"
                               "[backend]\nname = 'multidu'\n",
    "multidu-per_sector-native": "[pipeline]\nmode = 'per_sector'\nplane = 'native'\n"
                                 "[backend]\nname = 'multidu'\n",
    "multidu-multi_du-offload": f"[pipeline]\nmode = 'multi_du'\n{OFFLOAD}"
                                "[backend]\nname = 'multidu'\n",
    "engine-native": "[pipeline]\nplane = 'native'\n[backend]\nname = 'engine'\n"
                     "[backend.engine]\nsetup_us = 5.0\n",
    "engine-trio": "[pipeline]\nplane = 'trio'\n[backend]\nname = 'engine'\n"
                   "[backend.engine]\nsetup_us = 5.0\n",
}


@needs("fio")
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("sector_size", [512, 4096])
def test_fio_verify_crc32c_four_jobs_random(volume, sector_size, path):
    image, key, mnt = volume
    config = image.parent / "path.toml"
    config.write_text(PATHS[path])
    with mounted(image, mnt, "--type", "plain", "--key-file", key, "--config", config,
                 "--sector-size", str(sector_size)):
        result = subprocess.run([
            "fio", "--name=verify", f"--filename={mnt}/device", "--rw=randwrite",
            "--bsrange=512-64k", "--bs_unaligned=1", "--numjobs=4", "--size=4M",
            "--offset_increment=8M", "--verify=crc32c",
            "--verify_fatal=1", "--do_verify=1", "--direct=1", "--ioengine=psync",
            "--group_reporting", "--output-format=json", "--verify_state_save=0"],
            capture_output=True, text=True, timeout=600, cwd=mnt.parent)
        assert result.returncode == 0, result.stderr + result.stdout[-2000:]
        report = json.loads(result.stdout[result.stdout.index("{"):])
        job = report["jobs"][0]
        assert job["error"] == 0
        assert job["write"]["io_bytes"] >= 0.9 * 4 * (4 << 20)
        assert job["read"]["io_bytes"] == job["write"]["io_bytes"]   # verify read it all back


def test_discard_punches_the_ciphertext(planes_volume):
    image, key, mnt = planes_volume
    with mounted(image, mnt, "--type", "plain", "--key-file", key, "--allow-discards"):
        dev = mnt / "device"
        with open(dev, "r+b", buffering=0) as f:
            f.write(b"\xff" * (1 << 20))
        os.sync()
        assert image.read_bytes()[4096:8192] != bytes(4096)
        subprocess.run(["fallocate", "--punch-hole", "--offset", "4096", "--length", "8192",
                        str(dev)], check=True)
        s = status(mnt)
        assert s["discard_available"] and s["counters"]["discards"] == 1
    data = image.read_bytes()
    assert data[4096:12288] == bytes(8192)
    assert data[:4096] != bytes(4096) and data[12288:16384] != bytes(4096)


def test_discard_without_allow_discards_is_not_supported(planes_volume):
    image, key, mnt = planes_volume
    with mounted(image, mnt, "--type", "plain", "--key-file", key):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        fd = os.open(mnt / "device", os.O_RDWR)
        try:
            assert libc.fallocate(fd, 0x03, 0, 4096) == -1     # PUNCH_HOLE | KEEP_SIZE
            assert ctypes.get_errno() == errno.EOPNOTSUPP
        finally:
            os.close(fd)


def test_read_only_refuses_writes_and_keeps_the_image(planes_volume):
    image, key, mnt = planes_volume
    before = sha256(image)
    with mounted(image, mnt, "--type", "plain", "--key-file", key, "--read-only"):
        with pytest.raises(OSError) as e:
            os.open(mnt / "device", os.O_WRONLY)
        assert e.value.errno == errno.EROFS
        with open(mnt / "device", "rb") as f:
            assert len(f.read(65536)) == 65536
        assert status(mnt)["read_only"] is True
    assert sha256(image) == before


def test_fsync_reaches_the_image_and_status_reports_it(planes_volume, plane):
    image, key, mnt = planes_volume
    with mounted(image, mnt, "--type", "plain", "--key-file", key):
        fd = os.open(mnt / "device", os.O_RDWR)
        os.pwrite(fd, b"x" * 4096, 0)
        os.fsync(fd)
        flushes = status(mnt)["counters"]["flushes"]
        os.fsync(fd)
        assert status(mnt)["counters"]["flushes"] == flushes + 1
        os.close(fd)
        text = cryptfs("status", mnt, check=True).stdout
        for field in ("type:        PLAIN", "cipher:      aes-xts-plain64", "sector size: 512",
                      "backend:     multidu (multi_du", f"size:        {(32 << 20) // 512} sectors",
                      "bytes_written", f"plane:       {plane}"):
            assert field in text
        if plane == "trio":         # the trio plane times each request; C counts them only
            assert "bio latency (µs)" in text and "p50 " in text
            latency = status(mnt)["counters"]["bio_latency"]
            assert 0 < latency["p50_us"] <= latency["p99_us"] <= latency["max_us"]


def test_close_refuses_a_busy_device_then_succeeds(planes_volume):
    image, key, mnt = planes_volume
    with mounted(image, mnt, "--type", "plain", "--key-file", key):
        fd = os.open(mnt / "device", os.O_RDONLY)
        try:
            result = cryptfs("close", mnt)
            assert result.returncode == 5
            assert result.stderr.strip().endswith("is busy: close what has the device open first")
            assert mount_type(str(mnt)) == "fuse.cryptfs"
        finally:
            os.close(fd)
    assert mount_type(str(mnt)) is None


def test_close_cleans_up_after_a_dead_daemon(planes_volume):
    image, key, mnt = planes_volume
    mnt.mkdir()
    cryptfs("open", image, mnt, "--type", "plain", "--key-file", key, check=True)
    pid = status(mnt)["pid"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
    again = cryptfs("open", image, mnt, "--type", "plain", "--key-file", key)
    assert again.returncode == 5 and f"run 'cryptfs close {mnt}' first" in again.stderr
    result = cryptfs("close", mnt)
    assert result.returncode == 0, result.stderr
    assert "its daemon had died" in result.stderr
    assert mount_type(str(mnt)) is None
    cryptfs("open", image, mnt, "--type", "plain",
            "--key-file", key, check=True)     # the lock went with it
    cryptfs("close", mnt, check=True)


def test_sigterm_flushes_and_unmounts(planes_volume):
    image, key, mnt = planes_volume
    mnt.mkdir()
    cryptfs("open", image, mnt, "--type", "plain", "--key-file", key, check=True)
    with open(mnt / "device", "r+b", buffering=0) as f:
        f.write(b"persist" * 100)
    pid = status(mnt)["pid"]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while mount_type(str(mnt)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert mount_type(str(mnt)) is None
    with mounted(image, mnt, "--type", "plain", "--key-file", key):
        with open(mnt / "device", "rb") as f:
            assert f.read(700) == b"persist" * 100


@needs("qemu-img", "cryptsetup")
def test_qemu_luks1_image_through_the_mount(tmp_path):
    plain = tmp_path / "plain.raw"
    plain.write_bytes(random.Random(9).randbytes(4 << 20))
    image = tmp_path / "image.luks"
    qemu_luks_encrypt(plain, image, cipher_mode="cbc", ivgen_alg="essiv", ivgen_hash="sha256")
    vk, offset = luks_volume_key(image)
    (tmp_path / "vk").write_bytes(vk)
    expected = bytearray(plain.read_bytes())
    patch = random.Random(10).randbytes(100000)
    expected[12345:12345 + len(patch)] = patch
    with mounted(image, tmp_path / "mnt", "--type", "plain", "--key-file", tmp_path / "vk",
                 "--offset", str(offset),
                 "--cipher", "aes-cbc-essiv:sha256", "--key-size", "256"):
        dev = tmp_path / "mnt" / "device"
        assert dev.read_bytes() == plain.read_bytes()
        with open(dev, "r+b", buffering=0) as f:
            f.seek(12345)
            f.write(patch)
    assert qemu_luks_decrypt(image, tmp_path / "out.raw") == bytes(expected)


async def test_passphrase_on_stdin_is_hashed_like_cryptsetup(volume):
    # cryptsetup's password-hash-test: passphrase "xxx", sha256, 256 bits → this key.
    image, _, mnt = volume
    with mounted(image, mnt, "--type", "plain",
                 "--cipher", "aes-cbc-essiv:sha256", "--key-size", "256",
                 "--hash", "sha256", input=b"xxx\n"):
        with open(mnt / "device", "r+b", buffering=0) as f:
            f.write(b"cryptsetup" * 1000)
    expected_key = bytes.fromhex("cd2eb0837c9b4c962c22d2ff8b5441b7"
                                 "b45805887f051d39bf133b583baf6860")
    daemon = open_plain(image, expected_key, cipher="aes-cbc-essiv:sha256")
    assert bytes(await daemon.queue.read(0, 10000)) == b"cryptsetup" * 1000
    daemon.close()


@needs("fio")
def test_fio_verify_through_a_faulty_engine(planes_volume, plane):
    """1 % completion errors, lost completions and BUSY storms: fio's crc32c verify still
    passes, the counters show the retries, and it all ends in bounded time — on both planes
    (the engine's Python model, its C model)."""
    image, key, mnt = planes_volume
    faults = ["backend.engine.error_rate=0.01", "backend.engine.lost_rate=0.002",
              "backend.engine.busy_storm_every=50", "backend.engine.busy_storm_length=10",
              "backend.engine.queue_depth=8", "backend.engine.seed=5",
              "pipeline.completion_timeout=0.2"]
    settings = [arg for f in faults for arg in ("--set", f)]
    with mounted(image, mnt, "--type", "plain", "--key-file", key, "--backend", "engine",
                 *settings):
        result = subprocess.run([
            "fio", "--name=verify", f"--filename={mnt}/device", "--rw=randwrite",
            "--bsrange=512-64k", "--bs_unaligned=1", "--numjobs=4", "--size=4M",
            "--offset_increment=8M", "--verify=crc32c", "--verify_fatal=1", "--do_verify=1",
            "--direct=1", "--ioengine=psync", "--group_reporting", "--output-format=json",
            "--verify_state_save=0"], capture_output=True, text=True, timeout=300,
            cwd=mnt.parent)
        assert result.returncode == 0, result.stderr + result.stdout[-2000:]
        s = status(mnt)
    assert s["backend"] == "engine" and s["backend_refused"] is None and s["plane"] == plane
    engine, counters = s["backend_stats"], s["counters"]
    assert engine["errors_injected"] > 0 and engine["lost"] > 0 and engine["busy"] > 0
    assert counters["retries"] >= engine["errors_injected"]
    assert counters["timeouts"] >= 1
    assert engine["in_flight"] == 0
    assert ("p99_us" if plane == "trio" else "latency_mean_us") in engine


@needs("fio")
def test_close_while_fio_runs_neither_hangs_nor_loses_writes(planes_volume):
    """``cryptfs close`` during fio is refused at once (busy), never hangs; once fio is done
    the device closes, and every block fio wrote verifies after a reopen."""
    image, key, mnt = planes_volume
    job = ["fio", "--name=w", "--rw=randwrite", "--bs=4k", "--size=8M", "--direct=1",
           "--ioengine=psync", "--randseed=7", "--verify=crc32c", "--verify_state_save=0",
           "--output-format=terse"]
    with mounted(image, mnt, "--type", "plain", "--key-file", key):
        # paced (about a second a loop on either plane) so that it is still running
        writer = subprocess.Popen([*job, f"--filename={mnt}/device", "--do_verify=0",
                                   "--loops=3", "--rate_iops=2000"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(0.5)
            start = time.monotonic()
            busy = cryptfs("close", mnt, timeout=30)
            assert time.monotonic() - start < 20
            assert writer.poll() is None and busy.returncode == 5, busy.stderr
        finally:
            assert writer.wait(300) == 0, writer.stderr.read()
    with mounted(image, mnt, "--type", "plain", "--key-file", key):
        check = subprocess.run([*job, f"--filename={mnt}/device", "--verify_only",
                                "--verify_fatal=1"], capture_output=True, text=True,
                               timeout=300)
        assert check.returncode == 0, check.stderr + check.stdout[-2000:]


@pytest.mark.parametrize("backend", ["multidu", "engine"])
@pytest.mark.parametrize("mode", ["per_sector", "multi_du"])
@pytest.mark.parametrize("sector_size", [512, 4096])
def test_both_planes_write_the_same_ciphertext(tmp_path, mode, sector_size, backend):
    """The same random unaligned writes through each plane's mount leave byte-identical
    images, and each reads back what a bytearray model holds (the engine: its Python model
    on the trio plane, its C model on the native one)."""
    from cryptfs.fuse import native
    if native.UNAVAILABLE:
        pytest.skip(native.UNAVAILABLE)
    key = tmp_path / "key"
    key.write_bytes(KEY)
    rng = random.Random(sector_size)
    steps = [(rng.randrange(0, (4 << 20) - 70000), rng.randbytes(rng.randrange(1, 70000)))
             for _ in range(60)]
    images = {}
    for plane in ("trio", "native"):
        image, mnt = tmp_path / f"{plane}.img", tmp_path / f"{plane}-mnt"
        image.write_bytes(bytes(4 << 20))
        with mounted(image, mnt, "--type", "plain", "--key-file", key, "--sector-size",
                     str(sector_size), "--set", f"pipeline.plane='{plane}'", "--set",
                     f"pipeline.mode='{mode}'", "--backend", backend):
            assert (status(mnt)["plane"], status(mnt)["backend"]) == (plane, backend)
            fd = os.open(mnt / "device", os.O_RDWR)
            try:
                model = bytearray(os.pread(fd, 4 << 20, 0))    # zeros decrypted, at first
                for offset, data in steps:
                    assert os.pwrite(fd, data, offset) == len(data)
                    model[offset:offset + len(data)] = data
                assert os.pread(fd, len(model), 0) == model
            finally:
                os.close(fd)
        images[plane] = image.read_bytes()
    assert images["trio"] == images["native"]
