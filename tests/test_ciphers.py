"""Ciphers beyond AES-XTS/CBC: Adiantum (``xchacha12,aes-adiantum-plain64``,
``xchacha20,...``); serpent, twofish and camellia in xts, cbc, ecb and lrw, cast5 and blowfish
(64-bit blocks) in cbc and ecb, with every IV mode (libgcrypt); AES in ecb and lrw.

Block ciphers, against independent oracles (never against cryptfs's own code alone):

* LUKS1 images made by qemu-img (its own crypto: nettle or gcrypt) — serpent and twofish
  xts-plain64 and cbc-essiv:sha256, aes and serpent ecb, cast5 cbc-plain64, cbc-plain and
  ecb — open with their known plaintext on both backends, what cryptfs writes reads back
  through qemu-img, and the same volumes in plain mode (the LUKS1 volume key and payload
  offset) read the same;
* camellia, cast5, blowfish and AES-ECB against pyca/cryptography (OpenSSL), every IV mode,
  the IVs restated from dm-crypt's generators (8 bytes for a 64-bit block), XTS built from
  ECB here; a Blowfish key libgcrypt calls weak;
* LUKS1 key slots cryptsetup sealed in aes-ecb and camellia open; cryptfs format picks the key
  size cryptsetup picks; LUKS1 and LUKS2 images cryptfs formats with each cipher open again
  and cryptsetup luksDump accepts them;
* the native core's whole bios byte-identical to the per-sector reference for ecb, lrw and
  the 64-bit block ciphers (LRW's own vectors: tests/test_lrw.py).

* The spec: accepted with the IV modes dm-crypt fills from the front of Adiantum's 32-byte IV
  (plain64, plain, null), a 256-bit key only; everything else refused in one line.
* Every backend against the reference: each data unit Adiantum-encrypted by
  backends/adiantum.c through its test-only binding (itself proven on the kernel's vectors in
  tests/test_adiantum.py), the tweak the unit's plain64 IV zero-padded to 32 bytes; 512..4096
  byte units; the whole-bio native core byte-identical to the per-sector path, split over
  threads or not.
* The API: plain images round-trip and hold exactly the reference ciphertext on disk; LUKS1 and
  LUKS2 images formatted with Adiantum open again with what was written.
"""

import hashlib
import os
import re
import shutil
import subprocess

import pytest
from cryptography.hazmat.decrepit.ciphers import algorithms as decrepit
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

import cryptfs
from cryptfs import backends
from cryptfs.backends import native
from cryptfs.backends.aes import UnitCipher
from cryptfs.backends.base import CryptoRequest, Op
from cryptfs.crypto.ivgen import IV_MODES
from cryptfs.crypto.spec import parse_spec
from cryptfs.errors import SpecError
from helpers import PASSPHRASE, cryptsetup, luks_volume_key, needs, open_luks

try:
    from cryptfs.backends import _adiantum
except ImportError:   # optional extension
    _adiantum = None

needs_adiantum = pytest.mark.skipif(_adiantum is None, reason="Adiantum is not built")

SPECS = {"xchacha12,aes-adiantum-plain64": 12, "xchacha20,aes-adiantum-plain64": 20}
SECTOR_SIZES = (512, 1024, 2048, 4096)


def reference(rounds: int, key: bytes, op: Op, data: bytes, sector_size: int, first: int,
              ivmode: str = "plain64") -> bytes:
    """Unit by unit through the kernel-vector-tested binding, the tweak built here."""
    adi = _adiantum.Adiantum(key, rounds)
    iv = IV_MODES[ivmode].generator(key, None)
    crypt = adi.encrypt if op is Op.ENCRYPT else adi.decrypt
    return b"".join(crypt(data[at:at + sector_size], iv(first + i) + bytes(16))
                    for i, at in enumerate(range(0, len(data), sector_size)))


