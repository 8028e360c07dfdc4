"""Inputs as users have them: key files of every kind (pipes, FIFOs, /dev/stdin, process
substitution, character devices, offsets and sizes as cryptsetup reads them), image paths of
every file type, block devices, config files of any size or encoding, and the Python API's
argument types — each either working as cryptsetup's does or refused in one line."""

import os
import socket
import stat
import subprocess
import sys

import pytest
from test_cli import refused

import cryptfs
from cryptfs.errors import CryptfsError, ImageError, KeyMaterialError
from helpers import PASSPHRASE, ROOT, cryptsetup, needs, sha256
from helpers import cryptfs as run_cryptfs

FAST = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]


@pytest.fixture(scope="module")
def luks2(tmp_path_factory):
    """A LUKS2 image whose passphrase is bytes 10..40 of ``keyfile`` (cryptsetup's
    --keyfile-offset 10 --keyfile-size 30), made by cryptfs."""
    where = tmp_path_factory.mktemp("inputs")
    image, keyfile = where / "luks2.img", where / "keyfile"
    keyfile.write_bytes(os.urandom(100))
    run_cryptfs("format", image, "--size", "17M", "--key-file", keyfile, "--keyfile-offset",
                "10", "--keyfile-size", "30", *FAST, check=True)
    return image, keyfile


def test_read_key_file_as_cryptsetup_does(tmp_path):
    from cryptfs.crypto.keys import read_key_file
    data = bytes(range(200))
    path = tmp_path / "k"
    path.write_bytes(data)
    assert bytes(read_key_file(str(path)).buffer) == data
    assert bytes(read_key_file(str(path), 7, 20).buffer) == data[7:27]
    assert len(read_key_file("/dev/urandom", 0, 64)) == 64        # a character device
    assert len(read_key_file("/dev/urandom", 4096, 32)) == 32     # an offset on it: read past
    with pytest.raises(KeyMaterialError, match="Is a directory"):
        read_key_file(str(tmp_path))
    with pytest.raises(KeyMaterialError, match="holds 200 of the 300 bytes"):
        read_key_file(str(path), 0, 300)
    with pytest.raises(KeyMaterialError, match="larger than 8192 KiB"):
        read_key_file("/dev/zero")


def test_read_key_file_from_a_pipe_never_seeks():
    from cryptfs.crypto.keys import read_key_file
    read_end, write_end = os.pipe()
    os.write(write_end, b"0123456789abcdef")
    os.close(write_end)
    try:
        assert bytes(read_key_file(f"/proc/self/fd/{read_end}", 4, 6).buffer) == b"456789"
    finally:
        os.close(read_end)


@needs("cryptsetup", "bash")
@pytest.mark.parametrize("how", ["file", "stdin", "dev-stdin", "fifo", "process-substitution"])
def test_key_file_kinds_with_offset_and_size_agree_with_cryptsetup(luks2, tmp_path, how):
    image, keyfile = luks2
    options = ["--keyfile-offset", "10", "--keyfile-size", "30"]
    # the oracle: cryptsetup opens it with the same options
    cryptsetup("open", "--test-passphrase", "--key-file", str(keyfile), *options, str(image),
               passphrase=None)
    cli = f"{sys.executable} -m cryptfs open --test-passphrase {image} {' '.join(options)}"
    if how == "file":
        command = f"{cli} --key-file {keyfile}"
    elif how == "stdin":
        command = f"cat {keyfile} | {cli} --key-file -"
    elif how == "dev-stdin":
        command = f"cat {keyfile} | {cli} --key-file /dev/stdin"
    elif how == "fifo":
        fifo = tmp_path / "fifo"
        os.mkfifo(fifo)
        command = f"(cat {keyfile} > {fifo} &); {cli} --key-file {fifo}"
    else:
        command = f"{cli} --key-file <(cat {keyfile})"
    result = subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    wrong = subprocess.run(["bash", "-c", command.replace("--keyfile-offset 10",
                                                          "--keyfile-offset 11")],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert wrong.returncode != 0 and "Traceback" not in wrong.stderr


def test_plain_mode_key_from_dev_urandom(tmp_path):
    """The classic encrypted swap: the first key-size bytes of /dev/urandom."""
    image = tmp_path / "swap"
    image.write_bytes(bytes(1 << 20))
    with cryptfs.open_image(image, type="plain", key_file="/dev/urandom",
                            read_only=False) as device:
        device.write(b"swap page")
        device.seek(0)
        assert device.read(9) == b"swap page"


def special_paths(tmp_path) -> dict:
    """Image paths of every file type that is no image."""
    paths = {"directory": tmp_path / "dir", "fifo": tmp_path / "fifo",
             "socket": tmp_path / "sock", "character device": "/dev/null",
             "dangling symlink": tmp_path / "dangling", "missing": tmp_path / "missing"}
    paths["directory"].mkdir()
    os.mkfifo(paths["fifo"])
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(paths["socket"]))
    sock.close()
    paths["dangling symlink"].symlink_to(tmp_path / "nowhere")
    return paths


