"""Hashes by name (cryptfs/crypto/hashes.py): hashlib's, and libgcrypt's where hashlib lacks one
(whirlpool, stribog, the blake2 sizes) — for PBKDF2, the AF splitter, ESSIV and plain mode.

Never against cryptfs's own code alone:

* every libgcrypt hash against published vectors (named beside each), also with hashlib
  bypassed, so ripemd160, sm3 and blake2b-512 go through libgcrypt too; the other blake2 sizes
  against Python's own BLAKE2;
* PBKDF2 against OpenSSL's (``openssl kdf``, legacy provider) and against RFC 8018 written out
  here over hashes proven above; plain mode's hashing against ``openssl dgst`` and cryptsetup's
  own vectors;
* LUKS1 and LUKS2 images cryptsetup formats with those hashes unlock in cryptfs to the volume
  key cryptsetup dumps; images cryptfs formats with them pass ``cryptsetup open
  --test-passphrase``;
* ESSIV keyed by a libgcrypt hash holds the ciphertext computed here with pyca/cryptography;
* a hash cryptfs cannot compute is refused in one line naming it as not supported.
"""

import hashlib
import os
import subprocess

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from test_keys import CRYPTSETUP_VECTORS

import cryptfs
from cryptfs.crypto import hashes
from cryptfs.crypto.keys import Secret, hash_passphrase
from cryptfs.errors import FormatError, SpecError
from helpers import PASSPHRASE, cryptsetup, luks_volume_key, needs, open_luks, open_plain
from helpers import cryptfs as run_cli

#: RFC 6986's two messages: M1, the 63 ASCII digits; M2, a line of the Igor Tale in CP1251.
M1 = b"012345678901234567890123456789012345678901234567890123456789012"
M2 = "Се ветри, Стрибожи внуци, веютъ с моря стрелами на храбрыя плъкы Игоревы".encode("cp1251")

PUBLISHED = [
    # Whirlpool: the ISO/IEC 10118-3:2004 test vectors (NESSIE submission, "ISO test vectors")
    ("whirlpool", b"", "19fa61d75522a4669b44e39c1d2e1726c530232130d407f89afee0964997f7a7"
                       "3e83be698b288febcf88e3e03c4f0757ea8964e59b63d93708b138cc42a66eb3"),
    ("whirlpool", b"abc", "4e2448a4c6f486bb16b6562c73b4020bf3043e3a731bce721ae1b303d97e6d4c"
                          "7181eebdb6c57e277d0e34957114cbd6c797fc9d95d8b582d225292076d4eef5"),
    # RIPEMD-160: Dobbertin, Bosselaers, Preneel, "RIPEMD-160: a strengthened version of
    # RIPEMD" (1996), its table of test vectors
    ("ripemd160", b"", "9c1185a5c5e9fc54612808977ee8f548b2258d31"),
    ("ripemd160", b"abc", "8eb208f7e05d987a9b044a8e98c6b087f15a0bfc"),
    # GOST R 34.11-2012 (Streebog): RFC 6986 section 10, examples 1 and 2 (the RFC prints
    # messages and digests as little-endian numbers; these are the byte strings)
    ("stribog512", M1, "1b54d01a4af5b9d5cc3d86d68d285462b19abc2475222f35c085122be4ba1ffa"
                       "00ad30f8767b3a82384c6574f024c311e2a481332b08ef7f41797891c1646f48"),
    ("stribog256", M1, "9d151eefd8590b89daa6ba6cb74af9275dd051026bb149a452fd84e5e57b5500"),
    ("stribog512", M2, "1e88e62226bfca6f9994f1f2d51569e0daf8475a3b0fe61a5300eee46d961376"
                       "035fe83549ada2b8620fcd7c496ce5b33f0cb9dddc2b6460143b03dabac9fb28"),
    ("stribog256", M2, "9dd2fe4e90409e5da87f53976d7405b0c0cac628fc669a741d50063c557e8f50"),
    ("streebog256", M1, "9d151eefd8590b89daa6ba6cb74af9275dd051026bb149a452fd84e5e57b5500"),
    # SM3: GB/T 32905-2016 (draft-shen-sm3-hash), examples 1 and 2
    ("sm3", b"abc", "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"),
    ("sm3", b"abcd" * 16, "debe9ff92275b8a138604889c18e5a4d6fdb70e5387e5765293dcba39c0c5732"),
    # BLAKE2: RFC 7693, appendices A (BLAKE2b-512) and B (BLAKE2s-256)
    ("blake2b-512", b"abc", "ba80a53f981c4d0d6a2797b69f12f6e94c212f14685ac4b74b12bb6fdbffa2d1"
                            "7d87c5392aab792dc252d5de4533cc9518d38aa8dbf1925ab92386edd4009923"),
    ("blake2s-256", b"abc", "508c5e8c327c14e2e1a72ba34eeb452f37458b209ed63a294d999b4c86675982"),
]