@needs_adiantum
@pytest.mark.parametrize("text, chain", [
    ("xchacha12,aes-adiantum-plain64", "adiantum12"),
    ("xchacha20,aes-adiantum-plain64", "adiantum20"),
    ("xchacha12,aes-adiantum-plain", "adiantum12"),
    ("xchacha20,aes-adiantum-null", "adiantum20"),
])
def test_adiantum_specs_are_accepted(text, chain):
    spec = parse_spec(text)
    assert str(spec) == text and spec.chain == chain and spec.default_key_bits == 256
    spec.check_key_bits(256)
    with pytest.raises(SpecError, match="not valid"):
        spec.check_key_bits(512)


@pytest.mark.parametrize("text, message", [
    ("xchacha12,aes-adiantum-plain64be", "not supported with Adiantum"),
    ("xchacha12,aes-adiantum-essiv:sha256", "not supported with Adiantum"),
    ("xchacha12,aes-adiantum-benbi", "not supported with Adiantum"),
    ("xchacha8,aes-adiantum-plain64", "Adiantum is written"),
    ("aes-adiantum-plain64", "Adiantum is written"),
    ("xchacha12,aes-xts-plain64", "Adiantum is written"),
    ("des3_ede-xts-plain64", "cipher 'des3_ede'"),
    ("blowfish-xts-plain64", "xts needs a 128-bit block cipher; blowfish has 64-bit blocks"),
    ("cast5-lrw-benbi", "lrw needs a 128-bit block cipher; cast5 has 64-bit blocks"),
    ("aes-ecb-essiv:sha256", "ESSIV encrypts an IV, and ecb has none"),
    ("cast5-cbc-essiv:sha256", "256-bit digest, which is no cast5 key"),
    ("serpent-ctr-plain64", "chain mode 'ctr'"),
    ("aes-lrw", "cipher-chainmode-ivmode"),                   # only ecb goes without an IV
])
def test_specs_cryptfs_cannot_run_are_refused_in_one_line(text, message):
    with pytest.raises(SpecError, match=message) as e:
        parse_spec(text)
    assert "\n" not in str(e.value)


@needs_adiantum
@pytest.mark.parametrize("sector_size", SECTOR_SIZES)
@pytest.mark.parametrize("text", SPECS)
def test_every_backend_matches_the_reference(backend_variant, text, sector_size):
    name, options = backend_variant
    spec = parse_spec(text)
    key = os.urandom(32)
    units, first = 6, (1 << 32) - 3        # across 2^32: 64-bit sector arithmetic shows
    plaintext = os.urandom(units * sector_size)
    expected = reference(SPECS[text], key, Op.ENCRYPT, plaintext, sector_size, first)
    backend = backends.create(name, spec, bytearray(key),
                              backends.backend_class(name).Options(**options))
    iv = IV_MODES["plain64"].generator(key, None)(first)
    for op, src, want in ((Op.ENCRYPT, plaintext, expected), (Op.DECRYPT, expected, plaintext)):
        out = bytearray(len(src))
        backend.submit(CryptoRequest(op, memoryview(src), memoryview(out), iv, sector_size))
        assert bytes(out) == want
    backend.close()


@needs_adiantum
@pytest.mark.skipif(native.UNAVAILABLE is not None, reason=str(native.UNAVAILABLE))
@pytest.mark.parametrize("ivmode", ["plain64", "plain", "null"])
@pytest.mark.parametrize("text", SPECS)
def test_whole_bio_core_is_byte_identical_to_per_sector(text, ivmode):
    spec = parse_spec(text.replace("plain64", ivmode))
    key = os.urandom(32)
    core = native.keyed_core(spec, key)
    for sector_size in SECTOR_SIZES:
        units, first = 40, (1 << 32) - 20       # plain wraps here, plain64 does not
        plaintext = os.urandom(units * sector_size)
        expected = reference(SPECS[text], key, Op.ENCRYPT, plaintext, sector_size, first,
                             ivmode)
        iv = IV_MODES["plain64"].generator(key, None)(first)   # derived modes carry plain64
        if ivmode == "plain":
            iv = IV_MODES["plain"].generator(key, None)(first)
        for threads in (1, 3):
            out = bytearray(len(plaintext))
            core.crypt(True, plaintext, out, iv, sector_size, 1, threads)
            assert bytes(out) == expected
            core.crypt(False, out, out, iv, sector_size, 1, threads)    # in place
            assert bytes(out) == plaintext
    core.close()


