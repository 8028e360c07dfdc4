"""The native data plane (cryptfs/fuse/_plane.c), driven directly: a Session over a generated
image, run() on a thread, the device used through the mount.

The oracle is independent of every cryptfs path: pyca/cryptography's AES-XTS with the plain64
tweak computed here (IV sector of data unit u = u * iv_step + iv_offset), unit by unit.  Reads
at random offsets, random unaligned writes against a bytearray model (and the ciphertext on
disk decrypted independently), 4096-byte sectors counting 512-byte IV sectors, per_sector and
multi_du writing identical images, concurrent unaligned writes losing nothing, the errno
contract (EROFS, ENOSPC, EINVAL, EPERM, EOPNOTSUPP, a full disk), discard, the stats file, the
null cipher, and the session's life (exit() with the device still open, an unmount from
outside).
"""

import ctypes
import errno
import os
import random
import shutil
import subprocess
import sys
import threading
import time

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from cryptfs.backends import native
from cryptfs.crypto.spec import parse_spec

try:
    from cryptfs.fuse import _plane
except ImportError as e:
    _plane, PLANE_MISSING = None, f"the native plane is not built ({e})"
else:
    PLANE_MISSING = None

ROOT = os.geteuid() == 0
pytestmark = [
    pytest.mark.fuse,
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="/dev/fuse is missing"),
    pytest.mark.skipif(_plane is None, reason=str(PLANE_MISSING)),
    pytest.mark.skipif(native.UNAVAILABLE is not None, reason=str(native.UNAVAILABLE)),
    pytest.mark.skipif(not ROOT and not shutil.which("fusermount3"),
                       reason="mounting FUSE needs root or fusermount3"),
]

