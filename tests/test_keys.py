"""Key material: cryptsetup's plain-mode hashing (its own test vectors) and key files."""

import pytest

from cryptfs.crypto.keys import Secret, hash_passphrase, key_from_file, read_key_file
from cryptfs.errors import KeyMaterialError, SpecError

# From cryptsetup's tests/password-hash-test: the keys `cryptsetup create -h HASH -s BITS`
# hands to dm-crypt for these passphrases (read back with dmsetup table --showkeys).
CRYPTSETUP_VECTORS = [
    ("ripemd160", 256, b"xxx", "aeb26d1f69eb6dddfb9381eed4d7299f091e99aa5d3ff06866d4ce9f620f7aca"),
    ("ripemd160", 128, b"xxx", "aeb26d1f69eb6dddfb9381eed4d7299f"),
    ("sha1", 256, b"xxx", "b60d121b438a380c343d5ec3c2037564b82ffef30b1e0a6ad9af7a73aa91c197"),
    ("sha1", 128, b"xxx", "b60d121b438a380c343d5ec3c2037564"),
    ("sha256", 256, b"xxx", "cd2eb0837c9b4c962c22d2ff8b5441b7b45805887f051d39bf133b583baf6860"),
    ("sha256", 128, b"xxx", "cd2eb0837c9b4c962c22d2ff8b5441b7"),
    ("ripemd160", 256, b"xxx\n",
     "625ce2a8dbdf08f1de400dba7ab9fab246f2a55ad6136e6cafd6703732dab8cf"),
]


@pytest.mark.parametrize("hash_name, bits, passphrase, expected", CRYPTSETUP_VECTORS)
def test_plain_hashing_matches_cryptsetup(hash_name, bits, passphrase, expected):
    assert hash_passphrase(hash_name, Secret(passphrase), bits // 8).buffer.hex() == expected


def test_plain_hash_plain_pads_with_zeros():
    assert hash_passphrase("plain", Secret(b"abc"), 8).buffer == bytearray(b"abc\0\0\0\0\0")


def test_unknown_hash():
    with pytest.raises(SpecError, match="^hash 'md17' is not supported$"):
        hash_passphrase("md17", Secret(b"x"), 32)


def test_key_file_takes_the_first_bytes_and_refuses_short_files(tmp_path):
    path = tmp_path / "k"
    path.write_bytes(bytes(range(80)))
    material = read_key_file(str(path))
    assert key_from_file(material, 64, str(path)).buffer == bytes(range(64))
    with pytest.raises(KeyMaterialError, match="holds 80 bytes but a 1024-bit key needs 128"):
        key_from_file(material, 128, str(path))


def test_empty_and_missing_key_files(tmp_path):
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(KeyMaterialError, match="is empty"):
        read_key_file(str(tmp_path / "empty"))
    with pytest.raises(KeyMaterialError, match="cannot read key file"):
        read_key_file(str(tmp_path / "missing"))


def test_secret_never_shows_its_bytes():
    s = Secret(b"hunter2-hunter2")
    assert "hunter2" not in repr(s) and "hunter2" not in str(s) and "hunter2" not in f"{s}"
    s.wipe()
    assert s.buffer == bytes(15)