@needs_adiantum
@pytest.mark.skipif(native.UNAVAILABLE is not None, reason=str(native.UNAVAILABLE))
def test_the_core_refuses_what_the_spec_refuses():
    from cryptfs.backends import _native
    with pytest.raises(ValueError, match="32 bytes"):
        _native.Core("adiantum12", bytes(64), "plain64")
    with pytest.raises(ValueError, match="plain, plain64 or null"):
        _native.Core("adiantum12", bytes(32), "benbi")


@needs_adiantum
@pytest.mark.parametrize("backend", ["multidu", "software"])
@pytest.mark.parametrize("sector_size", [512, 4096])
@pytest.mark.parametrize("text", SPECS)
def test_plain_image_round_trip_holds_the_reference_ciphertext(tmp_path, text, sector_size,
                                                                backend):
    image, key_file = tmp_path / "image", tmp_path / "key"
    key = os.urandom(32)
    key_file.write_bytes(key)
    image.write_bytes(bytes(64 << 10))
    data = os.urandom(20000)
    opts = dict(key_file=key_file, type="plain", cipher=text, key_size=256,
                sector_size=sector_size, backend=backend)
    with cryptfs.open_image(image, read_only=False, **opts) as device:
        assert device.pwrite(data, 1234) == len(data)
    with cryptfs.open_image(image, **opts) as device:
        assert device.pread(len(data), 1234) == data
        plaintext = device.pread(64 << 10, 0)
    disk = image.read_bytes()
    # plain mode: IV sectors count 512-byte sectors unless iv_large_sectors
    first, step = 0, sector_size // 512
    for i, at in enumerate(range(0, len(disk), sector_size)):
        assert disk[at:at + sector_size] == reference(
            SPECS[text], key, Op.ENCRYPT, plaintext[at:at + sector_size], sector_size,
            first + i * step)


@needs_adiantum
@pytest.mark.parametrize("kind", ["luks1", "luks2"])
@pytest.mark.parametrize("text", SPECS)
def test_luks_images_with_adiantum_round_trip(tmp_path, text, kind):
    image = tmp_path / "image"
    cryptfs.format_image(image, passphrase=PASSPHRASE, size=20 << 20, type=kind, cipher=text,
                         pbkdf="pbkdf2", pbkdf_force_iterations=1000)
    assert cryptfs.read_header(image).segment.encryption == text
    with cryptfs.open_image(image, passphrase=PASSPHRASE, read_only=False) as device:
        assert device.pwrite(b"adiantum" * 1000, 4321) == 8000
    with cryptfs.open_image(image, passphrase=PASSPHRASE) as device:
        assert device.pread(8000, 4321) == b"adiantum" * 1000


@needs_adiantum
@needs("cryptsetup")
@pytest.mark.parametrize("text", SPECS)
def test_cryptsetup_reads_a_luks2_adiantum_header(tmp_path, text):
    image = tmp_path / "image"
    cryptfs.format_image(image, passphrase=PASSPHRASE, size=20 << 20, type="luks2",
                         cipher=text, pbkdf="pbkdf2", pbkdf_force_iterations=1000)
    dump = cryptsetup("luksDump", str(image), passphrase=None)
    assert f"cipher: {text}" in dump


# --- block ciphers: serpent, twofish, camellia, cast5, blowfish; xts, cbc, ecb, lrw ----------

