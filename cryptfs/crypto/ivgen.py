"""IV generators: dm-crypt's table of IV modes.

Each mode turns an *IV sector* — the data unit's number as dm-crypt counts it, see
:meth:`cryptfs.core.geometry.Geometry.iv_sector` — into the 16-byte IV of that data unit:

=========  ===================================================================  ===========
mode       IV                                                                   byteorder
=========  ===================================================================  ===========
plain      low 32 bits of the sector, little-endian, zero-padded                 le (wraps at 2^32)
plain64    64-bit sector, little-endian, zero-padded                             le
plain64be  64-bit sector, big-endian, in the last 8 bytes                        be
essiv:H    AES-ECB of the plain64 IV under key H(volume key)                     –
benbi      big-endian (sector << 5) + 1 in the last 8 bytes (16-byte blocks)     –
null       all zeros                                                             –
=========  ===================================================================  ===========

``byteorder`` says whether consecutive data units' IVs are a counter the cipher can extend by
itself, and in which byte order — the precondition for one multi data unit request per bio
(DESIGN.md) — and ``counter_bits`` how wide it is (plain's wraps at 2^32).  The other modes are
*derived* from the IV sector.  This table is the one source of each mode's behaviour, as
dm-crypt's ``crypt_iv_operations``: the native core (backends/core.c) implements the same modes
in C and every backend is checked against this table by a known-answer test when a device
opens (:mod:`cryptfs.core.selftest`).
"""

import hashlib
from dataclasses import dataclass
from typing import Callable, Protocol

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from cryptfs.errors import SpecError

IV_SIZE = 16
_MASK32 = (1 << 32) - 1
_MASK64 = (1 << 64) - 1
_ZERO = bytes(IV_SIZE)
#: benbi counts 16-byte cipher blocks from 1: shift = 9 - log2(block size) (dm-crypt).
_BENBI_SHIFT = 5
#: ESSIV keys its IV cipher with a digest of the volume key: the digest must be an AES key.
_AES_KEY_BYTES = (16, 24, 32)


class IvGenerator(Protocol):
    def __call__(self, iv_sector: int) -> bytes:
        """Return the 16-byte IV for the data unit numbered ``iv_sector``."""


def _plain(iv_sector: int) -> bytes:
    return (iv_sector & _MASK32).to_bytes(4, "little") + _ZERO[4:]


def _plain64(iv_sector: int) -> bytes:
    return (iv_sector & _MASK64).to_bytes(8, "little") + _ZERO[8:]


def _plain64be(iv_sector: int) -> bytes:
    return _ZERO[8:] + (iv_sector & _MASK64).to_bytes(8, "big")


def _benbi(iv_sector: int) -> bytes:
    return _ZERO[8:] + (((iv_sector << _BENBI_SHIFT) + 1) & _MASK64).to_bytes(8, "big")


def _null(iv_sector: int) -> bytes:
    return _ZERO


class Essiv:
    """ESSIV: IV = E_{H(key)}(plain64 IV), E the data cipher in ECB (AES unless ``cipher``
    names another, as dm-crypt's ESSIV uses the data cipher).  Holds the salted encryptor."""

    def __init__(self, key: bytes | bytearray, hash_name: str, cipher: str = "aes"):
        salt = bytearray(hashlib.new(hash_name, key).digest())
        if cipher == "aes":
            self._ecb = Cipher(algorithms.AES(salt), modes.ECB()).encryptor().update
        else:
            from cryptfs.crypto.gcrypt import GcryptCipher
            ecb = GcryptCipher(cipher, "ecb", salt)
            self._ecb = lambda block: _ecb_block(ecb, block)
        salt[:] = bytes(len(salt))

    def __call__(self, iv_sector: int) -> bytes:
        return self._ecb(_plain64(iv_sector))


def _ecb_block(ecb, block: bytes) -> bytes:
    out = bytearray(len(block))
    ecb.crypt(True, None, block, out)
    return bytes(out)



@dataclass(frozen=True)
class IvMode:
    name: str
    byteorder: str | None   # of the IV counter: "little", "big", or None: no counter
    factory: Callable[[bytes | bytearray, str | None], IvGenerator]
    takes_opts: bool = False
    counter_bits: int = 128     # where a counter wraps (plain: 32, as dm-crypt's)

    def check_opts(self, opts: str | None, spec: str) -> None:
        """Raise SpecError if ``opts`` (the part after ':') is wrong for this mode."""
        if not self.takes_opts:
            if opts:
                raise SpecError(f"IV mode '{self.name}' takes no option, got ':{opts}' in '{spec}'")
            return
        if not opts:
            raise SpecError(f"IV mode '{self.name}' needs a hash, e.g. '{self.name}:sha256'")
        try:
            size = hashlib.new(opts).digest_size
        except ValueError:
            raise SpecError(f"hash '{opts}' in '{spec}' is not available") from None
        if size not in _AES_KEY_BYTES:
            raise SpecError(f"hash '{opts}' gives a {size * 8}-bit digest; ESSIV with AES needs "
                            "128, 192 or 256 bits (e.g. sha256)")

    def generator(self, key: bytes | bytearray, opts: str | None,
                  cipher: str = "aes") -> IvGenerator:
        """``cipher``: the data cipher, which ESSIV's IV cipher is (other modes ignore it)."""
        if cipher != "aes" and self.name == "essiv":
            return Essiv(key, opts, cipher)
        return self.factory(key, opts)


IV_MODES: dict[str, IvMode] = {
    "plain": IvMode("plain", "little", lambda key, opts: _plain, counter_bits=32),
    "plain64": IvMode("plain64", "little", lambda key, opts: _plain64),
    "plain64be": IvMode("plain64be", "big", lambda key, opts: _plain64be),
    "essiv": IvMode("essiv", None, Essiv, takes_opts=True),
    "benbi": IvMode("benbi", None, lambda key, opts: _benbi),
    "null": IvMode("null", None, lambda key, opts: _null),
}