PAYLOAD = 8192          # ciphertext starts here: the header area before it must stay untouched
TRAILER = 4096          # bytes after the device, likewise
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 1, 2
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def xts(key: bytes, encrypt: bool, data: bytes, first_unit: int, du: int, step: int,
        base: int) -> bytes:
    """The oracle: each data unit through AES-XTS with its plain64 tweak."""
    out = bytearray()
    for i in range(len(data) // du):
        tweak = ((first_unit + i) * step + base).to_bytes(16, "little")
        cipher = Cipher(algorithms.AES(key), modes.XTS(tweak))
        op = cipher.encryptor() if encrypt else cipher.decryptor()
        out += op.update(data[i * du:(i + 1) * du]) + op.finalize()
    return bytes(out)


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    if _libc.fallocate(fd, mode, offset, length):
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def mounted(path: str) -> bool:
    with open("/proc/mounts") as f:
        return any(line.split()[1] == path for line in f)


class Plane:
    """A Session over a fresh image of random ciphertext, served on a thread."""

    def __init__(self, where, *, sector_size=512, iv_step=1, iv_offset=0, multi_du=True,
                 read_only=False, allow_discards=False, size=1 << 20, threads=2,
                 crypto_threads=2, split_bytes=64 << 10, options=(), stats=None, core=None,
                 image=None, seed=0):
        rng = random.Random(seed)
        self.ss, self.step, self.base, self.size = sector_size, iv_step, iv_offset, size
        self.key = rng.randbytes(64)
        self.image = str(image or where / "image")
        self.mnt = str(where / "mnt")
        os.makedirs(self.mnt, exist_ok=True)
        if image is None:
            with open(self.image, "wb") as f:
                f.write(rng.randbytes(PAYLOAD + size + TRAILER))
        self.fd = os.open(self.image, os.O_RDONLY if read_only else os.O_RDWR)
        self.core = core or native.keyed_core(parse_spec("aes-xts-plain64"), self.key)
        self.stats_calls = 0

        def default_stats():
            self.stats_calls += 1
            return b'{"calls": %d}\n' % self.stats_calls

        opts = ",".join(["fsname=cryptfs", "subtype=cryptfs", "default_permissions", *options])
        try:
            self.session = _plane.Session(
                self.mnt, ["-o", opts], self.fd, PAYLOAD, size, sector_size, iv_step, iv_offset,
                self.core.capsule(), multi_du, read_only, allow_discards, os.getuid(),
                os.getgid(), 1_700_000_000_123_456_789, threads, 16, 12, split_bytes,
                crypto_threads, stats or default_stats)
        except BaseException:
            self.core.close()
            os.close(self.fd)
            raise
        self.failure = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.device = os.path.join(self.mnt, "device")

    def _run(self):
        try:
            self.session.run()
        except BaseException as e:          # reported by close()
            self.failure = e

    def ciphertext(self) -> bytes:
        with open(self.image, "rb") as f:
            return f.read()

    def plaintext_on_disk(self) -> bytes:
        """The device as the oracle decrypts the image."""
        payload = self.ciphertext()[PAYLOAD:PAYLOAD + self.size]
        return xts(self.key, False, payload, 0, self.ss, self.step, self.base)

    def close(self):
        if self.fd < 0:
            return
        try:
            self.session.exit()
            self.thread.join(20)
            assert not self.thread.is_alive(), "run() did not return after exit()"
            assert self.failure is None, self.failure
            assert not mounted(self.mnt)
        finally:
            if self.thread.is_alive():      # leave nothing mounted behind
                subprocess.run(["umount", "-l", self.mnt], capture_output=True)
                self.thread.join(10)
            self.session.close()
            self.core.close()
            os.close(self.fd)
            self.fd = -1


@pytest.fixture
def plane(tmp_path):
    made = []

    def make(**kwargs):
        where = tmp_path / f"plane{len(made)}"
        where.mkdir()
        p = Plane(where, **kwargs)
        made.append(p)
        return p

    yield make
    failures = []
    for p in made:                  # every one, whatever the others do
        try:
            p.close()
        except Exception as e:
            failures.append(e)
    if failures:
        raise failures[0]


LAYOUTS = [pytest.param(512, 1, 0, id="512"),
           pytest.param(4096, 8, 24, id="4096-step8-skip24"),
           pytest.param(4096, 1, 3, id="4096-large-iv")]
MODES = ["multi_du", "per_sector"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ss, step, base", LAYOUTS)
def test_reads_at_random_offsets_match_an_independent_decryption(plane, mode, ss, step, base):
    p = plane(sector_size=ss, iv_step=step, iv_offset=base, multi_du=mode == "multi_du",
              size=1 << 20, split_bytes=4096)
    expected = p.plaintext_on_disk()
    rng = random.Random(1)
    fd = os.open(p.device, os.O_RDONLY)
    try:
        assert os.pread(fd, p.size, 0) == expected
        for _ in range(200):
            off = rng.randrange(p.size + 2000)
            length = rng.choice([1, 511, 512, 513, 4096, 5000, rng.randrange(1, 300_000)])
            assert os.pread(fd, length, off) == expected[off:off + length], (off, length)
        assert os.pread(fd, 4096, p.size) == b""                       # EOF
    finally:
        os.close(fd)
    counters = p.session.counters()
    assert counters["reads"] >= 200 and counters["errors"] == 0
    if mode == "per_sector":
        assert counters["crypto_requests"] == counters["data_units"]
    else:
        assert counters["crypto_requests"] < counters["data_units"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ss, step, base", LAYOUTS)
def test_random_unaligned_writes_match_a_model_and_the_oracle(plane, mode, ss, step, base):
    p = plane(sector_size=ss, iv_step=step, iv_offset=base, multi_du=mode == "multi_du",
              split_bytes=8192)
    before = p.ciphertext()
    model = bytearray(p.plaintext_on_disk())
    rng = random.Random(2)
    fd = os.open(p.device, os.O_RDWR)
    try:
        for _ in range(150):
            off = rng.randrange(p.size)
            data = rng.randbytes(rng.choice([1, 100, ss - 1, ss, ss + 1, 3 * ss + 7,
                                             rng.randrange(1, 200_000)]))
            written = os.pwrite(fd, data, off)
            assert written == min(len(data), p.size - off)               # cut at the end
            model[off:off + written] = data[:written]
        assert os.pread(fd, p.size, 0) == bytes(model)
        os.fsync(fd)
    finally:
        os.close(fd)
    after = p.ciphertext()
    assert p.plaintext_on_disk() == bytes(model)
    assert after[:PAYLOAD] == before[:PAYLOAD]                 # the header area is not touched
    assert after[PAYLOAD + p.size:] == before[PAYLOAD + p.size:]
    counters = p.session.counters()
    assert counters["writes"] == 150 and counters["rmw"] > 0 and counters["flushes"] >= 1


def test_per_sector_and_multi_du_write_identical_images(plane):
    images = []
    for mode in MODES:
        p = plane(sector_size=4096, iv_step=8, iv_offset=16, multi_du=mode == "multi_du",
                  seed=7, split_bytes=16384)
        rng = random.Random(3)
        fd = os.open(p.device, os.O_WRONLY)
        for _ in range(60):
            off = rng.randrange(p.size)
            os.pwrite(fd, rng.randbytes(rng.randrange(1, 100_000)), off)
        os.close(fd)
        images.append(p.ciphertext())
    assert images[0] == images[1]


def on_threads(work, n: int) -> None:
    """``work(i)`` for i in 0..n-1, each on a thread of its own, all at once."""
    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_concurrent_overlapping_unaligned_writes_leave_every_unit_whole(plane):
    # Eight writers, unaligned ranges over the same few units, each with its own byte: every
    # unit must decrypt (by the oracle) to writers' bytes only - a torn or stale ciphertext
    # unit would decrypt to noise.
    p = plane(threads=8, size=256 << 10)
    region = 64 << 10
    fd = os.open(p.device, os.O_RDWR)
    os.pwrite(fd, bytes(region), 0)

    def writer(i):
        rng = random.Random(i)
        own = os.open(p.device, os.O_WRONLY)
        for _ in range(80):
            off = rng.randrange(region - 3000)
            os.pwrite(own, bytes([i + 1]) * rng.randrange(1, 3000), off)
        os.close(own)

    on_threads(writer, 8)
    plain = p.plaintext_on_disk()[:region]
    assert set(plain) <= set(range(9))
    assert os.pread(fd, region, 0) == plain
    os.close(fd)


def test_concurrent_writes_sharing_units_lose_no_update(plane):
    # Writers own disjoint 100-byte chunks that share data units: each write is a
    # read-modify-write of units other writers change too.  Without the range lock one
    # writer's edge read would be stale and undo another's bytes.
    p = plane(threads=8, size=256 << 10)
    chunks, rounds = 640, 6                 # 64000 bytes: 125 units of 512

    def writer(i):
        own = os.open(p.device, os.O_WRONLY)
        for r in range(rounds):
            for c in range(i, chunks, 8):
                os.pwrite(own, bytes([(i * rounds + r) % 251 + 1]) * 100, c * 100)
        os.close(own)

    on_threads(writer, 8)
    plain = p.plaintext_on_disk()
    for c in range(chunks):
        i = c % 8
        assert plain[c * 100:(c + 1) * 100] == bytes([(i * rounds + rounds - 1) % 251 + 1]) * 100


@pytest.mark.parametrize("mount_ro", [False, True])
def test_a_read_only_device_refuses_writes_with_erofs(plane, mount_ro):
    p = plane(read_only=True, options=["ro"] if mount_ro else [])
    before = p.ciphertext()
    with pytest.raises(OSError) as e:
        os.open(p.device, os.O_RDWR)
    # the plane's EROFS; a user without CAP_DAC_OVERRIDE meets the 0400 mode first
    assert e.value.errno == errno.EROFS if mount_ro or ROOT else errno.EACCES
    assert oct(os.stat(p.device).st_mode & 0o777) == oct(0o400)
    fd = os.open(p.device, os.O_RDONLY)
    assert os.pread(fd, 4096, 1000) == p.plaintext_on_disk()[1000:5096]
    os.fsync(fd)                                    # nothing to sync, no error
    os.close(fd)
    assert p.ciphertext() == before


def test_the_end_of_the_device_is_enospc_eof_and_short_writes(plane):
    p = plane()
    fd = os.open(p.device, os.O_RDWR)
    try:
        for off in (p.size, p.size + 12345):
            with pytest.raises(OSError) as e:
                os.pwrite(fd, b"x" * 10, off)
            assert e.value.errno == errno.ENOSPC
        assert os.pwrite(fd, b"y" * 1000, p.size - 300) == 300      # cut at the end
        assert os.pread(fd, 1000, p.size - 300) == b"y" * 300
        assert os.pread(fd, 10, p.size) == b""
    finally:
        os.close(fd)
    assert p.session.counters()["errors"] == 2


def test_a_full_disk_reaches_the_writer_as_enospc_and_the_plane_survives(plane, tmp_path):
    if not ROOT:
        pytest.skip("needs root to mount a small tmpfs")
    disk = tmp_path / "small"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], check=True)
    try:
        image = disk / "image"
        with open(image, "wb") as f:          # sparse: writing needs room the disk lacks
            f.truncate(PAYLOAD + (4 << 20) + TRAILER)
        p = plane(size=4 << 20, image=image)
        fd = os.open(p.device, os.O_RDWR)
        with pytest.raises(OSError) as e:
            for off in range(0, 4 << 20, 64 << 10):
                os.pwrite(fd, os.urandom(64 << 10), off)
        assert e.value.errno == errno.ENOSPC
        assert len(os.pread(fd, 4096, 0)) == 4096           # still serving
        os.close(fd)
        p.close()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def test_setattr_keeps_the_device_what_it_is(plane):
    p = plane()
    with pytest.raises(PermissionError):
        os.chmod(p.device, 0o644)
    with pytest.raises(OSError) as e:
        os.truncate(p.device, 4096)
    assert e.value.errno == errno.EINVAL
    os.truncate(p.device, p.size)                   # the size it has: accepted
    os.utime(p.device, (1, 2))                      # times: accepted
    st = os.stat(p.device)
    assert (st.st_size, st.st_blksize, st.st_mode & 0o777) == (p.size, 512, 0o600)
    assert st.st_mtime_ns == 1_700_000_000_123_456_789
    assert sorted(os.listdir(p.mnt)) == ["device", "stats"]
    fd = os.open(p.device, os.O_RDWR | os.O_TRUNC)  # O_TRUNC is ignored, as a device's
    os.close(fd)
    assert os.stat(p.device).st_size == p.size
    vfs = os.statvfs(p.mnt)
    assert (vfs.f_bsize, vfs.f_blocks) == (512, p.size // 512)


def test_discard_punches_whole_units_only_when_allowed(plane):
    p = plane(allow_discards=True, sector_size=4096, iv_step=8)
    fd = os.open(p.device, os.O_RDWR)
    before = p.plaintext_on_disk()
    fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 1000, 3 * 4096 + 500)
    # whole units inside [1000, 13788): 4096..12288; their ciphertext is zeros now
    payload = p.ciphertext()[PAYLOAD:PAYLOAD + p.size]
    assert payload[4096:12288] == bytes(8192)
    zeros_read = xts(p.key, False, bytes(8192), 1, 4096, 8, 0)
    assert os.pread(fd, p.size, 0) == before[:4096] + zeros_read + before[12288:]
    fallocate(fd, 0, 0, p.size)                                 # allocated already
    fallocate(fd, FALLOC_FL_KEEP_SIZE, p.size - 10, 100)
    for mode, off, length, err in [(0, p.size - 10, 100, errno.ENOSPC),
                                   (0, 0, 0, errno.EINVAL),
                                   (0x10, 0, 4096, errno.EOPNOTSUPP)]:     # ZERO_RANGE
        with pytest.raises(OSError) as e:
            fallocate(fd, mode, off, length)
        assert e.value.errno == err
    os.close(fd)
    counters = p.session.counters()
    assert (counters["discards"], counters["bytes_discarded"]) == (1, 8192)

    q = plane(allow_discards=False)
    fd = os.open(q.device, os.O_RDWR)
    with pytest.raises(OSError) as e:
        fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096)
    assert e.value.errno == errno.EOPNOTSUPP
    os.close(fd)


