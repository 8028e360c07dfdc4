"""Opening LUKS volumes: detect the version, read the header (from the image or a detached
header file), unlock a key slot with the passphrase, and lay out the data segment.  Everything
after detection asks the header (:mod:`.protocol`), whichever version it is."""

import logging
import os

from cryptfs.core.config import PLAIN_ONLY, Config
from cryptfs.core.geometry import SECTOR, Geometry
from cryptfs.core.image import Image, open_checked
from cryptfs.core.volume import KeySource, Volume
from cryptfs.crypto.keys import Secret
from cryptfs.crypto.spec import parse_spec
from cryptfs.errors import ConfigError, FormatError
from cryptfs.formats import signatures
from cryptfs.formats.luks1 import MAGIC, Luks1Header
from cryptfs.formats.luks2.disk import HDR_SIZES, MAGIC_SECONDARY
from cryptfs.formats.luks2.header import Luks2Header
from cryptfs.formats.protocol import LuksHeader
from cryptfs.util.progress import progress

log = logging.getLogger(__name__)

#: the header classes by ``--type``
FORMATS: dict[str, type[LuksHeader]] = {cls.KIND: cls for cls in (Luks1Header, Luks2Header)}


class HeaderFile:
    """Read access to where the header lives (an image file, a block device or a detached
    header: ImageError for anything else); short reads come back short."""

    def __init__(self, path: str, writable: bool = False):
        self.path = path
        self.fd = open_checked(path, os.O_RDWR if writable else os.O_RDONLY)

    def read_at(self, offset: int, length: int) -> bytes:
        return os.pread(self.fd, length, offset)

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> "HeaderFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def detect(read_at) -> type[LuksHeader] | None:
    """The header class, from the magic and version at 0 (LUKS1 and the LUKS2 primary share
    the magic), or from a LUKS2 secondary copy where there is no magic at 0; None if neither."""
    head = read_at(0, 8)
    if head[:6] == MAGIC:
        version = int.from_bytes(head[6:8], "big")
        return next((cls for cls in FORMATS.values() if cls.VERSION == version), None)
    for offset in HDR_SIZES:                  # a LUKS2 image whose primary copy is damaged
        head = read_at(offset, 8)
        if head[:6] == MAGIC_SECONDARY and int.from_bytes(head[6:8], "big") == 2:
            return Luks2Header
    return None


def read(hdr: HeaderFile, wanted: str = "luks") -> LuksHeader:
    """The LUKS header in ``hdr``, validated as cryptsetup validates it; FormatError if there
    is none, it is invalid, or it is not the ``wanted`` version.  A damaged or outdated LUKS2
    copy is logged as a warning — unless blkid finds another signature on the file, which is
    refused as cryptsetup refuses it."""
    kind = detect(hdr.read_at)
    if kind is None:
        raise FormatError(f"{hdr.path} is not a LUKS image (for plain dm-crypt use --type plain)")
    if wanted not in ("luks", kind.KIND):
        raise FormatError(f"{hdr.path} is {kind.KIND.upper()}, not {wanted.upper()}")
    header = kind.read(hdr.read_at)
    if header.damaged:
        other = signatures.foreign_signature(hdr.path)
        if other:
            raise FormatError(f"{hdr.path} holds a {other} signature and its {header.damaged} "
                              "LUKS2 header is damaged: Device contains ambiguous signatures, "
                              "cannot auto-recover LUKS2. Please run \"cryptsetup repair\" "
                              "for recovery.")
    for warning in header.warnings:
        log.warning("%s: %s", hdr.path, warning)
    return header


def read_header(hdr: HeaderFile, wanted: str = "luks") -> tuple[type[LuksHeader], LuksHeader]:
    """(the header's class, :func:`read`'s header): the pair the CLI and the API take apart
    (``kind.dump(header, path)``)."""
    header = read(hdr, wanted)
    return type(header), header


def check_layout(header: LuksHeader, header_path: str, image: Image) -> None:
    """FormatError where the data area would start over the header, as ``cryptsetup open``
    refuses it: a data offset of 0 needs a detached header."""
    if header.segment.offset == 0 and os.path.samefile(header_path, image.path):
        raise FormatError(f"Device header overlaps with data area: the {header.OFFSET_FIELD} "
                          f"is 0 and the header is in {image.path} (a data offset of 0 needs a "
                          "detached header, --header)")


def unlock(kind: type[LuksHeader], header: LuksHeader, hdr: HeaderFile, keys: KeySource,
           slot: int | None):
    """(volume key, slot) from the user's passphrase; KeyMaterialError if it opens nothing."""
    passphrase = keys.read()
    try:
        with progress("Unlocking"):
            return kind.unlock(header, hdr.read_at, passphrase, slot)
    finally:
        passphrase.wipe()


def volume_key_dump(kind: type[LuksHeader], header: LuksHeader, path: str, key: Secret) -> str:
    """:meth:`~.protocol.LuksHeader.volume_key_dump`."""
    return kind.volume_key_dump(header, path, key)


def open_luks(image: Image, config: Config, keys: KeySource) -> Volume:
    for (section, key), flag in PLAIN_ONLY.items():
        if (section, key) in config.explicit:
            raise ConfigError(f"{flag} applies to plain mode; a LUKS header sets it")
    slot = None if config.device.key_slot < 0 else config.device.key_slot
    with HeaderFile(config.device.header or image.path) as hdr:
        header = read(hdr, config.device.type)
        header.check_supported()
        check_layout(header, hdr.path, image)
        key, used = unlock(type(header), header, hdr, keys, slot)
        header_path = os.path.abspath(hdr.path)
    seg = header.segment
    try:
        spec = parse_spec(seg.encryption)
        spec.check_key_bits(len(key) * 8)
        geometry = Geometry.for_image(image.size, seg.sector_size, seg.offset // SECTOR,
                                      seg.iv_tweak, False,
                                      None if seg.size is None else seg.size // SECTOR)
    except BaseException:
        key.wipe()
        raise
    info = {"key_bits": len(key) * 8, "uuid": header.uuid, "key_slot": used,
            "header": header_path}
    return Volume(header.KIND, spec, key, geometry, info)