COMMANDS = [
    ["open", "{image}", "{mnt}", "--key-file", "{key}"],
    ["open", "{image}", "{mnt}", "--type", "plain", "--key-file", "{key}", "--read-only"],
    ["open", "--test-passphrase", "{image}", "--key-file", "{key}"],
    ["dump", "{image}"],
    ["dump", "{image}", "--dump-volume-key", "--key-file", "{key}"],
    ["luksAddKey", "{image}", "--key-file", "{key}", "{key}", *FAST],
    ["luksRemoveKey", "{image}", "--key-file", "{key}"],
    ["luksKillSlot", "{image}", "1", "--key-file", "{key}", "-q"],
    ["luksChangeKey", "{image}", "--key-file", "{key}", "{key}", *FAST],
    ["luksHeaderBackup", "{image}", "--header-backup-file", "{mnt}/backup"],
]


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_every_command_refuses_every_hostile_image_path_in_one_line(tmp_path, command):
    key, mnt = tmp_path / "key", tmp_path / "mnt"
    key.write_bytes(b"a passphrase")
    mnt.mkdir()
    for kind, path in special_paths(tmp_path).items():
        args = [a.format(image=path, mnt=mnt, key=key) for a in command]
        result = run_cryptfs(*args, timeout=30)      # a FIFO must not hang it
        assert result.returncode != 0, (kind, result.stdout)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("cryptfs: "), (kind, result.stderr)
        assert not os.path.ismount(mnt), kind
        assert sorted(os.listdir(mnt)) == [], kind


def test_the_api_refuses_every_hostile_image_path_with_its_own_errors(tmp_path):
    for kind, path in special_paths(tmp_path).items():
        with pytest.raises(CryptfsError):
            cryptfs.open_image(path, type="plain", passphrase="x")
        with pytest.raises(CryptfsError):
            cryptfs.read_header(path)


def test_a_directory_is_never_a_plain_device(tmp_path):
    with pytest.raises(ImageError, match="is a directory, not an image file"):
        cryptfs.open_image(tmp_path, type="plain", passphrase="x")


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe[device]\n", "is not UTF-8 text"),
    (b"[device\n", "is not valid TOML"),
])
def test_config_files_of_any_encoding_are_one_line(tmp_path, content, message):
    config = tmp_path / "c.toml"
    config.write_bytes(content)
    image = tmp_path / "image"
    image.write_bytes(bytes(1 << 20))
    refused(run_cryptfs("open", image, tmp_path, "--config", config), 1, message)


def test_a_config_that_never_ends_is_one_line(tmp_path):
    image = tmp_path / "image"
    image.write_bytes(bytes(1 << 20))
    refused(run_cryptfs("open", image, tmp_path, "--config", "/dev/zero", timeout=30), 1,
            "larger than 1024 KiB")


@pytest.mark.parametrize("passphrase", [3, 2.5, ["x"], None.__class__])
def test_api_passphrases_are_text_or_bytes(tmp_path, passphrase):
    image = tmp_path / "image"
    image.write_bytes(bytes(1 << 20))
    with pytest.raises(TypeError, match="passphrase must be str, bytes"):
        cryptfs.open_image(image, type="plain", passphrase=passphrase)


@pytest.mark.parametrize("passphrase", ["pass", b"pass", bytearray(b"pass"),
                                        memoryview(b"pass")])
def test_api_passphrase_types_agree(tmp_path, passphrase):
    image = tmp_path / "image"
    image.write_bytes(bytes(range(256)) * 4096)
    with cryptfs.open_image(image, type="plain", passphrase=passphrase) as device:
        assert device.read(4096) == cryptfs_plain_read(image)


def cryptfs_plain_read(image) -> bytes:
    with cryptfs.open_image(image, type="plain", passphrase="pass") as device:
        return device.read(4096)