QEMU_CASES = [   # (qemu-img cipher-alg, cipher-mode, ivgen-alg, ivgen-hash-alg) → cryptfs spec
    ("serpent-256", "xts", "plain64", None, "serpent-xts-plain64"),
    ("twofish-256", "xts", "plain64", None, "twofish-xts-plain64"),
    ("serpent-128", "cbc", "essiv", "sha256", "serpent-cbc-essiv:sha256"),
    ("twofish-128", "cbc", "essiv", "sha256", "twofish-cbc-essiv:sha256"),
    # ECB: qemu-img writes the IV mode it ignores, as dm-crypt ignores it
    ("aes-256", "ecb", "plain64", None, "aes-ecb-plain64"),
    ("serpent-256", "ecb", "plain64", None, "serpent-ecb-plain64"),
    # 64-bit blocks: 8-byte IVs, the sector truncated as dm-crypt's iv_size truncates it
    ("cast5-128", "cbc", "plain64", None, "cast5-cbc-plain64"),
    ("cast5-128", "cbc", "plain", None, "cast5-cbc-plain"),
    ("cast5-128", "ecb", "plain64", None, "cast5-ecb-plain64"),
]


@needs("qemu-img")
@pytest.mark.parametrize("alg, mode, ivgen, ivhash, text", QEMU_CASES,
                         ids=[c[-1] for c in QEMU_CASES])
def test_qemu_img_luks1_images_both_ways(tmp_path, alg, mode, ivgen, ivhash, text):
    """Read on the native core (whole bios), written on software (per sector); then the same
    volume in plain mode — the volume key cryptfs unlocked from the LUKS1 header, the header's
    payload offset — reads what LUKS1 mode reads, on both backends."""
    from helpers import qemu_luks_decrypt, qemu_luks_encrypt
    plain, image, key_file = tmp_path / "plain.raw", tmp_path / "image.luks", tmp_path / "key"
    size = 1 << 20
    plain.write_bytes(os.urandom(size))
    qemu_luks_encrypt(plain, image, cipher_alg=alg, cipher_mode=mode, ivgen_alg=ivgen,
                      ivgen_hash=ivhash)
    header = cryptfs.read_header(image)
    assert header.segment.encryption == text
    with cryptfs.open_image(image, passphrase=PASSPHRASE, backend="multidu") as device:
        assert device.read() == plain.read_bytes()
    model = bytearray(plain.read_bytes())
    patch = os.urandom(70000)
    with cryptfs.open_image(image, passphrase=PASSPHRASE, read_only=False,
                            backend="software") as device:
        assert device.pwrite(patch, 3333) == len(patch)
        key_file.write_bytes(device._stack.volume.key.buffer)
    model[3333:3333 + len(patch)] = patch
    assert qemu_luks_decrypt(image, tmp_path / "out.raw") == bytes(model)
    for backend in ("multidu", "software"):
        with cryptfs.open_image(image, type="plain", key_file=key_file, cipher=text,
                                key_size=len(key_file.read_bytes()) * 8,
                                offset=header.payload_offset, backend=backend) as device:
            assert device.read() == bytes(model)


#: pyca/cryptography's block ciphers (OpenSSL's; the legacy ones in its "decrepit" corner)
PYCA = {"aes": algorithms.AES, "camellia": decrepit.Camellia, "cast5": decrepit.CAST5,
        "blowfish": decrepit.Blowfish}
M64 = (1 << 64) - 1