def test_the_stats_file_serves_the_callables_bytes_per_open(plane, monkeypatch):
    p = plane()
    path = os.path.join(p.mnt, "stats")
    assert open(path, "rb").read() == b'{"calls": 1}\n'
    with open(path, "rb", buffering=0) as f:
        assert f.read(3) == b'{"c' and f.read(100) == b'alls": 2}\n' and f.read(10) == b""
    with pytest.raises(PermissionError):
        open(path, "r+b")
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o444)

    big = os.urandom(300_000)
    q = plane(stats=lambda: big)
    assert open(os.path.join(q.mnt, "stats"), "rb").read() == big

    def broken():
        raise RuntimeError("no stats today")
    r = plane(stats=broken)
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    with pytest.raises(OSError) as e:
        open(os.path.join(r.mnt, "stats"), "rb")
    assert e.value.errno == errno.EIO
    assert "no stats today" in str(seen[0].exc_value)          # reported, not swallowed


def test_the_null_cipher_passes_the_image_through(plane):
    core = native._native.Core("null", b"", "plain64")
    p = plane(core=core, size=512 << 10)
    raw = p.ciphertext()[PAYLOAD:PAYLOAD + p.size]
    fd = os.open(p.device, os.O_RDWR)
    assert os.pread(fd, p.size, 0) == raw
    os.pwrite(fd, b"plain" * 100, 777)
    os.close(fd)
    assert p.ciphertext()[PAYLOAD + 777:PAYLOAD + 1277] == b"plain" * 100