@pytest.mark.slow
@pytest.mark.parametrize("how, bound", [("readinto", 1.1), ("read", 2.1)])
def test_a_large_read_is_converted_in_bounded_pieces(tmp_path, how, bound):
    """Peak memory of a 256 MiB read stays near the request itself — readinto(buffer) needs
    nothing beyond a piece, read(n) the bytes it returns and the buffer they are copied from
    (io.RawIOBase) — where the device once held three copies of a request at once."""
    image = tmp_path / "image"
    with open(image, "wb") as f:
        f.truncate(256 << 20)
    code = f"""
import resource, cryptfs
with cryptfs.open_image({str(image)!r}, type="plain", passphrase="p") as d:
    buffer = bytearray(256 << 20) if {how!r} == "readinto" else None
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    n = d.readinto(buffer) if buffer is not None else len(d.read(256 << 20))
    assert n == 256 << 20
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    grown_kib = int(result.stdout)
    assert grown_kib < (256 << 10) * bound, grown_kib


@pytest.fixture
def loop_device(tmp_path):
    """A loop device over a 32 MiB file (root and losetup needed)."""
    if os.geteuid() != 0:
        pytest.skip("loop devices need root")
    backing = tmp_path / "backing"
    backing.write_bytes(os.urandom(32 << 20))
    made = subprocess.run(["losetup", "--find", "--show", str(backing)], capture_output=True,
                          text=True)
    if made.returncode:
        pytest.skip(f"no loop device here: {made.stderr.strip()}")
    device = made.stdout.strip()
    try:
        yield device, backing
    finally:
        subprocess.run(["losetup", "-d", device], capture_output=True)


@needs("losetup")
def test_a_loop_device_opens_by_path_like_its_file(loop_device):
    device, backing = loop_device
    assert stat.S_ISBLK(os.stat(device).st_mode)
    with cryptfs.open_image(backing, type="plain", passphrase="p") as from_file:
        expected = from_file.pread(1 << 20, 5 << 20)
    with cryptfs.open_image(device, type="plain", passphrase="p") as from_device:
        assert from_device.size == 32 << 20
        assert from_device.pread(1 << 20, 5 << 20) == expected


@needs("losetup", "cryptsetup")
def test_format_dump_and_test_passphrase_on_a_loop_device(loop_device, tmp_path):
    device, _ = loop_device
    key = tmp_path / "key"
    key.write_text(PASSPHRASE)
    run_cryptfs("format", device, "--key-file", key, *FAST, "-q", check=True)
    dump = run_cryptfs("dump", device, check=True).stdout
    assert "LUKS header information" in dump
    run_cryptfs("open", "--test-passphrase", device, "--key-file", key, check=True)
    cryptsetup("open", "--test-passphrase", "--key-file", str(key), device, passphrase=None)


@needs("losetup")
def test_a_read_only_loop_device_opens_read_only(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("loop devices need root")
    backing = tmp_path / "backing"
    backing.write_bytes(bytes(4 << 20))
    made = subprocess.run(["losetup", "--find", "--show", "--read-only", str(backing)],
                          capture_output=True, text=True)
    if made.returncode:
        pytest.skip(f"no loop device here: {made.stderr.strip()}")
    device = made.stdout.strip()
    try:
        before = sha256(backing)
        with cryptfs.open_image(device, type="plain", passphrase="p", read_only=False) as d:
            assert not d.writable()
            with pytest.raises(CryptfsError):
                d.write(b"x")
        assert sha256(backing) == before
    finally:
        subprocess.run(["losetup", "-d", device], capture_output=True)



@pytest.mark.parametrize("where, size, message", [
    ("missing/dir/disk.img", "17M", "cannot create"),
    ("ro/disk.img", "17M", "cannot create"),
    ("disk.img", "8000T", "cannot make"),             # past what the filesystem allows
])
def test_a_failed_format_is_one_line_and_leaves_nothing(tmp_path, where, size, message):
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o555)
    key = tmp_path / "key"
    key.write_text(PASSPHRASE)
    target = tmp_path / where
    before = sorted(p.name for p in tmp_path.rglob("*"))
    try:
        result = run_cryptfs("format", target, "--size", size, "--key-file", key, *FAST)
        if result.returncode == 0 and os.geteuid() == 0 and where.startswith("ro/"):
            pytest.skip("root may write into a read-only directory")
        refused(result, result.returncode or 1, message)
        assert not target.exists()
        assert sorted(p.name for p in tmp_path.rglob("*")) == before
    finally:
        os.chmod(tmp_path / "ro", 0o755)


def test_a_mountpoint_that_is_not_empty_is_warned_about(tmp_path):
    import logging

    from cryptfs.cli.commands import _check_mountpoint
    full = tmp_path / "full"
    full.mkdir()
    (full / "a file").write_text("hidden while open")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("cryptfs").addHandler(handler)
    try:
        assert _check_mountpoint(str(full)) == str(full)
    finally:
        logging.getLogger("cryptfs").removeHandler(handler)
    assert any("is not empty" in r.getMessage() for r in records)