@pytest.fixture(params=["hashlib first", "libgcrypt only"])
def path(request, monkeypatch):
    """Each test twice: as cryptfs picks (hashlib where it has the hash), and with hashlib
    bypassed, so every hash goes through libgcrypt."""
    if request.param == "libgcrypt only":
        monkeypatch.setattr(hashes, "_hashlib_name", lambda name: None)
    return request.param


def digest(name: str, *pieces: bytes) -> bytes:
    h = hashes.new(name)
    for piece in pieces:
        h.update(piece)
    return h.digest()


@pytest.mark.parametrize("name, message, expected", PUBLISHED,
                         ids=[f"{n}-{len(m)}" for n, m, _ in PUBLISHED])
def test_published_vectors(path, name, message, expected):
    assert digest(name, message).hex() == expected
    assert digest(name, message[:7], bytearray(message[7:])).hex() == expected
    assert hashes.new(name).digest_size == len(expected) // 2


def test_libgcrypt_digests_behave_as_hashlib_objects():
    """digest() leaves the object usable; a copy goes its own way."""
    h = hashes.new("whirlpool")
    h.update(b"a")
    h.digest()
    fork = h.copy()
    h.update(memoryview(b"xbc")[1:])
    fork.update(b"zz")
    assert h.digest().hex() == PUBLISHED[1][2]
    assert fork.digest() == digest("whirlpool", b"azz")


@pytest.mark.parametrize("name, family, size", [
    ("blake2b-160", hashlib.blake2b, 20), ("blake2b-256", hashlib.blake2b, 32),
    ("blake2b-384", hashlib.blake2b, 48), ("blake2s-128", hashlib.blake2s, 16),
    ("blake2s-160", hashlib.blake2s, 20), ("blake2s-224", hashlib.blake2s, 28),
])
def test_blake2_sizes_against_pythons_blake2(name, family, size):
    for length in (0, 1, 63, 64, 65, 127, 128, 129, 1000):
        message = os.urandom(length)
        assert digest(name, message) == family(message, digest_size=size).digest()


# --- PBKDF2 ----------------------------------------------------------------------------------

def _openssl(command: str, *args: str, data: bytes = b"") -> str:
    """``openssl COMMAND ARGS`` with the legacy provider (whirlpool, ripemd160)."""
    return subprocess.run(["openssl", command, "-provider", "legacy", "-provider", "default",
                           *args], input=data, capture_output=True, check=True).stdout.decode()


def pbkdf2(name: str, password: bytes, salt: bytes, iterations: int, length: int) -> bytes:
    out = bytearray(length)
    hashes.pbkdf2(name, password, salt, iterations, out)
    return bytes(out)


@needs("openssl")
@pytest.mark.parametrize("name", ["whirlpool", "ripemd160", "sm3", "sha512"])
@pytest.mark.parametrize("iterations, length", [(1, 20), (2, 64), (1000, 100)])
def test_pbkdf2_against_openssl(path, name, iterations, length):
    password, salt = os.urandom(13), os.urandom(32)
    out = _openssl("kdf", "-keylen", str(length), "-kdfopt", f"digest:{name}",
                   "-kdfopt", f"hexpass:{password.hex()}", "-kdfopt", f"hexsalt:{salt.hex()}",
                   "-kdfopt", f"iter:{iterations}", "PBKDF2")
    assert pbkdf2(name, password, salt, iterations, length) == bytes.fromhex(out.replace(":", ""))