def test_the_session_holds_its_own_reference_to_the_core(plane):
    p = plane()
    expected = p.plaintext_on_disk()[:8192]
    p.core.close()                  # the Python object's reference: the capsule's was taken
    with pytest.raises(ValueError, match="closed"):
        p.core.capsule()
    fd = os.open(p.device, os.O_RDONLY)
    assert os.pread(fd, 8192, 0) == expected
    os.close(fd)


def test_exit_returns_promptly_with_the_device_still_open(plane):
    p = plane(threads=4)
    fd = os.open(p.device, os.O_RDONLY)     # keeps the connection alive past an unmount
    os.pread(fd, 4096, 0)
    started = time.monotonic()
    p.session.exit()
    p.thread.join(10)
    assert not p.thread.is_alive() and time.monotonic() - started < 5
    assert not mounted(p.mnt)
    with pytest.raises(OSError):            # the connection is gone
        os.pread(fd, 4096, 0)
    with pytest.raises(OSError):            # and so is close()'s flush; the fd is closed
        os.close(fd)


def test_an_unmount_from_outside_ends_run(plane):
    p = plane()
    fd = os.open(p.device, os.O_WRONLY)
    os.pwrite(fd, b"kept", 0)
    os.close(fd)
    cmd = ["umount", p.mnt] if ROOT else ["fusermount3", "-u", p.mnt]
    subprocess.run(cmd, check=True)
    p.thread.join(10)
    assert not p.thread.is_alive() and p.failure is None
    assert p.plaintext_on_disk()[:4] == b"kept"


