"""``cryptfs format``: write a new LUKS1 or LUKS2 header (and key slot 0) that cryptsetup,
the kernel and QEMU accept.  The data area is left as it is, as ``cryptsetup luksFormat``
does; with a detached header the image is not touched at all."""

import os

from cryptfs.core.image import open_checked, size_of
from cryptfs.crypto.keys import Secret
from cryptfs.crypto.spec import parse_spec
from cryptfs.errors import ConfigError, ImageError
from cryptfs.formats.lock import Holder, MetadataLock
from cryptfs.formats.luks import FORMATS
from cryptfs.formats.metadata import write_at
from cryptfs.formats.params import FormatOptions, digest_iterations, new_kdf
from cryptfs.util.progress import progress


def format_image(image: str, o: FormatOptions, passphrase: Secret,
                 holder: Holder | None = None) -> str:
    """Write the header under cryptsetup's exclusive lock; returns the new UUID.  CryptfsError
    before anything is written (BusyError naming ``holder``'s answer if cryptfs has it open)."""
    kind = FORMATS[o.version]
    spec = parse_spec(o.cipher)
    key_bits = o.key_bits or spec.default_key_bits
    spec.check_key_bits(key_bits)
    kind.check_sector_size(o.sector_size)
    if o.size:
        if os.path.exists(image):
            raise ImageError(f"{image} exists; --size creates a new image")
        if o.size % o.sector_size:
            raise ConfigError(f"--size {o.size} is not a multiple of the sector size")
    elif not os.path.exists(image):
        raise ImageError(f"{image} does not exist (give --size to create it)")
    data_offset = 0 if o.header else kind.default_data_offset(key_bits // 8)
    size = o.size or _existing_size(image)
    if size < data_offset + o.sector_size:
        raise ImageError(f"{image} is too small: {size} bytes, the header and one sector need "
                         f"{data_offset + o.sector_size}")
    kdf = new_kdf(o, o.version, key_bits // 8)
    digest_iter = digest_iterations(o, o.hash, key_bits // 8)
    key = _random_key(key_bits // 8)
    try:
        with progress(f"Creating key slot 0 ({kdf.describe()})", o.iter_time / 1000):
            header, writes = kind.create(key, o.cipher, o.sector_size, passphrase, kdf,
                                         digest_iter, o.hash, detached=bool(o.header))
    finally:
        key.wipe()
    if o.size:
        _create(image, o.size)
    try:
        _write(o.header or image, writes, holder)
    except BaseException:
        if o.size:                  # a failed format leaves nothing behind
            os.unlink(image)
        raise
    return header.uuid


def _existing_size(image: str) -> int:
    """The size of an image file or block device (ImageError for anything else)."""
    fd = open_checked(image, os.O_RDONLY)
    try:
        return size_of(fd)
    finally:
        os.close(fd)


def _create(image: str, size: int) -> None:
    """A new image file of ``size`` bytes; ImageError in one line, and no file left, if the
    directory or the filesystem refuses it."""
    try:
        fd = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise ImageError(f"cannot create {image}: {e.strerror}") from None
    try:
        os.ftruncate(fd, size)
    except OSError as e:
        os.unlink(image)
        raise ImageError(f"cannot make {image} {size} bytes: {e.strerror}") from None
    finally:
        os.close(fd)


def _random_key(length: int) -> Secret:
    """A new volume key, read from the kernel's random source straight into the Secret
    (``os.urandom`` would return it as bytes, a copy nothing can wipe)."""
    key = Secret(bytes(length))
    view = memoryview(key.buffer)
    with open("/dev/urandom", "rb", buffering=0) as f:
        while view:
            view = view[f.readinto(view):]
    return key


def _write(path: str, writes: dict[int, bytes], holder: Holder | None) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise ImageError(f"cannot write {path}: {e.strerror}") from None
    try:
        with MetadataLock(path, exclusive=True, holder=holder):
            for offset, data in sorted(writes.items()):
                write_at(fd, data, offset)
    finally:
        os.close(fd)
