"""LUKS anti-forensic information splitter (LUKS1 on-disk format, section 2.4).

A key of n bytes is stored as ``stripes`` blocks of n bytes: all but the last are random, and
the last is the key XOR the diffusion of the running XOR of the others, so destroying any one
stripe destroys the key.  ``diffuse`` hashes each digest-sized piece of a block with its
big-endian 32-bit index prepended, keeping the piece's length.
"""

import hashlib
import os

from ..keys import Secret


def _diffuse(block: bytes, hash_name: str) -> bytes:
    size = hashlib.new(hash_name).digest_size
    out = bytearray()
    for i in range(0, len(block), size):
        piece = block[i:i + size]
        index = (i // size).to_bytes(4, "big")
        out += hashlib.new(hash_name, index + piece).digest()[:len(piece)]
    return bytes(out)


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def merge(material: bytes | bytearray, key_bytes: int, stripes: int, hash_name: str) -> Secret:
    """The key hidden in ``stripes`` blocks of ``key_bytes`` (AFmerge)."""
    d = bytes(key_bytes)
    for i in range(stripes - 1):
        d = _diffuse(_xor(d, bytes(material[i * key_bytes:(i + 1) * key_bytes])), hash_name)
    last = bytes(material[(stripes - 1) * key_bytes:stripes * key_bytes])
    return Secret(_xor(d, last))


def split(key: Secret, stripes: int, hash_name: str) -> bytearray:
    """Spread ``key`` over ``stripes`` blocks (AFsplit): random blocks, then the fix-up."""
    n = len(key)
    out = bytearray(os.urandom(n * (stripes - 1)))
    d = bytes(n)
    for i in range(stripes - 1):
        d = _diffuse(_xor(d, bytes(out[i * n:(i + 1) * n])), hash_name)
    out += _xor(d, bytes(key.buffer))
    return out
