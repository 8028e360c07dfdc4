"""Opening LUKS volumes: detect the version, read the header (from the image or a detached
header file), unlock a key slot with the passphrase, and lay out the data segment."""

import logging
import os

from ..config import PLAIN_ONLY, Config
from ..errors import ConfigError, FormatError, ImageError
from ..geometry import SECTOR, Geometry
from ..image import Image
from ..keys import Secret
from ..progress import progress
from ..spec import parse_spec
from ..volume import KeySource, Volume
from . import luks1, luks2, luks2_validate, signatures

log = logging.getLogger(__name__)

class HeaderFile:
    """Read access to where the header lives; short reads come back short."""

    def __init__(self, path: str, writable: bool = False):
        self.path = path
        flags, purpose = (os.O_RDWR, " for writing") if writable else (os.O_RDONLY, "")
        try:
            self.fd = os.open(path, flags | os.O_CLOEXEC)
        except OSError as e:
            raise ImageError(f"cannot open header {path}{purpose}: {e.strerror}") from None

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
    """(module, header) for the LUKS header in ``hdr``, validated as cryptsetup validates it;
    FormatError if there is none, it is invalid, or it is not the ``wanted`` version.  A
    damaged or outdated LUKS2 copy is logged as a warning — unless blkid finds another
    signature on the file, which is refused as cryptsetup refuses it."""
    version = detect(hdr.read_at)
    if version is None:
        raise FormatError(f"{hdr.path} is not a LUKS image (for plain dm-crypt use --type plain)")
    if wanted not in ("luks", version):
        raise FormatError(f"{hdr.path} is {version.upper()}, not {wanted.upper()}")
    if version == "luks1":
        return luks1, luks1.read(hdr.read_at)
    header = luks2.read(hdr.read_at)
    if header.damaged:
        other = signatures.foreign_signature(hdr.path)
        if other:
            raise FormatError(f"{hdr.path} holds a {other} signature and its {header.damaged} "
                              "LUKS2 header is damaged: Device contains ambiguous signatures, "
                              "cannot auto-recover LUKS2. Please run \"cryptsetup repair\" "
                              "for recovery.")
    for warning in header.warnings:
        log.warning("%s: %s", hdr.path, warning)
    return luks2, header


def check_layout(module, header, header_path: str, image: Image) -> None:
    """FormatError where the data area would start over the header, as ``cryptsetup open``
    refuses it: a data offset of 0 needs a detached header."""
    if module is luks1:
        field, offset = "LUKS1 payload offset", header.payload_offset
    else:
        field, offset = "LUKS2 segment 0 offset", header.segment.offset
    if offset == 0 and os.path.samefile(header_path, image.path):
        raise FormatError(f"Device header overlaps with data area: the {field} is 0 and the "
                          f"header is in {image.path} (a data offset of 0 needs a detached "
                          "header, --header)")


def unlock(module, header, hdr: HeaderFile, keys: KeySource, slot: int | None):
    """(volume key, slot) from the user's passphrase; KeyMaterialError if it opens nothing."""
    passphrase = keys.read()
    try:
        with progress("Unlocking"):
            return module.unlock(header, hdr.read_at, passphrase, slot)
    finally:
        passphrase.wipe()


def volume_key_dump(module, header, path: str, key: Secret) -> str:
    """What ``cryptsetup luksDump --dump-volume-key`` prints: the cipher, the data offset, the
    UUID and the key, 16 bytes a line."""
    if module is luks1:
        name, mode, offset = header.cipher_name, header.cipher_mode, header.payload_offset
    else:
        name, _, mode = (header.segment.encryption if header.segment else "null").partition("-")
        offset = luks2_validate.min_segment_offset(header.metadata["segments"]) // SECTOR
    key_hex = [f"{b:02x} " for b in key.buffer]
    rows = ["".join(key_hex[i:i + 16]) for i in range(0, len(key_hex), 16)]
    return (f"LUKS header information for {path}\n"
            f"Cipher name:   \t{name}\n"
            f"Cipher mode:   \t{mode}\n"
            f"Payload offset:\t{offset}\n"
            f"UUID:          \t{header.uuid}\n"
            f"MK bits:       \t{len(key) * 8}\n"
            "MK dump:\t" + "\n\t\t".join(rows) + "\n")


def open_luks(image: Image, config: Config, keys: KeySource) -> Volume:
    for (section, key), flag in PLAIN_ONLY.items():
        if (section, key) in config.explicit:
            raise ConfigError(f"{flag} applies to plain mode; a LUKS header sets it")
    slot = None if config.device.key_slot < 0 else config.device.key_slot
    with HeaderFile(config.device.header or image.path) as hdr:
        module, header = read_header(hdr, config.device.type)
        module.check_supported(header)
        check_layout(module, header, hdr.path, image)
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
