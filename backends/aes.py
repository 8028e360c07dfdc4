"""One data unit: the per-unit (reference) cipher.

``UnitCipher(chain, key).crypt(op, iv, src, dst)`` encrypts or decrypts exactly one data unit
(``xts``: AES-XTS, the IV is the tweak; ``cbc``: AES-CBC, the IV starts the chain; ``null``:
dm-crypt's cipher_null, output = input) — AES with the ``cryptography`` package;
``adiantum12``/``adiantum20``: Adiantum with XChaCha12/20 (backends/adiantum.c through its
binding), the whole unit one block, the tweak the IV zero-padded to 32 bytes as dm-crypt pads
it; ``serpent-xts``, ``twofish-cbc``, ``camellia-xts``...: libgcrypt (cryptfs/crypto/gcrypt.py).
``src`` and ``dst`` may be the same buffer.  The key schedule object is built once; each unit
costs one cipher context, which is exactly the per-request overhead dm-crypt pays per sector.
"""

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from cryptfs.backends.base import CryptoFailure, Op
from cryptfs.crypto.gcrypt import GcryptCipher, GcryptError

#: Adiantum's tweak: dm-crypt's 32-byte IV, whose last 16 bytes the accepted IV modes leave 0.
_TWEAK_PAD = bytes(16)
ADIANTUM_ROUNDS = {"adiantum12": 12, "adiantum20": 20}


def _adiantum(chain: str, key: bytes | bytearray):
    """The reference Adiantum: no maintained library offers it, so it is backends/adiantum.c
    (checked against the kernel's vectors, tests/test_adiantum.py) through its own small
    binding, separate from the native core's loop."""
    try:
        from cryptfs.backends import _adiantum
    except ImportError as e:
        raise CryptoFailure(f"Adiantum is not built ({e})") from None
    try:
        return _adiantum.Adiantum(bytes(key), ADIANTUM_ROUNDS[chain])
    except ValueError as e:
        raise CryptoFailure(f"Adiantum refuses this key: {e}") from None


class UnitCipher:
    def __init__(self, chain: str, key: bytes | bytearray):
        self._chain = chain
        if chain == "null":
            return
        if chain in ADIANTUM_ROUNDS:
            self._adi = _adiantum(chain, key)
            return
        if "-" in chain:                # serpent-xts, twofish-cbc...: libgcrypt
            cipher, _, mode = chain.partition("-")
            try:
                self._gcry = GcryptCipher(cipher, mode, key)
            except GcryptError as e:
                raise CryptoFailure(str(e)) from None
            return
        try:
            self._alg = algorithms.AES(key)   # keeps a reference: wiping key wipes it
            if chain == "xts":
                Cipher(self._alg, modes.XTS(bytes(16))).encryptor()   # refuses equal key halves
        except ValueError as e:
            raise CryptoFailure(f"AES-{chain.upper()} refuses this key: {e}") from None

    def crypt(self, op: Op, iv: bytes, src: memoryview, dst: memoryview) -> None:
        if self._chain == "null":
            if dst is not src:
                dst[:] = src
            return
        if "-" in self._chain:
            try:
                self._gcry.crypt(op is Op.ENCRYPT, iv, src, dst)
            except GcryptError as e:
                raise CryptoFailure(str(e)) from None
            return
        if self._chain in ADIANTUM_ROUNDS:
            self._adi.crypt_into(op is Op.ENCRYPT, src, dst, bytes(iv) + _TWEAK_PAD)
            return
        xts = self._chain == "xts"
        cipher = Cipher(self._alg, modes.XTS(iv) if xts else modes.CBC(iv))
        ctx = cipher.encryptor() if op is Op.ENCRYPT else cipher.decryptor()
        if xts:
            ctx.update_into(src, dst)
        else:
            # CBC's update_into wants len(src) + 15 bytes of room; a data unit view has none.
            dst[:] = ctx.update(src)
