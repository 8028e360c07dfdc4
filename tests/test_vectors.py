"""Published vectors, over every backend.

* IEEE 1619 XTS-AES vectors (tests/vectors/xts_ieee1619.json): one request per vector, the
  tweak produced by cryptfs's plain64 IV generator from the data unit sequence number.
* cryptsetup's IV vectors (tests/vectors/cryptsetup_iv.json, from its tests/crypto-vectors.c):
  8192 zero bytes encrypted from a 512-byte ``iv_offset`` with every IV mode, sector sizes
  512..4096, with and without large IVs; cryptsetup publishes the SHA-256 of the ciphertext.
"""

import hashlib
import json
from pathlib import Path

import pytest

from cryptfs import backends
from cryptfs.backends.base import CryptoRequest, Op
from cryptfs.crypto.ivgen import IV_MODES
from cryptfs.crypto.spec import parse_spec
from cryptfs.errors import BackendError
from helpers import open_plain

VECTORS = Path(__file__).parent / "vectors"
XTS = json.loads((VECTORS / "xts_ieee1619.json").read_text())
IV = json.loads((VECTORS / "cryptsetup_iv.json").read_text())["vectors"]


def whole_block(v):
    """A vector cryptfs can run: whole 16-byte blocks and two different AES keys."""
    key = bytes.fromhex(v["key"])
    return not v.get("partial") and key[:len(key) // 2] != key[len(key) // 2:]


def with_options(name: str, options: dict):
    return backends.backend_class(name).Options(**options)


@pytest.mark.parametrize("v", [v for v in XTS if whole_block(v)], ids=lambda v: v["name"])
def test_ieee1619_xts(backend_variant, v):
    key = bytes.fromhex(v["key"])
    spec = parse_spec("aes-xts-plain64")
    name, options = backend_variant
    backend = backends.create(name, spec, bytearray(key), with_options(name, options))
    tweak = IV_MODES["plain64"].generator(key, None)(v["data_unit_sequence_number"])
    assert tweak.hex() == v["tweak"]
    plaintext, ciphertext = bytes.fromhex(v["plaintext"]), bytes.fromhex(v["ciphertext"])
    for op, src, expected in ((Op.ENCRYPT, plaintext, ciphertext),
                              (Op.DECRYPT, ciphertext, plaintext)):
        out = bytearray(len(src))
        backend.submit(CryptoRequest(op, memoryview(src), memoryview(out), tweak, len(src)))
        assert bytes(out) == expected


def test_xts_with_equal_key_halves_is_refused_clearly(backend_variant):
    # IEEE vector 1 uses an all-zero key.  OpenSSL (and so cryptfs) refuses XTS keys whose
    # halves are equal; the kernel outside FIPS mode accepts them.
    name, options = backend_variant
    with pytest.raises(BackendError, match="refuses this key"):
        backends.create(name, parse_spec("aes-xts-plain64"), bytearray(64),
                        with_options(name, options))


SUPPORTED_IV = [v for v in IV if v["ivmode"].split(":")[0] in IV_MODES]


@pytest.mark.parametrize("v", SUPPORTED_IV, ids=lambda v: f"{v['ivmode']}-{v['sector_size']}"
                                                           f"{'-large' if v['large_iv'] else ''}")
async def test_cryptsetup_iv_vectors(tmp_path, crypto_path, v):
    image = tmp_path / "image"
    image.write_bytes(bytes(v["data_length"]))
    daemon = open_plain(image, bytes.fromhex(v["key"]), cipher=v["cipher"],
                        sector_size=v["sector_size"], skip=v["iv_offset"],
                        iv_large_sectors=v["large_iv"], **crypto_path)
    assert await daemon.queue.write(0, bytes(v["data_length"])) == v["data_length"]
    assert bytes(await daemon.queue.read(0, v["data_length"])) == bytes(v["data_length"])
    daemon.close()
    assert hashlib.sha256(image.read_bytes()).hexdigest() == v["out_sha256"]


def test_vector_files_cover_the_matrix():
    modes = {v["ivmode"] for v in SUPPORTED_IV}
    assert modes == {"null", "plain", "plain64", "plain64be", "essiv:sha256", "benbi"}
    assert {(v["sector_size"], v["large_iv"]) for v in SUPPORTED_IV} >= {
        (512, False), (4096, False), (4096, True)}
    assert sum(whole_block(v) for v in XTS) >= 10


@pytest.mark.parametrize("text", ["cipher_null-ecb", "cipher_null"])
def test_the_null_cipher_is_the_identity_on_every_backend(backend_variant, text):
    """dm-crypt's cipher_null: what is written is what the image holds, in both modes."""
    name, options = backend_variant
    spec = parse_spec(text)
    assert str(spec) == "cipher_null-ecb" and spec.default_key_bits == 0
    backend = backends.create(name, spec, bytearray(), with_options(name, options))
    data = bytes(range(256)) * 16
    for op in Op:
        out = bytearray(len(data))
        backend.submit(CryptoRequest(op, memoryview(data), memoryview(out), bytes(16), 4096))
        assert bytes(out) == data
