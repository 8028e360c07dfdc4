"""Key slot material is stored encrypted as dm-crypt would: the slot's cipher, 512-byte
sectors, IVs counted from sector 0 at the start of the slot's area."""

from backends.aes import UnitCipher
from backends.base import CryptoFailure, Op

from ..errors import FormatError
from ..geometry import SECTOR
from ..ivgen import IV_MODES
from ..keys import Secret
from ..spec import parse_spec


def padded(length: int) -> int:
    """Bytes of whole sectors holding ``length`` bytes of material."""
    return -(-length // SECTOR) * SECTOR


def read_material(read_at, offset: int, length: int, what: str) -> bytes:
    """The whole sectors holding ``length`` bytes at ``offset``; FormatError if the file ends."""
    raw = read_at(offset, padded(length))
    if len(raw) < padded(length):
        raise FormatError(f"{what} is truncated: the file ends before its key material")
    return raw


def header_spec(cipher: str):
    """The spec a header names (``parse_spec``), refused in one line however hostile."""
    if not cipher.isprintable():
        raise FormatError(f"cipher {cipher!r} is not supported")
    return parse_spec(cipher)


def crypt_area(op: Op, cipher: str, key: Secret, data: bytes | bytearray) -> bytearray:
    """Encrypt or decrypt ``data`` (whole 512-byte sectors) of a key slot area."""
    spec = header_spec(cipher)
    spec.check_key_bits(len(key) * 8)
    try:
        unit = UnitCipher(spec.mode, key.buffer)
    except CryptoFailure as e:
        raise FormatError(f"key slot cipher {cipher}: {e}") from None
    iv = IV_MODES[spec.ivmode].generator(key.buffer, spec.ivopts)
    src, out = memoryview(bytes(data)), bytearray(len(data))
    dst = memoryview(out)
    for sector, at in enumerate(range(0, len(data), SECTOR)):
        unit.crypt(op, iv(sector), src[at:at + SECTOR], dst[at:at + SECTOR])
    return out