def _pyca(cipher: str, chain: str, key: bytes, encrypt: bool, iv: bytes, data: bytes) -> bytes:
    """One unit through pyca/cryptography: ECB and CBC as they are, XTS (IEEE 1619) built here
    from ECB."""
    algorithm = PYCA[cipher]
    if chain in ("ecb", "cbc"):
        c = Cipher(algorithm(key), modes.ECB() if chain == "ecb" else modes.CBC(iv))
        ctx = c.encryptor() if encrypt else c.decryptor()
        return ctx.update(data) + ctx.finalize()
    half = len(key) // 2
    ecb = Cipher(algorithm(key[:half]), modes.ECB())
    block = (ecb.encryptor() if encrypt else ecb.decryptor()).update
    t = int.from_bytes(Cipher(algorithm(key[half:]), modes.ECB()).encryptor().update(iv),
                       "little")
    out = bytearray()
    for at in range(0, len(data), 16):
        tb = t.to_bytes(16, "little")
        x = bytes(a ^ b for a, b in zip(data[at:at + 16], tb))
        out += bytes(a ^ b for a, b in zip(block(x), tb))
        t <<= 1
        if t >> 128:
            t = (t & ((1 << 128) - 1)) ^ 0x87
    return bytes(out)


def dm_crypt_iv(spec, key: bytes, sector: int) -> bytes:
    """The IV dm-crypt's generator writes for ``sector`` (drivers/md/dm-crypt.c,
    crypt_iv_*_gen), restated here: ``iv_size`` is the data cipher's block size; ESSIV is that
    cipher in ECB under hash(key), through pyca/cryptography."""
    size = 8 if spec.cipher in ("cast5", "blowfish") else 16
    iv = bytearray(size)                                          # memset(iv, 0, iv_size)
    if spec.ivmode == "plain":
        iv[0:4] = (sector & 0xFFFFFFFF).to_bytes(4, "little")
    elif spec.ivmode in ("plain64", "essiv"):
        iv[0:8] = (sector & M64).to_bytes(8, "little")
    elif spec.ivmode == "plain64be":
        iv[size - 8:] = (sector & M64).to_bytes(8, "big")
    elif spec.ivmode == "benbi":                        # shift = 9 - ilog2(block size)
        shift = 9 - {8: 3, 16: 4}[size]
        iv[size - 8:] = (((sector << shift) + 1) & M64).to_bytes(8, "big")
    if spec.ivmode == "essiv":
        salt = hashlib.new(spec.ivopts, key).digest()
        return Cipher(PYCA[spec.cipher](salt), modes.ECB()).encryptor().update(bytes(iv))
    return bytes(iv)


#: (spec, key sizes to try; None: all it takes): every chain and IV mode of the ciphers
#: pyca/cryptography has
PYCA_CASES = [(t, None) for t in (
    "camellia-xts-plain64", "camellia-cbc-essiv:sha256", "camellia-cbc-plain",
    "camellia-cbc-benbi", "camellia-xts-plain64be", "camellia-cbc-null", "camellia-ecb",
    "aes-ecb", "aes-ecb-plain64",
    "cast5-cbc-plain64", "cast5-cbc-plain", "cast5-cbc-plain64be", "cast5-cbc-benbi",
    "cast5-cbc-essiv:md5", "cast5-cbc-null", "cast5-ecb")] + [
    (t, (32, 40, 128, 256, 448)) for t in (                # Blowfish: any byte count 4..56
        "blowfish-cbc-plain64", "blowfish-cbc-plain", "blowfish-cbc-plain64be",
        "blowfish-cbc-benbi", "blowfish-cbc-essiv:sha256", "blowfish-cbc-essiv:sha1",
        "blowfish-cbc-null", "blowfish-ecb")]


