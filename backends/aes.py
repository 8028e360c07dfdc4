"""One data unit: the per-unit (reference) cipher.

``UnitCipher(chain, key).crypt(op, iv, src, dst)`` encrypts or decrypts exactly one data unit
(``xts``: AES-XTS, the IV is the tweak; ``cbc``: AES-CBC, the IV starts the chain; ``ecb``:
AES-ECB, no IV; ``null``: dm-crypt's cipher_null, output = input) — AES with the
``cryptography`` package; ``lrw``: AES-LRW, the kernel's LRW (cryptfs/crypto/lrw.py) over
AES-ECB, the key's last 16 bytes the tweak key; ``adiantum12``/``adiantum20``: Adiantum with
XChaCha12/20 (backends/adiantum.c through its binding), the whole unit one block, the tweak the
IV zero-padded to 32 bytes as dm-crypt pads it; ``serpent-xts``, ``twofish-cbc``,
``cast5-ecb``, ``camellia-lrw``...: libgcrypt (cryptfs/crypto/gcrypt.py), LRW over its ECB.
``src`` and ``dst`` may be the same buffer.  The key schedule object is built once; each unit
costs one cipher context, which is exactly the per-request overhead dm-crypt pays per sector.
"""

from typing import Callable

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from cryptfs.backends.base import CryptoFailure, Op
from cryptfs.crypto.gcrypt import GcryptCipher, GcryptError
from cryptfs.crypto.lrw import TWEAK_KEY_BYTES, Lrw

#: Adiantum's tweak: dm-crypt's 32-byte IV, whose last 16 bytes the accepted IV modes leave 0.
_TWEAK_PAD = bytes(16)
ADIANTUM_ROUNDS = {"adiantum12": 12, "adiantum20": 20}

#: (encrypt, iv, src, dst): one data unit one way
_Run = Callable[[bool, bytes, memoryview, memoryview], None]


def _adiantum(chain: str, key: bytes | bytearray) -> _Run:
    """The reference Adiantum: no maintained library offers it, so it is backends/adiantum.c
    (checked against the kernel's vectors, tests/test_adiantum.py) through its own small
    binding, separate from the native core's loop."""
    try:
        from cryptfs.backends import _adiantum
    except ImportError as e:
        raise CryptoFailure(f"Adiantum is not built ({e})") from None
    try:
        adi = _adiantum.Adiantum(bytes(key), ADIANTUM_ROUNDS[chain])
    except ValueError as e:
        raise CryptoFailure(f"Adiantum refuses this key: {e}") from None
    return lambda encrypt, iv, src, dst: adi.crypt_into(encrypt, src, dst, bytes(iv) + _TWEAK_PAD)


def _copy(encrypt: bool, iv: bytes, src: memoryview, dst: memoryview) -> None:
    if dst is not src:
        dst[:] = src


#: AES chain → its pyca/cryptography mode for a unit's IV
_AES_MODES = {"xts": modes.XTS, "cbc": modes.CBC, "ecb": lambda iv: modes.ECB()}


def _aes(mode: str, key) -> _Run:
    if mode not in _AES_MODES:
        raise CryptoFailure(f"unknown chain '{mode}'")
    try:
        alg = algorithms.AES(key)       # keeps a reference: wiping the key wipes it
        if mode == "xts":
            Cipher(alg, modes.XTS(bytes(16))).encryptor()   # refuses equal key halves
    except ValueError as e:
        raise CryptoFailure(f"AES-{mode.upper()} refuses this key: {e}") from None
    chain = _AES_MODES[mode]

    def run(encrypt: bool, iv: bytes, src: memoryview, dst: memoryview) -> None:
        cipher = Cipher(alg, chain(iv))
        ctx = cipher.encryptor() if encrypt else cipher.decryptor()
        if mode == "xts":
            ctx.update_into(src, dst)
        else:
            # CBC's and ECB's update_into want len(src) + 15 bytes of room; a unit view has none
            dst[:] = ctx.update(src)
    return run


def _gcrypt(cipher: str, mode: str, key) -> _Run:
    try:
        handle = GcryptCipher(cipher, mode, key)
    except GcryptError as e:
        raise CryptoFailure(str(e)) from None

    def run(encrypt: bool, iv: bytes, src: memoryview, dst: memoryview) -> None:
        try:
            handle.crypt(encrypt, iv, src, dst)
        except GcryptError as e:
            raise CryptoFailure(str(e)) from None
    return run


def _lrw(cipher: str, key) -> _Run:
    """LRW over the block cipher in ECB (AES: pyca; the others: libgcrypt)."""
    if len(key) <= TWEAK_KEY_BYTES:
        raise CryptoFailure(f"an LRW key is the cipher's key and a {TWEAK_KEY_BYTES}-byte "
                            "tweak key")
    block_key, lrw = memoryview(key)[:-TWEAK_KEY_BYTES], Lrw(key[-TWEAK_KEY_BYTES:])
    ecb = _aes("ecb", block_key) if cipher == "aes" else _gcrypt(cipher, "ecb", block_key)

    def run(encrypt: bool, iv: bytes, src: memoryview, dst: memoryview) -> None:
        def one_way(data: bytes) -> bytes:
            out = bytearray(len(data))
            ecb(encrypt, b"", memoryview(data), memoryview(out))
            return bytes(out)
        lrw.crypt(one_way, iv, src, dst)
    return run


class UnitCipher:
    def __init__(self, chain: str, key: bytes | bytearray):
        cipher, _, mode = chain.rpartition("-")
        if chain == "null":
            self._run = _copy
        elif chain in ADIANTUM_ROUNDS:
            self._run = _adiantum(chain, key)
        elif mode == "lrw":
            self._run = _lrw(cipher or "aes", key)
        elif cipher:                    # serpent-xts, cast5-cbc...: libgcrypt
            self._run = _gcrypt(cipher, mode, key)
        else:
            self._run = _aes(mode, key)

    def crypt(self, op: Op, iv: bytes, src: memoryview, dst: memoryview) -> None:
        self._run(op is Op.ENCRYPT, iv, src, dst)
