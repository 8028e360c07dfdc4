"""Key slot material, the same in LUKS1 and LUKS2: the volume key split over ``stripes``
(anti-forensic splitter), padded to whole 512-byte sectors and encrypted as dm-crypt would with
the key derived from the passphrase — the slot's cipher, IVs counted from sector 0 at the start
of the slot's area.  :func:`seal` makes it, :func:`unseal` reverses it.

Plaintext material lives in one bytearray, encrypted or decrypted in place and zeroed before
these functions return (the AES backend's CBC path hands each sector back as bytes first: a
copy of the backend's, see ``backends/aes.py``).
"""

from cryptfs.backends.aes import UnitCipher
from cryptfs.backends.base import CryptoFailure, Op
from cryptfs.core.geometry import SECTOR
from cryptfs.crypto.ivgen import IV_MODES
from cryptfs.crypto.keys import Secret
from cryptfs.crypto.spec import parse_spec
from cryptfs.errors import FormatError
from cryptfs.formats import af
from cryptfs.formats.kdf import Kdf


def padded(length: int) -> int:
    """Bytes of whole sectors holding ``length`` bytes of material."""
    return -(-length // SECTOR) * SECTOR


def header_spec(cipher: str):
    """The spec a header names (``parse_spec``), refused in one line however hostile."""
    if not cipher.isprintable():
        raise FormatError(f"cipher {cipher!r} is not supported")
    return parse_spec(cipher)


def _crypt(op: Op, cipher: str, key: Secret, data: bytearray) -> None:
    """Encrypt or decrypt ``data`` (whole 512-byte sectors) in place."""
    spec = header_spec(cipher)
    spec.check_key_bits(len(key) * 8)
    try:
        unit = UnitCipher(spec.chain, key.buffer)
    except CryptoFailure as e:
        raise FormatError(f"key slot cipher {cipher}: {e}") from None
    iv = IV_MODES[spec.ivmode].generator(key.buffer, spec.ivopts, spec.cipher)
    view = memoryview(data)
    for sector, at in enumerate(range(0, len(data), SECTOR)):
        unit.crypt(op, iv(sector), view[at:at + SECTOR], view[at:at + SECTOR])


def seal(key: Secret, passphrase: Secret, kdf: Kdf, cipher: str, area_key_bytes: int,
         stripes: int, af_hash: str) -> bytearray:
    """The encrypted material of ``key`` under ``passphrase``, padded to whole sectors."""
    n = len(key) * stripes
    material = bytearray(padded(n))
    with kdf.derive(passphrase, area_key_bytes) as area_key:
        try:
            af.split(key, stripes, af_hash, memoryview(material)[:n])
            _crypt(Op.ENCRYPT, cipher, area_key, material)
        except BaseException:
            material[:] = bytes(len(material))
            raise
    return material


def unseal(read_at, offset: int, passphrase: Secret, kdf: Kdf, cipher: str,
           area_key_bytes: int, key_bytes: int, stripes: int, af_hash: str,
           what: str) -> Secret:
    """The key whose material starts at ``offset`` as ``passphrase`` decrypts it (the caller
    checks it against a digest); FormatError naming ``what`` if the file ends first."""
    with kdf.derive(passphrase, area_key_bytes) as area_key:
        length = padded(key_bytes * stripes)
        material = bytearray(read_at(offset, length))
        if len(material) < length:
            raise FormatError(f"{what} is truncated: the file ends before its key material")
        try:
            _crypt(Op.DECRYPT, cipher, area_key, material)
            return af.merge(material, key_bytes, stripes, af_hash)
        finally:
            material[:] = bytes(len(material))
