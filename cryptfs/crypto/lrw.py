"""LRW (Liskov, Rivest, Wagner), as the kernel's ``lrw`` template computes it (crypto/lrw.c),
which dm-crypt runs for ``CIPHER-lrw-IVMODE``.

The key is the block cipher's key followed by a 16-byte tweak key K2.  The data unit's IV, read
as a 128-bit big-endian number I, indexes its first block; block j is ``C = E(P ^ T) ^ T`` with
``T = ((I + j) mod 2^128) * K2`` in GF(2^128) modulo x^128 + x^7 + x^2 + x + 1, bit i of the
big-endian number being the coefficient of x^i (the kernel's "bbe" order).  So dm-crypt's
plain64 IV, the sector little-endian in the first 8 bytes, is a *big-endian* index here, and
benbi's (sector << 5) + 1 counts the volume's blocks from 1 — as the kernel reads them.

Why here: no maintained library has LRW (OpenSSL, libgcrypt, pyca/cryptography: none).  This is
the per-unit reference; the native core has the same mode in C (backends/core.c).  Both are
proven on the kernel's own vectors (testmgr.h, tests/vectors/lrw.json), never on each other
alone.
"""

from typing import Callable

TWEAK_KEY_BYTES = 16
_BITS = 128
_MASK = (1 << _BITS) - 1
_REDUCE = 0x87              # x^7 + x^2 + x + 1: what x^128 folds back to


def _times_x(v: int) -> int:
    return ((v << 1) & _MASK) ^ (_REDUCE if v >> (_BITS - 1) else 0)


class Lrw:
    """The tweak side of LRW for one tweak key; ``crypt`` converts one data unit with the block
    cipher ``ecb`` (whole blocks, one direction) supplied by the caller."""

    def __init__(self, tweak_key: bytes | bytearray):
        if len(tweak_key) != TWEAK_KEY_BYTES:
            raise ValueError(f"an LRW tweak key is {TWEAK_KEY_BYTES} bytes")
        power = int.from_bytes(tweak_key, "big")
        self._powers = []               # K2 * x^i
        for _ in range(_BITS):
            self._powers.append(power)
            power = _times_x(power)
        # K2 * (2^(i+1) - 1): what T changes by when I + 1 flips I's i+1 lowest bits
        self._steps, step = [], 0
        for power in self._powers:
            step ^= power
            self._steps.append(step)

    def _times_k2(self, value: int) -> int:
        product = 0
        for i in range(_BITS):
            if value >> i & 1:
                product ^= self._powers[i]
        return product

    def tweaks(self, iv: bytes, blocks: int) -> bytes:
        """T for ``blocks`` blocks from the unit's IV, block 0 first, 16 bytes each."""
        index = int.from_bytes(iv, "big")
        t = self._times_k2(index)
        out = []
        for _ in range(blocks):
            out.append(t.to_bytes(16, "big"))
            flipped = ((index ^ (index + 1)) & _MASK).bit_length()   # 128 when I wraps
            t ^= self._steps[flipped - 1]
            index = (index + 1) & _MASK
        return b"".join(out)

    def crypt(self, ecb: Callable[[bytes], bytes], iv: bytes, src, dst) -> None:
        """One data unit (a whole number of 16-byte blocks) from ``src`` into ``dst`` (may be
        the same buffer): ``ecb`` encrypts to encrypt, decrypts to decrypt."""
        n = len(src)
        mask = int.from_bytes(self.tweaks(iv, n // 16), "big")
        whitened = (int.from_bytes(src, "big") ^ mask).to_bytes(n, "big")
        dst[:] = (int.from_bytes(ecb(whitened), "big") ^ mask).to_bytes(n, "big")