@pytest.mark.parametrize("text, sizes", PYCA_CASES, ids=[t for t, _ in PYCA_CASES])
def test_block_ciphers_against_pyca_cryptography(backend_variant, text, sizes):
    name, options = backend_variant
    spec = parse_spec(text)
    for bits in sizes or spec.key_sizes:
        check_against_pyca(name, options, spec, os.urandom(bits // 8))


def test_a_blowfish_key_libgcrypt_calls_weak_still_encrypts_as_everyone_else(backend_variant):
    """libgcrypt refuses this key unless told to allow weak keys (its S-boxes repeat an
    entry); the kernel and OpenSSL take it, so cryptfs must."""
    import ctypes
    import ctypes.util
    key = bytes.fromhex("459be4b25bd3ae5941f14115f3863a7c")
    lib = ctypes.CDLL(ctypes.util.find_library("gcrypt") or "libgcrypt.so.20")
    lib.gcry_check_version(None)
    lib.gcry_cipher_map_name.argtypes = [ctypes.c_char_p]
    handle = ctypes.c_void_p()
    lib.gcry_cipher_open(ctypes.byref(handle), lib.gcry_cipher_map_name(b"BLOWFISH"), 1, 0)
    assert lib.gcry_cipher_setkey(handle, key, ctypes.c_size_t(16)) & 0xFFFF == 43  # WEAK_KEY
    lib.gcry_cipher_close(handle)
    name, options = backend_variant
    for text in ("blowfish-cbc-plain64", "blowfish-ecb"):
        check_against_pyca(name, options, parse_spec(text), key)


def check_against_pyca(name: str, options: dict, spec, key: bytes) -> None:
    """Backend ``name`` encrypts and decrypts 9 units across IV sector 2^32 as pyca does with
    dm_crypt_iv's IVs: one request where the backend derives the IV mode itself, else one
    per unit."""
    du, units, first = 512, 9, (1 << 32) - 4
    plaintext = os.urandom(units * du)
    expected = b"".join(_pyca(spec.cipher, spec.mode, key, True,
                              dm_crypt_iv(spec, key, first + i), plaintext[i * du:(i + 1) * du])
                        for i in range(units))
    backend = backends.create(name, spec, bytearray(key),
                              backends.backend_class(name).Options(**options))
    iv_of = IV_MODES[spec.ivmode].generator(key, spec.ivopts, spec.cipher)
    if spec.ivmode in backend.caps.derived_iv_modes:
        counter = "plain" if spec.ivmode == "plain" else "plain64"
        requests = [(0, len(plaintext), IV_MODES[counter].generator(key, None)(first))]
    else:
        requests = [(i * du, (i + 1) * du, iv_of(first + i)) for i in range(units)]
    for op, src, want in ((Op.ENCRYPT, plaintext, expected), (Op.DECRYPT, expected, plaintext)):
        out = bytearray(len(src))
        for start, end, iv in requests:
            backend.submit(CryptoRequest(op, memoryview(src)[start:end],
                                         memoryview(out)[start:end], iv, du))
        assert bytes(out) == want, (str(spec), len(key) * 8, op)
    backend.close()


SECTOR = 0x1122334455667788


@pytest.mark.parametrize("mode, expected", [
    ("plain", "8877665500000000"),                                  # le32
    ("plain64", "8877665544332211"),                                # le64
    ("plain64be", "1122334455667788"),                              # be64 in the last 8
    ("benbi", f"{((SECTOR << 6) + 1) & M64:016x}"),                 # 64 blocks a sector
    ("null", "00" * 8),
])
def test_a_64_bit_block_ciphers_iv_is_8_bytes(mode, expected):
    """dm-crypt's iv_size is the cipher's block size: its IV layouts in 8 bytes."""
    for cipher in ("cast5", "blowfish"):
        assert IV_MODES[mode].generator(b"k" * 16, None, cipher)(SECTOR).hex() == expected


BYTE_IDENTITY = ["aes-ecb", "aes-ecb-plain64", "serpent-ecb", "cast5-ecb"] + [
    f"{cipher}-{chain}-{iv}"
    for cipher, chain in (("aes", "lrw"), ("twofish", "lrw"), ("cast5", "cbc"),
                          ("blowfish", "cbc"))
    for iv in ("plain64", "plain", "plain64be", "benbi", "null",
               "essiv:md5" if cipher == "cast5" else "essiv:sha256")]


@pytest.mark.skipif(native.UNAVAILABLE is not None, reason=str(native.UNAVAILABLE))
@pytest.mark.parametrize("text", BYTE_IDENTITY)
def test_whole_bio_core_is_byte_identical_to_the_per_sector_reference(text):
    """The native core's one call per bio (IVs derived in C, split over threads or not)
    against backends/aes.py one unit at a time with the IV table's IVs."""
    spec = parse_spec(text)
    key = os.urandom(spec.default_key_bits // 8)
    core = native.keyed_core(spec, key)
    reference = UnitCipher(spec.chain, bytearray(key))
    iv_of = IV_MODES[spec.ivmode].generator(key, spec.ivopts, spec.cipher)
    # what the core is given: the 16-byte counter (derived modes: plain64's)
    counter = spec.ivmode if IV_MODES[spec.ivmode].byteorder else "plain64"
    for du in (512, 4096):
        units, first = 24, (1 << 32) - 10                  # plain wraps here, plain64 does not
        plaintext = memoryview(os.urandom(units * du))
        expected = bytearray(len(plaintext))
        for i in range(units):
            reference.crypt(Op.ENCRYPT, iv_of(first + i), plaintext[i * du:(i + 1) * du],
                            memoryview(expected)[i * du:(i + 1) * du])
        iv = IV_MODES[counter].generator(key, None)(first)
        for threads in (1, 3):
            out = bytearray(len(plaintext))
            core.crypt(True, plaintext, out, iv, du, 1, threads)
            assert out == expected, (text, du, threads)
            core.crypt(False, out, out, iv, du, 1, threads)  # in place
            assert out == plaintext
    core.close()


@pytest.mark.parametrize("text", ["aes-ecb", "aes-ecb-plain64", "aes-lrw-plain64",
                                  "serpent-lrw-benbi", "twofish-ecb", "cast5-cbc-plain64",
                                  "blowfish-ecb", "blowfish-cbc-essiv:sha256",
                                  "camellia-lrw-essiv:sha256"])
def test_accepted_specs_round_trip(text):
    assert str(parse_spec(text)) == text
    assert str(parse_spec("aes-ecb-null")) == "aes-ecb"       # the IV dm-crypt ignores


@pytest.mark.parametrize("kind", ["luks1", "luks2"])
@pytest.mark.parametrize("text", ["serpent-xts-plain64", "twofish-cbc-essiv:sha256",
                                  "camellia-xts-plain64", "serpent-cbc-plain64", "aes-ecb",
                                  "aes-lrw-benbi", "twofish-lrw-plain64", "cast5-cbc-plain64",
                                  "blowfish-cbc-essiv:sha256", "blowfish-ecb"])
def test_block_cipher_luks_images_round_trip(tmp_path, text, kind):
    """Key slots and data in the cipher (LUKS1 seals its key slots with it)."""
    image = tmp_path / "image"
    cryptfs.format_image(image, passphrase=PASSPHRASE, size=20 << 20, type=kind, cipher=text,
                         pbkdf="pbkdf2", pbkdf_force_iterations=1000)
    with cryptfs.open_image(image, passphrase=PASSPHRASE, read_only=False) as device:
        assert device.pwrite(b"block" * 3000, 777) == 15000
    for backend in ("multidu", "software"):
        with cryptfs.open_image(image, passphrase=PASSPHRASE, backend=backend) as device:
            assert device.pread(15000, 777) == b"block" * 3000
    if kind == "luks2" and shutil.which("cryptsetup"):
        assert f"cipher: {text}" in cryptsetup("luksDump", str(image), passphrase=None)


@needs("cryptsetup")
@pytest.mark.parametrize("text", ["aes-ecb", "camellia-ecb", "camellia-cbc-essiv:sha256"])
def test_cryptsetup_luks1_key_slots_in_ecb_and_camellia_open(tmp_path, text):
    """cryptsetup seals a LUKS1 key slot in the data cipher (OpenSSL's, in userspace): cryptfs
    unseals the volume key cryptsetup dumps."""
    image = tmp_path / "image"
    image.write_bytes(bytes(4 << 20))
    cryptsetup("luksFormat", "--type", "luks1", "--pbkdf-force-iterations", "1000",
               "-c", text, str(image))
    daemon = open_luks(image)
    try:
        assert bytes(daemon.stack.volume.key.buffer) == luks_volume_key(image)[0]
        assert str(daemon.stack.volume.spec) == text
    finally:
        daemon.close()


#: cryptsetup's own default key size for each spec is what cryptfs format must choose.  cast5
#: is left out: cryptsetup's default (256 bits) is no CAST5 key, it needs -s 128.
DEFAULT_KEYS = ["aes-xts-plain64", "aes-cbc-essiv:sha256", "aes-ecb", "aes-lrw-benbi",
                "serpent-xts-plain64", "twofish-cbc-essiv:sha256", "camellia-xts-plain64",
                "camellia-cbc-plain64", "camellia-ecb", "serpent-lrw-plain64",
                "blowfish-cbc-plain64", "xchacha12,aes-adiantum-plain64"]


@needs("cryptsetup")
@pytest.mark.parametrize("text", DEFAULT_KEYS)
def test_format_chooses_cryptsetups_default_key_size(tmp_path, text):
    """``cryptsetup luksFormat -c TEXT`` without -s, then luksDump: the key size cryptfs
    format chooses.  Where cryptsetup must check the cipher in the kernel (OpenSSL lacks it)
    and this machine has no device-mapper, cryptsetup cannot format: skipped, saying so."""
    theirs = tmp_path / "theirs"
    theirs.write_bytes(bytes(20 << 20))
    done = subprocess.run(["cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2",
                           "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
                           "--key-file", "-", "-c", text, str(theirs)],
                          input=PASSPHRASE, capture_output=True, text=True)
    if done.returncode and "device-mapper" in done.stderr:
        pytest.skip(f"cryptsetup needs the kernel's {text} (no device-mapper here)")
    assert done.returncode == 0, done.stderr
    dump = cryptsetup("luksDump", str(theirs), passphrase=None)
    cryptsetup_bits = int(re.search(r"^\s+Key:\s+(\d+) bits", dump, re.M).group(1))
    ours = tmp_path / "ours"
    cryptfs.format_image(ours, passphrase=PASSPHRASE, size=20 << 20, cipher=text,
                         pbkdf="pbkdf2", pbkdf_force_iterations=1000)
    assert parse_spec(text).default_key_bits == cryptsetup_bits
    assert f"Key:        {cryptsetup_bits} bits" in cryptsetup("luksDump", str(ours),
                                                               passphrase=None)


def test_block_cipher_key_sizes():
    assert parse_spec("serpent-xts-plain64").key_sizes == (256, 384, 512)
    assert parse_spec("twofish-cbc-plain64").key_sizes == (128, 256)
    assert parse_spec("cast5-cbc-plain64").key_sizes == (128,)
    assert parse_spec("cast5-ecb").default_key_bits == 128    # cryptsetup's 256 is no CAST5 key
    with pytest.raises(SpecError, match="not valid"):
        parse_spec("twofish-xts-plain64").check_key_bits(384)
    with pytest.raises(SpecError, match=r"allowed: 32\.\.448 in steps of 8"):
        parse_spec("blowfish-ecb").check_key_bits(20)


def test_bench_core_measures_every_cipher_and_chain():
    from cryptfs.crypto.spec import ADIANTUM_CIPHERS, CHAIN_MODES, CIPHER_KEY_BITS
    from cryptfs.tools.bench.core import CIPHERS
    specs = [parse_spec(text) for text in CIPHERS]
    assert {s.cipher for s in specs} == set(CIPHER_KEY_BITS) | set(ADIANTUM_CIPHERS)
    assert {s.mode for s in specs} == set(CHAIN_MODES) | {"adiantum"}
    assert {s.mode for s in specs if s.cipher != "aes"} >= set(CHAIN_MODES)   # libgcrypt's too
