"""Adiantum (backends/adiantum.c) against the kernel's vectors and its defining properties.

Through the test-only extension ``cryptfs.backends._adiantum`` (backends/_adiantum.c):

* every vector of the kernel's ``adiantum(xchacha12,aes)`` and ``adiantum(xchacha20,aes)``
  templates (tests/vectors/adiantum.json, from crypto/testmgr.h), both directions, in place and
  out of place; and of its ``xchacha12``/``xchacha20`` and ``nhpoly1305`` templates, for the
  parts;
* a small pure-Python Adiantum written here from the paper (AES from pyca/cryptography), itself
  checked on the kernel's vectors, equal to the C code on random keys, tweaks and lengths
  16..4096 (the kernel's vectors have six lengths);
* round trips on random lengths 16..4096, and the wide-block property: one flipped bit
  anywhere in the ciphertext (or plaintext, or tweak) changes the whole other side;
* the API's refusals, and one object used by many threads at once.
"""

import json
import os
import struct
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

try:
    from cryptfs.backends import _adiantum
    UNAVAILABLE = None
except ImportError as exc:   # an optional extension: no compiler or no OpenSSL headers
    _adiantum = None
    UNAVAILABLE = f"the test-only extension cryptfs.backends._adiantum is not built ({exc})"

pytestmark = pytest.mark.skipif(_adiantum is None, reason=str(UNAVAILABLE))

VECTORS = json.loads((Path(__file__).parent / "vectors" / "adiantum.json").read_text())
ADIANTUM = VECTORS["adiantum"]
XCHACHA = VECTORS["xchacha"]
NHPOLY1305 = VECTORS["nhpoly1305"]


def plain64(sector: int) -> bytes:
    """dm-crypt's plain64 IV as Adiantum's tweak: the sector little-endian, zero-padded to 32
    bytes (``xchacha12,aes-adiantum-plain64``)."""
    return sector.to_bytes(8, "little") + bytes(24)


# --- an independent reference, from the paper (Crowley & Biggers, ToSC 2018(4)) -------------

M32 = 0xFFFFFFFF
SIGMA = (0x61707865, 0x3320646E, 0x79622D32, 0x6B206574)   # "expand 32-byte k"


