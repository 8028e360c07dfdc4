"""The Python API (``cryptfs.open_image``), without FUSE — these run where /dev/fuse is missing.

* Images made by qemu-img (LUKS1) and cryptsetup (LUKS2, 512/4096-byte sectors, embedded and
  detached header) read back their known plaintext; what the API writes reads back through
  qemu-img and ``cryptsetup reencrypt --decrypt``.
* Hypothesis: random reads and writes at any offset and length agree with a bytearray model.
* Threads: adjacent and overlapping unaligned writes keep the FUSE path's guarantees.
* Errors are cryptfs.errors with the CLI's messages; nothing stays locked after a failure.
One test (marked fuse) replays a workload through the mounted device and the API and compares
the ciphertext.
"""

import errno
import os
import random
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cryptfs
from cryptfs.errors import BusyError, ConfigError, DeviceError, KeyMaterialError
from helpers import (
    PASSPHRASE,
    PATCHES,
    cryptsetup,
    mounted,
    needs,
    needs_fuse,
    qemu_luks_decrypt,
    qemu_luks_encrypt,
    reencrypt_luks2,
)

SIZE = 2 << 20


def patch(device, plaintext: bytes, seed: int) -> bytes:
    """Apply helpers.PATCHES through the file object (seek + write); the expected plaintext."""
    model = bytearray(plaintext)
    rng = random.Random(seed)
    for off, length in PATCHES:
        off %= len(plaintext)
        data = rng.randbytes(length)
        assert device.seek(off) == off
        assert device.write(data) == length and device.tell() == off + length
        model[off:off + length] = data
    device.seek(0)
    assert device.read() == bytes(model)
    return bytes(model)


@needs("qemu-img")
def test_qemu_luks1_both_ways(tmp_path):
    plain, image = tmp_path / "plain.raw", tmp_path / "image.luks"
    plain.write_bytes(random.Random(1).randbytes(SIZE))
    qemu_luks_encrypt(plain, image)
    with cryptfs.open_image(image, passphrase=PASSPHRASE) as device:
        assert len(device) == SIZE and device.read() == plain.read_bytes()
        assert not device.writable()
    with cryptfs.open_image(image, passphrase=PASSPHRASE, read_only=False) as device:
        model = patch(device, plain.read_bytes(), seed=1)
    assert qemu_luks_decrypt(image, tmp_path / "out.raw") == model


@needs("cryptsetup")
@pytest.mark.parametrize("sector_size", [512, 4096])
def test_cryptsetup_luks2_detached_both_ways(tmp_path, sector_size):
    plaintext = random.Random(sector_size).randbytes(SIZE)
    image, header = reencrypt_luks2(tmp_path, plaintext, sector_size, "pbkdf2", detached=True)
    with cryptfs.open_image(image, header=header, passphrase=PASSPHRASE) as device:
        assert device.read() == plaintext
    (tmp_path / "pass").write_text(PASSPHRASE)
    with cryptfs.open_image(image, header=header, key_file=tmp_path / "pass",
                            read_only=False) as device:
        model = patch(device, plaintext, seed=sector_size)
    cryptsetup("reencrypt", "--decrypt", "--header", str(header), "--force-offline-reencrypt",
               str(image))
    assert image.read_bytes() == model


@needs("cryptsetup")
def test_cryptsetup_luks2_embedded_4096_reads_back(tmp_path):
    plaintext = random.Random(9).randbytes(SIZE)
    image, _ = reencrypt_luks2(tmp_path, plaintext, 4096, "argon2id", detached=False)
    with cryptfs.open_image(image, passphrase=PASSPHRASE.encode()) as device:
        assert device.read(SIZE) == plaintext           # the segment runs to the image's end
        assert cryptfs.read_header(image).uuid in cryptsetup("luksUUID", str(image),
                                                              passphrase=None)


# --- a bytearray model ----------------------------------------------------------------------

DEVICE = 256 << 10
OPS = st.lists(st.tuples(st.sampled_from(["read", "write", "pread", "pwrite"]),
                         st.integers(0, DEVICE + 5000), st.integers(0, 20000)), max_size=25)


def plain_image(directory: str, sector_size: int) -> tuple[str, str]:
    image, key = os.path.join(directory, "image"), os.path.join(directory, "key")
    with open(image, "wb") as f:
        f.truncate(DEVICE)
    with open(key, "wb") as f:
        f.write(bytes(range(1, 65)))
    return image, key


