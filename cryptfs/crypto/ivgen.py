"""IV generators: dm-crypt's table of IV modes.

Each mode turns an *IV sector* — the data unit's number as dm-crypt counts it, see
:meth:`cryptfs.core.geometry.Geometry.iv_sector` — into the IV of that data unit, one block of
the data cipher as dm-crypt's ``iv_size``: 16 bytes (shown), 8 for cast5 and blowfish:

=========  ===================================================================  ===========
mode       IV                                                                   byteorder
=========  ===================================================================  ===========
plain      low 32 bits of the sector, little-endian, zero-padded                 le (wraps at 2^32)
plain64    64-bit sector, little-endian, zero-padded                             le
plain64be  64-bit sector, big-endian, in the last 8 bytes                        be
essiv:H    the data cipher in ECB over the plain64 IV, keyed with H(volume key)  –
benbi      big-endian (sector << 5) + 1 in the last 8 bytes (8-byte blocks: 6)  –
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

import functools
from dataclasses import dataclass
from typing import Callable, Protocol

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from cryptfs.crypto import hashes
from cryptfs.crypto.gcrypt import KEY_BITS, block_bytes
from cryptfs.errors import SpecError

IV_SIZE = 16
_MASK32 = (1 << 32) - 1
_MASK64 = (1 << 64) - 1
_ZERO = bytes(IV_SIZE)
#: benbi counts the cipher's blocks from 1: shift = 9 - log2(block size) (dm-crypt).
_SECTOR_SHIFT = 9
#: ESSIV keys its IV cipher, the data cipher, with a digest of the volume key: the digest must
#: be a key of that cipher (AES: 128, 192 or 256 bits; the others: libgcrypt's key sizes).
_ESSIV_KEY_BITS = {"aes": (128, 192, 256), **KEY_BITS}


class IvGenerator(Protocol):
    def __call__(self, iv_sector: int) -> bytes:
        """Return the IV (one block of the data cipher) for the data unit numbered
        ``iv_sector``."""


def _plain(iv_sector: int, size: int = IV_SIZE) -> bytes:
    return (iv_sector & _MASK32).to_bytes(4, "little") + _ZERO[4:size]


def _plain64(iv_sector: int, size: int = IV_SIZE) -> bytes:
    return (iv_sector & _MASK64).to_bytes(8, "little") + _ZERO[8:size]


def _plain64be(iv_sector: int, size: int = IV_SIZE) -> bytes:
    return _ZERO[8:size] + (iv_sector & _MASK64).to_bytes(8, "big")


def _benbi(iv_sector: int, size: int = IV_SIZE) -> bytes:
    shift = _SECTOR_SHIFT - (size.bit_length() - 1)
    return _ZERO[8:size] + (((iv_sector << shift) + 1) & _MASK64).to_bytes(8, "big")


def _null(iv_sector: int, size: int = IV_SIZE) -> bytes:
    return _ZERO[:size]


class Essiv:
    """ESSIV: IV = E_{H(key)}(plain64 IV), E the data cipher in ECB (AES unless ``cipher``
    names another, as dm-crypt's ESSIV uses the data cipher).  Holds the salted encryptor."""

    def __init__(self, key: bytes | bytearray, hash_name: str, cipher: str = "aes"):
        h = hashes.new(hash_name)
        h.update(key)
        salt = bytearray(h.digest())
        if cipher == "aes":
            self._ecb = Cipher(algorithms.AES(salt), modes.ECB()).encryptor().update
        else:
            from cryptfs.crypto.gcrypt import GcryptCipher
            ecb = GcryptCipher(cipher, "ecb", salt)
            self._ecb = lambda block: _ecb_block(ecb, block)
        salt[:] = bytes(len(salt))

    def __call__(self, iv_sector: int, size: int = IV_SIZE) -> bytes:
        return self._ecb(_plain64(iv_sector, size))


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

    def check_opts(self, opts: str | None, spec: str, cipher: str = "aes") -> None:
        """Raise SpecError if ``opts`` (the part after ':' in ``spec``) is wrong for this mode
        with data cipher ``cipher``: ESSIV's hash must be one cryptfs has, whose digest is a key
        of the data cipher."""
        if not self.takes_opts:
            if opts:
                raise SpecError(f"IV mode '{self.name}' takes no option, got ':{opts}' in '{spec}'")
            return
        allowed = _ESSIV_KEY_BITS.get(cipher, ())
        example = "sha256" if 256 in allowed else "md5"
        if not opts:
            raise SpecError(f"IV mode '{self.name}' needs a hash, e.g. '{self.name}:{example}'")
        bits = hashes.new(opts).digest_size * 8
        if bits not in allowed:
            sizes = f"{allowed[0]} to {allowed[-1]}" if len(allowed) > 4 else \
                ", ".join(map(str, allowed))
            raise SpecError(f"hash '{opts}' gives a {bits}-bit digest, which is no {cipher} key "
                            f"for ESSIV (allowed: {sizes} bits; e.g. {example})")

    def generator(self, key: bytes | bytearray, opts: str | None,
                  cipher: str = "aes") -> IvGenerator:
        """``cipher``: the data cipher, which ESSIV's IV cipher is, and one of whose blocks
        each IV is."""
        if cipher != "aes" and self.name == "essiv":
            made = Essiv(key, opts, cipher)
        else:
            made = self.factory(key, opts)
        size = block_bytes(cipher)
        return made if size == IV_SIZE else functools.partial(made, size=size)


IV_MODES: dict[str, IvMode] = {
    "plain": IvMode("plain", "little", lambda key, opts: _plain, counter_bits=32),
    "plain64": IvMode("plain64", "little", lambda key, opts: _plain64),
    "plain64be": IvMode("plain64be", "big", lambda key, opts: _plain64be),
    "essiv": IvMode("essiv", None, Essiv, takes_opts=True),
    "benbi": IvMode("benbi", None, lambda key, opts: _benbi),
    "null": IvMode("null", None, lambda key, opts: _null),
}