def test_exit_before_run_and_the_arguments_refused(tmp_path):
    core = native.keyed_core(parse_spec("aes-xts-plain64"), bytes(range(64)))
    image = tmp_path / "image"
    image.write_bytes(bytes(PAYLOAD + (1 << 20)))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    fd = os.open(image, os.O_RDWR)

    def session(**changes):
        args = dict(mountpoint=str(mnt), fuse_options=["-o", "default_permissions"],
                    image_fd=fd, payload_offset=PAYLOAD, size=1 << 20, sector_size=512,
                    iv_step=1, iv_offset=0, core_capsule=core.capsule(), multi_du=True,
                    read_only=False, allow_discards=False, uid=0, gid=0, mtime_ns=0, threads=1,
                    max_background=0, congestion_threshold=0, split_bytes=0, crypto_threads=1,
                    stats=lambda: b"")
        return _plane.Session(**{**args, **changes})

    try:
        s = session()
        assert mounted(str(mnt))
        s.exit()
        s.run()                                     # returns at once, and unmounts
        assert not mounted(str(mnt))
        with pytest.raises(RuntimeError, match="once"):
            s.run()
        s.close()
        with pytest.raises(ValueError, match="closed"):
            s.counters()
        for changes, error in [({"sector_size": 1000}, ValueError),
                               ({"size": 1000}, ValueError),
                               ({"iv_step": 0}, ValueError),
                               ({"stats": None}, ValueError),
                               ({"core_capsule": object()}, ValueError),
                               ({"image_fd": 9999}, OSError),
                               ({"mountpoint": str(tmp_path / "nowhere")}, OSError),
                               ({"fuse_options": ["-o", "no_such_option_at_all"]},
                                RuntimeError)]:
            with pytest.raises(error):
                session(**changes)
        assert not mounted(str(mnt))
    finally:
        os.close(fd)
        core.close()