def replay(device, ops, seed: int, model: bytearray | None = None) -> None:
    """Run ``ops`` on a file object (positional or not), checking every answer against
    ``model`` when one is given."""
    rng = random.Random(seed)
    for op, offset, length in ops:
        if op in ("write", "pwrite"):
            data = rng.randbytes(length)
            expected = max(0, min(length, DEVICE - offset))
            if offset >= DEVICE:
                with pytest.raises(DeviceError) as e:
                    device.pwrite(data, offset) if op == "pwrite" else (
                        device.seek(offset), device.write(data))
                assert e.value.errno == errno.ENOSPC
                continue
            if op == "pwrite":
                assert device.pwrite(data, offset) == expected
            else:
                device.seek(offset)
                assert device.write(data) == expected
                assert device.tell() == offset + expected
            if model is not None:
                model[offset:offset + expected] = data[:expected]
        else:
            if op == "pread":
                got = device.pread(length, offset)
            else:
                device.seek(offset)
                got = device.read(length)
                assert device.tell() == offset + len(got)
            if model is not None:
                assert got == bytes(model[offset:offset + length])


@settings(max_examples=40, deadline=None)
@given(ops=OPS, sector_size=st.sampled_from([512, 4096]), seed=st.integers(0, 2**16))
def test_random_io_agrees_with_a_bytearray_model(ops, sector_size, seed):
    with tempfile.TemporaryDirectory() as directory:
        image, key = plain_image(directory, sector_size)
        with cryptfs.open_image(image, key_file=key, type="plain", sector_size=sector_size,
                                read_only=False) as device:
            model = bytearray(device.read())            # the decryption of zeros
            assert len(model) == DEVICE
            replay(device, ops, seed, model)
            device.seek(0)
            assert device.read() == bytes(model)


@needs_fuse
@pytest.mark.parametrize("seed", [1, 2])
def test_the_api_and_the_fuse_device_write_the_same_ciphertext(tmp_path, seed):
    rng = random.Random(seed)
    ops = [("pwrite", rng.randrange(DEVICE), rng.choice([1, 511, 4097, 70000]))
           for _ in range(40)]
    (tmp_path / "api").mkdir()
    (tmp_path / "fuse").mkdir()
    image, key = plain_image(str(tmp_path / "api"), 512)
    with cryptfs.open_image(image, key_file=key, type="plain", read_only=False) as device:
        replay(device, ops, seed)
    fuse_image, fuse_key = plain_image(str(tmp_path / "fuse"), 512)
    with mounted(Path(fuse_image), tmp_path / "mnt", "--type", "plain", "--key-file", fuse_key):
        fd = os.open(tmp_path / "mnt" / "device", os.O_RDWR)
        try:
            replay(_Fd(fd), ops, seed)
        finally:
            os.close(fd)
    assert Path(image).read_bytes() == Path(fuse_image).read_bytes()


class _Fd:
    """os.pwrite on the mounted device, in the file object's words."""

    def __init__(self, fd: int):
        self.fd = fd

    def pwrite(self, data: bytes, offset: int) -> int:
        return os.pwrite(self.fd, data, offset)


# --- threads --------------------------------------------------------------------------------

