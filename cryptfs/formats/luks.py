"""Opening LUKS volumes: detect the version, read the header (from the image or a detached
header file), unlock a key slot with the passphrase, and lay out the data segment."""

import logging
import os

from ..config import PLAIN_ONLY, Config
from ..errors import ConfigError, FormatError, ImageError
from ..geometry import SECTOR, Geometry
from ..image import Image
from ..progress import progress
from ..spec import parse_spec
from ..volume import KeySource, Volume
from . import luks1, luks2

log = logging.getLogger(__name__)

class HeaderFile:
    """Read access to where the header lives; short reads come back short."""

    def __init__(self, path: str):
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise ImageError(f"cannot open header {path}: {e.strerror}") from None

    def read_at(self, offset: int, length: int) -> bytes:
        return os.pread(self.fd, length, offset)

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> "HeaderFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def detect(read_at) -> str | None:
    """``luks1``, ``luks2`` or None, from the magic and version (either LUKS2 copy)."""
    head = read_at(0, 8)
    if head[:6] == luks1.MAGIC:
        version = int.from_bytes(head[6:8], "big")
        return {1: "luks1", 2: "luks2"}.get(version)
    for offset in luks2.HDR_SIZES:            # a LUKS2 image whose primary copy is damaged
        head = read_at(offset, 8)
        if head[:6] == luks2.MAGIC_SECONDARY and int.from_bytes(head[6:8], "big") == 2:
            return "luks2"
    return None


def read_header(hdr: HeaderFile, wanted: str = "luks"):
    """(module, header) for the LUKS header in ``hdr``; FormatError if there is none or it is
    not the ``wanted`` version.  LUKS2 copy damage is logged as a warning."""
    version = detect(hdr.read_at)
    if version is None:
        raise FormatError(f"{hdr.path} is not a LUKS image (for plain dm-crypt use --type plain)")
    if wanted not in ("luks", version):
        raise FormatError(f"{hdr.path} is {version.upper()}, not {wanted.upper()}")
    if version == "luks1":
        return luks1, luks1.parse(hdr.read_at(0, luks1.HEADER_SIZE))
    header = luks2.read(hdr.read_at)
    for warning in header.warnings:
        log.warning("%s: %s", hdr.path, warning)
    return luks2, header


def unlock(module, header, hdr: HeaderFile, keys: KeySource, slot: int | None):
    """(volume key, slot) from the user's passphrase; KeyMaterialError if it opens nothing."""
    passphrase = keys.read()
    try:
        with progress("Unlocking"):
            return module.unlock(header, hdr.read_at, passphrase, slot)
    finally:
        passphrase.wipe()


def open_luks(image: Image, config: Config, keys: KeySource) -> Volume:
    for (section, key), flag in PLAIN_ONLY.items():
        if (section, key) in config.explicit:
            raise ConfigError(f"{flag} applies to plain mode; a LUKS header sets it")
    slot = None if config.device.key_slot < 0 else config.device.key_slot
    with HeaderFile(config.device.header or image.path) as hdr:
        module, header = read_header(hdr, config.device.type)
        key, used = unlock(module, header, hdr, keys, slot)
        header_path = os.path.abspath(hdr.path)
    if module is luks1:
        version, cipher, sector_size = "luks1", header.cipher, SECTOR
        offset, iv_tweak, size = header.payload_offset, 0, None
    else:
        seg = header.segment
        version, cipher, sector_size = "luks2", seg.encryption, seg.sector_size
        offset, iv_tweak = seg.offset // SECTOR, seg.iv_tweak
        size = None if seg.size is None else seg.size // SECTOR
    try:
        spec = parse_spec(cipher)
        spec.check_key_bits(len(key) * 8)
        geometry = Geometry.for_image(image.size, sector_size, offset, iv_tweak, False, size)
    except BaseException:
        key.wipe()
        raise
    info = {"key_bits": len(key) * 8, "uuid": header.uuid, "key_slot": used,
            "header": header_path}
    return Volume(version, spec, key, geometry, info)
