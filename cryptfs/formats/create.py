"""``cryptfs format``: write a new LUKS1 or LUKS2 header (and key slot 0) that cryptsetup,
the kernel and QEMU accept.  The data area is left as it is, as ``cryptsetup luksFormat``
does; with a detached header the image is not touched at all."""

import os

from ..errors import ConfigError, ImageError
from ..geometry import SECTOR, check_sector_size
from ..keys import Secret
from ..progress import progress
from ..spec import parse_spec
from . import luks1, luks2
from .lock import Holder, MetadataLock
from .metadata import write_at
from .params import FormatOptions, digest_iterations, new_kdf


def format_image(image: str, o: FormatOptions, passphrase: Secret,
                 holder: Holder | None = None) -> str:
    """Write the header under cryptsetup's exclusive lock; returns the new UUID.  CryptfsError
    before anything is written (BusyError naming ``holder``'s answer if cryptfs has it open)."""
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
    kdf = new_kdf(o, o.version, key_bits // 8)
    digest_iter = digest_iterations(o, o.hash, key_bits // 8)
    key = Secret(os.urandom(key_bits // 8))
    try:
        with progress(f"Creating key slot 0 ({kdf.describe()})", o.iter_time / 1000):
            if o.version == "luks1":
                header, writes = luks1.create(key, o.cipher, passphrase, kdf, digest_iter,
                                              detached=bool(o.header))
            else:
                header, writes = luks2.create(key, o.cipher, o.sector_size, passphrase, kdf,
                                              digest_iter, o.hash, detached=bool(o.header))
    finally:
        key.wipe()
    if o.size:
        with open(image, "xb") as f:
            f.truncate(o.size)
    _write(o.header or image, writes, holder)
    return header.uuid


def _write(path: str, writes: dict[int, bytes], holder: Holder | None) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        with MetadataLock(path, exclusive=True, holder=holder):
            for offset, data in sorted(writes.items()):
                write_at(fd, data, offset)
    finally:
        os.close(fd)