def reference_pbkdf2(new, block: int, password: bytes, salt: bytes, iterations: int,
                     length: int) -> bytes:
    """RFC 8018 PBKDF2 over RFC 2104 HMAC, written out, for hash constructor ``new`` whose
    block is ``block`` bytes."""
    def hmac(message: bytes) -> bytes:
        key = password if len(password) <= block else new(password).digest()
        key = key.ljust(block, b"\0")
        inner = new(bytes(k ^ 0x36 for k in key) + message).digest()
        return new(bytes(k ^ 0x5C for k in key) + inner).digest()
    out = b""
    for i in range(1, -(-length // len(hmac(b""))) + 1):
        u = hmac(salt + i.to_bytes(4, "big"))
        t = bytearray(u)
        for _ in range(iterations - 1):
            u = hmac(u)
            t = bytearray(a ^ b for a, b in zip(t, u))
        out += t
    return out[:length]


def ours(name: str):
    """Hash ``name`` as a constructor of a hash of a message (proven on the published
    vectors above)."""
    def new(message: bytes):
        h = hashes.new(name)
        h.update(message)
        return h
    return new


@pytest.mark.parametrize("name, new, block", [
    ("sha256", hashlib.sha256, 64),     # the reference itself, against hashlib's PBKDF2
    ("blake2b-256", lambda m: hashlib.blake2b(m, digest_size=32), 128),
    ("blake2s-128", lambda m: hashlib.blake2s(m, digest_size=16), 64),
    ("stribog256", ours("stribog256"), 64),
    ("stribog512", ours("stribog512"), 64),
])
def test_pbkdf2_against_rfc8018_written_out(name, new, block):
    password, salt = os.urandom(70), os.urandom(16)         # a password longer than a block
    for iterations, length in ((1, 16), (3, 100)):
        assert pbkdf2(name, password, salt, iterations, length) == \
            reference_pbkdf2(new, block, password, salt, iterations, length)


# --- plain mode ------------------------------------------------------------------------------

@needs("openssl")
@pytest.mark.parametrize("name", ["whirlpool", "ripemd160", "sm3"])
@pytest.mark.parametrize("key_bytes", [16, 64, 100])
def test_plain_passphrase_hashing_against_openssl(path, name, key_bytes):
    """cryptsetup's scheme: round r hashes r bytes 'A' and the passphrase; the key is the
    rounds' digests, cut to the key size."""
    passphrase = os.urandom(20)
    expected, rounds = b"", 0
    while len(expected) < key_bytes:
        line = _openssl("dgst", f"-{name}", "-hex", data=b"A" * rounds + passphrase)
        expected, rounds = expected + bytes.fromhex(line.split("= ")[1].strip()), rounds + 1
    assert hash_passphrase(name, Secret(passphrase), key_bytes).buffer == \
        expected[:key_bytes]


@pytest.mark.parametrize("name, bits, passphrase, expected", CRYPTSETUP_VECTORS)
def test_plain_hashing_through_libgcrypt_matches_cryptsetup(monkeypatch, name, bits,
                                                            passphrase, expected):
    monkeypatch.setattr(hashes, "_hashlib_name", lambda name: None)
    assert hash_passphrase(name, Secret(passphrase), bits // 8).buffer.hex() == expected


def test_plain_passphrase_hashed_with_whirlpool_is_its_digest():
    assert hash_passphrase("whirlpool", Secret(b"abc"), 64).buffer.hex() == PUBLISHED[1][2]


# --- LUKS with cryptsetup --------------------------------------------------------------------

LUKS_HASHES = ["whirlpool", "ripemd160", "sha1", "sha512", "blake2b-512"]
PBKDF2 = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]
ARGON2 = ["--pbkdf", "argon2id", "--pbkdf-memory", "32768", "--pbkdf-force-iterations", "4"]
CRYPTSETUP_MADE = [("luks1", h) for h in LUKS_HASHES] + [("luks2", "whirlpool")]


@needs("cryptsetup")
@pytest.mark.parametrize("kind, name", CRYPTSETUP_MADE, ids=[" ".join(c) for c in CRYPTSETUP_MADE])
def test_cryptsetup_images_with_the_hash_unlock_in_cryptfs(tmp_path, kind, name):
    image = tmp_path / "image"
    image.write_bytes(bytes(20 << 20))
    cryptsetup("luksFormat", "--type", kind, "--hash", name, *PBKDF2, str(image))
    assert name in cryptsetup("luksDump", str(image), passphrase=None)
    assert_cryptfs_unlocks_the_key_cryptsetup_dumps(image)


def assert_cryptfs_unlocks_the_key_cryptsetup_dumps(image) -> None:
    daemon = open_luks(image)
    try:
        assert bytes(daemon.stack.volume.key.buffer) == luks_volume_key(image)[0]
    finally:
        daemon.close()


CRYPTFS_MADE = [("luks1", h, PBKDF2) for h in LUKS_HASHES] + [
    ("luks2", "whirlpool", PBKDF2),
    ("luks2", "whirlpool", ARGON2),             # whirlpool for the AF splitter and the digest
]


@needs("cryptsetup")
@pytest.mark.parametrize("kind, name, options", CRYPTFS_MADE,
                         ids=[f"{k} {n} {o[1]}" for k, n, o in CRYPTFS_MADE])
def test_cryptfs_images_with_the_hash_pass_cryptsetup(tmp_path, kind, name, options):
    image = tmp_path / "image"
    result = run_cli("format", image, "--type", kind, "--hash", name, "--size", "20M",
                     "--key-file", "-", *options, input=PASSPHRASE.encode())
    assert result.returncode == 0, result.stderr
    cryptsetup("open", "--test-passphrase", str(image))
    assert_cryptfs_unlocks_the_key_cryptsetup_dumps(image)


# --- ESSIV -----------------------------------------------------------------------------------

def essiv_cbc(key: bytes, salt: bytes, plaintext: bytes) -> bytes:
    """AES-CBC with ESSIV IVs (AES-ECB under ``salt`` of the 512-byte sector number),
    pyca/cryptography's AES."""
    ecb = Cipher(algorithms.AES(salt), modes.ECB()).encryptor()
    out = b""
    for sector, at in enumerate(range(0, len(plaintext), 512)):
        iv = ecb.update(sector.to_bytes(16, "little"))
        cbc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
        out += cbc.update(plaintext[at:at + 512]) + cbc.finalize()
    return out


async def test_essiv_keyed_by_a_libgcrypt_hash(tmp_path):
    image, key, data = tmp_path / "image", os.urandom(32), os.urandom(64 << 10)
    image.write_bytes(bytes(len(data)))
    daemon = open_plain(image, key, cipher="aes-cbc-essiv:stribog256")
    assert await daemon.queue.write(0, data) == len(data)
    await daemon.queue.flush()
    daemon.close()
    assert image.read_bytes() == essiv_cbc(key, digest("stribog256", key), data)


def test_a_core_without_the_essiv_hash_falls_back_to_software(tmp_path):
    """OpenSSL has no stribog: the native core is unavailable, software serves and says so."""
    image = tmp_path / "image"
    image.write_bytes(bytes(1 << 20))
    daemon = open_plain(image, os.urandom(32), cipher="aes-cbc-essiv:stribog256",
                        backend="multidu")
    try:
        assert daemon.stack.backend.name == "software"
        assert "unavailable" in daemon.status()["backend_refused"]
    finally:
        daemon.close()


# --- refusals --------------------------------------------------------------------------------

def assert_refused_as_unsupported(message: str, name: str) -> None:
    assert f"hash {name!r} is not supported" in message, message
    assert "\n" not in message.strip() and "at least" not in message, message


@pytest.mark.parametrize("args, name", [
    (["format", "--hash", "md17"], "md17"),
    (["format", "--type", "luks1", "--hash", "sha3-999"], "sha3-999"),
    (["format", "--cipher", "aes-cbc-essiv:md17", "--key-size", "256"], "md17"),
    (["open", "--type", "plain", "--hash", "md17"], "md17"),
])
def test_the_cli_refuses_an_unknown_hash_in_one_line(tmp_path, args, name):
    image, mnt = tmp_path / "image", tmp_path / "mnt"
    mnt.mkdir()
    formats = args[0] == "format"
    if formats:
        args = [*args, image, "--size", "20M", *PBKDF2]
    else:
        image.write_bytes(bytes(1 << 20))
        args = [*args, image, mnt]
    result = run_cli(*args, input=PASSPHRASE.encode())
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("cryptfs: ") and "Traceback" not in result.stderr
    assert_refused_as_unsupported(result.stderr, name)
    assert image.exists() != formats                    # format leaves nothing behind


@pytest.mark.parametrize("name", ["md5", "blake2s-128"])
def test_luks1_format_refuses_a_hash_shorter_than_its_digest(tmp_path, name):
    """16 bytes: a hash cryptfs has, but too short for LUKS1's 20-byte volume key digest (as
    cryptsetup refuses it, and as cryptfs refuses such a header when it reads one)."""
    image = tmp_path / "image"
    result = run_cli("format", image, "--type", "luks1", "--hash", name, "--size", "20M",
                     "--key-file", "-", *PBKDF2, input=PASSPHRASE.encode())
    assert result.returncode == 1 and not image.exists(), result.stderr
    assert f"hash-spec {name!r} is not a hash of at least 20 bytes" in result.stderr


def test_a_luks1_header_naming_an_unknown_hash_is_refused_as_unsupported(tmp_path):
    image = tmp_path / "image"
    cryptfs.format_image(image, passphrase=PASSPHRASE, size=4 << 20, type="luks1",
                         pbkdf="pbkdf2", pbkdf_force_iterations=1000)
    data = bytearray(image.read_bytes())
    data[72:104] = b"md17".ljust(32, b"\0")         # hash-spec, after magic, cipher, mode
    image.write_bytes(data)
    with pytest.raises(FormatError) as e:
        cryptfs.read_header(image)
    assert_refused_as_unsupported(str(e.value), "md17")


def test_hashes_refuses_names_it_cannot_compute():
    for name in ("md17", "sha3-999", "", "shake128", "blake2b-999", "whirlpool\0"):
        with pytest.raises(SpecError) as e:
            hashes.new(name)
        assert_refused_as_unsupported(str(e.value), name)
        assert not hashes.supported(name)
