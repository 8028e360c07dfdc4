"""Ciphers beyond AES: Adiantum (``xchacha12,aes-adiantum-plain64``, ``xchacha20,...``), and
serpent, twofish and camellia in xts and cbc with every IV mode (libgcrypt).

Block ciphers, against independent oracles (never against cryptfs's own libgcrypt code alone):

* LUKS1 images made by qemu-img (its own crypto: nettle or gcrypt) with serpent and twofish,
  xts-plain64 with 256-bit keys and cbc-essiv:sha256 with 128-bit keys, open with their known
  plaintext on both backends, and what cryptfs writes reads back through qemu-img;
* camellia against pyca/cryptography (OpenSSL's Camellia): CBC directly, XTS built from ECB
  here; both backends and the native core's whole-bio path;
* LUKS2 images cryptfs formats with each cipher open again; cryptsetup luksDump accepts them.

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

import os
import shutil

import pytest

import cryptfs
from cryptfs import backends
from cryptfs.backends import native
from cryptfs.backends.base import CryptoRequest, Op
from cryptfs.crypto.ivgen import IV_MODES
from cryptfs.crypto.spec import parse_spec
from cryptfs.errors import SpecError
from helpers import PASSPHRASE, cryptsetup, needs

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


@needs_adiantum
@pytest.mark.parametrize("text, message", [
    ("xchacha12,aes-adiantum-plain64be", "not supported with Adiantum"),
    ("xchacha12,aes-adiantum-essiv:sha256", "not supported with Adiantum"),
    ("xchacha12,aes-adiantum-benbi", "not supported with Adiantum"),
    ("xchacha8,aes-adiantum-plain64", "Adiantum is written"),
    ("aes-adiantum-plain64", "Adiantum is written"),
    ("xchacha12,aes-xts-plain64", "Adiantum is written"),
    ("des3_ede-xts-plain64", "cipher 'des3_ede'"),
    ("serpent-ecb-plain64", "not supported with serpent"),
])
def test_wrong_adiantum_specs_are_refused_in_one_line(text, message):
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


# --- serpent, twofish, camellia -------------------------------------------------------------

QEMU_CASES = [   # (qemu-img cipher-alg, cipher-mode, ivgen-alg, ivgen-hash-alg) → cryptfs spec
    ("serpent-256", "xts", "plain64", None, "serpent-xts-plain64"),
    ("twofish-256", "xts", "plain64", None, "twofish-xts-plain64"),
    ("serpent-128", "cbc", "essiv", "sha256", "serpent-cbc-essiv:sha256"),
    ("twofish-128", "cbc", "essiv", "sha256", "twofish-cbc-essiv:sha256"),
]


@needs("qemu-img")
@pytest.mark.parametrize("alg, mode, ivgen, ivhash, text", QEMU_CASES,
                         ids=[c[-1] for c in QEMU_CASES])
def test_qemu_img_luks1_images_both_ways(tmp_path, alg, mode, ivgen, ivhash, text):
    """Read on the native core (whole bios), written on software (per sector)."""
    from helpers import qemu_luks_decrypt, qemu_luks_encrypt
    plain, image = tmp_path / "plain.raw", tmp_path / "image.luks"
    size = 1 << 20
    plain.write_bytes(os.urandom(size))
    qemu_luks_encrypt(plain, image, cipher_alg=alg, cipher_mode=mode, ivgen_alg=ivgen,
                      ivgen_hash=ivhash)
    assert cryptfs.read_header(image).segment.encryption == text
    with cryptfs.open_image(image, passphrase=PASSPHRASE, backend="multidu") as device:
        assert device.read() == plain.read_bytes()
    model = bytearray(plain.read_bytes())
    patch = os.urandom(70000)
    with cryptfs.open_image(image, passphrase=PASSPHRASE, read_only=False,
                            backend="software") as device:
        assert device.pwrite(patch, 3333) == len(patch)
    model[3333:3333 + len(patch)] = patch
    assert qemu_luks_decrypt(image, tmp_path / "out.raw") == bytes(model)


try:
    from cryptography.hazmat.decrepit.ciphers import algorithms as _camellia_home
except ImportError:
    from cryptography.hazmat.primitives.ciphers import algorithms as _camellia_home


def _pyca_camellia(chain: str, key: bytes, encrypt: bool, iv: bytes, data: bytes) -> bytes:
    """Camellia from pyca/cryptography: CBC as it is, XTS (IEEE 1619) built here from ECB."""
    from cryptography.hazmat.primitives.ciphers import Cipher, modes
    algorithms = _camellia_home
    if chain == "cbc":
        c = Cipher(algorithms.Camellia(key), modes.CBC(iv))
        ctx = c.encryptor() if encrypt else c.decryptor()
        return ctx.update(data) + ctx.finalize()
    half = len(key) // 2
    ecb = Cipher(algorithms.Camellia(key[:half]), modes.ECB())
    block = (ecb.encryptor() if encrypt else ecb.decryptor()).update
    t = int.from_bytes(Cipher(algorithms.Camellia(key[half:]), modes.ECB()).encryptor()
                       .update(iv), "little")
    out = bytearray()
    for at in range(0, len(data), 16):
        tb = t.to_bytes(16, "little")
        x = bytes(a ^ b for a, b in zip(data[at:at + 16], tb))
        out += bytes(a ^ b for a, b in zip(block(x), tb))
        t <<= 1
        if t >> 128:
            t = (t & ((1 << 128) - 1)) ^ 0x87
    return bytes(out)


CAMELLIA = ["camellia-xts-plain64", "camellia-cbc-essiv:sha256", "camellia-cbc-plain",
            "camellia-cbc-benbi", "camellia-xts-plain64be", "camellia-cbc-null"]


@pytest.mark.parametrize("text", CAMELLIA)
def test_camellia_against_pyca_cryptography(backend_variant, text):
    from cryptography.hazmat.primitives.ciphers import Cipher, modes
    algorithms = _camellia_home
    name, options = backend_variant
    spec = parse_spec(text)
    for bits in spec.key_sizes:
        key = os.urandom(bits // 8)
        du, units, first = 512, 9, (1 << 32) - 4
        iv_of = IV_MODES[spec.ivmode].generator(key, spec.ivopts, "camellia")
        if spec.ivmode == "essiv":      # the oracle's own ESSIV: Camellia-ECB under H(key)
            import hashlib
            salt = hashlib.sha256(key).digest()
            ecb = Cipher(algorithms.Camellia(salt), modes.ECB()).encryptor()
            iv_of = lambda n: ecb.update((n & (1 << 64) - 1).to_bytes(16, "little"))  # noqa
        plaintext = os.urandom(units * du)
        expected = b"".join(_pyca_camellia(spec.mode, key, True, iv_of(first + i),
                                           plaintext[i * du:(i + 1) * du])
                            for i in range(units))
        backend = backends.create(name, spec, bytearray(key),
                                  backends.backend_class(name).Options(**options))
        if spec.ivmode in backend.caps.derived_iv_modes:   # one request: the core derives
            mode = "plain" if spec.ivmode == "plain" else "plain64"
            requests = [(0, len(plaintext), IV_MODES[mode].generator(key, None)(first))]
        else:                                               # one request per unit
            requests = [(i * du, (i + 1) * du, iv_of(first + i)) for i in range(units)]
        for op, src, want in ((Op.ENCRYPT, plaintext, expected),
                              (Op.DECRYPT, expected, plaintext)):
            out = bytearray(len(src))
            for start, end, iv in requests:
                backend.submit(CryptoRequest(op, memoryview(src)[start:end],
                                             memoryview(out)[start:end], iv, du))
            assert bytes(out) == want, (text, bits, op)
        backend.close()


@pytest.mark.parametrize("text", ["serpent-xts-plain64", "twofish-cbc-essiv:sha256",
                                  "camellia-xts-plain64", "serpent-cbc-plain64"])
def test_block_cipher_luks2_images_round_trip(tmp_path, text):
    image = tmp_path / "image"
    cryptfs.format_image(image, passphrase=PASSPHRASE, size=20 << 20, type="luks2", cipher=text,
                         sector_size=4096, pbkdf="pbkdf2", pbkdf_force_iterations=1000)
    with cryptfs.open_image(image, passphrase=PASSPHRASE, read_only=False) as device:
        assert device.pwrite(b"block" * 3000, 777) == 15000
    for backend in ("multidu", "software"):
        with cryptfs.open_image(image, passphrase=PASSPHRASE, backend=backend) as device:
            assert device.pread(15000, 777) == b"block" * 3000
    if shutil.which("cryptsetup"):
        assert f"cipher: {text}" in cryptsetup("luksDump", str(image), passphrase=None)


def test_block_cipher_key_sizes():
    assert parse_spec("serpent-xts-plain64").key_sizes == (256, 384, 512)
    assert parse_spec("twofish-cbc-plain64").key_sizes == (128, 256)
    with pytest.raises(SpecError, match="not valid"):
        parse_spec("twofish-xts-plain64").check_key_bits(384)


# --- hashes -----------------------------------------------------------------------------------

def test_a_luks1_hash_this_python_lacks_is_refused_as_unsupported(tmp_path):
    """whirlpool is 64 bytes: the refusal must say unsupported, not too short."""
    from cryptfs.errors import CryptfsError
    image = tmp_path / "image"
    cryptfs.format_image(image, passphrase=PASSPHRASE, size=4 << 20, type="luks1",
                         pbkdf="pbkdf2", pbkdf_force_iterations=1000)
    data = bytearray(image.read_bytes())
    data[72:104] = b"whirlpool".ljust(32, b"\0")     # hash-spec, after magic, cipher, mode
    image.write_bytes(data)
    with pytest.raises(CryptfsError) as e:
        cryptfs.read_header(image)
    assert "hash whirlpool is not supported" in str(e.value)
    assert "at least" not in str(e.value) and "\n" not in str(e.value)
