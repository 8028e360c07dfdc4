"""LUKS anti-forensic information splitter (LUKS1 on-disk format, section 2.4).

A key of n bytes is stored as ``stripes`` blocks of n bytes: all but the last are random, and
the last is the key XOR the diffusion of the running XOR of the others, so destroying any one
stripe destroys the key.  ``diffuse`` hashes each digest-sized piece of a block with its
big-endian 32-bit index prepended, keeping the piece's length.  The hash is named as cryptsetup
names it (:func:`cryptfs.crypto.hashes.new`).

Everything is computed in place, in the caller's buffers and the returned :class:`Secret`; the
only other copies are the digests (immutable bytes: hashlib has no digest-into) and the 8-byte
integers CPython makes while XORing, both dropped at once and not wipeable from Python.
"""

import os

from cryptfs.crypto import hashes
from cryptfs.crypto.keys import Secret


def _diffuser(hash_name: str):
    """diffuse(block), in place, with hash ``hash_name``; SpecError if cryptfs has none."""
    base = hashes.new(hash_name)
    size = base.digest_size

    def diffuse(block: memoryview) -> None:
        for index, i in enumerate(range(0, len(block), size)):
            piece = block[i:i + size]
            h = base.copy()
            h.update(index.to_bytes(4, "big"))
            h.update(piece)
            piece[:] = memoryview(h.digest())[:len(piece)]
    return diffuse


def _xor_into(dst: memoryview, src: memoryview) -> None:
    """``dst ^= src``, eight bytes at a time."""
    whole = len(dst) // 8 * 8
    if whole:
        d, s = dst[:whole].cast("Q"), src[:whole].cast("Q")
        for j in range(len(d)):
            d[j] ^= s[j]
    for j in range(whole, len(dst)):
        dst[j] ^= src[j]


def _fold(d: memoryview, stripes: memoryview, n: int, count: int, hash_name: str) -> None:
    """``d`` = diffuse(... diffuse(d ^ stripe 0) ... ^ stripe count-1)."""
    diffuse = _diffuser(hash_name)
    for i in range(count):
        _xor_into(d, stripes[i * n:(i + 1) * n])
        diffuse(d)


def merge(material: bytes | bytearray | memoryview, key_bytes: int, stripes: int,
          hash_name: str) -> Secret:
    """The key hidden in ``stripes`` blocks of ``key_bytes`` (AFmerge)."""
    key = Secret(bytes(key_bytes))
    d, view = memoryview(key.buffer), memoryview(material)
    try:
        _fold(d, view, key_bytes, stripes - 1, hash_name)
        _xor_into(d, view[(stripes - 1) * key_bytes:stripes * key_bytes])
    except BaseException:
        key.wipe()
        raise
    return key


def split(key: Secret, stripes: int, hash_name: str, out: memoryview) -> None:
    """Spread ``key`` over ``stripes`` blocks in ``out`` (AFsplit): random blocks, then the
    fix-up.  (The random blocks come from ``os.urandom`` as bytes; alone they say nothing of
    the key.)"""
    n = len(key)
    out[:n * (stripes - 1)] = os.urandom(n * (stripes - 1))
    last = out[(stripes - 1) * n:stripes * n]
    last[:] = bytes(n)
    _fold(last, out, n, stripes - 1, hash_name)
    _xor_into(last, memoryview(key.buffer))