def _chacha_permute(state: list[int], rounds: int) -> list[int]:
    x = list(state)

    def qr(a, b, c, d):
        for s1, s2 in ((16, 12), (8, 7)):
            x[a] = (x[a] + x[b]) & M32
            x[d] ^= x[a]
            x[d] = ((x[d] << s1) | (x[d] >> (32 - s1))) & M32
            x[c] = (x[c] + x[d]) & M32
            x[b] ^= x[c]
            x[b] = ((x[b] << s2) | (x[b] >> (32 - s2))) & M32

    for _ in range(rounds // 2):
        qr(0, 4, 8, 12), qr(1, 5, 9, 13), qr(2, 6, 10, 14), qr(3, 7, 11, 15)
        qr(0, 5, 10, 15), qr(1, 6, 11, 12), qr(2, 7, 8, 13), qr(3, 4, 9, 14)
    return x


def xchacha_stream(key: bytes, nonce: bytes, rounds: int, n: int, position: int = 0) -> bytes:
    """n bytes of XChaCha keystream: HChaCha(key, nonce[:16]) keys ChaCha, whose words 12-13
    are the 64-bit stream position and 14-15 nonce[16:24].  As in the kernel, only word 12
    counts the blocks (mod 2^32)."""
    key_words = list(struct.unpack("<8I", key))
    h = _chacha_permute([*SIGMA, *key_words, *struct.unpack("<4I", nonce[:16])], rounds)
    subkey = h[:4] + h[12:]
    block, high = position & M32, position >> 32
    out = bytearray()
    while len(out) < n:
        init = [*SIGMA, *subkey, block, high, *struct.unpack("<2I", nonce[16:])]
        x = _chacha_permute(init, rounds)
        out += struct.pack("<16I", *((a + b) & M32 for a, b in zip(x, init)))
        block = (block + 1) & M32
    return bytes(out[:n])


def poly1305_hash(r: bytes, msg: bytes) -> int:
    """Poly1305's polynomial (no "+ s"): whole 16-byte blocks, each plus 2^128, evaluated at the
    clamped r mod 2^130 - 5, then mod 2^128."""
    p = (1 << 130) - 5
    r_int = int.from_bytes(r, "little") & 0x0FFFFFFC0FFFFFFC0FFFFFFC0FFFFFFF
    h = 0
    for i in range(0, len(msg), 16):
        h = (h + int.from_bytes(msg[i:i + 16], "little") + (1 << 128)) * r_int % p
    return h % (1 << 128)


def nh(key_words: tuple[int, ...], chunk: bytes) -> bytes:
    """NH with 4 passes (each keyed 16 bytes further on), stride 2, over whole 16-byte units."""
    out = b""
    for p in range(4):
        total = 0
        for i in range(len(chunk) // 16):
            m = struct.unpack_from("<4I", chunk, 16 * i)
            k = key_words[4 * (i + p):4 * (i + p) + 4]
            total += (((m[0] + k[0]) & M32) * ((m[2] + k[2]) & M32)
                      + ((m[1] + k[1]) & M32) * ((m[3] + k[3]) & M32))
        out += (total % (1 << 64)).to_bytes(8, "little")
    return out


def nhpoly1305(key: bytes, msg: bytes) -> int:
    """Poly1305 over the NH hashes of the message's 1024-byte chunks (zero-padded to 16)."""
    words = struct.unpack("<268I", key[16:])
    msg += bytes(-len(msg) % 16)
    return poly1305_hash(key[:16], b"".join(nh(words, msg[i:i + 1024])
                                           for i in range(0, len(msg), 1024)))


def reference(key: bytes, rounds: int, tweak: bytes, data: bytes, encrypt: bool) -> bytes:
    """Adiantum, paper §6.4, with the kernel's choices (32-byte tweak, nonce 1 for the keys)."""
    derived = xchacha_stream(key, b"\x01" + bytes(23), rounds, 32 + 16 + 16 + 1072)
    k_e, k_t, k_l = derived[:32], derived[32:48], derived[48:]
    aes = Cipher(algorithms.AES(k_e), modes.ECB())
    left, right = data[:-16], data[-16:]
    header = poly1305_hash(k_t, (8 * len(left)).to_bytes(16, "little") + tweak)

    def hash_(bulk: bytes) -> int:
        return header + nhpoly1305(k_l, bulk)

    middle = ((int.from_bytes(right, "little") + hash_(left)) % (1 << 128)).to_bytes(16, "little")
    c_m = aes.encryptor().update(middle) if encrypt else middle
    stream = xchacha_stream(key, c_m + b"\x01" + bytes(7), rounds, len(left))
    out_left = bytes(a ^ b for a, b in zip(left, stream))
    last = c_m if encrypt else aes.decryptor().update(c_m)
    out_right = (int.from_bytes(last, "little") - hash_(out_left)) % (1 << 128)
    return out_left + out_right.to_bytes(16, "little")


# --- the kernel's vectors ---------------------------------------------------------------------

def unhex(v: dict, *names: str) -> list[bytes]:
    return [bytes.fromhex(v[n]) for n in names]


def assert_every_way(a, pt: bytes, ct: bytes, tweak: bytes) -> None:
    """``a`` maps pt to ct under ``tweak`` both ways: decrypt, and crypt_into in place and
    out of place."""
    assert a.decrypt(ct, tweak) == pt
    buf = bytearray(pt)
    a.crypt_into(True, buf, buf, tweak)
    assert buf == ct
    a.crypt_into(False, buf, buf, tweak)
    assert buf == pt
    out = bytearray(len(pt))
    a.crypt_into(True, pt, out, tweak)
    assert out == ct
    a.crypt_into(False, ct, out, tweak)
    assert out == pt


@pytest.mark.parametrize("v", ADIANTUM, ids=[v["name"] for v in ADIANTUM])
def test_kernel_vectors(v):
    key, tweak, pt, ct = unhex(v, "key", "tweak", "plaintext", "ciphertext")
    a = _adiantum.Adiantum(key, v["rounds"])
    assert a.encrypt(pt, tweak) == ct
    assert_every_way(a, pt, ct, tweak)


def test_every_template_is_there():
    """All of both kernel templates (6 each) and of the part templates are in the file."""
    assert [v["rounds"] for v in ADIANTUM] == [12] * 6 + [20] * 6
    assert sorted(len(v["plaintext"]) // 2 for v in ADIANTUM if v["rounds"] == 12) == [
        16, 31, 128, 512, 1536, 4096]
    assert [v["rounds"] for v in XCHACHA] == [12] * 7 + [20] * 7
    assert len(NHPOLY1305) == 6


@pytest.mark.parametrize("v", XCHACHA, ids=[v["name"] for v in XCHACHA])
def test_xchacha_vectors(v):
    key, iv, pt, ct = unhex(v, "key", "iv", "plaintext", "ciphertext")
    assert _adiantum.xchacha(key, iv, v["rounds"], pt) == ct
    assert _adiantum.xchacha(key, iv, v["rounds"], ct) == pt
    # the reference's stream, for the reference's sake (the IV's last 8 bytes: the counter)
    stream = xchacha_stream(key, iv[:24], v["rounds"], len(pt), int.from_bytes(iv[24:], "little"))
    assert bytes(a ^ b for a, b in zip(pt, stream)) == ct


@pytest.mark.parametrize("rounds", [12, 20])
@pytest.mark.parametrize("position", [0xFFFFFFFD, (5 << 32) | 0xFFFFFFFE, 3])
def test_xchacha_block_counter(rounds, position):
    """Word 12 counts the blocks and wraps mod 2^32 into nothing, word 13 stays: the kernel's
    ChaCha (the 8-byte stream position of its XChaCha IV).  Batches of 4 blocks cross it."""
    key, nonce, data = os.urandom(32), os.urandom(24), os.urandom(64 * 9 + 5)
    iv = nonce + position.to_bytes(8, "little")
    stream = xchacha_stream(key, nonce, rounds, len(data), position)
    assert _adiantum.xchacha(key, iv, rounds, data) == bytes(a ^ b for a, b in zip(data, stream))


@pytest.mark.parametrize("v", NHPOLY1305, ids=[v["name"] for v in NHPOLY1305])
def test_nhpoly1305_vectors(v):
    key, msg, digest = unhex(v, "key", "message", "digest")
    assert _adiantum.nhpoly1305(key, msg) == digest
    assert nhpoly1305(key, msg).to_bytes(16, "little") == digest


@pytest.mark.parametrize("v", ADIANTUM[:4] + ADIANTUM[6:10],
                         ids=[v["name"] for v in ADIANTUM[:4] + ADIANTUM[6:10]])
def test_reference_on_kernel_vectors(v):
    """The Python reference is right where the kernel says (its short vectors: it is slow)."""
    key, tweak, pt, ct = unhex(v, "key", "tweak", "plaintext", "ciphertext")
    assert reference(key, v["rounds"], tweak, pt, True) == ct
    assert reference(key, v["rounds"], tweak, ct, False) == pt


# --- properties -------------------------------------------------------------------------------

keys = st.binary(min_size=32, max_size=32)
tweaks = st.binary(min_size=32, max_size=32)
rounds_ = st.sampled_from([12, 20])


@settings(max_examples=30, deadline=None)
@given(key=keys, tweak=tweaks, rounds=rounds_, data=st.data())
def test_equals_reference(key, tweak, rounds, data):
    """Every length (every NH/ChaCha tail and chunk boundary), not just the kernel's six."""
    n = data.draw(st.one_of(st.integers(16, 4096), st.sampled_from([
        16, 17, 31, 32, 33, 79, 80, 81, 271, 272, 273, 1039, 1040, 1041, 1055, 4096])))
    pt = data.draw(st.binary(min_size=n, max_size=n))
    a = _adiantum.Adiantum(key, rounds)
    ct = a.encrypt(pt, tweak)
    assert ct == reference(key, rounds, tweak, pt, True)
    assert a.decrypt(pt, tweak) == reference(key, rounds, tweak, pt, False)


@settings(max_examples=200, deadline=None)
@given(key=keys, tweak=tweaks, rounds=rounds_, data=st.data())
def test_round_trip(key, tweak, rounds, data):
    n = data.draw(st.integers(16, 4096))
    pt = data.draw(st.binary(min_size=n, max_size=n))
    a = _adiantum.Adiantum(key, rounds)
    ct = a.encrypt(pt, tweak)
    assert len(ct) == len(pt) and ct != pt
    assert_every_way(a, pt, ct, tweak)


def chunks(data: bytes) -> list[bytes]:
    """data cut into 16-byte pieces from the end, the head's remainder joined to the first: each
    piece at least 16 bytes, so a random permutation leaves one unchanged with odds 2^-128."""
    head = len(data) % 16 + 16
    return [data[:head]] + [data[i:i + 16] for i in range(head, len(data), 16)]


def all_changed(before: bytes, after: bytes) -> bool:
    return all(x != y for x, y in zip(chunks(before), chunks(after)))


@settings(max_examples=100, deadline=None)
@given(key=keys, tweak=tweaks, rounds=rounds_, data=st.data())
def test_bit_flip_changes_whole_sector(key, tweak, rounds, data):
    """Wide-block: one flipped bit anywhere in the ciphertext garbles all of the decrypted
    sector, not one block (as XTS would) and not a prefix or suffix; likewise the other way,
    and for a flipped tweak bit (another sector's IV)."""
    n = data.draw(st.sampled_from([16, 17, 512, 4096]) | st.integers(16, 4096))
    pt = data.draw(st.binary(min_size=n, max_size=n))
    bit = data.draw(st.integers(0, 8 * n - 1))
    a = _adiantum.Adiantum(key, rounds)
    ct = a.encrypt(pt, tweak)

    def flip(b: bytes, i: int) -> bytes:
        out = bytearray(b)
        out[i // 8] ^= 1 << (i % 8)
        return bytes(out)

    assert all_changed(pt, a.decrypt(flip(ct, bit), tweak))
    assert all_changed(ct, a.encrypt(flip(pt, bit), tweak))
    tweak_bit = data.draw(st.integers(0, 255))
    assert all_changed(ct, a.encrypt(pt, flip(tweak, tweak_bit)))
    assert all_changed(pt, a.decrypt(ct, flip(tweak, tweak_bit)))


def test_bit_flip_diffuses_about_half_the_bits():
    """Over a 4096-byte sector a flipped bit changes about half of the other side's bits."""
    a = _adiantum.Adiantum(bytes(range(32)))
    pt = os.urandom(4096)
    ct = a.encrypt(pt, plain64(7))
    for bit in (0, 8 * 2040 + 3, 8 * 4080, 8 * 4096 - 1):   # head, middle, the AES block's edges
        flipped = bytearray(ct)
        flipped[bit // 8] ^= 1 << (bit % 8)
        changed = int.from_bytes(bytes(x ^ y for x, y in zip(pt, a.decrypt(bytes(flipped),
                                                                             plain64(7)))), "big")
        assert 0.45 < changed.bit_count() / (8 * 4096) < 0.55


def test_sectors_differ():
    """The same plaintext in two sectors (plain64 tweaks) encrypts unrelatedly."""
    a = _adiantum.Adiantum(bytes(32), 12)
    pt = bytes(512)
    assert all_changed(a.encrypt(pt, plain64(0)), a.encrypt(pt, plain64(1)))
    assert all_changed(a.encrypt(pt, plain64(1)), a.encrypt(pt, plain64(1 << 32)))


def test_rounds_differ():
    key, pt = os.urandom(32), os.urandom(512)
    assert all_changed(_adiantum.Adiantum(key, 12).encrypt(pt, plain64(0)),
                       _adiantum.Adiantum(key, 20).encrypt(pt, plain64(0)))


# --- the API ----------------------------------------------------------------------------------

def test_refusals():
    with pytest.raises(ValueError):
        _adiantum.Adiantum(bytes(31))
    with pytest.raises(ValueError):
        _adiantum.Adiantum(bytes(32), 8)
    a = _adiantum.Adiantum(bytes(32))
    with pytest.raises(ValueError):
        a.encrypt(bytes(15), plain64(0))
    with pytest.raises(ValueError):
        a.decrypt(bytes(512), bytes(16))
    with pytest.raises(ValueError):
        a.crypt_into(True, bytes(512), bytearray(511), plain64(0))
    with pytest.raises(TypeError):
        a.crypt_into(True, bytes(512), bytes(512), plain64(0))     # dst not writable
    with pytest.raises(ValueError):
        _adiantum.xchacha(bytes(32), bytes(24), 12, b"x")
    with pytest.raises(ValueError):
        _adiantum.nhpoly1305(bytes(1087), b"")
    assert a.encrypt(bytes(16), plain64(0)) != bytes(16)   # still usable


def test_threads_share_one_context():
    """adiantum_crypt only reads its context (and releases the GIL): many threads at once give
    what one thread gives."""
    a = _adiantum.Adiantum(os.urandom(32), 12)
    sectors = [os.urandom(4096) for _ in range(16)]
    expected = [a.encrypt(s, plain64(i)) for i, s in enumerate(sectors)]
    failures = []

    def worker():
        for _ in range(50):
            for i, s in enumerate(sectors):
                if a.encrypt(s, plain64(i)) != expected[i] or a.decrypt(expected[i],
                                                                        plain64(i)) != s:
                    failures.append(i)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
