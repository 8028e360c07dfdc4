"""LRW (``CIPHER-lrw-IVMODE``) against the kernel's own vectors (tests/vectors/lrw.json, from
crypto/testmgr.h: LRW-32-AES from the IEEE P1619 draft and Ken Buchanan's 512-byte vector, and
the serpent, twofish and camellia templates), through both implementations cryptfs has: the
per-unit reference (cryptfs/crypto/lrw.py via backends/aes.py, the ``software`` backend and key
slots) and the native core's C loop (backends/core.c), both directions, in place and out of
place.  No library offers LRW, so the vectors are the oracle; byte identity of the two paths
over whole bios and every IV mode is in tests/test_ciphers.py.

A vector's IV is the index of its first block, given whole: the core receives it as a plain64
counter (which it copies), and a vector shorter than a power of two is padded — LRW is
block-wise, so the padding does not change the vector's blocks.
"""

import json
from pathlib import Path

import pytest

from cryptfs.backends import native
from cryptfs.backends.aes import UnitCipher
from cryptfs.backends.base import Op
from cryptfs.crypto.spec import parse_spec
from cryptfs.errors import SpecError

VECTORS = json.loads((Path(__file__).parent / "vectors" / "lrw.json").read_text())["lrw"]


def runnable(v) -> bool:
    """Vectors with a key size cryptfs takes (libgcrypt has no 192-bit twofish)."""
    spec = parse_spec(f"{v['cipher']}-lrw-plain64")
    return len(bytes.fromhex(v["key"])) * 8 in spec.key_sizes


def unpack(v):
    return (bytes.fromhex(v[k]) for k in ("key", "iv", "plaintext", "ciphertext"))


def test_every_template_is_covered():
    sources = {v["source"].split("[")[0] for v in VECTORS}
    assert sources == {"aes_lrw_tv_template", "serpent_lrw_tv_template", "tf_lrw_tv_template",
                       "camellia_lrw_tv_template"}
    assert sum(runnable(v) for v in VECTORS) == len(VECTORS) - 2    # twofish-192 twice
    assert any(len(v["plaintext"]) == 1024 for v in VECTORS if runnable(v))   # 512 bytes
    assert any(v["iv"] == "ff" * 16 for v in VECTORS)                  # the index wraps


@pytest.mark.parametrize("v", [v for v in VECTORS if runnable(v)], ids=lambda v: v["source"])
def test_the_reference_path(v):
    key, iv, plaintext, ciphertext = unpack(v)
    unit = UnitCipher(parse_spec(f"{v['cipher']}-lrw-plain64").chain, bytearray(key))
    for op, src, want in ((Op.ENCRYPT, plaintext, ciphertext), (Op.DECRYPT, ciphertext,
                                                                 plaintext)):
        out = bytearray(len(src))
        unit.crypt(op, iv, memoryview(src), memoryview(out))
        assert bytes(out) == want
        buf = bytearray(src)                                        # in place
        unit.crypt(op, iv, memoryview(buf), memoryview(buf))
        assert bytes(buf) == want


@pytest.mark.skipif(native.UNAVAILABLE is not None, reason=str(native.UNAVAILABLE))
@pytest.mark.parametrize("v", [v for v in VECTORS if runnable(v)], ids=lambda v: v["source"])
def test_the_native_core(v):
    key, iv, plaintext, ciphertext = unpack(v)
    core = native.keyed_core(parse_spec(f"{v['cipher']}-lrw-plain64"), key)
    unit = 16
    while unit < len(plaintext):
        unit *= 2
    pad = bytes(unit - len(plaintext))
    for encrypt, src, want in ((True, plaintext, ciphertext), (False, ciphertext, plaintext)):
        out = bytearray(unit)
        core.crypt(encrypt, src + pad, out, iv, unit, 1, 1)
        assert bytes(out[:len(want)]) == want
        buf = bytearray(src + pad)
        core.crypt(encrypt, buf, buf, iv, unit, 1, 1)
        assert bytes(buf[:len(want)]) == want
    core.close()


@pytest.mark.parametrize("text, sizes", [
    ("aes-lrw-plain64", (256, 320, 384)), ("aes-lrw-benbi", (256, 320, 384)),
    ("serpent-lrw-essiv:sha256", (256, 320, 384)), ("twofish-lrw-plain", (256, 384)),
    ("camellia-lrw-null", (256, 320, 384))])
def test_lrw_keys_are_the_cipher_key_and_a_128_bit_tweak_key(text, sizes):
    spec = parse_spec(text)
    assert str(spec) == text and spec.key_sizes == sizes
    assert spec.default_key_bits == 256          # cryptsetup's 256: AES-128 and the tweak key
    with pytest.raises(SpecError, match="not valid"):
        spec.check_key_bits(512)
