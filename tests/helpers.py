"""Test helpers: tool detection, the CLI, mounts, the oracles (qemu-img, cryptsetup), and an
in-process device."""

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PASSPHRASE = "correct horse battery staple"


#: the key of conftest's ``volume`` fixture (a raw 512-bit plain-mode key)
VOLUME_KEY = bytes(range(7, 71))


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


def fuse_usable() -> str | None:
    """None if FUSE mounts work here, else why not."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if os.geteuid() != 0 and not have("fusermount3"):
        return "not root and no fusermount3"
    return None


#: a test that mounts: in the ``fuse`` lane, skipped (conftest) where FUSE is not usable
needs_fuse = pytest.mark.fuse


def needs(*tools: str):
    """A test that runs external tools: in the ``oracle`` lane, skipped (conftest) where one
    is missing."""
    return pytest.mark.oracle(*tools)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_random(path: Path, size: int, seed: int = 0) -> bytes:
    import random
    data = random.Random(seed).randbytes(size)
    Path(path).write_bytes(data)
    return data


#: the data plane ``cryptfs open`` is asked for while a test uses the ``plane`` fixture
#: (conftest.py), so the same test runs over both planes; None: the config decides
PLANE: dict[str, str | None] = {"value": None}


def cryptfs(*args: str, input: bytes | None = None, check: bool = False,
            timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the CLI as a user would: a separate process, bytes in, text out."""
    if args and args[0] == "open" and PLANE["value"] and "--test-passphrase" not in args:
        args = (*args, "--set", f"pipeline.plane={PLANE['value']!r}")
    result = subprocess.run([sys.executable, "-m", "cryptfs", *map(str, args)], input=input,
                            capture_output=True, timeout=timeout, cwd=ROOT)
    result.stdout, result.stderr = result.stdout.decode(), result.stderr.decode()
    if check and result.returncode:
        raise AssertionError(f"cryptfs {' '.join(map(str, args))} failed "
                             f"({result.returncode}): {result.stderr}")
    return result


def force_unmount(mountpoint: Path) -> None:
    subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)


@contextlib.contextmanager
def mounted(image: Path, mountpoint: Path, *options: str, input: bytes | None = None):
    """``cryptfs open`` for the duration of a with-block; always taken down afterwards."""
    mountpoint.mkdir(exist_ok=True)
    cryptfs("open", image, mountpoint, *options, input=input, check=True)
    try:
        yield mountpoint
    finally:
        result = cryptfs("close", mountpoint)
        if result.returncode:
            force_unmount(mountpoint)
            time.sleep(0.2)
            raise AssertionError(f"cryptfs close failed: {result.stderr}")


def qemu_img(*args: str) -> None:
    """qemu-img, retried: its PBKDF timing now and then fails ("Unable to get accurate CPU
    usage") on a busy machine."""
    for attempt in range(5):
        result = subprocess.run(["qemu-img", *args], capture_output=True, text=True)
        if result.returncode == 0:
            return
        if "accurate CPU usage" not in result.stderr:
            break
    raise AssertionError(f"qemu-img {' '.join(args)}: {result.stderr}")


def qemu_luks_encrypt(plain: Path, image: Path, passphrase: str = PASSPHRASE,
                      cipher_alg: str = "aes-256", cipher_mode: str = "xts",
                      ivgen_alg: str = "plain64", ivgen_hash: str | None = None,
                      hash_alg: str | None = None) -> None:
    opts = (f"key-secret=s0,iter-time=10,cipher-alg={cipher_alg},cipher-mode={cipher_mode},"
            f"ivgen-alg={ivgen_alg}")
    if ivgen_hash:
        opts += f",ivgen-hash-alg={ivgen_hash}"
    if hash_alg:
        opts += f",hash-alg={hash_alg}"
    qemu_img("convert", "-f", "raw", "-O", "luks", "--object",
             f"secret,id=s0,data={passphrase}", "-o", opts, str(plain), str(image))


def qemu_luks_decrypt(image: Path, out: Path, passphrase: str = PASSPHRASE) -> bytes:
    qemu_img("convert", "--object", f"secret,id=s0,data={passphrase}", "--image-opts",
             f"driver=luks,key-secret=s0,file.filename={image}", "-O", "raw", str(out))
    return out.read_bytes()


def luks_volume_key(image: Path, passphrase: str = PASSPHRASE,
                    header: Path | None = None) -> tuple[bytes, int]:
    """(volume key, payload offset in 512-byte sectors) as cryptsetup reports them."""
    cmd = ["cryptsetup", "luksDump", "--dump-volume-key", "--batch-mode", "--key-file", "-"]
    result = subprocess.run(cmd + [str(header or image)], input=passphrase.encode(),
                            capture_output=True, check=True)
    text = result.stdout.decode()
    lines = text.splitlines()
    key_hex, grab, offset = "", False, None
    for line in lines:
        if line.startswith(("MK dump:", "Volume key:")):
            grab = True
            line = line.split(":", 1)[1]
        elif grab and not line.startswith(("\t", " ")):
            grab = False
        if grab:
            key_hex += "".join(line.split())
        if line.startswith("Payload offset:"):
            offset = int(line.split(":")[1])
    if offset is None:          # LUKS2 prints the data segment offset with plain luksDump
        dump = subprocess.run(["cryptsetup", "luksDump", str(header or image)],
                              capture_output=True, text=True, check=True).stdout
        for line in dump.splitlines():
            if line.strip().startswith("offset:") and "[bytes]" in line:
                offset = int(line.split(":")[1].split()[0]) // 512
                break
    return bytes.fromhex(key_hex), offset