def run_threads(work, count: int) -> None:
    threads = [threading.Thread(target=work, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


@pytest.mark.parametrize("backend", ["multidu", "software"])
def test_threads_sharing_edge_sectors_lose_nothing(tmp_path, backend):
    # 48 writers, 700 bytes each at 700*i: neighbours share a 512-byte sector, so a
    # read-modify-write without the range lock would undo a neighbour's bytes.
    image, key = plain_image(str(tmp_path), 512)
    chunks = [bytes([i + 1]) * 700 for i in range(48)]
    with cryptfs.open_image(image, key_file=key, type="plain", read_only=False,
                            backend=backend) as device:
        run_threads(lambda i: device.pwrite(chunks[i], 700 * i), len(chunks))
        assert device.pread(700 * len(chunks), 0) == b"".join(chunks)


def test_threads_overwriting_one_range_never_mix(tmp_path):
    image, key = plain_image(str(tmp_path), 4096)
    with cryptfs.open_image(image, key_file=key, type="plain", sector_size=4096,
                            read_only=False) as device:
        for _ in range(5):
            run_threads(lambda i: device.pwrite(bytes([i + 1]) * 70001, 1000), 8)
            assert len(set(device.pread(70001, 1000))) == 1     # one writer's bytes, whole


def test_threads_sharing_the_position_each_read_a_distinct_piece(tmp_path):
    image, key = plain_image(str(tmp_path), 512)
    with cryptfs.open_image(image, key_file=key, type="plain", read_only=False) as device:
        data = random.Random(5).randbytes(DEVICE)
        device.write(data)
        device.seek(0)
        pieces = [b""] * 64
        run_threads(lambda i: pieces.__setitem__(i, device.read(DEVICE // 64)), 64)
        assert sorted(pieces) == sorted(data[i:i + DEVICE // 64]
                                        for i in range(0, DEVICE, DEVICE // 64))


# --- errors and hygiene ---------------------------------------------------------------------

@pytest.fixture
def luks_image(tmp_path) -> Path:
    image = tmp_path / "image"
    cryptfs.format_image(image, passphrase=PASSPHRASE, size=20 << 20, pbkdf="pbkdf2",
                         pbkdf_force_iterations=1000)
    return image


def test_format_image_read_header_and_a_round_trip(luks_image):
    header = cryptfs.read_header(luks_image)
    assert header.segment.encryption == "aes-xts-plain64"
    with cryptfs.open_image(luks_image, passphrase=PASSPHRASE, read_only=False) as device:
        assert device.pwrite(b"x" * 1000, 12345) == 1000
    with cryptfs.open_image(luks_image, passphrase=PASSPHRASE) as device:
        assert device.pread(1000, 12345) == b"x" * 1000
    with pytest.raises(BusyError, match="overwrite=True"):
        cryptfs.format_image(luks_image, passphrase="other")


@pytest.mark.parametrize("kwargs, error, message", [
    ({"passphrase": "wrong"}, KeyMaterialError, "No key available with this passphrase."),
    ({}, KeyMaterialError, "give exactly one of passphrase and key_file"),
    ({"passphrase": PASSPHRASE, "backend": "engine"}, ConfigError, "asynchronous"),
    ({"passphrase": PASSPHRASE, "backend": "gpu"}, Exception, "unknown backend 'gpu'"),
    ({"passphrase": PASSPHRASE, "cipher": "aes-cbc-plain"}, ConfigError,
     "applies to plain mode"),
    ({"passphrase": PASSPHRASE, "colour": "blue"}, ConfigError, "unknown option colour"),
])
def test_bad_input_is_a_cryptfs_error_and_leaves_nothing_locked(luks_image, kwargs, error,
                                                                message):
    before = luks_image.read_bytes()
    with pytest.raises(error, match=message) as e:
        cryptfs.open_image(luks_image, **kwargs)
    assert isinstance(e.value, cryptfs.errors.CryptfsError)
    assert luks_image.read_bytes() == before
    with cryptfs.open_image(luks_image, passphrase=PASSPHRASE, read_only=False):
        pass                                            # nothing was left holding the lock


def test_the_image_is_locked_as_cryptfs_open_locks_it(luks_image):
    with cryptfs.open_image(luks_image, passphrase=PASSPHRASE, read_only=False):
        with pytest.raises(BusyError, match="in use"):
            cryptfs.open_image(luks_image, passphrase=PASSPHRASE)
    with cryptfs.open_image(luks_image, passphrase=PASSPHRASE) as one, \
            cryptfs.open_image(luks_image, passphrase=PASSPHRASE) as two:    # readers share
        assert one.pread(10, 0) == two.pread(10, 0)


def test_close_wipes_the_key_and_refuses_more_work(luks_image):
    device = cryptfs.open_image(luks_image, passphrase=PASSPHRASE)
    key = device._stack.volume.key.buffer
    assert any(key)
    device.close()
    assert not any(key) and device.closed
    with pytest.raises(ValueError):
        device.read(1)
    with pytest.raises(DeviceError) as e:
        cryptfs.open_image(luks_image, passphrase=PASSPHRASE).write(b"x")
    assert e.value.errno == errno.EROFS


def test_only_the_api_is_public():
    assert set(cryptfs.__all__) == {"EncryptedImage", "errors", "format_image", "open_image",
                                    "read_header"}
    for name in cryptfs.__all__:
        assert getattr(cryptfs, name).__doc__, name
    assert (Path(cryptfs.__file__).parent / "py.typed").exists()


def test_the_example_decrypts_an_image(luks_image, tmp_path):
    import subprocess
    import sys

    from helpers import ROOT
    with cryptfs.open_image(luks_image, passphrase=PASSPHRASE, read_only=False) as device:
        data = random.Random(8).randbytes(len(device))
        device.write(data)
    (tmp_path / "pass").write_text(PASSPHRASE)
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "decrypt_image.py"),
                           str(luks_image), str(tmp_path / "out"), "--key-file",
                           str(tmp_path / "pass")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out").read_bytes() == data
    (tmp_path / "wrong").write_text("not it")
    wrong = subprocess.run([sys.executable, str(ROOT / "examples" / "decrypt_image.py"),
                            str(luks_image), str(tmp_path / "out2"), "--key-file",
                            str(tmp_path / "wrong")], capture_output=True, text=True)
    assert wrong.returncode == 2 and "No key available" in wrong.stderr
