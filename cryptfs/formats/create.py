"""``cryptfs format``: write a new LUKS1 or LUKS2 header (and key slot 0) that cryptsetup,
the kernel and QEMU accept.  The data area is left as it is, as ``cryptsetup luksFormat``
does; with a detached header the image is not touched at all."""

import os
from dataclasses import dataclass

from ..errors import ConfigError, ImageError
from ..geometry import SECTOR, check_sector_size
from ..keys import Secret
from ..progress import progress
from ..spec import parse_spec
from . import luks1, luks2
from .kdf import ARGON2_MIN_TIME, PBKDF2_MIN_ITERATIONS, Kdf, argon2_time_for, pbkdf2_iterations_for

DIGEST_MS = 125         # cryptsetup spends ~1/8 s on the volume key digest
SALT_BYTES = 32


@dataclass
class FormatOptions:
    version: str = "luks2"             # luks1 | luks2
    cipher: str = "aes-xts-plain64"
    key_bits: int = 0                  # 0: the cipher's default
    sector_size: int = 512
    hash: str = "sha256"               # PBKDF2 / AF / digest hash
    pbkdf: str = ""                    # "" = pbkdf2 for LUKS1, argon2id for LUKS2
    iter_time: int = 2000              # ms to spend unlocking (cryptsetup --iter-time)
    force_iterations: int = 0          # fixed iterations / Argon2 time instead of timing
    memory: int = 1024 * 1024          # Argon2 KiB (cryptsetup's default)
    parallel: int = 4                  # Argon2 lanes
    size: int = 0                      # create the image with this many bytes
    header: str = ""                   # detached header file


def _kdf(o: FormatOptions, key_bytes: int) -> tuple[Kdf, int]:
    kind = o.pbkdf or ("pbkdf2" if o.version == "luks1" else "argon2id")
    if o.version == "luks1" and kind != "pbkdf2":
        raise ConfigError("LUKS1 supports only --pbkdf pbkdf2")
    salt = os.urandom(SALT_BYTES)
    if kind == "pbkdf2":
        iterations = o.force_iterations or pbkdf2_iterations_for(o.hash, o.iter_time, key_bytes)
        if iterations < PBKDF2_MIN_ITERATIONS:
            raise ConfigError(f"PBKDF2 needs at least {PBKDF2_MIN_ITERATIONS} iterations")
        kdf = Kdf(kind, salt, iterations, o.hash)
    else:
        parallel = max(1, min(o.parallel, os.cpu_count() or 1))
        time_cost = o.force_iterations or argon2_time_for(kind, o.iter_time, o.memory, parallel,
                                                          key_bytes)
        if time_cost < ARGON2_MIN_TIME:
            raise ConfigError(f"{kind} needs a time cost of at least {ARGON2_MIN_TIME}")
        kdf = Kdf(kind, salt, time_cost, memory=o.memory, parallel=parallel)
    kdf.check()
    digest_iterations = PBKDF2_MIN_ITERATIONS if o.force_iterations else max(
        PBKDF2_MIN_ITERATIONS, pbkdf2_iterations_for(o.hash, DIGEST_MS, key_bytes))
    return kdf, digest_iterations


def format_image(image: str, o: FormatOptions, passphrase: Secret) -> str:
    """Write the header; returns the new UUID.  CryptfsError before anything is written."""
    spec = parse_spec(o.cipher)
    key_bits = o.key_bits or spec.default_key_bits
    spec.check_key_bits(key_bits)
    check_sector_size(o.sector_size)
    if o.version == "luks1" and o.sector_size != SECTOR:
        raise ConfigError("LUKS1 has 512-byte sectors only; use --type luks2 for "
                          f"--sector-size {o.sector_size}")
    if o.size:
        if os.path.exists(image):
            raise ImageError(f"{image} exists; --size creates a new image")
        if o.size % o.sector_size:
            raise ConfigError(f"--size {o.size} is not a multiple of the sector size")
    elif not os.path.exists(image):
        raise ImageError(f"{image} does not exist (give --size to create it)")
    if o.header:
        data_offset = 0
    elif o.version == "luks1":
        data_offset = luks1.layout(key_bits // 8)[2] * SECTOR
    else:
        data_offset = luks2.DATA_OFFSET
    size = o.size or os.path.getsize(image)
    if size < data_offset + o.sector_size:
        raise ImageError(f"{image} is too small: {size} bytes, the header and one sector need "
                         f"{data_offset + o.sector_size}")
    kdf, digest_iterations = _kdf(o, key_bits // 8)
    key = Secret(os.urandom(key_bits // 8))
    try:
        with progress(f"Creating key slot 0 ({kdf.describe()})", o.iter_time / 1000):
            if o.version == "luks1":
                header, writes = luks1.create(key, o.cipher, passphrase, kdf, digest_iterations,
                                              detached=bool(o.header))
            else:
                header, writes = luks2.create(key, o.cipher, o.sector_size, passphrase, kdf,
                                              digest_iterations, o.hash, detached=bool(o.header))
    finally:
        key.wipe()
    if o.size:
        with open(image, "xb") as f:
            f.truncate(o.size)
    _write(o.header or image, writes)
    return header.uuid


def _write(path: str, writes: dict[int, bytes]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        for offset, data in sorted(writes.items()):
            view = memoryview(data)
            while view:
                n = os.pwrite(fd, view, offset)
                view, offset = view[n:], offset + n
        os.fsync(fd)
    finally:
        os.close(fd)