def open_plain(image: Path, key: bytes, *, cipher: str = "aes-xts-plain64", offset: int = 0,
               sector_size: int = 512, backend: str = "software",
               backend_options: dict | None = None, **settings):
    """An in-process device (no FUSE) over ``image`` in plain mode: a cryptfs Daemon whose
    ``.queue`` takes reads and writes as FUSE requests (``.device``: the synchronous device
    below it) — the trio plane's path, unless ``plane`` says otherwise.  ``settings`` are
    config keys of any section."""
    key_path = Path(image).with_suffix(".key")
    key_path.write_bytes(key)
    return _daemon(image, type="plain", key_file=str(key_path), cipher=cipher,
                   key_size=len(key) * 8, sector_size=sector_size, offset=offset,
                   backend=backend, backend_options=backend_options, **settings)


def _daemon(image: Path, backend: str, backend_options: dict | None = None, **settings):
    from cryptfs.core.config import SECTIONS, Config
    from cryptfs.core.volume import KeySource
    from cryptfs.fuse.daemon import Daemon
    from cryptfs.stack import assemble

    config = Config()
    settings.setdefault("plane", "trio")        # .queue is the trio plane's
    config.set("backend", "name", backend)
    if backend_options:
        config.backend.options[backend] = backend_options
    for name, value in settings.items():
        section = next(s for s, cls in SECTIONS.items() if name in cls.__dataclass_fields__)
        config.set(section, name, value)
    return Daemon(assemble(str(image), config, KeySource(config.crypto.key_file)))


def open_luks(image: Path, passphrase: str = PASSPHRASE, *, header: Path | None = None,
              backend: str = "software", backend_options: dict | None = None, **settings):
    """An in-process device over a LUKS ``image`` unlocked with ``passphrase``."""
    pass_path = Path(image).with_suffix(".pass")
    pass_path.write_text(passphrase)
    if header:
        settings["header"] = str(header)
    return _daemon(image, backend=backend, backend_options=backend_options,
                   key_file=str(pass_path), **settings)


def cryptsetup(*args: str, passphrase: str | None = PASSPHRASE) -> str:
    """Run cryptsetup non-interactively (passphrase on stdin), return stdout."""
    cmd = ["cryptsetup", "--batch-mode", *args]
    if passphrase is not None:
        cmd[2:2] = ["--key-file", "-"]
    result = subprocess.run(cmd, input=(passphrase or "").encode(), capture_output=True)
    if result.returncode:
        raise AssertionError(f"{' '.join(cmd)}: {result.stderr.decode()}")
    return result.stdout.decode()


#: unaligned writes used against the oracles: mid-sector, across sectors, long, at the end
PATCHES = [(100, 1536), (4095, 3), (511, 70000), (-700, 700), (0, 512)]


async def read_then_patch(daemon, plaintext: bytes, seed: int) -> bytes:
    """Check the device reads ``plaintext``, apply PATCHES (negative offsets count from the
    end), close it, and return what it should now hold — for an oracle to compare."""
    import random
    assert bytes(await daemon.queue.read(0, len(plaintext))) == plaintext
    model = bytearray(plaintext)
    rng = random.Random(seed)
    for off, length in PATCHES:
        off %= len(plaintext)
        data = rng.randbytes(length)
        assert await daemon.queue.write(off, data) == length
        model[off:off + length] = data
    assert bytes(await daemon.queue.read(0, len(model))) == bytes(model)
    await daemon.queue.flush()
    daemon.close()
    return bytes(model)


def reencrypt_luks2(tmp_path, plaintext: bytes, sector_size: int, pbkdf: str, detached: bool):
    """A LUKS2 image cryptsetup made from ``plaintext``: (image, header or None)."""
    image = tmp_path / "image"
    kdf = (["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"] if pbkdf == "pbkdf2" else
           ["--pbkdf", "argon2id", "--pbkdf-force-iterations", "4", "--pbkdf-memory", "32768"])
    args = ["reencrypt", "--encrypt", "--type", "luks2", "--sector-size", str(sector_size), *kdf]
    if detached:
        image.write_bytes(plaintext)
        header = tmp_path / "header"
        cryptsetup(*args, "--header", str(header), str(image))
        return image, header
    with open(image, "wb") as f:
        f.write(plaintext)
        f.truncate(len(plaintext) + (32 << 20))     # room the header takes from the end
    cryptsetup(*args, "--reduce-device-size", "32M", str(image))
    return image, None


def fresh_copy(target) -> None:
    """The tree as a clone of it would hold it (tracked and new files, nothing ignored)."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                            "--exclude-standard"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if os.path.exists(ROOT / name):
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target / name)
