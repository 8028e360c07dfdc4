"""Cipher spec parsing and IV generators against dm-crypt's documented IV layouts."""

import hashlib

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from cryptfs.core.geometry import Geometry
from cryptfs.crypto.ivgen import IV_MODES
from cryptfs.crypto.spec import parse_spec
from cryptfs.errors import SpecError

SECTOR = 0x1122334455667788


@pytest.mark.parametrize("text", [
    "aes-xts-plain64", "aes-xts-plain", "aes-xts-plain64be", "aes-cbc-essiv:sha256",
    "aes-cbc-plain64", "aes-cbc-plain", "aes-cbc-benbi", "aes-cbc-null"])
def test_supported_specs_round_trip(text):
    assert str(parse_spec(text)) == text


@pytest.mark.parametrize("text, fragment", [
    ("des3_ede-xts-plain64", "cipher 'des3_ede'"),
    ("aes-ctr-plain64", "chain mode 'ctr'"),
    ("aes-xts-lmk", "IV mode 'lmk'"),
    ("aes-xts", "cipher-chainmode-ivmode"),
    ("aes-cbc-essiv", "needs a hash"),
    ("aes-cbc-essiv:sha1", "160-bit digest, which is no aes key for ESSIV"),
    ("aes-cbc-essiv:whirlpool", "512-bit digest, which is no aes key for ESSIV"),
    ("twofish-cbc-essiv:tiger", "192-bit digest, which is no twofish key for ESSIV"),
    ("aes-cbc-essiv:nosuchhash", "hash 'nosuchhash' is not supported"),
    ("aes-xts-plain64:sha256", "takes no option"),
    ("capi:xts(aes)-plain64", "not supported"),
])
def test_unsupported_specs_are_refused_with_the_reason(text, fragment):
    with pytest.raises(SpecError, match=None) as e:
        parse_spec(text)
    assert fragment in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("text, good, bad", [
    ("aes-xts-plain64", [256, 512], [128, 192, 384]),
    ("aes-cbc-essiv:sha256", [128, 192, 256], [512, 64]),
])
def test_key_sizes(text, good, bad):
    spec = parse_spec(text)
    for bits in good:
        spec.check_key_bits(bits)
    for bits in bad:
        with pytest.raises(SpecError, match=f"{bits} bits"):
            spec.check_key_bits(bits)


# IV layouts as dm-crypt documents them (drivers/md/dm-crypt.c comment table), for one sector.
@pytest.mark.parametrize("mode, expected", [
    ("plain", "8877665500000000" "0000000000000000"),                  # le32, truncated
    ("plain64", "8877665544332211" "0000000000000000"),                # le64
    ("plain64be", "0000000000000000" "1122334455667788"),              # be64 in the last 8
    ("benbi", "0000000000000000" + f"{((SECTOR << 5) + 1) & (2**64 - 1):016x}"),
    ("null", "00" * 16),
])
def test_counter_and_constant_iv_layouts(mode, expected):
    assert IV_MODES[mode].generator(b"k" * 32, None)(SECTOR).hex() == expected


def test_essiv_is_aes_of_plain64_under_hashed_key():
    key = bytes(range(32))
    salt = hashlib.sha256(key).digest()
    ecb = Cipher(algorithms.AES(salt), modes.ECB()).encryptor()
    expected = ecb.update((42).to_bytes(8, "little") + bytes(8))
    assert IV_MODES["essiv"].generator(key, "sha256")(42) == expected


def test_counter_modes_are_declared():
    assert {m for m, v in IV_MODES.items() if v.byteorder} == {"plain", "plain64", "plain64be"}


@pytest.mark.parametrize("sector_size, large, skip, expected", [
    (512, False, 0, [0, 1, 2, 3]),
    (4096, False, 0, [0, 8, 16, 24]),          # 512-byte numbering: steps of 8
    (4096, True, 0, [0, 1, 2, 3]),             # iv_large_sectors: counts 4096-byte units
    (512, False, 5, [5, 6, 7, 8]),             # --skip adds to the sector
    (4096, False, 5, [5, 13, 21, 29]),
    (4096, True, 16, [2, 3, 4, 5]),            # skip is in 512-byte sectors, then shifted
])
def test_iv_sector_numbering(sector_size, large, skip, expected):
    g = Geometry(sector_size, 0, 1 << 20, skip, large)
    assert [g.iv_sector(u) for u in range(4)] == expected
    assert g.iv_step == (1 if large else sector_size // 512)
